"""Stage 1: warm up each agent's inner link, alone, against its own backbone.

The inner link maps a last-layer state back to the input-embedding space, so that a latent thought can be fed to the
model as if it were a token. We teach it with the model's own targets: teacher-force the role's target text, take the
state that predicts each target token, and pull the link's image of that state towards the token's embedding. The
backbone is frozen and runs without gradients: only the link learns, and it learns fast.

Two losses (``inner.loss``):
- ``cosine``: ``1 - cos(link(h_t), Emb(y_t))``, the paper's. It is satisfied by a direction *near* the token's,
  and a link that lands near every token (a blend of the frequent ones) scores well on it.
- ``vocab``: that plus a cross-entropy over the whole vocabulary of ``cos(link(h_t), Emb(v)) / tau``: the image
  must be nearer the right token than any other one. A rollout fed blends drifts off the text within a few steps.

Teacher-forced states are not what the link meets at inference: there it maps its *own rollout's* states, which
drift once an image is slightly off. ``rollout_rounds`` closes that gap (DAgger): roll out with the link, fit it on
the rollout's states against the same target tokens, pooled with the teacher-forced ones, and repeat, so the link
learns to bring a drifting rollout back onto the text. It is the lesson of stage 2 applied to stage 1: train on the
path inference takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from recursivemas.engine import Framing, Prompt
from recursivemas.prompts import render

InnerLoss = Literal["cosine", "vocab"]
VOCAB_TEMPERATURE = 0.05  # cosine logits over the vocabulary: +-20, sharp enough to single out one token


@dataclass
class InnerExample:
    prompt: Prompt
    target: str


def agent_prompt(template: str, question: str, framing: Framing | None = None,
                 fields: Mapping[str, str] | None = None) -> Prompt:
    """The agent's first-round prompt for a question (no hand-offs yet, the ``fields`` it names), framed as in
    inference."""
    return Prompt(list(render(template, question, {}, fields=fields)), framing=framing or Framing())


def token_loss(engine, mapped: torch.Tensor, ids: torch.Tensor, loss: InnerLoss = "cosine") -> torch.Tensor:
    """How far each image ``mapped[i]`` is from the embedding of token ``ids[i]`` (the module docstring's losses)."""
    wanted = engine.embedding(ids.to(engine.device)).float().to(mapped.device)
    cosine = (1 - nn.functional.cosine_similarity(mapped, wanted, dim=-1)).mean()
    if loss == "cosine":
        return cosine
    if loss != "vocab":
        raise ValueError(f"inner.loss: {loss!r} is not one of 'cosine', 'vocab'")
    table = nn.functional.normalize(engine.embedding.weight.detach().float().to(mapped.device), dim=-1)
    logits = nn.functional.normalize(mapped, dim=-1) @ table.T / VOCAB_TEMPERATURE
    return nn.functional.cross_entropy(logits, ids.to(mapped.device)) + cosine


def inner_loss(engine, link: nn.Module, batch: Sequence[InnerExample], loss: InnerLoss = "cosine") -> torch.Tensor:
    """:func:`token_loss` over every target token, h_t being the teacher-forced state that predicts y_t."""
    states, ids = _teacher_forced(engine, batch)
    return token_loss(engine, link(states.to(next(link.parameters()).device)), ids, loss)


def _teacher_forced(engine, batch: Sequence[InnerExample]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        forced = engine.forward_states([e.prompt for e in batch], [e.target for e in batch])
        return torch.cat([f.states for f in forced]).float(), torch.cat([f.target_ids for f in forced])


def rollout_pairs(engine, link: nn.Module, examples: Sequence[InnerExample], steps: int, batch_size: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The link's own rollout over each example's prompt, ``min(steps, len(target))`` states, paired with the
    target tokens they should map to: ``(states [n, hidden], ids [n])``."""
    states, ids = [], []
    link.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        targets = [engine.tokenizer(e.target, add_special_tokens=False)["input_ids"][:steps] for e in chunk]
        for rolled, wanted in zip(engine.rollout([e.prompt for e in chunk], steps, link), targets):
            states.append(rolled.states[:len(wanted)].float().clone())
            ids.append(torch.tensor(wanted, dtype=torch.long))
    return torch.cat(states), torch.cat(ids)


def train_inner(engine, link: nn.Module, examples: Sequence[InnerExample], steps: int, lr: float = 5e-4,
                batch_size: int = 4, seed: int = 0, on_step=None, loss: InnerLoss = "cosine",
                rollout_rounds: int = 0, rollout_steps: int = 16) -> list[float]:
    """AdamW on the link's parameters only: ``steps`` on teacher-forced batches, then ``steps`` more after each of
    ``rollout_rounds`` rollouts of ``rollout_steps`` (the serving latent steps) over every example, on the pooled
    states. Returns the loss of every step."""
    if not examples:
        raise ValueError("train_inner: no examples; pass at least one (prompt, target) pair")
    optimizer = torch.optim.AdamW(link.parameters(), lr=lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=generator).tolist()
    losses = []

    def update(value: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(link.parameters(), 1.0)
        optimizer.step()
        losses.append(value.item())
        if on_step is not None:
            on_step(len(losses) - 1, losses[-1])

    link.train()
    for step in range(steps):
        start = (step * batch_size) % len(order)
        update(inner_loss(engine, link, [examples[order[(start + i) % len(order)]]
                                         for i in range(min(batch_size, len(order)))], loss))
    if rollout_rounds:
        device = next(link.parameters()).device
        pooled = [_teacher_forced(engine, examples[i:i + 16]) for i in range(0, len(examples), 16)]
        # a batch of pooled states holds as many target tokens as a teacher-forced batch of examples does
        tokens_per_example = sum(len(ids) for _, ids in pooled) / len(examples)
        tokens_per_batch = max(1, round(batch_size * tokens_per_example))
        for _ in range(rollout_rounds):
            pooled.append(rollout_pairs(engine, link, examples, rollout_steps))
            states, ids = (torch.cat(parts) for parts in zip(*pooled))
            link.train()
            for _ in range(steps):
                pick = torch.randint(len(ids), (tokens_per_batch,), generator=generator)
                update(token_loss(engine, link(states[pick].to(device)), ids[pick], loss))
    link.eval()
    return losses
