"""Stage 2: train the outer links through the whole unrolled system.

The unroll walks the plan's schedule (:meth:`~recursivemas.runtime.graph.Plan.turns`), the one the executor runs, and
in the final round the decoder is teacher-forced on its target and scored with cross-entropy. Gradients flow through
the frozen backbones, across every hand-off and round, into the outer links (shared across rounds, so their
gradients sum over rounds); the inner links are frozen after stage 1. What an upstream agent hands on depends on the
*forcing*:

- ``rollout`` (default): what inference hands on. The agent rolls out ``latent_steps`` latent thoughts from its
  filled prompt with its inner link, and ``outer(inner(H))`` of those states goes downstream; ``gradient`` picks
  how the states carry gradients (``truncated`` or ``full``, :meth:`BackboneEngine.latent_states`). Upstream agents
  need no text target.
- ``role_text`` (the paper's recipe): the agent is teacher-forced on its role text (a plan, a refined plan) and the
  states over it, up to ``max_latent_tokens``, stand in for its thoughts. It needs rows with real role rewrites:
  teacher-forcing upstream agents on the answer leaks the answer into hand-offs that inference never has.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Literal, get_args

import torch
from torch import nn

from recursivemas.config import Topology
from recursivemas.links import LinkSet
from recursivemas.runtime.executor import fill_prompt, framing_of
from recursivemas.runtime.graph import Plan
from recursivemas.train.parallel import Wire

Forcing = Literal["rollout", "role_text"]
Gradient = Literal["truncated", "full"]
FORCINGS: tuple[str, ...] = get_args(Forcing)


def answer_loss(engine, prompt, answer: str) -> torch.Tensor:
    """Cross-entropy of the answer tokens and the end-of-turn token after them, given the prompt (which may hold
    latents carrying gradients): a decoder that is never shown where an answer ends keeps generating after it."""
    (forced,) = engine.forward_states([prompt], [answer], end=True)
    logits = engine.model.get_output_embeddings()(forced.states).float()
    return nn.functional.cross_entropy(logits, forced.target_ids)


def unroll_loss(topology: Topology, engines: Mapping[str, object], links: LinkSet, question: str, answer: str,
                role_texts: Mapping[str, str] | None = None, max_latent_tokens: int = 80, aux_weight: float = 0.0,
                wire: Wire | None = None, forcing: Forcing = "rollout", gradient: Gradient = "truncated",
                latent_steps: int | None = None, fields: Mapping[str, str] | None = None) -> torch.Tensor | None:
    """The final-round loss of the decoder's target ``answer`` for one row (plus ``aux_weight`` x the mean of
    earlier rounds' losses of it).

    ``fields`` are the row's text fields, each shown to the agents whose templates name it (``{context}``).
    ``role_texts`` maps each non-decoding agent to its role text (``role_text`` forcing only). ``latent_steps``
    (default: the topology's) is the rollout length under ``rollout`` forcing: train with the value you serve. With a
    pipelined ``wire`` only this rank's agents run (``engines`` holds only its backbones), hand-offs to and from
    other ranks travel over the wire, and the loss is returned only where the decoder runs (``None`` elsewhere).
    """
    if forcing not in FORCINGS:
        raise ValueError(f"forcing: {forcing!r} is not one of {', '.join(FORCINGS)}")
    if forcing == "role_text" and role_texts is None:
        raise ValueError("forcing 'role_text' needs role_texts: the text each upstream agent is teacher-forced on")
    steps = topology.latent_steps if latent_steps is None else latent_steps
    wire = wire or Wire()
    plan = Plan.from_topology(topology)
    inputs: dict[tuple[int, str], dict] = defaultdict(dict)  # (round, agent) -> {source: latents}
    feedback: dict[tuple[int, str], dict] = defaultdict(dict)
    earlier: list[torch.Tensor] = []
    final_loss = states = None
    for turn in plan.turns(topology.rounds):
        agent, round_ = turn.agent, turn.round
        if wire.here(agent):
            engine = engines[topology.agent(agent).backbone]
            prompt = fill_prompt(topology.template(agent, round_), question, inputs[round_, agent],
                                 feedback[round_, agent], round=round_, framing=framing_of(topology, agent),
                                 fields=agent_fields(topology, agent, fields))
            if agent == plan.decoder and (turn.decodes or aux_weight):
                loss = answer_loss(engine, prompt, answer)
                if turn.decodes:
                    final_loss = loss
                    continue
                earlier.append(loss)
            if forcing == "rollout":
                inner = links.inner_link(agent)
                states = engine.latent_states(prompt, steps, inner, gradient).float()
            else:
                text = answer if agent == plan.decoder else role_texts[agent]
                (forced,) = engine.forward_states([prompt], [text])
                states = forced.states[:max_latent_tokens].float()
        for dst, is_feedback in turn.handoffs:
            box = feedback[round_ + 1, dst] if is_feedback else inputs[round_, dst]
            box[agent] = wire.carry(
                agent, dst, lambda s=states, a=agent, d=dst: links.handoff(s, a, d, topology.handoff))
    if final_loss is None:
        return None
    if earlier:
        return final_loss + aux_weight * torch.stack(earlier).mean()
    return final_loss


def agent_fields(topology: Topology, agent: str, fields: Mapping[str, str] | None) -> dict[str, str]:
    """The fields ``agent``'s templates name, from a row's ``fields`` (a missing one is a data error, named)."""
    names = topology.fields_of(agent)
    missing = [n for n in names if n not in (fields or {})]
    if missing:
        raise ValueError(f"agents.{agent}: the template names {{{missing[0]}}}, but the row has no {missing[0]!r} "
                         f"field; add it to every row (fields given: {sorted(fields or {}) or 'none'})")
    return {n: fields[n] for n in names}


def used_edges(topology: Topology) -> list[tuple[str, str]]:
    """The outer links an unrolled row trains (feedback links only with ``rounds > 1``)."""
    return Plan.from_topology(topology).used_edges(topology.rounds)


def outer_parameters(links: LinkSet, topology: Topology | None = None) -> list[nn.Parameter]:
    """Freeze the inner links (trained in stage 1) and return the outer links' parameters for the optimizer:
    those the topology's unrolled rows use (all of them when ``topology`` is not given)."""
    links.inner.requires_grad_(False)
    links.outer.requires_grad_(True)
    if topology is None:
        return list(links.outer.parameters())
    return [p for src, dst in used_edges(topology) for p in links.outer_link(src, dst).parameters()]
