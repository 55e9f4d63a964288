"""One Ray actor per unique backbone: a :class:`~recursivemas.runtime.host.BackboneHost`, loaded once, shared by
every agent and topology that names it.

The actor keeps latents where they are made. ``think`` receives the latent references of its prompts as arguments
(Ray fetches them from the producing actor's object store, never via the coordinator or the driver), runs the call
on the host, and returns each hand-off as a new reference that it owns, or, for Ray Direct Transport, as a key that
the consumer picks up over the collective group. Link sets arrive as object references owned by the driver, so an
actor that restarts after a crash simply fetches them again. Concurrent calls are coalesced by the host.
"""

from __future__ import annotations

import itertools
import os

import ray
import torch

from recursivemas.actors.latents import lower
from recursivemas.config import BackboneConfig
from recursivemas.engine import Generation
from recursivemas.runtime.calls import GenerateCall, ThinkCall, Thought
from recursivemas.runtime.host import BackboneHost, HostOptions


def links_from(host: BackboneHost, call: ThinkCall, links_ref: list):
    """The call's link set, fetched from the object store on first use (wrapped in a list by the caller, so that
    Ray does not resolve it for every call)."""
    return host.links_for(call.links, lambda: ray.get(links_ref)[0])


class BackboneActor:
    """A :class:`BackboneHost` (built by ``from_config``) plus what Ray needs: hand-offs published as object
    references or stashed for direct transport, and where it runs."""

    def __init__(self, name: str, config: BackboneConfig, options: HostOptions):
        self.name = name
        self.host = BackboneHost.from_config(name, config, options)
        self._stash: dict[str, torch.Tensor] = {}  # hand-offs waiting for a direct-transport pickup
        self._keys = itertools.count()
        self._direct_handoffs = 0

    def info(self) -> dict:
        return {
            **self.host.info(), "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "direct_handoffs": self._direct_handoffs, "stashed": len(self._stash),
            "torch_threads": torch.get_num_threads(),
        }

    def think(self, call: ThinkCall, links_ref: list, *latents: torch.Tensor) -> list[Thought]:
        """Roll out; each hand-off comes back as an object reference, or as a stash key for direct transport."""
        thoughts = self.host.think(lower(call, latents), links_from(self.host, call, links_ref))
        for thought in thoughts:
            thought.handoffs = {dst: self._publish(latent, call.transport) for dst, latent in thought.handoffs.items()}
        return thoughts

    def generate(self, call: GenerateCall, *latents: torch.Tensor) -> list[Generation]:
        return self.host.generate(lower(call, latents))

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

    def cancel(self, tags: list[str]) -> None:
        self.host.cancel(tags)

    def batch_sizes(self) -> list[int]:
        return self.host.batch_sizes
