"""Build what a trainer needs from a config, the same way in one process and on every Ray Train worker.

Data problems are found before any model loads (missing fields, unknown agents), or right after the tokenizers are
there (a target over ``data.max_length``): a job should fail in seconds with the row and field named, not hours in.
A pipelined worker loads only its own backbone; the link shapes it needs for the others come from their ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from recursivemas.config import Topology, load_topology
from recursivemas.links import LinkSet
from recursivemas.runtime import build_links, load_engines
from recursivemas.train.config import DataConfig, TrainConfig
from recursivemas.train.data import DataError, Row, check_rows_have, generate_rows, load_jsonl, resolve_targets
from recursivemas.train.parallel import World, gather_objects

log = logging.getLogger("recursivemas")


@dataclass
class Setup:
    """Everything a trainer (this process or a Ray Train worker) builds from a config, built the same way."""

    topology: Topology
    rows: list[Row]
    targets: dict[str, str]  # agent -> row field it is teacher-forced on
    engines: dict  # backbone name -> engine; in a pipelined worker only its own backbone
    links: LinkSet

    def role_texts(self, row: Row) -> dict[str, str]:
        return {agent: row.target(field) for agent, field in self.targets.items()}


def load_rows(data: DataConfig) -> list[Row]:
    if data.path:
        return load_jsonl(data.path, max_rows=data.n)
    return generate_rows(data.generator, data.n, data.seed, split="train", options=data.options)


def eval_rows(config: TrainConfig) -> list[Row]:
    """Held-out rows: ``eval.path``, else the generator's held-out split (disjoint from training), else none."""
    if config.eval.n == 0:
        return []
    if config.eval.path:
        return load_jsonl(config.eval.path, max_rows=config.eval.n)
    if config.data.generator:
        return generate_rows(config.data.generator, config.eval.n, config.data.seed, split="heldout",
                             options=config.data.options)
    log.warning("no held-out rows: set `eval.path` to a JSONL file to score the trained links after training")
    return []


def prepare(config: TrainConfig, world: World | None = None) -> Setup:
    """Check the data against the topology before any model loads, then load the backbones and seeded links."""
    world = world or World()
    torch.manual_seed(config.seed)
    topology = load_topology(config.topology)
    rows = load_rows(config.data)
    targets = resolve_targets([a.name for a in topology.agents], topology.decoder, config.targets)
    check_rows_have(rows, targets)
    mine = topology.model_copy(update={"backbones": {
        name: spec for name, spec in topology.backbones.items() if world.holds(name)}})
    engines = load_engines(mine)
    for engine in engines.values():
        engine.gradient_checkpointing = config.outer.gradient_checkpointing
    check_lengths(topology, engines, rows, targets, config.data.max_length)
    shapes: dict[str, SimpleNamespace] = {}
    for part in gather_objects(world, {name: (e.hidden_size, e.embedding_scale) for name, e in engines.items()}):
        shapes.update({name: SimpleNamespace(hidden_size=h, embedding_scale=s) for name, (h, s) in part.items()})
    return Setup(topology, rows, targets, engines, build_links(topology, shapes))


def check_lengths(topology: Topology, engines: dict, rows: list[Row], targets: dict[str, str],
                  max_length: int) -> None:
    """Every teacher-forced text fits ``max_length`` tokens of the backbone that reads it."""
    problems = []
    for agent in topology.agents:
        engine = engines.get(agent.backbone)
        if engine is None:
            continue  # checked on the worker that holds it
        field = targets[agent.name]
        for i, row in enumerate(rows, start=1):
            n = len(engine.tokenizer(row.target(field), add_special_tokens=False)["input_ids"])
            if n > max_length:
                problems.append(f"row {i}, field {field!r} (agent {agent.name!r}): {n} tokens > data.max_length "
                                f"{max_length}; shorten the text or raise data.max_length")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        raise DataError(f"{len(problems)} target(s) longer than data.max_length:\n{shown}")
