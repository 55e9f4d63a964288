"""The coordinator actor: one per topology, it drives the rounds against backbone actors.

It runs the same :class:`~recursivemas.runtime.Executor` as an in-process system, over :class:`ActorBackend` proxies.
Latent hand-offs come back as object references and go out again inside the next prompts, so the coordinator moves
references only. Several runs may be in flight at once (a threaded actor); each backbone actor batches them.

A run whose backbone actor dies is retried once after the actor restarts (its latents died with it, so the whole run
starts again); if the retry fails too, the error names the backbone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, ObjectLostError, RayActorError

from recursivemas.actors import Prompt
from recursivemas.cluster.backbone_actor import lift_latents
from recursivemas.config import Topology
from recursivemas.runtime import Executor, RunResult
from recursivemas.runtime.backend import Thought

log = logging.getLogger("recursivemas")


class BackboneFailure(RuntimeError):
    """A backbone actor failed during a run; carries the backbone's name (and pickles, to reach the driver)."""

    def __init__(self, backbone: str, cause: BaseException | str):
        self.backbone = backbone
        self.cause_text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
        super().__init__(f"backbone {backbone!r} failed during the run: {self.cause_text}")

    def __reduce__(self):
        return (BackboneFailure, (self.backbone, self.cause_text))


class ActorBackend:
    """The executor's backend interface, forwarded to a backbone actor."""

    def __init__(self, name: str, actor, topology: str, links_ref: ray.ObjectRef, handoff: str,
                 transport: str = "object_store"):
        self.name = name
        self.actor = actor
        self.topology = topology
        self.links_ref = links_ref
        self.handoff = handoff
        self.transport = transport

    def think(self, agents: Sequence[str], prompts: Sequence[Prompt], steps: int,
              targets: Sequence[Sequence[str]]) -> list[Thought]:
        lifted, latents = lift_latents(prompts)
        call = self.actor.think.remote(self.topology, [self.links_ref], self.handoff, self.transport, list(agents),
                                       lifted, steps, [list(t) for t in targets], *latents)
        thoughts = self._get(call)
        if self.transport != "object_store":  # pick each stashed hand-off up as a direct-transport reference
            take = getattr(self.actor, f"take_{self.transport}")
            for thought in thoughts:
                thought.handoffs = {dst: take.remote(key) for dst, key in thought.handoffs.items()}
        return thoughts

    def generate(self, prompts: Sequence[Prompt], **sampling) -> list:
        lifted, latents = lift_latents(prompts)
        return self._get(self.actor.generate.remote(lifted, sampling, *latents))

    def _get(self, call: ray.ObjectRef):
        try:
            return ray.get(call)
        except (RayActorError, ObjectLostError) as exc:
            raise BackboneFailure(self.name, exc) from exc


class Coordinator:
    def __init__(self, topology: dict, actors: dict, links_ref: list):
        self.topology = Topology.model_validate(topology)
        (ref,) = links_ref  # keep the reference itself: actors fetch the links from the object store
        transport = self.topology.transport
        backends = {name: ActorBackend(name, actor, self.topology.name, ref, self.topology.handoff, transport)
                    for name, actor in actors.items()}
        if transport != "object_store":
            # Ray Direct Transport: the process that submits both ends of a transfer must own the group, so the
            # coordinator creates it over its (dedicated) backbone actors.
            from ray.experimental.collective import create_collective_group

            unique = list({actor._actor_id: actor for actor in actors.values()}.values())
            create_collective_group(unique, backend="torch_gloo" if transport == "gloo" else "nccl")
        self.executor = Executor(self.topology, backends)
        self.retries = 0  # runs started again after a backbone failure

    def run_batch(self, questions: list[str], mode: str, rounds: int | None, latent_steps: int | None,
                  retries: int = 1) -> list[RunResult]:
        for attempt in range(retries + 1):
            try:
                return self.executor.run_batch(questions, mode, rounds, latent_steps)
            except BackboneFailure as exc:
                if attempt == retries or not self._back(exc.backbone):
                    raise
                log.warning("%s; retrying the run (attempt %d of %d)", exc, attempt + 2, retries + 1)
                self.retries += 1
        raise AssertionError("unreachable")

    def _back(self, backbone: str, timeout_s: float = 120.0) -> bool:
        """Wait for a restarting backbone actor to answer again; False if it is gone for good."""
        actor = self.executor.backends[backbone].actor
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(actor.info.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return True
            except ActorUnavailableError:
                time.sleep(0.2)
            except (RayActorError, GetTimeoutError):
                return False
        return False

    def ready(self) -> bool:
        return True

    def stats(self) -> dict:
        return {"retries": self.retries}
