"""Stage 2: train the outer links through the whole unrolled system.

Each round, every agent reads its prompt (with its teammates' hand-offs spliced in) and is teacher-forced on its role
text; the states over that text, truncated to ``max_latent_tokens``, stand in for its latent thoughts and are handed on
through ``outer(inner(H))``. In the final round the decoder is teacher-forced on the answer and scored with
cross-entropy. Gradients flow through the frozen backbones, across every hand-off and round, into the outer links
(shared across rounds, so their gradients sum over rounds); the inner links are frozen after stage 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import nn

from recursivemas.config import Topology
from recursivemas.links import LinkSet
from recursivemas.runtime.executor import fill_prompt
from recursivemas.runtime.graph import Plan


def answer_loss(engine, prompt, answer: str) -> torch.Tensor:
    """Cross-entropy of the answer tokens given the prompt (which may hold latents carrying gradients)."""
    (forced,) = engine.forward_states([prompt], [answer])
    logits = engine.model.get_output_embeddings()(forced.states).float()
    return nn.functional.cross_entropy(logits, forced.target_ids)


def unroll_loss(topology: Topology, engines: Mapping[str, object], links: LinkSet, question: str, answer: str,
                role_texts: Mapping[str, str], max_latent_tokens: int = 80, aux_weight: float = 0.0) -> torch.Tensor:
    """The final-round answer loss of one row (plus ``aux_weight`` x the mean of earlier rounds' answer losses).

    ``role_texts`` maps each non-decoding agent to the text it is teacher-forced on (its role target).
    """
    plan = Plan.from_topology(topology)
    feedback: dict[str, dict] = defaultdict(dict)
    earlier: list[torch.Tensor] = []
    final_loss = None
    for round_ in range(1, topology.rounds + 1):
        final = round_ == topology.rounds
        inbox: dict[str, dict] = defaultdict(dict)
        next_feedback: dict[str, dict] = defaultdict(dict)
        for level in plan.levels:
            for agent in plan.agents_in_round(level, final):
                engine = engines[topology.agent(agent).backbone]
                prompt = fill_prompt(topology.template(agent), question, inbox[agent], feedback[agent])
                if agent == plan.decoder and (final or aux_weight):
                    loss = answer_loss(engine, prompt, answer)
                    if final:
                        final_loss = loss
                        continue
                    earlier.append(loss)
                text = answer if agent == plan.decoder else role_texts[agent]
                (forced,) = engine.forward_states([prompt], [text])
                states = forced.states[:max_latent_tokens].float()
                for dst in plan.targets[agent]:
                    inbox[dst][agent] = links.handoff(states, agent, dst, topology.handoff)
                if not final:
                    for dst in plan.feedback_targets[agent]:
                        next_feedback[dst][agent] = links.handoff(states, agent, dst, topology.handoff)
        feedback = next_feedback
    if earlier:
        return final_loss + aux_weight * torch.stack(earlier).mean()
    return final_loss


def outer_parameters(links: LinkSet) -> list[nn.Parameter]:
    """Freeze the inner links (trained in stage 1) and return the outer links' parameters for the optimizer."""
    links.inner.requires_grad_(False)
    links.outer.requires_grad_(True)
    return list(links.outer.parameters())
