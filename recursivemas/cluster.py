"""``Cluster``: the same topologies as in-process, on a Ray cluster (a laptop's local Ray or many GPU nodes).

- every unique backbone (same model, dtype, device) becomes ONE actor, shared by all agents and topologies;
- each topology gets a coordinator actor that drives its rounds; latents move actor to actor by reference;
- the driver only submits questions and receives ``RunResult``s (text and accounting, never tensors).

``cluster.system(topology)`` is a runner with the executor's ``run_batch(questions, options)``, so the CLI,
``eval`` and the benchmarks run the same code on a cluster as in one process. A question is a string or a
:class:`~recursivemas.runtime.Query` carrying the fields its agents read (``cluster.run(t, q, context=...)``); the
coordinator receives the queries as they are (they pickle), and a missing field is a
:class:`~recursivemas.runtime.MissingFieldError` on the driver, before anything is submitted.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

# Ray reads this once, at import: without it a local Ray binds to the machine's eth0 address instead of 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

from recursivemas.actors.backbone import BackboneActor  # noqa: E402
from recursivemas.actors.coordinator import Coordinator  # noqa: E402
from recursivemas.actors.remote import BackboneFailure  # noqa: E402
from recursivemas.config import BackboneConfig, Topology, load_topology  # noqa: E402
from recursivemas.errors import ConfigError, UserError  # noqa: E402
from recursivemas.runtime import RunResult  # noqa: E402
from recursivemas.runtime.accounting import report_turns  # noqa: E402
from recursivemas.runtime.calls import BackboneDims, RunOptions  # noqa: E402
from recursivemas.runtime.host import HostOptions  # noqa: E402
from recursivemas.runtime.local import build_links  # noqa: E402
from recursivemas.runtime.query import Query, as_queries, check_fields  # noqa: E402
from recursivemas.runtime.runner import OnTurn, SingleRun  # noqa: E402

__all__ = ["BackboneFailure", "Cluster", "RemoteSystem"]

log = logging.getLogger("recursivemas")


class RemoteSystem(SingleRun):
    """A topology loaded on a cluster, as a :class:`~recursivemas.runtime.Runner`, like
    :class:`~recursivemas.runtime.Executor`. Its rounds run on the coordinator actor, so ``on_turn`` cannot be
    called live: it hears every turn after the run, in order."""

    def __init__(self, topology: Topology, coordinator) -> None:
        self.topology, self.coordinator = topology, coordinator

    def submit(self, questions: Sequence[str | Query], options: RunOptions | None = None) -> ray.ObjectRef:
        """Start a run and return at once; ``ray.get`` the reference for its list of ``RunResult``. Questions are
        strings or :class:`Query` objects; a field their agents' templates name and a query lacks is a
        :class:`~recursivemas.runtime.MissingFieldError` here, before the run is submitted."""
        options = RunOptions.of(options)
        queries = as_queries(questions)
        check_fields(self.topology, queries, options.mode)  # here: the error would not cross Ray as itself
        return self.coordinator.run_batch.remote(queries, options)

    def run_batch(self, questions: Sequence[str | Query], options: RunOptions | None = None, *,
                  on_turn: OnTurn | None = None) -> list[RunResult]:
        return report_turns(_unwrap(self.submit(questions, options)), on_turn)


class Cluster:
    """Start a local Ray (bound to 127.0.0.1) or join one with ``address``; run topologies on it.

    ``with Cluster() as cluster: result = cluster.run("sequential-demo", "What is 15% of 240?")``
    """

    def __init__(self, address: str | None = None, num_cpus: float | None = None, namespace: str = "recursivemas",
                 max_batch: int = 16, batch_wait_s: float = 0.005, **ray_init: object):
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._started = False
        if not ray.is_initialized():
            _probe(address)
            try:
                ray.init(address=address, num_cpus=num_cpus, namespace=namespace, include_dashboard=False,
                         log_to_driver=False, **ray_init)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConnectionError(f"cannot start or reach Ray at address={address!r}: {exc}") from exc
            self._started = address is None
        self._actors: dict[tuple, object] = {}  # backbone key -> actor handle
        self._dims: dict[tuple, BackboneDims] = {}
        self._systems: dict[str, RemoteSystem] = {}  # topology name -> its loaded system
        self._groups: list = []  # placement groups this object created

    # --- context manager -----------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Kill this cluster's actors; stop Ray if this object started it."""
        for system in self._systems.values():
            ray.kill(system.coordinator)
        for actor in self._actors.values():
            ray.kill(actor)
        for group in self._groups:
            remove_placement_group(group)
        self._systems.clear()
        self._actors.clear()
        self._groups.clear()
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    # --- running -------------------------------------------------------------------------------------------------
    def run(self, topology: Topology | str | Path, prompt: str | Query, options: RunOptions | None = None, *,
            context: str | None = None, fields: Mapping[str, str] | None = None) -> RunResult:
        """One question (or :class:`Query`) with the ``context`` (and other ``fields``) its agents' templates name,
        run with ``options`` (:class:`~recursivemas.runtime.RunOptions`; None: the topology's settings)."""
        return self.system(topology).run(prompt, options, context=context, fields=fields)

    def run_batch(self, topology: Topology | str | Path, prompts: Sequence[str | Query],
                  options: RunOptions | None = None) -> list[RunResult]:
        """Several questions in one batched run: strings, or :class:`Query` objects with their fields."""
        return self.system(topology).run_batch(prompts, options)

    def submit(self, topology: Topology | str | Path, prompt: str | Query, options: RunOptions | None = None, *,
               context: str | None = None, fields: Mapping[str, str] | None = None) -> ray.ObjectRef:
        """Start a run and return at once; ``ray.get`` the reference for a list holding its ``RunResult``."""
        return self.system(topology).submit([Query.of(prompt, context, fields)], options)

    def system(self, topology: Topology | str | Path) -> RemoteSystem:
        """The runner for a topology, creating its backbone actors (only those not running yet), links and
        coordinator on first use."""
        if not isinstance(topology, Topology):
            topology = load_topology(topology)
        known = self._systems.get(topology.name)
        if known is not None:
            if known.topology != topology:
                raise ConfigError(f"topology name {topology.name!r} is already loaded with another definition; "
                                  "give the new one its own `name`", "name")
            return known
        # Direct transport binds actors to one collective group for life: such a topology gets its own actors.
        owner = topology.name if topology.transport != "object_store" else None
        bundles = self._placement(topology, owner)
        actors = {name: self._backbone(name, cfg, owner, bundles.get(name)) for name, cfg in topology.backbones.items()}
        dims = {name: self._dims[_key(cfg, owner)] for name, cfg in topology.backbones.items()}
        links = build_links(topology, dims)
        coordinator = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=64).remote(
            topology.to_dict(), actors, [ray.put(links)])
        ray.get(coordinator.ready.remote())
        self._systems[topology.name] = RemoteSystem(topology, coordinator)
        return self._systems[topology.name]

    @property
    def backbone_actors(self) -> dict[tuple, object]:
        return dict(self._actors)

    def backbone_info(self) -> list[dict]:
        return ray.get([actor.info.remote() for actor in self._actors.values()])

    # --- backbone actors -----------------------------------------------------------------------------------------
    def _placement(self, topology: Topology, owner: str | None) -> dict[str, object]:
        """One placement group for the backbones this topology starts; backbone name -> scheduling strategy."""
        new = {name: cfg for name, cfg in topology.backbones.items() if _key(cfg, owner) not in self._actors}
        new = {name: cfg for name, cfg in new.items()  # two names for one backbone share one bundle
               if name == next(n for n, c in new.items() if _key(c, owner) == _key(cfg, owner))}
        if topology.placement is None or not new:
            return {}
        for name, cfg in new.items():
            _check_feasible(name, cfg)
        group = placement_group([_bundle(cfg) for cfg in new.values()], strategy=topology.placement)
        if not group.wait(timeout_seconds=30):
            remove_placement_group(group)
            raise ConfigError(f"placement: the cluster cannot place {sorted(new)} with strategy {topology.placement} "
                              "(not enough nodes or resources); choose PACK/SPREAD or add nodes", "placement")
        self._groups.append(group)
        return {name: PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)
                for index, name in enumerate(new)}

    def _backbone(self, name: str, cfg: BackboneConfig, owner: str | None = None, strategy: object = None):
        key = _key(cfg, owner)
        if key in self._actors:
            return self._actors[key]
        _check_feasible(name, cfg)
        options = dict(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=dict(cfg.resources) or None,
                       max_concurrency=64, max_restarts=cfg.max_restarts, max_task_retries=0)
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        threads = cfg.torch_threads or max(1, int(cfg.num_cpus))  # else the CPUs Ray reserved for it
        actor = ray.remote(BackboneActor).options(**options).remote(
            name, cfg, HostOptions(self.max_batch, self.batch_wait_s, threads))
        try:
            info = ray.get(actor.info.remote())
        except RayActorError as exc:
            ray.kill(actor)
            raise OSError(f"backbone {name!r}: the actor could not load model {cfg.model!r}: "
                          f"{_root_cause(exc)}") from None
        self._actors[key] = actor
        self._dims[key] = BackboneDims.of(info)
        return actor


def _probe(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at an explicit ``host:port``."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                              "`ray start --head` or leave the address out to start a local Ray") from None


def _unwrap(ref: ray.ObjectRef):
    """``ray.get``, but the caller's error (a :class:`UserError`) or a backbone's failure comes out of the coordinator
    as itself, without Ray's wrapping; anything else is an internal error and keeps Ray's traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (BackboneFailure, UserError)):
            raise exc.cause from None
        raise


def _key(cfg: BackboneConfig, owner: str | None = None) -> tuple:
    """Backbones with equal keys share one actor; ``owner`` names a topology that needs actors of its own."""
    return cfg.key + ((owner,) if owner else ())


def _bundle(cfg: BackboneConfig) -> dict[str, float]:
    return {k: v for k, v in {"CPU": cfg.num_cpus, "GPU": cfg.num_gpus, **cfg.resources}.items() if v}


def _check_feasible(name: str, cfg: BackboneConfig) -> None:
    """Fail fast where Ray would wait forever for resources no node has."""
    total = ray.cluster_resources()
    wanted = {"CPU": cfg.num_cpus, "GPU": cfg.num_gpus, **cfg.resources}
    for resource, amount in wanted.items():
        if amount and total.get(resource, 0) < amount:
            raise ConfigError(
                f"backbones.{name}: needs {resource}={amount}, but the cluster has {total.get(resource, 0):g} "
                f"in total; lower it or add nodes that provide {resource}"
            )


def _root_cause(exc: BaseException) -> str:
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "Error" in line and ":" in line:
            return line.strip()
    return text.splitlines()[-1] if text else type(exc).__name__
