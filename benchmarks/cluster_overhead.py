"""What Ray costs: the same topology run by ``Cluster.run`` (backbone actor + coordinator actor, latents by
reference) against the in-process executor, side by side and interleaved in one process.

Run: ``python benchmarks/cluster_overhead.py [--repeats 3] [--latent-steps 32] [--max-new-tokens 64]``.
SmolLM2-135M in the three sequential roles, 3 rounds, greedy; the backbone actor reserves 2 CPUs and uses 2 torch
threads like the in-process engine. Last line: JSON with ``cluster_over_inprocess`` (best cluster wall time / best
in-process wall time; target <= 1.10) and whether both gave the same answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import QUESTIONS, smol_topology  # noqa: E402
from recursivemas.cluster import Cluster  # noqa: E402
from recursivemas.runtime import load_system  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent-steps", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    topology = smol_topology(args.latent_steps, args.max_new_tokens, num_cpus=2)
    question = QUESTIONS[0]
    local = load_system(topology)
    with Cluster(num_cpus=2) as cluster:
        cluster.run(topology, question)  # warm-up: actors up, links fetched
        local.run(question)
        times = {"cluster": [], "inprocess": []}
        texts = {}
        for _ in range(args.repeats):
            for name, run in (("cluster", lambda: cluster.run(topology, question)),
                              ("inprocess", lambda: local.run(question))):
                start = time.perf_counter()
                texts[name] = run().text
                times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["cluster"] / best["inprocess"]
    print(f"in-process {best['inprocess']:.2f} s, cluster {best['cluster']:.2f} s, ratio {ratio:.3f}")
    print(json.dumps({
        "cluster_s": round(best["cluster"], 3), "inprocess_s": round(best["inprocess"], 3),
        "cluster_over_inprocess": round(ratio, 3), "same_answer": texts["cluster"] == texts["inprocess"],
        "latent_steps": args.latent_steps, "max_new_tokens": args.max_new_tokens, "rounds": topology.rounds,
    }))


if __name__ == "__main__":
    main()
