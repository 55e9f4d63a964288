"""``recursivemas eval``: load a topology and a dataset, run the grid in this process or on a cluster, write the
report.

One function, so the CLI, ``benchmarks/accuracy.py`` and a notebook all evaluate the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recursivemas.runtime import InProcess, RunOptions

from recursivemas.config import Topology, load_topology
from recursivemas.eval.datasets import load_eval_dataset
from recursivemas.eval.harness import Evaluation, cells_run, evaluate
from recursivemas.eval.report import write_report


def run_eval(topology: Topology | str | Path, dataset: str, modes: Sequence[str] = ("single", "text", "latent"),
             rounds: Sequence[int] = (1, 2, 3), limit: int | None = None, seed: int = 0, out: str | Path | None = None,
             address: str | None = None, batch_size: int = 8, latent_steps: int | None = None,
             max_new_tokens: int | None = None, command: str = "", systems=None,
             dataset_options: Mapping[str, Any] | None = None, cluster: bool = False) -> tuple[Evaluation, dict]:
    """Evaluate and (when ``out`` is given) write the report.

    ``systems`` is what loads the topology (``system(topology)``): an ``InProcess`` or a ``Cluster``; by default
    this process, or a Ray cluster at ``address``. ``dataset_options`` are a generated dataset's settings (e.g.
    ``{"max_terms": 3}``), recorded in the report.
    """
    system = topology if isinstance(topology, Topology) else load_topology(topology)
    options = RunOptions(latent_steps=latent_steps,
                         generation={} if max_new_tokens is None else {"max_new_tokens": max_new_tokens})
    items = load_eval_dataset(dataset, limit=limit, seed=seed, options=dataset_options)
    total = len(items) * cells_run(modes, rounds)
    with tqdm(total=total, desc=f"eval {system.name} on {dataset}", unit="answer") as bar:
        with nullcontext(systems) if systems is not None else _systems(address, cluster) as chosen:
            evaluation = evaluate(chosen.system(system), items, modes, rounds, options, batch_size, bar.update,
                                  dataset=dataset, dataset_options=dataset_options)
    paths = write_report(evaluation, out, command) if out is not None else {}
    return evaluation, paths


def _systems(address: str | None, cluster: bool):
    """A Ray cluster (joined at ``address``, or started here with ``cluster``); else this process, which starts no
    Ray and so answers sooner (``docs/benchmarks.md``)."""
    if address is None and not cluster:
        return InProcess()
    from recursivemas.cluster import Cluster

    return Cluster(address=address)
