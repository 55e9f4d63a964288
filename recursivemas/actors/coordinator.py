"""The coordinator actor: one per topology, it drives the rounds against backbone actors.

It runs the same :class:`~recursivemas.runtime.Executor` as an in-process system, over one
:class:`~recursivemas.actors.remote.RemoteBackend` per backbone actor. Latent hand-offs come back as object
references and go out again inside the next prompts, so the coordinator moves references only. Several runs may be
in flight at once (a threaded actor); each backbone actor batches them.

A run whose backbone actor dies is retried once after the actor restarts (its latents died with it, so the whole run
starts again); if the retry fails too, the error names the backbone.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from recursivemas.actors.remote import BackboneFailure, actor_backend
from recursivemas.config import Topology
from recursivemas.runtime import Executor, RunResult
from recursivemas.runtime.calls import RunOptions
from recursivemas.runtime.query import Query

log = logging.getLogger("recursivemas")


class Coordinator:
    def __init__(self, topology: dict, actors: dict, links_ref: list):
        self.topology = Topology.model_validate(topology)
        (ref,) = links_ref  # keep the reference itself: actors fetch the links from the object store
        transport = self.topology.transport
        self.actors = actors
        backends = {name: actor_backend(name, actor, ref, transport) for name, actor in actors.items()}
        if transport != "object_store":
            # Ray Direct Transport: the process that submits both ends of a transfer must own the group, so the
            # coordinator creates it over its (dedicated) backbone actors.
            from ray.experimental.collective import create_collective_group

            unique = list({actor._actor_id: actor for actor in actors.values()}.values())
            create_collective_group(unique, backend="torch_gloo" if transport == "gloo" else "nccl")
        self.executor = Executor(self.topology, backends)
        self.retries = 0  # runs started again after a backbone failure

    def run_batch(self, questions: list[str | Query], options: RunOptions, retries: int = 1) -> list[RunResult]:
        """The questions as the driver sent them: strings or :class:`Query` objects (they pickle), fields and all."""
        for attempt in range(retries + 1):
            try:
                return self.executor.run_batch(questions, options)
            except BackboneFailure as exc:
                if attempt == retries or not self._back(exc.backbone):
                    raise
                log.warning("%s; retrying the run (attempt %d of %d)", exc, attempt + 2, retries + 1)
                self.retries += 1
        raise AssertionError("unreachable")

    def _back(self, backbone: str, timeout_s: float = 120.0) -> bool:
        """Wait for a restarting backbone actor to answer again; False if it is gone for good."""
        actor = self.actors[backbone]
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
