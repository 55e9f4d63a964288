"""An in-process system: load every backbone once, build or load the links, hand both to the executor.

This is what the CLI, tests and training workers use; the Ray cluster builds the same executor over actors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from recursivemas.config import Topology, load_topology
from recursivemas.engine import BackboneEngine
from recursivemas.engine.backbone import DTYPES
from recursivemas.links import LinkSet, load_links, stored_dtype
from recursivemas.runtime.calls import BackboneDims
from recursivemas.runtime.executor import Executor
from recursivemas.runtime.host import load_engine

log = logging.getLogger("recursivemas")


def load_engines(topology: Topology) -> dict[str, BackboneEngine]:
    return {name: load_engine(name, cfg) for name, cfg in topology.backbones.items()}




def build_links(topology: Topology, backbones: Mapping[str, object], seed: int = 0, dtype: str | None = None
                ) -> LinkSet:
    """The topology's link set, sized from the backbones (engines, or their :class:`BackboneDims`); loaded from
    ``topology.links`` when it names a checkpoint.

    Fresh links are initialised to be near-identity maps at the receiver's embedding scale, so an untrained system
    runs and produces text, but it has not learned to read another agent's thoughts: train before trusting it.
    """
    agent_backbone = {a.name: BackboneDims.of(backbones[a.backbone]) for a in topology.agents}
    with torch.random.fork_rng(devices=[]):  # fresh links are the same wherever they are built (in-process, actors)
        torch.manual_seed(seed)
        links = LinkSet(
            agent_dims={name: b.hidden_size for name, b in agent_backbone.items()},
            edges=[*topology.edges, *topology.feedback],
            norm=topology.link_norm,
            out_scales={name: b.embedding_scale for name, b in agent_backbone.items()},
        )
    wanted = dtype or topology.links_dtype
    if topology.links:
        load_links(Path(topology.links), into=links)
        if wanted == "auto":
            return links.to(stored_dtype(Path(topology.links)))
    else:
        log.warning("topology %r names no `links:` checkpoint; using freshly initialised (untrained) links",
                    topology.name)
    return links.to(DTYPES.get(wanted, torch.float32))


def load_system(topology: Topology | str | Path) -> Executor:
    """Everything needed to ``run`` a topology in this process."""
    if not isinstance(topology, Topology):
        topology = load_topology(topology)
    engines = load_engines(topology)
    return Executor(topology, engines, build_links(topology, engines))


class InProcess:
    """The in-process counterpart of a :class:`~recursivemas.cluster.Cluster`: ``system(topology)`` gives the
    topology's runner (an :class:`Executor`), with one engine per unique backbone (model, dtype, device) shared by
    every topology, as the cluster shares its actors. For machines where Ray's worker processes would compete with
    other work at a lower priority (a 2-core laptop), and for runs that need no Ray at all."""

    def __init__(self) -> None:
        self._engines: dict[tuple, BackboneEngine] = {}
        self._systems: dict[str, Executor] = {}

    def system(self, topology: Topology | str | Path) -> Executor:
        if not isinstance(topology, Topology):
            topology = load_topology(topology)
        known = self._systems.get(topology.name)
        if known is not None and known.topology == topology:
            return known
        engines = {}
        for name, cfg in topology.backbones.items():
            key = cfg.key
            if key not in self._engines:
                self._engines[key] = load_engine(name, cfg)
            engines[name] = self._engines[key]
        self._systems[topology.name] = Executor(topology, engines, build_links(topology, engines))
        return self._systems[topology.name]

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._systems.clear()
        self._engines.clear()
