"""Stage 2: train the outer links through the whole unrolled system.

Each round, every agent reads its prompt (with its teammates' hand-offs spliced in) and is teacher-forced on its role
text; the states over that text, truncated to ``max_latent_tokens``, stand in for its latent thoughts and are handed on
through ``outer(inner(H))``. In the final round the decoder is teacher-forced on the answer and scored with
cross-entropy. Gradients flow through the frozen backbones, across every hand-off and round, into the outer links
(shared across rounds, so their gradients sum over rounds); the inner links are frozen after stage 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from recursivemas.config import Topology
from recursivemas.links import LinkSet
from recursivemas.runtime.executor import fill_prompt
from recursivemas.runtime.graph import Plan
from recursivemas.train.parallel import Wire


def answer_loss(engine, prompt, answer: str) -> torch.Tensor:
    """Cross-entropy of the answer tokens and the end-of-turn token after them, given the prompt (which may hold
    latents carrying gradients): a decoder that is never shown where an answer ends keeps generating after it."""
    (forced,) = engine.forward_states([prompt], [answer], end=True)
    logits = engine.model.get_output_embeddings()(forced.states).float()
    return nn.functional.cross_entropy(logits, forced.target_ids)


def turns(plan: Plan, rounds: int) -> Iterator[tuple[int, bool, str]]:
    """``(round, final, agent)`` in execution order: the order every trainer (and every pipelined rank) walks."""
    for round_ in range(1, rounds + 1):
        for level in plan.levels:
            for agent in plan.agents_in_round(level, round_ == rounds):
                yield round_, round_ == rounds, agent


def handoffs(plan: Plan, agent: str, final: bool) -> list[tuple[str, bool]]:
    """Where ``agent``'s thoughts go this round: ``(target, is_feedback)``; the final-round decoder only decodes."""
    if final and agent == plan.decoder:
        return []
    out = [(dst, False) for dst in plan.targets[agent]]
    return out if final else out + [(dst, True) for dst in plan.feedback_targets[agent]]


def unroll_loss(topology: Topology, engines: Mapping[str, object], links: LinkSet, question: str, answer: str,
                role_texts: Mapping[str, str], max_latent_tokens: int = 80, aux_weight: float = 0.0,
                wire: Wire | None = None) -> torch.Tensor | None:
    """The final-round answer loss of one row (plus ``aux_weight`` x the mean of earlier rounds' answer losses).

    ``role_texts`` maps each non-decoding agent to the text it is teacher-forced on (its role target). With a
    pipelined ``wire`` only this rank's agents run (``engines`` holds only its backbones), hand-offs to and from
    other ranks travel over the wire, and the loss is returned only where the decoder runs (``None`` elsewhere).
    """
    wire = wire or Wire()
    plan = Plan.from_topology(topology)
    inputs: dict[tuple[int, str], dict] = defaultdict(dict)  # (round, agent) -> {source: latents}
    feedback: dict[tuple[int, str], dict] = defaultdict(dict)
    earlier: list[torch.Tensor] = []
    final_loss = states = None
    for round_, final, agent in turns(plan, topology.rounds):
        decoding = agent == plan.decoder
        if wire.here(agent):
            engine = engines[topology.agent(agent).backbone]
            prompt = fill_prompt(topology.template(agent), question, inputs[round_, agent], feedback[round_, agent])
            if decoding and (final or aux_weight):
                loss = answer_loss(engine, prompt, answer)
                if final:
                    final_loss = loss
                    continue
                earlier.append(loss)
            (forced,) = engine.forward_states([prompt], [answer if decoding else role_texts[agent]])
            states = forced.states[:max_latent_tokens].float()
        for dst, is_feedback in handoffs(plan, agent, final):
            box = feedback[round_ + 1, dst] if is_feedback else inputs[round_, dst]
            box[agent] = wire.carry(
                agent, dst, lambda s=states, a=agent, d=dst: links.handoff(s, a, d, topology.handoff))
    if final_loss is None:
        return None
    if earlier:
        return final_loss + aux_weight * torch.stack(earlier).mean()
    return final_loss


def used_edges(topology: Topology) -> list[tuple[str, str]]:
    """The outer links an unrolled row trains (feedback links only with ``rounds > 1``)."""
    plan = Plan.from_topology(topology)
    found = [(agent, dst) for _, final, agent in turns(plan, topology.rounds)
             for dst, _ in handoffs(plan, agent, final)]
    return list(dict.fromkeys(found))


def outer_parameters(links: LinkSet, topology: Topology | None = None) -> list[nn.Parameter]:
    """Freeze the inner links (trained in stage 1) and return the outer links' parameters for the optimizer:
    those the topology's unrolled rows use (all of them when ``topology`` is not given)."""
    links.inner.requires_grad_(False)
    links.outer.requires_grad_(True)
    if topology is None:
        return list(links.outer.parameters())
    return [p for src, dst in used_edges(topology) for p in links.outer_link(src, dst).parameters()]
