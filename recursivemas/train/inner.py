"""Stage 1: warm up each agent's inner link, alone, against its own backbone.

The inner link maps a last-layer state back to the input-embedding space, so that a latent thought can be fed to the
model as if it were a token. We teach it with the model's own targets: teacher-force the role's target text, take the
state that predicts each target token, and pull the link's image of that state towards the token's embedding
(``1 - cos``). The backbone is frozen and runs without gradients: only the link learns, and it learns fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from recursivemas.engine import Framing, Prompt
from recursivemas.prompts import render


@dataclass
class InnerExample:
    prompt: Prompt
    target: str


def agent_prompt(template: str, question: str, framing: Framing | None = None,
                 fields: Mapping[str, str] | None = None) -> Prompt:
    """The agent's first-round prompt for a question (no hand-offs yet, the ``fields`` it names), framed as in
    inference."""
    return Prompt(list(render(template, question, {}, fields=fields)), framing=framing or Framing())


def inner_loss(engine, link: nn.Module, batch: Sequence[InnerExample]) -> torch.Tensor:
    """Mean over all target tokens of ``1 - cos(link(h_t), Emb(y_t))``, h_t being the state that predicts y_t."""
    with torch.no_grad():
        forced = engine.forward_states([e.prompt for e in batch], [e.target for e in batch])
        states = torch.cat([f.states for f in forced]).float()
        wanted = engine.embedding(torch.cat([f.target_ids for f in forced])).float()
    mapped = link(states.to(next(link.parameters()).device))
    return (1 - nn.functional.cosine_similarity(mapped, wanted.to(mapped.device), dim=-1)).mean()


def train_inner(engine, link: nn.Module, examples: Sequence[InnerExample], steps: int, lr: float = 5e-4,
                batch_size: int = 4, seed: int = 0, on_step=None) -> list[float]:
    """AdamW on the link's parameters only; returns the loss of every step."""
    if not examples:
        raise ValueError("train_inner: no examples; pass at least one (prompt, target) pair")
    optimizer = torch.optim.AdamW(link.parameters(), lr=lr, betas=(0.9, 0.95))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    losses = []
    link.train()
    for step in range(steps):
        start = (step * batch_size) % len(order)
        batch = [examples[order[(start + i) % len(order)]] for i in range(min(batch_size, len(order)))]
        loss = inner_loss(engine, link, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(link.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    link.eval()
    return losses
