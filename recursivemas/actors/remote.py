"""The one backend for a backbone that runs elsewhere: a cluster's backbone actor or a Serve backbone replica.

Like vLLM's engine clients, it is built around a call function, ``call(method, *args)``, that reaches the host
and returns its answer; the two front ends differ only in that function (``ray.get`` on an actor method, or a
Serve handle's ``.result()``), in an optional ``stream`` function, and in a ``pickup`` for hand-offs that travel
by Ray Direct Transport. Latent references in a call's prompts are lifted into top-level arguments on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from recursivemas.actors.latents import lift
from recursivemas.engine import Generation
from recursivemas.runtime.calls import GenerateCall, ThinkCall, Thought
from recursivemas.errors import InternalError


class BackboneFailure(InternalError):
    """A backbone actor failed during a run; carries the backbone's name (and pickles, to reach the driver)."""

    def __init__(self, backbone: str, cause: BaseException | str):
        self.backbone = backbone
        self.cause_text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
        super().__init__(f"backbone {backbone!r} failed during the run: {self.cause_text}")

    def __reduce__(self):
        return (BackboneFailure, (self.backbone, self.cause_text))


class RemoteBackend:
    """The executor's backend interface over ``call(method, *args)``.

    ``stream(call, *latents)`` yields text deltas, then the ``Generation``; without it, a streamed answer is
    generated whole and delivered as one delta. ``pickup(key)`` turns a direct-transport stash key into the
    reference that the consuming actor resolves.
    """

    def __init__(self, call: Callable[..., Any], links_ref: ray.ObjectRef,
                 stream: Callable[..., Iterator] | None = None, pickup: Callable[[str], Any] | None = None):
        self._call, self._stream, self._pickup = call, stream, pickup
        self.links_ref = links_ref

    def think(self, call: ThinkCall) -> list[Thought]:
        lifted, latents = lift(call)
        thoughts = self._call("think", lifted, [self.links_ref], *latents)
        if self._pickup is not None:
            for thought in thoughts:
                thought.handoffs = {dst: self._pickup(key) for dst, key in thought.handoffs.items()}
        return thoughts

    def generate(self, call: GenerateCall) -> list[Generation]:
        lifted, latents = lift(call)
        return self._call("generate", lifted, *latents)

    def cancel(self, tags: list[str]) -> None:
        self._call("cancel", tags)

    def stream(self, call: GenerateCall) -> Iterator[str | Generation]:
        if self._stream is None:
            (gen,) = self.generate(call)
            if gen.text:
                yield gen.text
            yield gen
            return
        lifted, latents = lift(call)
        yield from self._stream(lifted, *latents)


def actor_backend(name: str, actor, links_ref: ray.ObjectRef, transport: str = "object_store") -> RemoteBackend:
    """A :class:`RemoteBackend` over a cluster's backbone actor; a dead actor is a :class:`BackboneFailure`."""
    def call(method: str, *args):
        try:
            return ray.get(getattr(actor, method).remote(*args))
        except (RayActorError, ObjectLostError) as exc:
            raise BackboneFailure(name, exc) from exc

    pickup = None if transport == "object_store" else getattr(actor, f"take_{transport}").remote
    return RemoteBackend(call, links_ref, pickup=pickup)
