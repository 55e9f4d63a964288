"""Run a topology over an evaluation set in each mode and round count, and score every answer.

The comparison the paper makes is one system answered three ways: a single agent, the agents talking in text
(Recursive-TextMAS) and the agents talking in latents (RecursiveMAS), at 1, 2, 3 rounds. Every cell of that grid
here sees the same items, in the same batches, on the same runner, so accuracy, wall time and decoded tokens differ
only by mode and rounds. A single agent has no rounds: it runs once and stands for every round count.

The runner is one topology's system, a :class:`~recursivemas.runtime.Runner` (``run_batch(questions, options)``) and its
``topology``: an :class:`~recursivemas.runtime.Executor` (``InProcess().system(topology)``), a cluster's
``Cluster.system(topology)``, or a baseline with the same interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from recursivemas.answers import score
from recursivemas.eval.datasets import EvalItem
from recursivemas.runtime import sandbox
from recursivemas.runtime.calls import RunOptions

MODES = ("single", "text", "latent")


@dataclass(frozen=True)
class ItemResult:
    """One item answered in one cell of the grid."""

    id: str
    mode: str
    rounds: int
    correct: bool
    extracted: str | None
    detail: str
    decoded_tokens: int
    wall_s: float  # the item's share of its batch's wall time
    text: str


@dataclass(frozen=True)
class Cell:
    """A (mode, rounds) summary: what the results table and plots show."""

    mode: str
    rounds: int
    n: int
    accuracy: float
    wall_s: float  # every batch of the cell, end to end
    wall_s_per_item: float
    decoded_tokens_per_item: float


@dataclass
class Evaluation:
    topology: str
    dataset: str
    cells: list[Cell]
    items: list[ItemResult]
    dataset_options: dict = field(default_factory=dict)  # a generated dataset's settings, e.g. {"max_terms": 3}

    def cell(self, mode: str, rounds: int) -> Cell:
        for cell in self.cells:
            if cell.mode == mode and (mode == "single" or cell.rounds == rounds):
                return cell
        raise KeyError(f"no cell for mode {mode!r} at rounds {rounds}")

    def to_dict(self) -> dict:
        return {"topology": self.topology, "dataset": self.dataset, "dataset_options": self.dataset_options,
                "cells": [asdict(c) for c in self.cells], "items": [asdict(i) for i in self.items]}


def grid(modes: Sequence[str], rounds: Sequence[int]) -> list[tuple[str, int]]:
    """The (mode, rounds) cells to run: single once, the others at every round count."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"mode: {unknown} unknown; use {', '.join(MODES)}")
    if not rounds or any(r < 1 for r in rounds):
        raise ValueError(f"rounds: {list(rounds)}; give round counts >= 1, e.g. 1,2,3")
    ordered = [m for m in MODES if m in modes]
    return [(m, 1) if m == "single" else (m, r) for m in ordered for r in (rounds if m != "single" else rounds[:1])]


def evaluate(runner, items: Sequence[EvalItem], modes: Sequence[str] = MODES,
             rounds: Sequence[int] = (1, 2, 3), options: RunOptions | None = None, batch_size: int = 8,
             on_item: Callable[[], None] | None = None, timeout_s: float = 10.0, dataset: str = "",
             dataset_options: Mapping[str, Any] | None = None) -> Evaluation:
    """Answer and score ``items`` in every cell; ``on_item`` ticks once per item answered (a progress bar).

    Each cell runs with ``options`` (latent steps, sampling; None: the topology's) at its own mode and rounds."""
    if not items:
        raise ValueError("evaluate: the dataset has no items")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be >= 1")
    tools = getattr(runner.topology, "tools", None)  # a runner's topology may be any object with a name
    code_sandbox = getattr(tools, "python_sandbox", "bwrap")
    if any(i.kind == "code" for i in items):
        sandbox.require(code_sandbox, f"scoring the code answers of {dataset or 'this dataset'}")
    cells, results = [], []
    base = RunOptions.of(options)
    for mode, r in grid(modes, rounds):
        cell = replace(base, mode=mode, rounds=r)
        mine: list[ItemResult] = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            began = time.perf_counter()
            runs = runner.run_batch([i.query() if i.fields else i.question for i in batch], cell)
            share = (time.perf_counter() - began) / len(batch)
            for item, run in zip(batch, runs):
                verdict = score(run.text, item.reference, item.kind, prompt=item.prompt, tests=item.tests,
                                entry_point=item.entry_point, timeout_s=timeout_s, sandbox=code_sandbox)
                mine.append(ItemResult(item.id, mode, r, verdict.correct, verdict.extracted, verdict.detail,
                                       run.totals.decoded_tokens, share, run.text))
                if on_item is not None:
                    on_item()
        results.extend(mine)
        cells.append(summarise(mode, r, mine))
    return Evaluation(runner.topology.name, dataset, cells, results, dict(dataset_options or {}))


def summarise(mode: str, rounds: int, results: list[ItemResult]) -> Cell:
    n = len(results)
    wall = sum(r.wall_s for r in results)
    return Cell(mode, rounds, n, sum(r.correct for r in results) / n, wall, wall / n,
                sum(r.decoded_tokens for r in results) / n)


def cells_run(modes: Sequence[str], rounds: Sequence[int]) -> int:
    """How many (mode, rounds) cells :func:`evaluate` runs, for sizing a progress bar."""
    return len(grid(modes, rounds))
