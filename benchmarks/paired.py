"""Two systems' answers on the same items, compared with an exact McNemar test.

``benchmarks/accuracy.py`` pairs every cell with latent r3 of one set of links. To compare two sets of links (or
any two cells of two runs, e.g. links trained on procedural and on sampled solutions), point this at their cell
files: ``python benchmarks/paired.py eval-results/accuracy-300/cells/latent_r3.jsonl
eval-results/accuracy-300-sampled/cells/latent_r3.jsonl``. The files must hold the same items in the same order.
Last line: JSON with ``n``, ``acc_a``, ``acc_b``, ``p`` and ``discordant`` (items only A gets right, only B).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recursivemas.eval.stats import discordant, mcnemar_exact  # noqa: E402


def answers(path: str) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def compare(a: list[dict], b: list[dict]) -> dict:
    ids_a, ids_b = [r["id"] for r in a], [r["id"] for r in b]
    if ids_a != ids_b:
        first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(a), len(b)))
        raise SystemExit(f"the files do not hold the same items in the same order ({len(a)} and {len(b)} items; "
                         f"first difference at item {first}); compare cells of runs with the same --limit and --seed")
    mine, theirs = [bool(r["correct"]) for r in a], [bool(r["correct"]) for r in b]
    return {"n": len(a), "acc_a": round(sum(mine) / len(a), 4), "acc_b": round(sum(theirs) / len(b), 4),
            "p": float(f"{mcnemar_exact(mine, theirs):.3g}"), "discordant": list(discordant(mine, theirs))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("a", help="a cell's JSONL (OUT/cells/<cell>.jsonl of benchmarks/accuracy.py)")
    parser.add_argument("b", help="another cell's JSONL, on the same items")
    args = parser.parse_args()
    print(json.dumps({"a": args.a, "b": args.b, **compare(answers(args.a), answers(args.b))}))


if __name__ == "__main__":
    main()
