"""Resumable training state: link weights plus what the optimizer needs to pick up exactly where it stopped.

A checkpoint directory holds ``links/`` (the same safetensors checkpoint ``run`` and ``serve`` load, nothing of the
backbones) and ``trainer.pt`` (optimizer and scheduler state, the stage reached, the step and the rows seen). The
training loop sees only :class:`Checkpoints`; this module stores them on local disk, Ray Train stores them in its
run storage (:mod:`recursivemas.train.ray_train`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Protocol

import torch

from recursivemas.links import LinkSet, load_links, save_links

LINKS_DIR = "links"
STATE_FILE = "trainer.pt"


def write_checkpoint(directory: str | Path, links: LinkSet, state: dict) -> Path:
    directory = Path(directory)
    save_links(links, directory / LINKS_DIR)
    torch.save(state, directory / STATE_FILE)
    return directory


def read_checkpoint(directory: str | Path, links: LinkSet) -> dict:
    """Load the links in place (checked key by key against this topology's) and return the trainer state, with
    ``directory`` added for state kept in files of its own (DeepSpeed's sharded optimizer)."""
    directory = Path(directory)
    load_links(directory / LINKS_DIR, into=links)
    return {**torch.load(directory / STATE_FILE, weights_only=True), "directory": str(directory)}


Shards = Callable[[Path], None]
"""Writes this rank's own part of the state into a checkpoint directory (every rank calls it)."""


class Checkpoints(Protocol):
    """Where the loop's state goes. ``save`` is called on every rank (with the metrics since the last save);
    one rank writes."""

    def restore(self, links: LinkSet) -> dict | None: ...

    def save(self, metrics: dict, links: LinkSet, state: dict, shards: Shards | None = None) -> None: ...


class LocalCheckpoints:
    """Checkpoints of a one-process run in ``root/step-NNNNNN``, newest ``keep`` kept; written to a temporary name
    and renamed, so a run killed mid-write leaves the previous checkpoint intact."""

    def __init__(self, root: str | Path, keep: int = 2, resume: bool = True) -> None:
        self.root, self.keep, self.resume = Path(root), keep, resume

    def saved(self) -> list[Path]:
        """Complete checkpoints, oldest first (names sort by step, then stage)."""
        return sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))

    def latest(self) -> Path | None:
        found = self.saved()
        return found[-1] if found else None

    def restore(self, links: LinkSet) -> dict | None:
        latest = self.latest() if self.resume else None
        return None if latest is None else read_checkpoint(latest, links)

    def save(self, metrics: dict, links: LinkSet, state: dict, shards: Shards | None = None) -> None:
        final = self.root / f"step-{state['step']:06d}-{state['stage']}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, links, state)
        if shards is not None:
            shards(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.saved()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
