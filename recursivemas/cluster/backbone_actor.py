"""One Ray actor per unique backbone: the engine, loaded once, shared by every agent and topology that names it.

The actor keeps latents where they are made. ``think`` receives the latent references of its prompts as arguments
(Ray fetches them from the producing actor's object store, never via the coordinator or the driver), rolls the
agents out, applies the topology's links, and returns each hand-off as a new reference that it owns. Link sets arrive
as object references owned by the driver, so an actor that restarts after a crash simply fetches them again.

Concurrent calls (several runs, several topologies) are coalesced into batched engine calls.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from recursivemas.actors import BackboneEngine, Prompt
from recursivemas.actors.batching import CoalescingEngine
from recursivemas.runtime.backend import LocalBackend, Thought


@dataclass(frozen=True)
class LatentArg:
    """Stands in a prompt for the latent passed as the call's ``index``-th extra argument.

    Latent references travel as top-level arguments, so Ray fetches them all, in parallel, before the method runs
    (references nested inside a prompt would be fetched one by one, by hand).
    """

    index: int


def lift_latents(prompts: Sequence[Prompt]) -> tuple[list[Prompt], list[ray.ObjectRef]]:
    """Swap each latent reference in the prompts for a :class:`LatentArg`; return the references in order."""
    refs: list[ray.ObjectRef] = []
    lifted = []
    for prompt in prompts:
        segments = []
        for segment in prompt.segments:
            if isinstance(segment, ray.ObjectRef):
                segments.append(LatentArg(len(refs)))
                refs.append(segment)
            else:
                segments.append(segment)
        lifted.append(Prompt(segments, prompt.response_prefix))
    return lifted, refs


def lower_latents(prompts: Sequence[Prompt], latents: Sequence[torch.Tensor]) -> list[Prompt]:
    return [Prompt([latents[s.index] if isinstance(s, LatentArg) else s for s in p.segments], p.response_prefix)
            for p in prompts]


class BackboneActor:
    def __init__(self, name: str, path: str, dtype: str, device: str, max_batch: int = 16,
                 batch_wait_s: float = 0.005, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)  # the topology's torch_threads, else the CPUs Ray reserved for us
        self.name = name
        self.engine = CoalescingEngine(BackboneEngine.load(path, dtype=dtype, device=device, name=name),
                                       max_batch=max_batch, wait_s=batch_wait_s)
        self._links: dict[str, Any] = {}  # topology key -> LinkSet
        self._stash: dict[str, torch.Tensor] = {}  # hand-offs waiting for a direct-transport pickup
        self._keys = itertools.count()
        self._direct_handoffs = 0

    def info(self) -> dict:
        return {
            "name": self.name, "hidden_size": self.engine.hidden_size, "embedding_scale": self.engine.embedding_scale,
            "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "direct_handoffs": self._direct_handoffs, "stashed": len(self._stash),
            "torch_threads": torch.get_num_threads(),
        }

    def think(self, topology: str, links_ref: list, handoff: str, transport: str, agents: Sequence[str],
              prompts: Sequence[Prompt], steps: int, targets: Sequence[Sequence[str]],
              *latents: torch.Tensor) -> list[Thought]:
        """Roll out; each hand-off comes back as an object reference, or as a stash key for direct transport."""
        backend = LocalBackend(self.engine, self._link_set(topology, links_ref), handoff)
        thoughts = backend.think(agents, lower_latents(prompts, latents), steps, targets)
        for thought in thoughts:
            thought.handoffs = {dst: self._publish(latent, transport) for dst, latent in thought.handoffs.items()}
        return thoughts

    def _publish(self, latent: torch.Tensor, transport: str):
        if transport == "object_store":
            return ray.put(latent)
        key = f"{self.name}-{next(self._keys)}"
        self._stash[key] = latent.contiguous()
        return key

    @ray.method(tensor_transport="gloo")
    def take_gloo(self, key: str) -> torch.Tensor:
        """A stashed hand-off, sent over the gloo collective group straight to the actor that consumes it."""
        return self._take(key)

    @ray.method(tensor_transport="nccl")
    def take_nccl(self, key: str) -> torch.Tensor:
        return self._take(key)

    def _take(self, key: str) -> torch.Tensor:
        self._direct_handoffs += 1
        return self._stash.pop(key)

    def generate(self, prompts: Sequence[Prompt], sampling: dict, *latents: torch.Tensor) -> list:
        return self.engine.generate(lower_latents(prompts, latents), **sampling)

    def batch_sizes(self) -> list[int]:
        return list(self.engine.batches)

    def _link_set(self, topology: str, links_ref: list):
        if topology not in self._links:
            (self._links[topology],) = ray.get(links_ref)  # wrapped in a list so Ray does not resolve it for us
        return self._links[topology]
