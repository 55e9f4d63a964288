"""``recursivemas train`` in one process: stage 1 then stage 2, writing a link checkpoint that ``run`` loads.

This is the reference trainer (and what a single Ray Train worker will run): typed config in, safetensors out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from recursivemas.config import ConfigError, Topology, format_validation_error, load_topology
from recursivemas.links import LinkSet, save_links
from recursivemas.runtime import build_links, load_engines
from recursivemas.train.data import Row, check_rows_have, generate_rows, load_jsonl, resolve_targets
from recursivemas.train.inner import InnerExample, agent_prompt, train_inner
from recursivemas.train.outer import outer_parameters, unroll_loss

log = logging.getLogger("recursivemas")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    """Rows from a JSONL file (``path``) or from a built-in generator (``generator``, ``n``, ``seed``)."""

    path: str | None = None
    generator: str | None = None
    n: int = Field(200, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.generator is None):
            raise ValueError("data: set exactly one of `path` (a JSONL file) or `generator` (e.g. basic_arithmetic)")
        return self


class StageConfig(Strict):
    steps: int = Field(100, ge=0)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    warmup_steps: int = Field(10, ge=0)


class OuterStageConfig(StageConfig):
    max_latent_tokens: int = Field(80, ge=1)
    aux_weight: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    topology: str
    data: DataConfig
    targets: dict[str, str] = Field(default_factory=dict)
    inner: StageConfig = Field(default_factory=StageConfig)
    outer: OuterStageConfig = Field(default_factory=OuterStageConfig)
    output: str = "runs/links"
    seed: int = 0


def load_train_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train config {path} does not exist")
    try:
        config = TrainConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid train config\n{format_validation_error(exc, TrainConfig)}") from None
    here = path.parent  # relative paths in the file are relative to the file
    if not Path(config.topology).is_absolute() and (here / config.topology).is_file():
        config.topology = str((here / config.topology).resolve())
    if not Path(config.output).is_absolute():
        config.output = str((here / config.output).resolve())
    if config.data.path and not Path(config.data.path).is_absolute():
        config.data.path = str((here / config.data.path).resolve())
    return config


def load_rows(data: DataConfig) -> list[Row]:
    if data.path:
        return load_jsonl(data.path, max_rows=data.n)
    return generate_rows(data.generator, data.n, data.seed, split="train")


@dataclass
class Setup:
    """Everything a trainer (this process or a Ray Train worker) builds from a config, built the same way."""

    topology: Topology
    rows: list[Row]
    targets: dict[str, str]
    engines: dict
    links: LinkSet


def prepare(config: TrainConfig) -> Setup:
    """Check the data against the topology before any model loads, then load the backbones and seeded links."""
    torch.manual_seed(config.seed)
    topology = load_topology(config.topology)
    rows = load_rows(config.data)
    targets = resolve_targets([a.name for a in topology.agents], topology.decoder, config.targets)
    check_rows_have(rows, targets)
    engines = load_engines(topology)
    return Setup(topology, rows, targets, engines, build_links(topology, engines))


def train(config: TrainConfig, stage: Literal["inner", "outer", "both"] = "both", progress: bool = True) -> Path:
    """Train the topology's links and save them to ``config.output``; returns the checkpoint directory."""
    setup = prepare(config)
    topology, rows, targets, engines, links = setup.topology, setup.rows, setup.targets, setup.engines, setup.links
    if stage in ("inner", "both"):
        for agent in topology.agents:
            examples = [InnerExample(agent_prompt(topology.template(agent.name), row.question),
                                     row.target(targets[agent.name])) for row in rows]
            bar = tqdm(total=config.inner.steps, desc=f"inner {agent.name}", disable=not progress)
            train_inner(engines[agent.backbone], links.inner_link(agent.name), examples, config.inner.steps,
                        lr=config.inner.lr, batch_size=config.inner.batch_size, seed=config.seed,
                        on_step=lambda step, loss, bar=bar: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
            bar.close()
    if stage in ("outer", "both"):
        train_outer(setup, config.outer, progress)
    path = save_links(links, config.output)
    log.info("saved links to %s", path)
    return path


def train_outer(setup: Setup, cfg: OuterStageConfig, progress: bool, rank: int = 0, world: int = 1) -> list[float]:
    """Stage 2. With ``world > 1`` (Ray Train workers) each rank takes its share of every batch and the gradients
    of the outer links are averaged across ranks before each step, so all replicas stay identical."""
    topology, rows, targets, engines, links = setup.topology, setup.rows, setup.targets, setup.engines, setup.links
    params = outer_parameters(links)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, cfg.warmup_steps, cfg.steps))
    links.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="outer", disable=not progress)
    for step in bar:
        batch = [rows[(step * cfg.batch_size + i) % len(rows)] for i in range(cfg.batch_size)][rank::world]
        loss = torch.stack([
            unroll_loss(topology, engines, links, row.question, row.answer,
                        {agent: row.target(field) for agent, field in targets.items()},
                        cfg.max_latent_tokens, cfg.aux_weight)
            for row in batch
        ]).sum() / cfg.batch_size  # this rank's part of the batch mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _all_reduce_sum(params)
            loss = _all_reduce_sum([loss.detach()], grads=False)[0]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    links.eval()
    return losses


def _all_reduce_sum(tensors: list, grads: bool = True) -> list:
    import torch.distributed as dist

    for tensor in tensors:
        value = tensor.grad if grads else tensor
        if value is None:  # an unused link (e.g. feedback with rounds=1) gets no gradient on any rank
            continue
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return tensors


def _cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (the paper's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
