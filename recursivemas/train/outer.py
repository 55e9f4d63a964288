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
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, get_args

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


class UnrollRow(NamedTuple):
    """One row of a stage-2 step: the question, the decoder's target, the row's text fields (``{context}``) and the
    role texts of the upstream agents (``role_text`` forcing only)."""

    question: str
    answer: str
    fields: Mapping[str, str] | None = None
    role_texts: Mapping[str, str] | None = None


HandoffGrads = dict[tuple[str, str, int], float]  # (src, dst, round) -> summed squared gradient norm


def answer_loss(engine, prompt, answer: str) -> torch.Tensor:
    """Cross-entropy of the answer tokens and the end-of-turn token after them, given the prompt (which may hold
    latents carrying gradients): a decoder that is never shown where an answer ends keeps generating after it."""
    return answer_losses(engine, [prompt], [answer])[0]


def answer_losses(engine, prompts, answers: Sequence[str]) -> torch.Tensor:
    """:func:`answer_loss` of each row, ``[rows]``, from one teacher-forced pass (and one LM head call) for all."""
    forced = engine.forward_states(prompts, answers, end=True)
    logits = engine.model.get_output_embeddings()(torch.cat([f.states for f in forced])).float()
    tokens = nn.functional.cross_entropy(logits, torch.cat([f.target_ids for f in forced]), reduction="none")
    return torch.stack([row.mean() for row in tokens.split([len(f.target_ids) for f in forced])])


def unroll_loss(topology: Topology, engines: Mapping[str, object], links: LinkSet, question: str, answer: str,
                role_texts: Mapping[str, str] | None = None, max_latent_tokens: int = 80, aux_weight: float = 0.0,
                wire: Wire | None = None, forcing: Forcing = "rollout", gradient: Gradient = "truncated",
                latent_steps: int | None = None, fields: Mapping[str, str] | None = None) -> torch.Tensor | None:
    """:func:`unroll_losses` of one row."""
    losses = unroll_losses(topology, engines, links, [UnrollRow(question, answer, fields, role_texts)],
                           max_latent_tokens, aux_weight, wire, forcing, gradient, latent_steps)
    return None if losses is None else losses[0]


def unroll_losses(topology: Topology, engines: Mapping[str, object], links: LinkSet, rows: Sequence[UnrollRow],
                  max_latent_tokens: int = 80, aux_weight: float = 0.0, wire: Wire | None = None,
                  forcing: Forcing = "rollout", gradient: Gradient = "truncated", latent_steps: int | None = None,
                  handoff_grads: HandoffGrads | None = None, relay_weight: float = 0.0) -> torch.Tensor | None:
    """Each row's final-round loss of the decoder's target (plus ``aux_weight`` x the mean of earlier rounds' losses
    of it), ``[rows]``.

    The rows go through the schedule together: every agent turn is one backbone call for all of them (and every
    hand-off one link call), which costs a fraction of the rows one by one and gives the same losses. Each row's
    ``fields`` are shown to the agents whose templates name them; ``role_texts`` are read under ``role_text``
    forcing only. ``latent_steps`` (default: the topology's) is the rollout length under ``rollout`` forcing:
    train with the value you serve. With a pipelined ``wire`` only this rank's agents run (``engines`` holds only
    its backbones), hand-offs to and from other ranks travel over the wire one row at a time (so ``rows`` must be
    one row there), and the losses are returned only where the decoder runs (``None`` elsewhere).
    ``relay_weight`` adds that weight x the mean *relay loss*: each upstream agent that reads a hand-off is
    teacher-forced on its own target (its ``role_texts`` entry: for a critic, the values it should restate) given
    the prompt that holds the hand-off. The receiver learns to reconstruct what the sender saw, and the gradient
    reaches the hand-off it reads directly, not through every later agent (one process only: with a pipelined
    ``wire`` it is refused).
    ``handoff_grads``, when given, gains the squared norm of the loss gradient at each hand-off this rank
    computes, by ``(src, dst, round)``, once backward has run: the links are shared across rounds, so this is
    what tells the rounds apart.
    """
    if forcing not in FORCINGS:
        raise ValueError(f"forcing: {forcing!r} is not one of {', '.join(FORCINGS)}")
    if forcing == "role_text" and any(row.role_texts is None for row in rows):
        raise ValueError("forcing 'role_text' needs role_texts: the text each upstream agent is teacher-forced on")
    wire = wire or Wire()
    if relay_weight and wire.world.pipelined:
        raise ValueError("outer.relay_weight: the relay loss needs every agent in one process; set it to 0 with "
                         "placement: pipelined")
    if relay_weight and any(row.role_texts is None for row in rows):
        raise ValueError("outer.relay_weight needs role_texts: each upstream agent's target (`targets`)")
    if wire.world.pipelined and len(rows) != 1:
        raise ValueError(f"a pipelined unroll carries one row at a time over the wire, got {len(rows)} rows")
    steps = topology.latent_steps if latent_steps is None else latent_steps
    plan = Plan.from_topology(topology)
    # (round, agent) -> {source: one hand-off per row}
    inputs: dict[tuple[int, str], dict[str, list]] = defaultdict(dict)
    feedback: dict[tuple[int, str], dict[str, list]] = defaultdict(dict)
    earlier: list[torch.Tensor] = []
    relayed: list[torch.Tensor] = []
    final_loss = states = None
    for turn in plan.turns(topology.rounds):
        agent, round_ = turn.agent, turn.round
        if wire.here(agent):
            engine = engines[topology.agent(agent).backbone]
            prompts = [
                fill_prompt(topology.template(agent, round_), row.question, _of_row(inputs[round_, agent], i),
                            _of_row(feedback[round_, agent], i), round=round_, framing=framing_of(topology, agent),
                            fields=agent_fields(topology, agent, row.fields))
                for i, row in enumerate(rows)]
            if agent == plan.decoder and (turn.decodes or aux_weight):
                losses = answer_losses(engine, prompts, [row.answer for row in rows])
                if turn.decodes:
                    final_loss = losses
                    continue
                earlier.append(losses)
            elif relay_weight and inputs[round_, agent] and all(row.role_texts.get(agent) for row in rows):
                relayed.append(answer_losses(engine, prompts, [row.role_texts[agent] for row in rows]))
            if forcing == "rollout":
                states = engine.latent_states(prompts, steps, links.inner_link(agent), gradient)
            else:
                texts = [row.answer if agent == plan.decoder else row.role_texts[agent] for row in rows]
                states = [f.states[:max_latent_tokens] for f in engine.forward_states(prompts, texts)]
            states = [s.float() for s in states]
        for dst, is_feedback in turn.handoffs:
            box = feedback[round_ + 1, dst] if is_feedback else inputs[round_, dst]
            handed = wire.carry(agent, dst, lambda s=states, a=agent, d=dst, r=round_:
                                _hand_off(links, topology, s, a, d, handoff_grads, r))
            if handed is not None:  # None: computed here for another rank
                box[agent] = handed.split([len(s) for s in states]) if len(rows) > 1 else [handed]
    if final_loss is None:
        return None
    if earlier:
        final_loss = final_loss + aux_weight * torch.stack(earlier).mean(0)
    if relayed:
        final_loss = final_loss + relay_weight * torch.stack(relayed).mean(0)
    return final_loss


def _of_row(box: Mapping[str, list], row: int) -> dict:
    return {src: handed[row] for src, handed in box.items()}


def _hand_off(links: LinkSet, topology: Topology, states: list[torch.Tensor], src: str, dst: str,
              grads: HandoffGrads | None, round_: int) -> torch.Tensor:
    """Every row's hand-off in one link call (the links map each position alone), rows stacked along positions."""
    out = links.handoff(torch.cat(states), src, dst, topology.handoff)
    if grads is not None and out.requires_grad:
        key = (src, dst, round_)

        def note(grad: torch.Tensor) -> None:
            grads[key] = grads.get(key, 0.0) + float(grad.float().pow(2).sum())

        out.register_hook(note)
    return out


def handoff_keys(topology: Topology) -> list[tuple[str, str, int]]:
    """Every hand-off of an unrolled row as ``(src, dst, round)``, in schedule order (the same on every rank)."""
    return [(turn.agent, dst, turn.round) for turn in Plan.from_topology(topology).turns(topology.rounds)
            for dst, _ in turn.handoffs]


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
