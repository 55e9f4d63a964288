"""Held-out evaluation of a trained system: the loss stage 2 optimises, and what a user would actually see.

Training logs only the teacher-forced loss on training rows, which says nothing about questions the links never saw,
nor about the real latent pipeline (rollouts and greedy decoding, not teacher-forced role texts). So :func:`evaluate`
reports both on rows it is given (pass held-out rows): the same final-round answer loss as training (``unroll_loss``,
role texts picked by the same agent -> field mapping), and the accuracy of ``Executor.run_batch(mode="latent")``.

Answer matching is deliberately small (:func:`answer_matches`): training rows hold short answers (a number or a
word). ``recursivemas.eval.answers`` reads whole model answers for benchmarks; training does not import it, so
that ``eval`` may build on ``train`` and not the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from recursivemas.config import Topology
from recursivemas.links import LinkSet
from recursivemas.runtime import Executor
from recursivemas.train.data import Row, check_rows_have, resolve_targets
from recursivemas.train.outer import unroll_loss

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def answer_matches(prediction: str, reference: str) -> bool:
    """Whether a generated answer counts as the reference answer.

    Both are stripped. A numeric reference ("42", "-3.5", "1,000") matches when the *last* number in the prediction
    has the same value (models tend to state the result last). Any other reference matches the whole stripped
    prediction or its first whitespace-separated token, trailing punctuation removed ("b." or "b and more" -> "b").
    """
    prediction, reference = prediction.strip(), reference.strip()
    expected = _number(reference)
    if expected is not None:
        found = _NUMBER.findall(prediction.replace(",", ""))
        return bool(found) and float(found[-1]) == expected
    first = prediction.split()[0].rstrip(".,;:!?") if prediction else ""
    return prediction == reference or first == reference


def evaluate(topology: Topology, engines: Mapping[str, object], links: LinkSet, rows: Sequence[Row],
             max_new_tokens: int = 16, targets: Mapping[str, str] | None = None,
             max_latent_tokens: int = 80) -> dict[str, float]:
    """Score ``links`` on ``rows``: ``{"answer_loss", "accuracy", "rows"}``.

    ``answer_loss`` is the mean teacher-forced cross-entropy of the decoder's final-round answer, unrolled exactly as
    in training (``targets`` maps agents to row fields as ``TrainConfig.targets`` does, unnamed agents read
    ``answer``; ``max_latent_tokens`` should be the training value). ``accuracy`` is :func:`latent_accuracy`.
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
                unroll_loss(topology, engines, links, row.question, row.answer,
                            {agent: row.target(field) for agent, field in fields.items()}, max_latent_tokens).item()
                for row in rows
            ]
    finally:
        links.train(was_training)
    accuracy = latent_accuracy(topology, engines, links, rows, max_new_tokens)
    return {"answer_loss": sum(losses) / len(losses), "accuracy": accuracy, "rows": float(len(rows))}


def latent_accuracy(topology: Topology, engines: Mapping[str, object], links: LinkSet, rows: Sequence[Row],
                    max_new_tokens: int = 16) -> float:
    """The fraction of rows whose latent-mode answer, greedily decoded up to ``max_new_tokens`` tokens, passes
    :func:`answer_matches`: what a user of the trained system would see."""
    was_training = links.training
    links.eval()
    try:
        generation = topology.generation.model_copy(update={"max_new_tokens": max_new_tokens})
        executor = Executor(topology.replace(generation=generation.model_dump()), engines, links)
        results = executor.run_batch([row.question for row in rows], mode="latent")
    finally:
        links.train(was_training)
    return sum(answer_matches(result.text, row.answer) for result, row in zip(results, rows)) / len(rows)
