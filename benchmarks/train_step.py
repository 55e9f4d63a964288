"""What one stage-2 row costs on the demo topology, for each forcing and gradient mode, side by side in one run.

Each mode unrolls the same held-out row (3 rounds: 8 agent turns and the decoder's target) and back-propagates
into the outer links; the forward (the unroll, rollouts included) and the backward are timed apart, best of
``--repeats``, so the JSON says what dominates a step. ``role_text`` teacher-forces upstream agents on the worked
solution (the old recipe's cost; its hand-offs leak the answer), ``rollout_truncated`` and ``rollout_full`` hand
on real rollouts.

Then a step of ``--batch-size`` held-out rows under the training default (rollout, truncated), its rows unrolled
together (one backbone call per agent turn, as ``train_outer`` does) and one by one: ``batch_speedup`` is the
ratio of their samples/s.

Run: ``python benchmarks/train_step.py [--latent-steps 8] [--repeats 2] [--threads 2] [--batch-size 4]``. Last
line: JSON with ``samples_per_s_<mode>``, ``forward_s_<mode>`` / ``backward_s_<mode>``,
``samples_per_s_rows_batched`` / ``samples_per_s_rows_one_by_one`` and ``batch_speedup``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from recursivemas.config import load_topology  # noqa: E402
from recursivemas.runtime import build_links, load_engines  # noqa: E402
from recursivemas.train.config import load_train_config  # noqa: E402
from recursivemas.train.outer import UnrollRow, outer_parameters, unroll_loss, unroll_losses  # noqa: E402
from recursivemas.train.setup import load_rows  # noqa: E402

DEMO_TRAINING = Path(__file__).resolve().parents[1] / "examples" / "train-demo.yaml"
MODES = {"role_text": ("role_text", "truncated"), "rollout_truncated": ("rollout", "truncated"),
         "rollout_full": ("rollout", "full")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latent-steps", type=int, default=8)
    parser.add_argument("--max-latent-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_train_config(DEMO_TRAINING)
    topology = load_topology(config.topology).replace(links=None)
    engines = load_engines(topology)
    for engine in engines.values():
        engine.gradient_checkpointing = args.gradient_checkpointing
    links = build_links(topology, engines)
    params = outer_parameters(links, topology)
    row = load_rows(config.data, "heldout", 1)[0]
    solution = row.target("solution")
    roles = {a.name: solution for a in topology.agents}
    out = {"topology": topology.name, "rounds": topology.rounds, "latent_steps": args.latent_steps,
           "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing}
    for name, (forcing, gradient) in MODES.items():
        forward, backward = [], []
        for _ in range(args.repeats):
            began = time.perf_counter()
            loss = unroll_loss(topology, engines, links, row.question, solution, roles, args.max_latent_tokens,
                               forcing=forcing, gradient=gradient, latent_steps=args.latent_steps)
            middle = time.perf_counter()
            loss.backward()
            forward.append(middle - began)
            backward.append(time.perf_counter() - middle)
            for p in params:
                p.grad = None
        best = min(f + b for f, b in zip(forward, backward))
        out.update({f"forward_s_{name}": round(min(forward), 2), f"backward_s_{name}": round(min(backward), 2),
                    f"samples_per_s_{name}": round(1 / best, 3)})
    rows = [UnrollRow(r.question, r.target("solution")) for r in load_rows(config.data, "heldout", args.batch_size)]
    for name, groups in (("rows_one_by_one", [[r] for r in rows]), ("rows_batched", [rows])):
        seconds = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            for group in groups:  # a backward per group: the same compute as one for the step
                (unroll_losses(topology, engines, links, group, latent_steps=args.latent_steps).sum()
                 / len(rows)).backward()
            seconds.append(time.perf_counter() - began)
            for p in params:
                p.grad = None
        out[f"samples_per_s_{name}"] = round(len(rows) / min(seconds), 3)
    out["batch_size"] = len(rows)
    out["batch_speedup"] = round(out["samples_per_s_rows_batched"] / out["samples_per_s_rows_one_by_one"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
