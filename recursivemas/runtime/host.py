"""One backbone, ready for every topology that names it: the engine, optional coalescing, and link sets by key.

This is the one place where a typed call meets an engine. The executor's in-process backend, the cluster's
``BackboneActor`` and the Serve backbone deployment all run their calls here; the Ray wrappers only turn latent
references into tensors on the way in and publish hand-offs on the way out. No Ray.

Hand-offs are computed where their states were produced, so the links live with the host that runs their input
agent (its inner link and its outgoing outer links), as ``docs/architecture.md`` describes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
import dataclasses
from dataclasses import dataclass

import torch

from recursivemas.config import BackboneConfig
from recursivemas.engine import BackboneEngine, Generation
from recursivemas.engine.coalescing import CoalescingEngine
from recursivemas.engine.sampling import Sampling
from recursivemas.links import LinkSet
from recursivemas.model_zoo import resolve_model
from recursivemas.runtime.calls import BackboneDims, GenerateCall, RowStop, ThinkCall, Thought

log = logging.getLogger("recursivemas")
_FORGET_S = 3600.0  # a cancelled tag is kept this long: longer than any call of its run can still be arriving


def load_engine(name: str, config: BackboneConfig) -> BackboneEngine:
    """One backbone of a topology (``config`` is its ``backbones:`` entry), loaded in this process."""
    log.info("loading backbone %s (%s)", name, config.model)
    return BackboneEngine.load(resolve_model(config.model), dtype=config.dtype, device=config.device, name=name)


@dataclass(frozen=True)
class HostOptions:
    """How a host shared by many callers (a Ray actor, a Serve replica) runs: calls coalesced up to ``max_batch``
    rows within ``batch_wait_s``, and ``torch_threads`` intra-op threads for its process (None: leave them)."""

    max_batch: int | None = 16
    batch_wait_s: float = 0.005
    torch_threads: int | None = None


class BackboneHost:
    """Runs :class:`ThinkCall` and :class:`GenerateCall` on one engine.

    With ``max_batch`` set, concurrent calls (many runs, many topologies) are coalesced into batched engine calls,
    as a shared actor or replica needs; in one process, calls go straight to the engine.
    """

    def __init__(self, engine: BackboneEngine, max_batch: int | None = None, batch_wait_s: float = 0.005):
        self.engine = engine
        self._calls = CoalescingEngine(engine, max_batch, batch_wait_s) if max_batch else engine
        self._links: dict[str, LinkSet] = {}
        self._cancelled: dict[str, float] = {}  # run tag -> when it was cancelled
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, config: BackboneConfig, options: HostOptions | None = None) -> BackboneHost:
        """The one way a process that serves a backbone builds its host: the Ray actor and the Serve replica
        are thin wrappers around this, adding only what Ray needs (latent references in, hand-offs published)."""
        options = options or HostOptions()
        if options.torch_threads is not None:
            torch.set_num_threads(options.torch_threads)
        return cls(load_engine(name, config), options.max_batch, options.batch_wait_s)

    @property
    def dims(self) -> BackboneDims:
        return BackboneDims.of(self.engine)

    def info(self) -> dict:
        """What callers size links by, and which backbone this is: name, hidden size, embedding scale."""
        return {"name": self.engine.name, **dataclasses.asdict(self.dims)}

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the coalesced engine calls made so far (empty without coalescing)."""
        return list(getattr(self._calls, "batches", []))

    def links_for(self, key: str, fetch: Callable[[], LinkSet]) -> LinkSet:
        """The link set named ``key``, fetched once (a Ray host fetches it from the object store)."""
        with self._lock:
            if key not in self._links:
                self._links[key] = fetch()
            return self._links[key]

    @torch.inference_mode()
    def think(self, call: ThinkCall, links: LinkSet | None) -> list[Thought]:
        """Roll each agent out with its inner link; hand its states to each target as ``outer(inner(H))`` (or
        ``outer(H)``), tensors in the links' dtype on their device."""
        if links is None:
            raise ValueError("latent mode needs a LinkSet; build one with recursivemas.runtime.build_links")
        inner = [links.inner_link(agent) for agent in call.agents]
        weight = next(links.parameters())
        thoughts = []
        for agent, out, targets in zip(call.agents, self._calls.rollout(list(call.prompts), call.steps, inner),
                                       call.targets):
            states = out.states.to(device=weight.device, dtype=weight.dtype)
            handoffs = {dst: links.handoff(states, agent, dst, call.handoff) for dst in targets}
            thoughts.append(Thought(out.prompt_tokens, out.latent_tokens, handoffs))
        return thoughts

    def generate(self, call: GenerateCall) -> list[Generation]:
        return self._calls.generate(list(call.prompts), self._sampling(call), alive=self._alive(call))

    def stream(self, call: GenerateCall) -> Iterator[str | Generation]:
        """Text deltas of the call's one prompt as they are decoded, then its ``Generation`` (not coalesced: a
        stream holds its batch of one for its whole length)."""
        (prompt,) = call.prompts
        alive = self._alive(call)
        return self.engine.stream_generation(prompt, self._sampling(call), alive=alive[0] if alive else None)

    def cancel(self, tags: list[str]) -> None:
        """End the rows of these runs at their next decode step (their callers are gone)."""
        now = time.time()
        with self._lock:
            self._cancelled = {t: at for t, at in self._cancelled.items() if now - at < _FORGET_S}
            self._cancelled.update(dict.fromkeys(tags, now))

    def _alive(self, call: GenerateCall) -> list[Callable[[], bool] | None] | None:
        """The engine's ``alive`` argument for the call's stops: a check per row; None when it has no stops."""
        def check(stop: RowStop | None):
            if stop is None:
                return None
            return lambda: stop.tag not in self._cancelled and (stop.deadline is None or time.time() < stop.deadline)

        return [check(stop) for stop in call.stops] if any(call.stops) else None

    def _sampling(self, call: GenerateCall) -> Sampling:
        """The call's sampling, with the fields it leaves to the model read from this backbone's own settings."""
        return call.sampling.for_model(getattr(getattr(self.engine, "model", None), "generation_config", None))
