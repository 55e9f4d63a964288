"""KV-cached latent rollout against the reference recompute-every-step rollout, and one latent step against one
cached text-decode step at the same context, on the real SmolLM2-135M.

On a CPU a cached single-position step is bound by reading the weights (~0.4 GB in float32 for SmolLM2), while a
recompute costs compute per position, so the speedup grows with the context: report it at the context a run sees.

Run: ``python benchmarks/rollout.py [--model smollm2-135m-instruct] [--repeats 3]``. Prints a table, then one JSON
line with ``kv_speedup_m{16,48,80}`` and ``latent_step_over_decode_step``. Candidate and baseline run side by side,
interleaved, in this process; each figure is the best of ``--repeats`` runs, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import best_of  # noqa: E402
from benchmarks._reference import recompute_rollout  # noqa: E402
from recursivemas.engine import BackboneEngine, Prompt, Sampling  # noqa: E402
from recursivemas.links import InnerLink  # noqa: E402
from recursivemas.model_zoo import resolve_model  # noqa: E402
from recursivemas.prompts import ROLE_PROMPTS, Slot, render  # noqa: E402

QUESTION = "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30. How many are left?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", default="16,48,80")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--handoff-steps", type=int, default=32, help="latents in the headline prompt's slot")
    args = parser.parse_args()

    engine = BackboneEngine.load(resolve_model(args.model), dtype=args.dtype, device=args.device, name=args.model)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale).to(engine.device)
    # The context a rollout sees in a run: every agent turn but the very first (round 1's first agent) has a
    # teammate's hand-off in its slot. The headline uses that shape (the critic's prompt holding the planner's
    # hand-off of --handoff-steps latents); `_bare` keys use the first agent's question-only prompt.
    handoff = torch.randn(args.handoff_steps, engine.hidden_size) * engine.embedding_scale
    pieces = render(ROLE_PROMPTS["critic"], QUESTION, {"inputs": ["planner"]})
    prompt = Prompt([handoff if isinstance(p, Slot) else p for p in pieces])
    bare = Prompt(render(ROLE_PROMPTS["planner"], QUESTION, {}))
    context = engine.count_tokens(prompt)
    result: dict[str, float | int | str] = {
        "model": args.model, "device": str(engine.device), "dtype": args.dtype,
        "prompt_positions": context, "bare_prompt_positions": engine.count_tokens(bare),
    }
    engine.rollout([prompt], 4, link)  # warm-up
    print(f"{'prompt':>8} {'m':>4} {'kv cached s':>12} {'recompute s':>12} {'speedup':>8}")
    cases = [("", prompt, m) for m in (int(s) for s in args.steps.split(","))] + [("_bare", bare, 48)]
    for suffix, case, m in cases:
        kv = best_of(args.repeats, lambda c=case, m=m: engine.rollout([c], m, link))
        ref = best_of(args.repeats, lambda c=case, m=m: recompute_rollout(engine, c, m, link))
        result[f"kv_speedup_m{m}{suffix}"] = round(ref / kv, 2)
        print(f"{engine.count_tokens(case):>8} {m:>4} {kv:>12.3f} {ref:>12.3f} {ref / kv:>8.2f}")

    # Per-step cost at the same context: (n+1 steps - 1 step) / n for both loops, prefill cancels out.
    n = 64
    eos, engine.eos_ids = engine.eos_ids, set()  # decode exactly n tokens for timing
    latent = (best_of(args.repeats, lambda: engine.rollout([prompt], n + 1, link))
              - best_of(args.repeats, lambda: engine.rollout([prompt], 1, link))) / n
    decode = (best_of(args.repeats, lambda: engine.generate([prompt], Sampling(max_new_tokens=n + 1)))
              - best_of(args.repeats, lambda: engine.generate([prompt], Sampling(max_new_tokens=1)))) / n
    engine.eos_ids = eos
    result["latent_step_ms"] = round(latent * 1e3, 3)
    result["decode_step_ms"] = round(decode * 1e3, 3)
    result["latent_step_over_decode_step"] = round(latent / decode, 3)
    print(f"latent step {latent * 1e3:.2f} ms, decode step {decode * 1e3:.2f} ms at context ~{context}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
