"""The narrow interface between the executor and whatever runs a backbone.

The executor asks a backend for two things: ``think`` (roll agents out and return their hand-offs, one per target)
and ``generate`` (decode text). A hand-off is an opaque *latent handle*: the executor only moves it from one agent's
turn into another agent's prompt. In-process it is a tensor; on a cluster it is an object reference that the
receiving actor resolves, so latents travel actor to actor and never through the coordinator or the driver.

Because a hand-off is computed where its states were produced, the links live with the backend that runs their
input agent (the inner link and the outgoing outer links), as in DESIGN.md section 5.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from recursivemas.actors.inputs import Prompt
from recursivemas.links import LinkSet


@dataclass
class Thought:
    """One agent's latent turn: what it read and what it hands to each target."""

    prompt_tokens: int
    latent_tokens: int
    handoffs: dict[str, Any] = field(default_factory=dict)  # target agent -> latent handle


class Backend(Protocol):
    def think(self, agents: Sequence[str], prompts: Sequence[Prompt], steps: int,
              targets: Sequence[Sequence[str]]) -> list[Thought]: ...

    def generate(self, prompts: Sequence[Prompt], **sampling: Any) -> list: ...


class LocalBackend:
    """An in-process engine plus one topology's links; latent handles are tensors on the links' device."""

    def __init__(self, engine, links: LinkSet | None, handoff: str = "inner_outer"):
        self.engine = engine
        self.links = links
        self.handoff = handoff

    @torch.inference_mode()
    def think(self, agents: Sequence[str], prompts: Sequence[Prompt], steps: int,
              targets: Sequence[Sequence[str]]) -> list[Thought]:
        if self.links is None:
            raise ValueError("latent mode needs a LinkSet; build one with recursivemas.runtime.build_links")
        inner = [self.links.inner_link(agent) for agent in agents]
        device = next(self.links.parameters()).device
        thoughts = []
        for agent, out, dsts in zip(agents, self.engine.rollout(prompts, steps, inner), targets):
            states = out.states.to(device=device, dtype=torch.float32)
            handoffs = {dst: self.links.handoff(states, agent, dst, self.handoff) for dst in dsts}
            thoughts.append(Thought(out.prompt_tokens, out.latent_tokens, handoffs))
        return thoughts

    def generate(self, prompts: Sequence[Prompt], **sampling: Any) -> list:
        return self.engine.generate(prompts, **sampling)

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator:
        """Text deltas of one answer as it is decoded, then its ``Generation`` (optional for backends)."""
        return self.engine.stream_generation(prompt, **sampling)


def as_backend(obj, links: LinkSet | None, handoff: str) -> Backend:
    """Backends pass through; a bare engine (anything with ``rollout``/``generate``) is paired with the links."""
    return obj if hasattr(obj, "think") else LocalBackend(obj, links, handoff)
