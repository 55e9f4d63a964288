"""RecursiveMAS (latent) against Recursive-TextMAS (text) end to end: same agents, prompts, rounds and budgets.

Text messages are capped at the same ``max_new_tokens`` as the final answer. For each round count both modes run on
the same questions, interleaved in this process; the figures are the sums over questions.

Run: ``python benchmarks/latent_vs_text.py [--topology sequential-demo|FILE] [--questions 2] [--rounds 1,2,3]``.
By default all three roles use SmolLM2-135M (``--topology smol``); ``--topology sequential-demo`` runs the README's
two-family demo. Last line: JSON with ``speedup_r{n}`` (text wall time / latent wall time) and
``token_reduction_r{n}`` (1 - latent decoded tokens / text decoded tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import QUESTIONS, smol_topology  # noqa: E402
from recursivemas.config import load_topology  # noqa: E402
from recursivemas.runtime import RunOptions, load_system  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="smol")
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--rounds", default="1,2,3")
    parser.add_argument("--latent-steps", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    if args.topology == "smol":
        topology = smol_topology(args.latent_steps, args.max_new_tokens)
    else:
        topology = load_topology(args.topology)
        generation = {**topology.generation.model_dump(), "max_new_tokens": args.max_new_tokens}
        topology = topology.replace(latent_steps=args.latent_steps, generation=generation)
    system = load_system(topology)
    questions = QUESTIONS[: args.questions]
    system.run(questions[0], RunOptions(mode="latent", rounds=1))  # warm-up
    result: dict[str, object] = {"topology": topology.name, "questions": len(questions),
                                 "latent_steps": topology.latent_steps, "max_new_tokens": args.max_new_tokens}
    header = ("rounds", "latent s", "text s", "speedup", "latent tok", "text tok", "reduction")
    print(" ".join(f"{h:>10}" for h in header))
    for rounds in (int(r) for r in args.rounds.split(",")):
        totals = {"latent": [0.0, 0], "text": [0.0, 0]}
        for question in questions:
            for mode in ("latent", "text"):
                run = system.run(question, RunOptions(mode=mode, rounds=rounds))
                totals[mode][0] += run.wall_s
                totals[mode][1] += run.totals.decoded_tokens
        (lat_s, lat_tok), (txt_s, txt_tok) = totals["latent"], totals["text"]
        speedup, reduction = txt_s / lat_s, 1 - lat_tok / max(txt_tok, 1)
        result[f"speedup_r{rounds}"] = round(speedup, 2)
        result[f"token_reduction_r{rounds}"] = round(reduction, 3)
        result[f"decoded_tokens_r{rounds}"] = {"latent": lat_tok, "text": txt_tok}
        row = (rounds, f"{lat_s:.2f}", f"{txt_s:.2f}", f"{speedup:.2f}", lat_tok, txt_tok, f"{reduction:.3f}")
        print(" ".join(f"{c:>10}" for c in row))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
