"""The narrow interface between the executor and whatever runs a backbone.

The executor asks a backend three things, each with a typed call (:mod:`recursivemas.runtime.calls`): ``think``
(roll agents out and return their hand-offs, one per target), ``generate`` (decode text) and ``stream`` (decode one
answer as text deltas, then its ``Generation``); and, where it can, it tells it to ``cancel`` the rows of runs whose
callers left. A hand-off is an opaque *latent handle*: the executor only moves it from one agent's turn into another
agent's prompt. In-process it is a tensor; on a cluster it is an object
reference that the receiving actor resolves, so latents travel actor to actor and never through the coordinator or
the driver.

:class:`LocalBackend` is the in-process backend; ``recursivemas.actors.remote.RemoteBackend`` is the one backend for
a backbone that runs elsewhere (a cluster actor or a Serve replica).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from recursivemas.engine import Generation
from recursivemas.links import LinkSet
from recursivemas.runtime.calls import GenerateCall, ThinkCall, Thought
from recursivemas.runtime.host import BackboneHost


@runtime_checkable
class Backend(Protocol):
    def think(self, call: ThinkCall) -> list[Thought]: ...

    def generate(self, call: GenerateCall) -> list[Generation]: ...

    def stream(self, call: GenerateCall) -> Iterator[str | Generation]: ...

    # Optional: ``cancel(tags)`` ends the rows of those runs at their next decode step. A backend without it still
    # stops a cancelled run between turns.


class LocalBackend:
    """A host in this process plus one topology's links; latent handles are tensors on the links' device."""

    def __init__(self, host: BackboneHost, links: LinkSet | None):
        self.host = host
        self.links = links

    @property
    def engine(self):
        return self.host.engine

    def think(self, call: ThinkCall) -> list[Thought]:
        return self.host.think(call, self.links)

    def generate(self, call: GenerateCall) -> list[Generation]:
        return self.host.generate(call)

    def stream(self, call: GenerateCall) -> Iterator[str | Generation]:
        return self.host.stream(call)

    def cancel(self, tags: list[str]) -> None:
        self.host.cancel(tags)


def as_backend(obj, links: LinkSet | None) -> Backend:
    """Backends pass through; a bare engine (anything with ``rollout``/``generate``) is hosted here with the links."""
    return obj if isinstance(obj, Backend) else LocalBackend(BackboneHost(obj), links)
