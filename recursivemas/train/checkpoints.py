"""Resumable training state: link weights plus what the optimizer needs to pick up exactly where it stopped.

A checkpoint directory holds ``links/`` (the same safetensors checkpoint ``run`` and ``serve`` load, nothing of the
backbones) and ``trainer.pt`` (optimizer and scheduler state, the stage reached, the step and the rows seen). The
training loop sees only :class:`Checkpoints`; this module stores them on local disk, Ray Train stores them in its
run storage (:mod:`recursivemas.train.ray_train`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from recursivemas.links import LinkSet, load_links, save_links

LINKS_DIR = "links"
STATE_FILE = "trainer.pt"
Reached = Literal["start", "inner", "outer", "done"]  # the stage a checkpoint was written after


@dataclass
class TrainState:
    """Where a run stands: the stage reached, the outer step and rows seen, the digest of what it trains on
    (``problem``: resuming another run's checkpoint is refused), and the state of the parts that keep their own
    (``parts``: the optimizer and scheduler, validation's curve and best links). ``directory`` is where it was read
    from, for parts kept in files of their own (DeepSpeed's sharded optimizer)."""

    stage: Reached = "start"
    step: int = 0
    rows_seen: int = 0
    problem: str | None = None
    parts: dict[str, Any] = field(default_factory=dict)
    directory: str | None = None

    _OWN = ("stage", "step", "rows_seen", "problem")

    def state_dict(self) -> dict[str, Any]:
        """What ``trainer.pt`` holds: one flat mapping (the parts' keys beside the state's own)."""
        return {**self.parts, "stage": self.stage, "step": self.step, "rows_seen": self.rows_seen,
                "problem": self.problem}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], directory: str | None = None) -> TrainState:
        parts = {k: v for k, v in state.items() if k not in cls._OWN and k != "directory"}
        return cls(state.get("stage", "start"), state.get("step", 0), state.get("rows_seen", 0),
                   state.get("problem"), parts, directory)

    def for_parts(self) -> dict[str, Any]:
        """The mapping the optimizer's and validation's ``load_state_dict`` read (with ``directory``)."""
        return {**self.state_dict(), **({"directory": self.directory} if self.directory else {})}


def write_checkpoint(directory: str | Path, links: LinkSet, state: TrainState) -> Path:
    directory = Path(directory)
    save_links(links, directory / LINKS_DIR)
    torch.save(state.state_dict(), directory / STATE_FILE)
    return directory


def read_checkpoint(directory: str | Path, links: LinkSet) -> TrainState:
    """Load the links in place (checked key by key against this topology's) and return the trainer state."""
    directory = Path(directory)
    load_links(directory / LINKS_DIR, into=links)
    return TrainState.from_state_dict(torch.load(directory / STATE_FILE, weights_only=True), str(directory))


Shards = Callable[[Path], None]
"""Writes this rank's own part of the state into a checkpoint directory (every rank calls it)."""


class Checkpoints(Protocol):
    """Where the loop's state goes. ``save`` is called on every rank (with the metrics since the last save);
    one rank writes."""

    def restore(self, links: LinkSet) -> TrainState | None: ...

    def save(self, metrics: dict, links: LinkSet, state: TrainState, shards: Shards | None = None) -> None: ...


class LocalCheckpoints:
    """Checkpoints of a one-process run in ``root/step-NNNNNN``, newest ``keep`` kept, and the one at the end of stage
    1 (``-inner``) always: a stage-2 variant can start from it (copy it into a new run's checkpoints) without
    retraining the inner links. Each is written to a temporary name
    and renamed, so a run killed mid-write leaves the previous checkpoint intact. Every save's metrics (each step's
    loss, learning rate, throughput and per-link, per-round gradient norms) are appended to ``root/metrics.jsonl``,
    which outlives the pruned checkpoints: the record a learning curve or a gradient diagnosis is read from."""

    METRICS_FILE = "metrics.jsonl"

    def __init__(self, root: str | Path, keep: int = 2, resume: bool = True) -> None:
        self.root, self.keep, self.resume = Path(root), keep, resume

    def saved(self) -> list[Path]:
        """Complete checkpoints, oldest first (names sort by step, then stage)."""
        return sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))

    def latest(self) -> Path | None:
        found = self.saved()
        return found[-1] if found else None

    def restore(self, links: LinkSet) -> TrainState | None:
        latest = self.latest() if self.resume else None
        return None if latest is None else read_checkpoint(latest, links)

    def save(self, metrics: dict, links: LinkSet, state: TrainState, shards: Shards | None = None) -> None:
        final = self.root / f"step-{state.step:06d}-{state.stage}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, links, state)
        if shards is not None:
            shards(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        with (self.root / self.METRICS_FILE).open("a") as log:
            log.write(json.dumps(metrics, default=float) + "\n")
        rotating = [p for p in self.saved() if not p.name.endswith("-inner")]  # stage 1's end is kept for good
        for old in rotating[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
