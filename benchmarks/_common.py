"""Shared benchmark pieces: the SmolLM2-only sequential topology, a few arithmetic questions, best-of timing."""

from __future__ import annotations

import time

from benchmarks.questions import QUESTIONS  # noqa: F401 - the benchmarks import it from here
from recursivemas.config import Topology



def smol_topology(latent_steps: int = 32, max_new_tokens: int = 256, rounds: int = 3, num_cpus: float = 0.25,
                  name: str = "sequential-smol") -> Topology:
    """The demo's sequential pattern with SmolLM2-135M in all three roles (one backbone, one actor)."""
    return Topology.model_validate({
        "name": name,
        "backbones": {"smol": {"model": "smollm2-135m-instruct", "num_cpus": num_cpus}},
        "agents": [{"name": n, "backbone": "smol"} for n in ("planner", "critic", "solver")],
        "pattern": "sequential", "rounds": rounds, "latent_steps": latent_steps,
        "generation": {"max_new_tokens": max_new_tokens},
    })


def best_of(repeats: int, call, *args, **kwargs) -> float:
    """The fastest of ``repeats`` timed calls, in seconds: the least disturbed by a shared, noisy machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)
