"""Shared benchmark pieces: the SmolLM2-only sequential topology, a few arithmetic questions, best-of timing."""

from __future__ import annotations

import time

from recursivemas.config import Topology

QUESTIONS = [
    "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. How many are left?",
    "Tom has 3 boxes with 12 pencils each. He gives away 7 pencils. How many pencils does he have now?",
    "A train travels 60 km per hour for 2.5 hours. How far does it travel?",
    "What is 15% of 240?",
    "A rectangle is 7 cm wide and 12 cm long. What is its area?",
    "Anna reads 18 pages a day. How many pages does she read in two weeks?",
    "A shirt costs $25 and is on sale for 20% off. What is the sale price?",
    "If 5 pens cost $3.50, how much do 12 pens cost?",
]


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
