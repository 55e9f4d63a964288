"""Accuracy of the demo system on held-out arithmetic, decided with paired statistics.

Every system answers the same test items (reasoning-gym ``basic_arithmetic``, held-out split, at the difficulty the
demo links were trained on: the ``data.options`` of ``examples/train-demo.yaml``):

- ``single``: the solver alone; ``text_r3``: the agents talking in text for 3 rounds (Recursive-TextMAS);
- ``latent_r1`` / ``latent_r3``: RecursiveMAS with the trained links; ``untrained_r3``: the same with freshly
  initialised links;
- ``swapped_r3``: latent r3 with the trained links, but every upstream agent (all but the decoder) reads another
  item's question (item ``(i + 1) % n``) while the decoder reads its own (``benchmarks/_swap.py``): if the links carry
  the upstream agents' work on the question, this falls well below latent r3;
- ``prompt_tuned``: the solver alone with a soft prompt of the links' parameter count, trained on the same rows and
  budget (``benchmarks/prompt_tuned.py``, ``--prompt-tuned DIR``); it shows whether the links learned
  collaboration or only a soft prompt.

Targets: latent r3 above single (exact McNemar ``p_latent_vs_single`` <= 0.05), above untrained, swapped and text
r3, and at least latent r1. Each cell appends its answers to ``OUT/cells/<cell>.jsonl`` batch by batch, so a rerun
with the same settings continues where it stopped.

Run: ``python benchmarks/accuracy.py [--topology sequential-demo] [--links DIR] [--limit 300] [--max-new-tokens 48]
[--prompt-tuned runs/prompt-tuned] [--cells single,latent_r3,...] [--out eval-results/accuracy]``. Last line: JSON
with ``acc_<cell>``, ``p_latent_vs_<cell>``, the target checks, and decoded tokens and wall time per item.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from recursivemas.cli import parse_mapping  # noqa: E402
from recursivemas.config import Topology, load_topology  # noqa: E402
from recursivemas.eval.datasets import load_eval_dataset  # noqa: E402
from recursivemas.eval.harness import ItemResult, evaluate, summarise  # noqa: E402
from recursivemas.eval.report import machine  # noqa: E402
from recursivemas.eval.stats import discordant, mcnemar_exact  # noqa: E402
from recursivemas.runtime import InProcess, RunOptions  # noqa: E402
from benchmarks._swap import swapped_items, swapped_topology  # noqa: E402
from recursivemas.train.config import load_train_config  # noqa: E402

DEMO_TRAINING = Path(__file__).resolve().parents[1] / "examples" / "train-demo.yaml"
CELLS = {  # name -> (mode, rounds, system); cheap and decisive cells first, so a stopped run has them
    "single": ("single", 1, "trained"),
    "latent_r3": ("latent", 3, "trained"),
    "untrained_r3": ("latent", 3, "untrained"),
    "latent_r1": ("latent", 1, "trained"),
    "prompt_tuned": ("single", 1, "prompt_tuned"),
    "text_r3": ("text", 3, "trained"),
    "swapped_r3": ("latent", 3, "swapped"),
}
P_KEYS = {"single": "p_latent_vs_single", "untrained_r3": "p_latent_vs_untrained", "text_r3": "p_latent_vs_text",
          "latent_r1": "p_latent_vs_r1", "prompt_tuned": "p_latent_vs_prompt_tuned",
          "swapped_r3": "p_latent_vs_swapped"}  # exact McNemar, latent r3 vs


def load_done(path: Path) -> list[ItemResult]:
    if not path.is_file():
        return []
    return [ItemResult(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def check_settings(out: Path, settings: dict) -> None:
    """A rerun continues only the run it belongs to: other items or settings need another ``--out``."""
    path = out / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        # a topology is compared as a topology: fields added since the run was written take their defaults
        same_topology = "topology" in saved and Topology.model_validate(saved["topology"]) == \
            Topology.model_validate(settings["topology"])
        changed = sorted(k for k in set(saved) | set(settings)
                         if saved.get(k) != settings.get(k) and not (k == "topology" and same_topology))
        if changed:
            raise SystemExit(f"{out} holds a run with other settings ({', '.join(changed)}); pass another --out "
                             "or delete it to start over")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def run_cell(make_runner, items, path: Path, mode: str, rounds: int, latent_steps: int | None, batch_size: int,
             desc: str) -> list[ItemResult]:
    """Answer ``items`` in one cell, appending each batch's results to ``path`` (a JSONL file), so a rerun answers
    only the items not there yet; the results, in item order. ``make_runner()`` is called only when items are left,
    so a finished cell loads nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(path)
    todo = items[len(done):]
    if todo:
        runner = make_runner()
        with tqdm(total=len(items), initial=len(done), desc=desc, unit="item") as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                options = RunOptions(latent_steps=latent_steps)
                got = evaluate(runner, batch, (mode,), (rounds,), options, len(batch)).items
                with path.open("a") as fh:
                    fh.writelines(json.dumps(asdict(r)) + "\n" for r in got)
                done.extend(got)
                bar.update(len(got))
    if [r.id for r in done] != [i.id for i in items]:
        raise SystemExit(f"{path}: its answers are not this run's items; delete it and rerun")
    return done


def systems_for(kind: str):
    """What loads each system: a local Ray cluster's actors, or this process."""
    if kind == "cluster":
        from recursivemas.cluster import Cluster

        return Cluster()
    return InProcess()


def soft_prompt_runner(topology, directory: str):
    from recursivemas.runtime import load_engines
    from recursivemas.train.prompt_tuning import SoftPrompt, SoftPromptRunner

    decoder = topology.agent(topology.decoder)
    spec = topology.model_copy(update={"backbones": {decoder.backbone: topology.backbones[decoder.backbone]}})
    engine = load_engines(spec)[decoder.backbone]
    return SoftPromptRunner(engine, topology, SoftPrompt.load(directory))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="sequential-demo")
    parser.add_argument("--links", help="trained links to score instead of the topology's (a `recursivemas train` "
                                         "output directory)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--latent-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataset-options", help="YAML mapping (default: the demo training's data.options)")
    parser.add_argument("--prompt-tuned", help="a soft prompt from benchmarks/prompt_tuned.py (else no such cell)")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(CELLS)}")
    parser.add_argument("--runner", choices=("local", "cluster"), default="local",
                        help="local: this process (default; on a small CPU Ray's low-priority workers starve beside "
                             "other work); cluster: a local Ray cluster's actors")
    parser.add_argument("--out", default="eval-results/accuracy")
    args = parser.parse_args(argv)
    options = (load_train_config(DEMO_TRAINING).data.options if args.dataset_options is None
               else parse_mapping(args.dataset_options, "--dataset-options"))
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        raise SystemExit(f"--cells: unknown {unknown}; use {', '.join(CELLS)}")
    if not args.prompt_tuned:
        cells = [c for c in cells if c != "prompt_tuned"]

    trained = load_topology(args.topology)
    if args.links:
        trained = trained.replace(links=str(Path(args.links).resolve()))
    trained = trained.replace(generation={**trained.generation.model_dump(), "max_new_tokens": args.max_new_tokens})
    systems = {"trained": trained, "untrained": trained.replace(links=None, name=f"{trained.name}-untrained"),
               "prompt_tuned": trained, "swapped": swapped_topology(trained)}
    items = load_eval_dataset("basic_arithmetic", limit=args.limit, seed=args.seed, options=options)
    out = Path(args.out)
    check_settings(out, {"topology": trained.to_dict(), "n": len(items), "seed": args.seed,
                         "dataset_options": options, "latent_steps": args.latent_steps,
                         "prompt_tuned": args.prompt_tuned})
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)

    results: dict[str, list[ItemResult]] = {}
    with systems_for(args.runner) as loaded, InProcess() as local:
        for name in cells:
            mode, rounds, system = CELLS[name]
            if system == "prompt_tuned":
                make = lambda: soft_prompt_runner(trained, args.prompt_tuned)  # noqa: E731
            else:  # the swapped system in-process even beside a cluster: a coordinator re-validates its topology
                host = local if system == "swapped" and not isinstance(loaded, InProcess) else loaded
                make = lambda host=host, system=system: host.system(systems[system])  # noqa: E731
            cell_items = swapped_items(items, trained) if system == "swapped" else items
            results[name] = run_cell(make, cell_items, out / "cells" / f"{name}.jsonl", mode, rounds,
                                     args.latent_steps, args.batch_size, name)

    summary = {name: summarise(CELLS[name][0], CELLS[name][1], rs) for name, rs in results.items()}
    acc = {f"acc_{k}": round(c.accuracy, 4) for k, c in summary.items()}
    paired = {}
    if "latent_r3" in results:
        mine = [r.correct for r in results["latent_r3"]]
        for other, key in P_KEYS.items():
            if other in results:
                theirs = [r.correct for r in results[other]]
                paired[key] = float(f"{mcnemar_exact(mine, theirs):.3g}")
                # (items only latent r3 gets right, items only the other gets right): what the test weighs
                paired[key.replace("p_", "discordant_", 1)] = list(discordant(mine, theirs))
    checks = {}
    a = acc.get("acc_latent_r3")
    if a is not None:
        for key, other, op in (("latent_r3_gt_single", "acc_single", ">"), ("latent_r3_gt_untrained_r3",
                               "acc_untrained_r3", ">"), ("latent_r3_gt_text_r3", "acc_text_r3", ">"),
                               ("latent_r3_gt_swapped_r3", "acc_swapped_r3", ">"),
                               ("latent_r3_ge_latent_r1", "acc_latent_r1", ">=")):
            if other in acc:
                checks[key] = a > acc[other] if op == ">" else a >= acc[other]
        if "p_latent_vs_single" in paired:
            checks["latent_r3_beats_single_p05"] = checks.get("latent_r3_gt_single", False) and \
                paired["p_latent_vs_single"] <= 0.05
    line = {"machine": machine(), "topology": trained.name, "dataset": "basic_arithmetic", "dataset_options": options,
            "n": len(items), "max_new_tokens": args.max_new_tokens, "latent_steps": args.latent_steps or
            trained.latent_steps, **acc, **paired, **checks,
            **{f"tokens_{k}": round(c.decoded_tokens_per_item, 1) for k, c in summary.items()},
            **{f"wall_s_{k}": round(c.wall_s_per_item, 3) for k, c in summary.items()}}
    (out / "results.json").write_text(json.dumps({"summary": line, "command": command,
                                                  "cells": {k: asdict(c) for k, c in summary.items()}}, indent=1))
    (out / "results.md").write_text(markdown(line, summary, command))
    print(json.dumps(line))
    return line


def markdown(line: dict, summary: dict, command: str) -> str:
    rows = [f"# {line['topology']}: {line['n']} held-out items\n", f"Machine: {line['machine']}.  ",
            f"Command: `{command}`\n",
            "| cell | mode | rounds | accuracy | latent r3 wins / losses | p (latent r3 vs) | wall s / item | "
            "decoded tokens / item |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in summary.items():
        key = P_KEYS.get(name)
        p = f"{line[key]:.3g}" if key in line else ""
        split = " / ".join(map(str, line[key.replace("p_", "discordant_", 1)])) if key in line else ""
        rows.append(f"| {name} | {c.mode} | {c.rounds} | {c.accuracy:.3f} | {split} | {p} | {c.wall_s_per_item:.2f} | "
                    f"{c.decoded_tokens_per_item:.1f} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
