"""What link training costs against full fine-tuning of the same backbone: trainable parameters, peak memory, step time.

Both run on SmolLM2-135M in the sequential pattern (all three roles on the one backbone), 2 rounds, batch 1,
``max_latent_tokens`` 16, each in its own fresh subprocess so that peak memory (the process's peak resident set on CPU,
``torch.cuda.max_memory_allocated`` on GPU) is not shared:
- ``links``: stage 2, AdamW on the outer links only, gradients through the frozen backbone;
- ``full_ft``: the same unrolled loss, AdamW on every backbone weight too (the baseline, only here).
Both recompute each backbone call in backward (gradient checkpointing, the trainer's default) unless
``--no-gradient-checkpointing``.

Run: ``python benchmarks/train_memory.py [--steps 3]``. Last line: JSON with ``trainable_fraction`` (link parameters /
backbone parameters; target <= 0.01) and ``peak_mem_over_full_ft`` (target <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(mode: str, steps: int, checkpointing: bool) -> dict:
    import torch

    from benchmarks._common import QUESTIONS, smol_topology
    from recursivemas.runtime import build_links, load_engines
    from recursivemas.train.outer import outer_parameters, unroll_loss

    topology = smol_topology(rounds=2)
    engines = load_engines(topology)
    engines["smol"].gradient_checkpointing = checkpointing  # as the trainer does (outer.gradient_checkpointing)
    links = build_links(topology, engines)
    params = outer_parameters(links)
    backbone = engines["smol"].model
    if mode == "full_ft":
        backbone.requires_grad_(True)
        params = params + list(backbone.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = unroll_loss(topology, engines, links, QUESTIONS[step % len(QUESTIONS)], "The answer is 12.",
                           {"planner": "Add, then subtract.", "critic": "Check each step."}, max_latent_tokens=16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode, "trainable": sum(p.numel() for p in params),
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "peak_rss_mb": peak_rss / 1024, "train_peak_over_loaded_mb": (peak_rss - baseline_rss) / 1024,
        "step_s": min(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="keep every backbone call's activations (both modes; the trainer checkpoints by default)")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # set in the subprocesses
    args = parser.parse_args()
    checkpointing = not args.no_gradient_checkpointing
    if args.mode:
        print(json.dumps(measure(args.mode, args.steps, checkpointing)))
        return
    results = {}
    for mode in ("links", "full_ft"):
        extra = [] if checkpointing else ["--no-gradient-checkpointing"]
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), *extra],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:>8}: {r['trainable']:>12,} trainable, peak RSS {r['peak_rss_mb']:8.0f} MB "
              f"(+{r['train_peak_over_loaded_mb']:.0f} MB while training), step {r['step_s']:.2f} s")
    links, full = results["links"], results["full_ft"]
    print(json.dumps({
        "device": "cpu", "gradient_checkpointing": checkpointing,
        "trainable_params": links["trainable"], "backbone_params": links["backbone_params"],
        "trainable_fraction": round(links["trainable"] / links["backbone_params"], 5),
        "peak_mem_mb": round(links["peak_rss_mb"]), "peak_mem_full_ft_mb": round(full["peak_rss_mb"]),
        "peak_mem_over_full_ft": round(links["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "step_s": round(links["step_s"], 3), "step_s_full_ft": round(full["step_s"], 3),
    }))


if __name__ == "__main__":
    main()
