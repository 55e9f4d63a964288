"""Held-out evaluation of a trained system: the loss stage 2 optimises, and what a user would actually see.

Training logs only the loss on training rows, which says nothing about questions the links never saw. So
:func:`evaluate` reports both on rows it is given (pass held-out rows): the decoder's final-round answer loss, unrolled
with the forcing you name (``rollout``, the default, is the inference path), and the accuracy of
a latent-mode ``Executor.run_batch`` scored by the benchmark's scorer (:mod:`recursivemas.answers`), so a figure from
training and one from ``recursivemas eval`` mean the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from recursivemas.answers import parse_number, score
from recursivemas.config import Topology
from recursivemas.links import LinkSet
from recursivemas.runtime import Executor, RunOptions
from recursivemas.train.data import Row, check_rows_have, resolve_targets
from recursivemas.train.outer import Forcing, unroll_loss


def answer_correct(text: str, reference: str) -> bool:
    """Whether a model's answer is right, as the benchmark scores it (a number reference is read as a number)."""
    return score(text, reference, "number" if parse_number(reference) is not None else "text").correct


def evaluate(topology: Topology, engines: Mapping[str, object], links: LinkSet, rows: Sequence[Row],
             max_new_tokens: int = 16, targets: Mapping[str, str] | None = None,
             max_latent_tokens: int = 80, forcing: Forcing = "rollout") -> dict[str, float]:
    """Score ``links`` on ``rows``: ``{"answer_loss", "accuracy", "rows"}``.

    ``answer_loss`` is the mean cross-entropy of the decoder's final-round target (``targets`` maps agents to row
    fields as ``TrainConfig.targets`` does; unnamed agents read ``answer``), unrolled with ``forcing``
    (``role_text`` reads the upstream agents' fields, up to ``max_latent_tokens`` states). ``accuracy`` is
    :func:`answer_accuracy` in latent mode.
    """
    if not rows:
        raise ValueError("evaluate: pass at least one row")
    fields = resolve_targets([a.name for a in topology.agents], topology.decoder, targets)
    check_rows_have(rows, fields)
    was_training = links.training
    links.eval()
    try:
        with torch.no_grad():
            losses = [
                unroll_loss(topology, engines, links, row.question, row.target(fields[topology.decoder]),
                            {agent: row.target(field) for agent, field in fields.items()}, max_latent_tokens,
                            forcing=forcing, fields=row.fields()).item()
                for row in rows
            ]
    finally:
        links.train(was_training)
    accuracy = answer_accuracy(topology, engines, links, rows, max_new_tokens)
    return {"answer_loss": sum(losses) / len(losses), "accuracy": accuracy, "rows": float(len(rows))}


def answer_accuracy(topology: Topology, engines: Mapping[str, object], links: LinkSet, rows: Sequence[Row],
                    max_new_tokens: int = 16, latent_steps: int | None = None, mode: str = "latent") -> float:
    """The fraction of rows whose answer in ``mode`` (``latent``: what a user of the trained system sees;
    ``single``: the decoder alone), greedily decoded up to ``max_new_tokens`` tokens, is right
    (:func:`answer_correct`)."""
    was_training = links.training
    links.eval()
    try:
        executor = Executor(topology, engines, links)
        options = RunOptions(mode, latent_steps=latent_steps,
                             generation={"max_new_tokens": max_new_tokens, "temperature": 0.0})
        results = executor.run_batch([row.query() for row in rows], options)
    finally:
        links.train(was_training)
    return sum(answer_correct(result.text, row.answer) for result, row in zip(results, rows)) / len(rows)
