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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm import tqdm

from recursivemas.runtime.executor import fill_prompt, framing_of
from recursivemas.runtime.graph import Plan
from recursivemas.train.checkpoints import Checkpoints, TrainState
from recursivemas.train.config import DeepSpeedOptions, OuterStageConfig, TrainConfig
from recursivemas.train.data import Row
from recursivemas.train.evaluate import answer_accuracy
from recursivemas.train.inner import InnerExample, agent_prompt, train_inner
from recursivemas.train.outer import (
    HandoffGrads, UnrollRow, agent_fields, handoff_keys, outer_parameters, unroll_losses, used_edges,
)
from recursivemas.train.parallel import Wire, World, broadcast_module, check_batch_split, sum_scalar
from recursivemas.train.updaters import TorchUpdater, ZeroUpdater
from recursivemas.train.setup import Setup

log = logging.getLogger("recursivemas")
Stage = Literal["inner", "outer", "both"]


@dataclass
class Validation:
    """Stage 2's learning curve: ``score()`` every ``every`` steps, the best step's outer links kept aside."""

    score: Callable[[], dict]  # {"val_accuracy": ..., "val_loss": ...}, the same on every rank
    every: int
    keep: str = "best"
    curve: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"step", "val_accuracy", "val_loss", "outer": state dict}

    def record(self, step: int, links) -> dict:
        scores = {"step": step, **self.score()}
        self.curve = [c for c in self.curve if c["step"] < step] + [scores]
        if self.best is None or _rank(scores) > _rank(self.best):
            self.best = {**scores, "outer": {k: v.detach().clone() for k, v in links.outer.state_dict().items()}}
        return scores

    def state_dict(self) -> dict:
        return {"curve": self.curve, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.best = list(state.get("curve", [])), state.get("best")

    def summary(self) -> dict:
        if self.best is None:
            return {"validation_curve": self.curve}
        best = {k: v for k, v in self.best.items() if k != "outer"}
        return {"validation_curve": self.curve, "best_step": best["step"], "best_val_accuracy": best["val_accuracy"],
                "best_val_loss": best["val_loss"], "kept": self.keep}


def _rank(scores: dict) -> tuple[float, float]:
    """Better validation: higher accuracy (unscored counts lowest), then lower loss."""
    accuracy = scores["val_accuracy"]
    return (-1.0 if accuracy is None else accuracy, -scores["val_loss"])


def fit(setup: Setup, config: TrainConfig, checkpoints: Checkpoints, world: World | None = None,
        stage: Stage = "both", progress: bool = True, heldout: list[Row] | None = None,
        validation_rows: list[Row] | None = None) -> dict:
    """Train and return a summary (last losses, steps, learning curve, held-out scores). Every rank calls this."""
    world = world or World()
    problem = training_problem(config)
    state = checkpoints.restore(setup.links) or TrainState()
    if state.stage != "start":
        if state.problem not in (None, problem):  # None: written before digests, or by train_outer alone
            raise ValueError(
                f"the checkpoint in {state.directory or 'the checkpoint directory'} was trained on other data, "
                "targets, topology, seed or forcing than this config; resuming would mix the two runs. Set a new "
                "`output`, or delete the old run's checkpoints to start over")
        log.info("resuming from the %s stage at step %d", state.stage, state.step)
    state.problem = problem
    summary: dict = {"resumed_from_step": state.step, "resumed_from_stage": state.stage}
    if stage in ("inner", "both") and state.stage == "start":
        summary["inner_loss"] = train_inner_links(setup, config, world, progress)
        state = TrainState("inner", 0, problem=problem)
        checkpoints.save({"stage": "inner", **summary["inner_loss"]}, setup.links, state)
    if stage in ("outer", "both"):
        deepspeed = config.cluster.deepspeed if config.cluster else None
        validation = None
        if validation_rows:
            validation = Validation(lambda: validation_scores(setup, config, validation_rows, world),
                                    config.validation.every, config.validation.keep)
            summary["val_accuracy_single"] = rank0_accuracy(setup, config, validation_rows, world, "single")
        losses = train_outer(setup, config.outer, progress, world, checkpoints, state, deepspeed, validation)
        summary.update(outer_loss=losses[-1] if losses else None, outer_losses=losses, outer_steps=config.outer.steps)
        if validation is not None:
            summary.update(validation.summary())
    if heldout:
        summary.update(evaluate_heldout(setup, config, heldout, world))
    return summary


def training_problem(config: TrainConfig) -> str:
    """A digest of what the links learn from (topology, data, targets, seed, forcing and gradient mode), kept in
    every checkpoint so a rerun resumes only its own run; other stage settings may change between runs (more steps,
    a lower learning rate)."""
    what = config.model_dump(mode="json", include={"topology": True, "data": True, "targets": True, "seed": True,
                                                   "outer": {"forcing", "gradient", "latent_steps"}})
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def train_inner_links(setup: Setup, config: TrainConfig, world: World, progress: bool) -> dict[str, float]:
    """Each rank trains the inner links of the agents it was dealt, then every link is broadcast from its trainer."""
    topology, cfg = setup.topology, config.inner
    agents = [(a.name, a.backbone) for a in topology.agents]
    last: dict[str, float] = {}
    # rollout rounds only for agents whose thoughts are handed on (the decoder of a 1-round system never rolls out)
    thinkers = {turn.agent for turn in Plan.from_topology(topology).turns(topology.rounds) if not turn.decodes}
    for name in world.trains_inner(agents):
        rounds = cfg.rollout_rounds if name in thinkers else 0
        examples = inner_examples(setup, name, cfg.inputs)
        bar = tqdm(total=cfg.steps * (1 + rounds), desc=f"inner {name}", disable=not progress)
        losses = train_inner(setup.engines[topology.agent(name).backbone], setup.links.inner_link(name), examples,
                             cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=config.seed, loss=cfg.loss,
                             rollout_rounds=rounds,
                             rollout_steps=config.outer.latent_steps or topology.latent_steps,
                             on_step=lambda step, loss, bar=bar: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
        bar.close()
        last[name] = losses[-1] if losses else math.nan
    out = {}
    for name, _ in agents:
        broadcast_module(world, setup.links.inner_link(name), src=world.inner_owner(agents, name))
        out[f"inner_loss/{name}"] = sum_scalar(world, last.get(name, 0.0))
    return out


def inner_examples(setup: Setup, agent: str, inputs: str = "none") -> list[InnerExample]:
    """The agent's stage-1 examples: its prompt for each row and its target. With ``inputs: upstream_text`` the
    prompt's slots hold what each in-round source would hand on, as text (the source's target); the hand-off the
    agent reads at inference stands for that text."""
    topology, framing = setup.topology, framing_of(setup.topology, agent)
    sources = [src for src, dst in topology.edges if dst == agent] if inputs == "upstream_text" else []
    examples = []
    for row in setup.rows:
        fields = agent_fields(topology, agent, row.fields())
        if sources:
            inbox = {src: row.target(setup.targets[src]) for src in sources}
            prompt = fill_prompt(topology.template(agent, 1), row.question, inbox, {}, framing=framing, fields=fields)
        else:
            prompt = agent_prompt(topology.template(agent), row.question, framing, fields)
        examples.append(InnerExample(prompt, row.target(setup.targets[agent])))
    return examples


def train_outer(setup: Setup, cfg: OuterStageConfig, progress: bool = True, world: World | None = None,
                checkpoints: Checkpoints | None = None, state: TrainState | None = None,
                deepspeed: DeepSpeedOptions | None = None, validation: Validation | None = None) -> list[float]:
    """Stage 2 from ``state.step`` to ``cfg.steps``; returns the batch-mean loss of each step it ran.

    Each replica takes its share of every batch and unrolls those rows together, one backbone call per agent turn
    (pipelined, hand-offs cross ranks one row at a time, so rows go one by one there); gradients of the outer links
    are summed over ranks before each step, so all ranks hold identical links. Each step's record carries the
    gradient norms of :func:`grad_norms` (not under DeepSpeed, which keeps gradients in its own shards).
    Checkpoints every ``cfg.checkpoint_every`` steps and at the end. With ``validation``, scores the links before the
    first step, every ``validation.every`` steps and after the last, and ends holding the best step's links when
    ``validation.keep`` is ``best``.
    """
    world = world or World()
    check_batch_split(cfg.batch_size, world.replicas)
    topology, links = setup.topology, setup.links
    params = outer_parameters(links, topology)
    if deepspeed is None:
        updater = TorchUpdater(params, cfg, world)
    else:
        updater = ZeroUpdater(links, setup.engines, params, cfg, world, deepspeed)
    state = state or TrainState()
    start = state.step
    updater.load_state_dict(state.for_parts())
    if validation is not None:
        validation.load_state_dict(state.for_parts())
        if start == 0 or not validation.curve:
            _validate(validation, start, links, bar=None)
    agent_backbone = {a.name: a.backbone for a in topology.agents}
    rows, edges = setup.rows, used_edges(topology)
    links.train()
    losses: list[float] = []
    recent: list[dict] = []
    bar = tqdm(range(start, cfg.steps), desc="outer", disable=not progress, initial=start, total=cfg.steps)
    for step in bar:
        began = time.perf_counter()
        batch = [rows[(step * cfg.batch_size + i) % len(rows)] for i in range(cfg.batch_size)]
        here: list[torch.Tensor] = []
        handoffs = None if deepspeed else dict.fromkeys(handoff_keys(topology), 0.0)
        for group in _row_groups(world, unroll_rows(setup, world.share(batch)), cfg.batch_size):
            wire = Wire(world, agent_backbone)
            group_losses = unroll_losses(topology, setup.engines, links, group, cfg.max_latent_tokens,
                                         cfg.aux_weight, wire, cfg.forcing, cfg.gradient, cfg.latent_steps, handoffs,
                                         cfg.relay_weight)
            loss = None if group_losses is None else group_losses.sum() / cfg.batch_size
            if loss is not None:  # this rank holds the decoder
                here.append(loss)
            if world.pipelined:  # hand-offs cross ranks row by row, so their gradients go back row by row
                wire.backward(loss)
        total = sum(loss.item() for loss in here)
        if here and not world.pipelined:
            updater.backward(torch.stack(here).sum())
        norms = {} if handoffs is None else grad_norms(world, links, edges, handoffs)
        losses.append(sum_scalar(world, total))
        lr = updater.lr
        updater.step()
        done = step + 1
        recent.append({"step": done, "loss": losses[-1], "lr": lr,
                       "samples_per_s": cfg.batch_size / (time.perf_counter() - began), **norms})
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if validation is not None and (done % validation.every == 0 or done == cfg.steps):
            recent[-1].update(_validate(validation, done, links, bar))
        if checkpoints is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            # one report per checkpoint, carrying every step since the last (a report is a barrier on Ray Train)
            metrics = {"stage": "outer", "rows_seen": done * cfg.batch_size, **recent[-1], "steps": recent}
            parts = {**updater.state_dict(), **(validation.state_dict() if validation else {})}
            checkpoints.save(metrics, links, TrainState("outer", done, done * cfg.batch_size, state.problem, parts),
                             updater.shards)
            recent = []
    links.eval()
    if validation is not None and validation.keep == "best" and validation.best is not None:
        links.outer.load_state_dict(validation.best["outer"])
        log.info("kept the links of step %d (validation %s)", validation.best["step"],
                 {k: v for k, v in validation.best.items() if k.startswith("val_")})
    return losses


def unroll_rows(setup: Setup, rows: list[Row]) -> list[UnrollRow]:
    """What the unroll reads of each row: the decoder's target, the row's fields, the role texts."""
    return [UnrollRow(row.question, setup.decoder_target(row), row.fields(), setup.role_texts(row)) for row in rows]


def _row_groups(world: World, rows: list[UnrollRow], size: int) -> list[list[UnrollRow]]:
    """The rows unrolled together: up to ``size``, one when pipelined (the wire carries one row's hand-offs)."""
    size = 1 if world.pipelined else size
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def grad_norms(world: World, links, edges: list[tuple[str, str]], handoffs: HandoffGrads) -> dict[str, float]:
    """The step's gradient norms, summed over ranks, before clipping: ``grad_norm/<src>-><dst>`` of each used
    outer link, and ``grad_norm/<src>-><dst>/r<k>`` of the loss at that link's hand-offs in round ``k`` (from the
    squared norms the unroll collected). A link is shared across rounds and its gradient sums over them; the
    hand-offs tell which round's signal fades. One all-reduce of the links' gradients when there are ranks."""
    flats = [torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                        for p in links.outer_link(src, dst).parameters()]) for src, dst in edges]
    packed = torch.cat([*flats, torch.tensor(list(handoffs.values()), device=flats[0].device)]).float()
    if world.size > 1:
        import torch.distributed as dist

        dist.all_reduce(packed)
    parts = packed.split([f.numel() for f in flats] + [len(handoffs)])
    out = {f"grad_norm/{src}->{dst}": float(part.norm()) for (src, dst), part in zip(edges, parts)}
    for (src, dst, round_), squared in zip(handoffs, parts[-1].tolist()):
        out[f"grad_norm/{src}->{dst}/r{round_}"] = math.sqrt(squared)
    return out


def _validate(validation: Validation, step: int, links, bar) -> dict:
    scores = validation.record(step, links)
    accuracy = "n/a" if scores["val_accuracy"] is None else f"{scores['val_accuracy']:.3f}"
    message = f"validation at step {step}: accuracy {accuracy}, loss {scores['val_loss']:.4f}"
    (bar.write if bar is not None else log.info)(message)
    return {k: v for k, v in scores.items() if k != "step"}


def validation_scores(setup: Setup, config: TrainConfig, rows: list[Row], world: World,
                      max_new_tokens: int | None = None) -> dict:
    """Latent-mode accuracy (the benchmark's scorer; None where rank 0 cannot run inference alone) and the answer
    loss on the inference path, the same on every rank."""
    accuracy = rank0_accuracy(setup, config, rows, world, "latent", max_new_tokens)
    return {"val_accuracy": accuracy, "val_loss": inference_path_loss(setup, config, rows, world)}


def rank0_accuracy(setup: Setup, config: TrainConfig, rows: list[Row], world: World, mode: str,
                   max_new_tokens: int | None = None) -> float | None:
    """:func:`answer_accuracy` in ``mode``, run on rank 0 and shared with every rank; None where rank 0 cannot run
    inference alone (``single`` on the validation rows is the line trained links must clear)."""
    if not _whole_on_rank0(config, world):
        return None
    mine = 0.0
    if world.rank == 0:
        mine = answer_accuracy(setup.topology, setup.engines, setup.links, rows,
                               max_new_tokens or config.validation.max_new_tokens,
                               latent_steps=config.outer.latent_steps, mode=mode)
    return sum_scalar(world, mine)


def inference_path_loss(setup: Setup, config: TrainConfig, rows: list[Row], world: World) -> float:
    """The decoder's mean target loss with every hand-off from a real latent rollout: the path users run, whatever
    the training forcing (a loss measured on teacher-forced hand-offs can fall while answers do not improve)."""
    if _zero3(config):  # ZeRO-3 gathers weights in every module call: every rank must make the same calls
        rows = rows[: len(rows) - len(rows) % world.size] or rows[:0]
    if not rows:
        return math.nan
    agent_backbone = {a.name: a.backbone for a in setup.topology.agents}
    total = 0.0
    with torch.no_grad():
        for group in _row_groups(world, unroll_rows(setup, world.share(rows)), config.outer.batch_size):
            losses = unroll_losses(setup.topology, setup.engines, setup.links, group, wire=Wire(world, agent_backbone),
                                   forcing="rollout", latent_steps=config.outer.latent_steps)
            total += 0.0 if losses is None else losses.sum().item()
    return sum_scalar(world, total) / len(rows)


def _zero3(config: TrainConfig) -> bool:
    return bool(config.cluster and config.cluster.deepspeed and config.cluster.deepspeed.stage == 3)


def _whole_on_rank0(config: TrainConfig, world: World) -> bool:
    """Rank 0 can run inference alone: every backbone whole there (not pipelined, not sharded by ZeRO-3)."""
    return not world.pipelined and not _zero3(config)


def evaluate_heldout(setup: Setup, config: TrainConfig, rows: list[Row], world: World) -> dict:
    """Held-out scores after training, measured as validation is: the inference-path answer loss and the accuracy
    of latent-mode answers (when rank 0 holds every backbone whole)."""
    scores = validation_scores(setup, config, rows, world, config.eval.max_new_tokens)
    out = {"eval_rows": len(rows), "eval_answer_loss": scores["val_loss"]}
    if scores["val_accuracy"] is not None:
        out["eval_accuracy"] = scores["val_accuracy"]
    return out
