"""A change to the runtime, measured: each runtime benchmark on an older commit and on this tree, back to back.

For refactors that must not cost speed (issue 13's typed boundary): ``cluster_overhead.py``, ``concurrency.py`` and
``serve_load.py`` run first in a git worktree of ``--before`` and then here, one pair after the other on the same
machine, so the load of the machine moves both alike. Also checked:
- ``same_answers``: this tree's greedy answers on the first ``--items`` test items, latent r3 and text r3, against
  the answers an earlier ``benchmarks/accuracy.py`` run wrote (``--answers``, made before the change);
- ``eval_runner``: ``recursivemas eval`` on 16 items in this process (the default) and on a local Ray cluster.

Run: ``python benchmarks/before_after.py --before <commit> [--answers eval-results/accuracy-300]``. Prints one JSON
line per measurement, then a JSON summary as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {
    "cluster_overhead": ["benchmarks/cluster_overhead.py"],
    "concurrency": ["benchmarks/concurrency.py", "--latent-steps", "16", "--max-new-tokens", "32"],
    "serve_load": ["benchmarks/serve_load.py", "--requests", "48", "--latent-steps", "4", "--max-tokens", "8"],
}
KEYS = {"cluster_overhead": ["cluster_over_inprocess"], "concurrency": ["throughput_gain_8"],
        "serve_load": ["throughput_c1", "throughput_c8", "throughput_gain_c8"]}
OPTIONS = '{min_terms: 2, max_terms: 3, max_digits: 1, operators: ["+", "-"], allow_parentheses: false, ' \
          'allow_negation: false}'


def last_json(tree: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit(line: dict) -> dict:
    print(json.dumps(line), flush=True)
    return line


def same_answers(answers: Path, items: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "benchmarks/accuracy.py", "--limit", str(items), "--cells",
                        "latent_r3,text_r3", "--out", out], cwd=ROOT, check=True, capture_output=True)
        found = {}
        for cell in ("latent_r3", "text_r3"):
            new = [json.loads(x) for x in (Path(out) / "cells" / f"{cell}.jsonl").read_text().splitlines()]
            old = [json.loads(x) for x in (answers / "cells" / f"{cell}.jsonl").read_text().splitlines()][:len(new)]
            found[cell] = {"items": len(new), "same_ids": [r["id"] for r in new] == [r["id"] for r in old],
                           "same_text": sum(a["text"] == b["text"] for a, b in zip(new, old))}
    return found


def eval_wall(cluster: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "recursivemas.cli", "eval", "--dataset", "basic_arithmetic",
                        "--limit", "16", "--mode", "latent", "--rounds", "1", "--dataset-options", OPTIONS,
                        "--out", out, *(["--cluster"] if cluster else [])], cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - began
        accuracy = json.loads((Path(out) / "results.json").read_text())["cells"][0]["accuracy"]
    return {"wall_s": round(wall, 1), "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare with (e.g. the parent of a refactor)")
    parser.add_argument("--answers", default="eval-results/accuracy-300",
                        help="an accuracy.py run made before the change (its cells/*.jsonl)")
    parser.add_argument("--items", type=int, default=16)
    args = parser.parse_args()
    summary: dict = {"before": args.before}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for name, bench in BENCHES.items():
                old = emit({"bench": name, "tree": "before", "result": last_json(before, bench)})["result"]
                new = emit({"bench": name, "tree": "after", "result": last_json(ROOT, bench)})["result"]
                for key in KEYS[name]:
                    summary[f"{name}.{key}"] = {"before": old[key], "after": new[key],
                                                "after_over_before": round(new[key] / old[key], 3)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    summary["same_answers"] = emit({"bench": "same_answers", **same_answers(ROOT / args.answers, args.items)})
    summary["eval_runner"] = emit({"bench": "eval_runner", "local": eval_wall(False), "cluster": eval_wall(True)})
    summary["same_answers"].pop("bench")
    summary["eval_runner"].pop("bench")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
