"""What batching can buy on a CPU: one generation and one latent rollout over 1 row against 8 rows, at 1 and at
2 intra-op threads, on the real SmolLM2-135M.

Serving gains from batching only as far as 8 rows cost less than 8 times 1 row. On one thread a CPU forward is
already close to compute-bound, so the serve load benchmark's gain depends on the threads each backbone replica gets
(``torch_threads`` in the serve config; docs/benchmarks.md).

Run: ``python benchmarks/batch_scaling.py [--threads 1,2] [--max-new-tokens 8] [--latent-steps 4]``. Last line:
JSON with ``gen_cost_8_over_1_t{N}`` and ``rollout_cost_8_over_1_t{N}`` (the time of 8 rows over the time of 1 row;
8.0 would mean batching buys nothing) and the seconds behind them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import QUESTIONS, best_of  # noqa: E402
from recursivemas.engine import BackboneEngine, Prompt, Sampling  # noqa: E402
from recursivemas.model_zoo import resolve_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--latent-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    engine = BackboneEngine.load(resolve_model("smollm2-135m-instruct"))
    out: dict[str, float | str] = {"device": "cpu", "model": "smollm2-135m-instruct"}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        seconds = {}
        for rows in (1, 8):
            prompts = [Prompt([QUESTIONS[0]])] * rows
            engine.generate(prompts, Sampling(max_new_tokens=args.max_new_tokens))  # warm-up
            seconds["gen", rows] = best_of(args.repeats, engine.generate, prompts,
                                           max_new_tokens=args.max_new_tokens, temperature=0.0)
            seconds["rollout", rows] = best_of(args.repeats, engine.rollout, prompts, args.latent_steps, None)
            print(f"threads {threads}, {rows} row(s): generate {seconds['gen', rows]:.3f} s, "
                  f"rollout {seconds['rollout', rows]:.3f} s", flush=True)
        for kind in ("gen", "rollout"):
            out[f"{kind}_s_1_t{threads}"] = round(seconds[kind, 1], 3)
            out[f"{kind}_s_8_t{threads}"] = round(seconds[kind, 8], 3)
            out[f"{kind}_cost_8_over_1_t{threads}"] = round(seconds[kind, 8] / seconds[kind, 1], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
