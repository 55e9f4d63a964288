"""The one training loop: stage 1 (inner links, agents in parallel over ranks), stage 2 (outer links through the
unrolled system), checkpoints and a held-out evaluation. It runs unchanged in one process and on every Ray Train
worker; only the :class:`~recursivemas.train.parallel.World` and the :class:`Checkpoints` differ.

Resuming is exact: the data position is a function of the step (batch ``k`` is rows ``k*B .. k*B+B-1``), so a run
restored from step ``s`` with its optimizer and scheduler state continues as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Literal

import torch
from tqdm import tqdm

from recursivemas.train.checkpoints import Checkpoints
from recursivemas.train.config import OuterStageConfig, TrainConfig
from recursivemas.train.data import Row
from recursivemas.train.evaluate import latent_accuracy
from recursivemas.train.inner import InnerExample, agent_prompt, train_inner
from recursivemas.train.outer import outer_parameters, unroll_loss
from recursivemas.train.parallel import Wire, World, broadcast_module, sum_scalar
from recursivemas.train.updaters import TorchUpdater, ZeroUpdater
from recursivemas.train.setup import Setup

log = logging.getLogger("recursivemas")
Stage = Literal["inner", "outer", "both"]


def fit(setup: Setup, config: TrainConfig, checkpoints: Checkpoints, world: World | None = None,
        stage: Stage = "both", progress: bool = True, heldout: list[Row] | None = None) -> dict:
    """Train and return a summary (last losses, steps, held-out scores). Every rank calls this."""
    world = world or World()
    problem = training_problem(config)
    state = checkpoints.restore(setup.links) or {"stage": "start", "step": 0}
    if state["stage"] != "start":
        if state.get("problem") not in (None, problem):  # None: written before digests, or by train_outer alone
            raise ValueError(
                f"the checkpoint in {state.get('directory', 'the checkpoint directory')} was trained on other data, "
                "targets, topology or seed than this config; resuming would mix the two runs. Set a new `output`, "
                "or delete the old run's checkpoints to start over")
        log.info("resuming from the %s stage at step %d", state["stage"], state["step"])
    state["problem"] = problem
    summary: dict = {"resumed_from_step": state["step"], "resumed_from_stage": state["stage"]}
    if stage in ("inner", "both") and state["stage"] == "start":
        summary["inner_loss"] = train_inner_links(setup, config, world, progress)
        state = {"stage": "inner", "step": 0, "problem": problem}
        checkpoints.save({"stage": "inner", **summary["inner_loss"]}, setup.links, state)
    if stage in ("outer", "both"):
        deepspeed = config.cluster.deepspeed if config.cluster else None
        losses = train_outer(setup, config.outer, progress, world, checkpoints, state, deepspeed)
        summary.update(outer_loss=losses[-1] if losses else None, outer_losses=losses, outer_steps=config.outer.steps)
    if heldout:
        summary.update(evaluate_heldout(setup, config, heldout, world))
    return summary


def training_problem(config: TrainConfig) -> str:
    """A digest of what the links learn from (topology, data, targets, seed), kept in every checkpoint so a rerun
    resumes only its own run; stage settings may change between runs (more steps, a lower learning rate)."""
    what = config.model_dump(mode="json", include={"topology", "data", "targets", "seed"})
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def train_inner_links(setup: Setup, config: TrainConfig, world: World, progress: bool) -> dict[str, float]:
    """Each rank trains the inner links of the agents it was dealt, then every link is broadcast from its trainer."""
    topology, cfg = setup.topology, config.inner
    agents = [(a.name, a.backbone) for a in topology.agents]
    last: dict[str, float] = {}
    for name in world.trains_inner(agents):
        examples = [InnerExample(agent_prompt(topology.template(name), row.question), row.target(setup.targets[name]))
                    for row in setup.rows]
        bar = tqdm(total=cfg.steps, desc=f"inner {name}", disable=not progress)
        losses = train_inner(setup.engines[topology.agent(name).backbone], setup.links.inner_link(name), examples,
                             cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=config.seed,
                             on_step=lambda step, loss, bar=bar: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
        bar.close()
        last[name] = losses[-1] if losses else math.nan
    out = {}
    for name, _ in agents:
        broadcast_module(world, setup.links.inner_link(name), src=world.inner_owner(agents, name))
        out[f"inner_loss/{name}"] = sum_scalar(world, last.get(name, 0.0))
    return out


def train_outer(setup: Setup, cfg: OuterStageConfig, progress: bool = True, world: World | None = None,
                checkpoints: Checkpoints | None = None, state: dict | None = None,
                deepspeed: dict | None = None) -> list[float]:
    """Stage 2 from ``state["step"]`` to ``cfg.steps``; returns the batch-mean loss of each step it ran.

    Each replica takes its share of every batch; gradients of the outer links are summed over ranks before each
    step, so all ranks hold identical links. Checkpoints every ``cfg.checkpoint_every`` steps and at the end.
    """
    world = world or World()
    if cfg.batch_size % world.replicas:
        raise ValueError(f"outer.batch_size: {cfg.batch_size} rows per step do not split evenly over "
                         f"{world.replicas} data-parallel replicas; use a multiple of {world.replicas}")
    topology, links = setup.topology, setup.links
    params = outer_parameters(links, topology)
    if deepspeed is None:
        updater = TorchUpdater(params, cfg, world)
    else:
        updater = ZeroUpdater(links, setup.engines, params, cfg, world, deepspeed)
    start = (state or {}).get("step", 0)
    updater.load_state_dict(state or {})
    agent_backbone = {a.name: a.backbone for a in topology.agents}
    rows = setup.rows
    links.train()
    losses: list[float] = []
    recent: list[dict] = []
    bar = tqdm(range(start, cfg.steps), desc="outer", disable=not progress, initial=start, total=cfg.steps)
    for step in bar:
        began = time.perf_counter()
        batch = [rows[(step * cfg.batch_size + i) % len(rows)] for i in range(cfg.batch_size)]
        here: list[torch.Tensor] = []
        for row in world.share(batch):
            wire = Wire(world, agent_backbone)
            loss = unroll_loss(topology, setup.engines, links, row.question, row.answer, setup.role_texts(row),
                               cfg.max_latent_tokens, cfg.aux_weight, wire=wire)
            if loss is not None:  # this rank holds the decoder
                here.append(loss / cfg.batch_size)
            if world.pipelined:  # hand-offs cross ranks row by row, so their gradients go back row by row
                wire.backward(here[-1] if loss is not None else None)
        total = sum(loss.item() for loss in here)
        if here and not world.pipelined:
            updater.backward(torch.stack(here).sum())
        losses.append(sum_scalar(world, total))
        lr = updater.lr
        updater.step()
        done = step + 1
        recent.append({"step": done, "loss": losses[-1], "lr": lr,
                       "samples_per_s": cfg.batch_size / (time.perf_counter() - began)})
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if checkpoints is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            # one report per checkpoint, carrying every step since the last (a report is a barrier on Ray Train)
            metrics = {"stage": "outer", "rows_seen": done * cfg.batch_size, **recent[-1], "steps": recent}
            checkpoints.save(metrics, links, {"stage": "outer", "step": done, "rows_seen": done * cfg.batch_size,
                                              "problem": (state or {}).get("problem"), **updater.state_dict()},
                             updater.shards)
            recent = []
    links.eval()
    return losses


def evaluate_heldout(setup: Setup, config: TrainConfig, rows: list[Row], world: World) -> dict:
    """Held-out answer loss (teacher-forced, every placement) and accuracy of latent-mode answers (when rank 0
    holds every backbone whole: not pipelined, not ZeRO-3, whose sharded weights need every rank in each call)."""
    sharded = bool(config.cluster and config.cluster.deepspeed and config.cluster.deepspeed.get("stage") == 3)
    if sharded:  # ZeRO-3 gathers weights in every module call: every rank must make the same calls
        rows = rows[: len(rows) - len(rows) % world.size] or rows[:0]
    if not rows:
        return {}
    total = 0.0
    with torch.no_grad():
        for row in world.share(rows):
            wire = Wire(world, {a.name: a.backbone for a in setup.topology.agents})
            loss = unroll_loss(setup.topology, setup.engines, setup.links, row.question, row.answer,
                               setup.role_texts(row), config.outer.max_latent_tokens, wire=wire)
            total += 0.0 if loss is None else loss.item()
    out = {"eval_rows": len(rows), "eval_answer_loss": sum_scalar(world, total) / len(rows)}
    if not world.pipelined and not sharded and world.rank == 0:
        out["eval_accuracy"] = latent_accuracy(setup.topology, setup.engines, setup.links, rows,
                                               config.eval.max_new_tokens)
    return out
