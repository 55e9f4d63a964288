"""Throughput on the cluster: 8 prompts submitted at once against the same 8 one after another.

Concurrent runs reach the backbone actor together and are coalesced into batched rollouts and generations (one
left-padded batch instead of eight single rows), which is where the gain comes from on a 2-core CPU.

Run: ``python benchmarks/concurrency.py [--prompts 8] [--latent-steps 32] [--max-new-tokens 64]``. Last line: JSON
with ``throughput_gain_8`` (sequential wall time / concurrent wall time; target >= 2.0 on CPU), whether the answers
matched, and the batch sizes the actor ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import QUESTIONS, smol_topology  # noqa: E402
from recursivemas.cluster import Cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--latent-steps", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    topology = smol_topology(args.latent_steps, args.max_new_tokens, num_cpus=2)
    questions = (QUESTIONS * args.prompts)[: args.prompts]
    with Cluster(num_cpus=2) as cluster:
        cluster.run(topology, questions[0])  # warm-up
        (actor,) = cluster.backbone_actors.values()
        start = time.perf_counter()
        sequential = [cluster.run(topology, q).text for q in questions]
        sequential_s = time.perf_counter() - start
        before = len(ray.get(actor.batch_sizes.remote()))
        start = time.perf_counter()
        refs = [cluster.submit(topology, q) for q in questions]
        concurrent = [r.text for ref in refs for r in ray.get(ref)]
        concurrent_s = time.perf_counter() - start
        batches = ray.get(actor.batch_sizes.remote())[before:]
    gain = sequential_s / concurrent_s
    print(f"sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s, gain {gain:.2f}x; "
          f"batch sizes while concurrent: {batches}")
    print(json.dumps({
        "prompts": len(questions), "sequential_s": round(sequential_s, 2), "concurrent_s": round(concurrent_s, 2),
        f"throughput_gain_{len(questions)}": round(gain, 2), "same_answers": sequential == concurrent,
        "max_batch": max(batches), "mean_batch": round(sum(batches) / len(batches), 2),
    }))


if __name__ == "__main__":
    main()
