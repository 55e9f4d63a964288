"""Do the trained links carry information? The channel benchmark, where the facts are where the decoder is not.

Two tasks (:mod:`recursivemas.train.channel`), each on the held-out split of its generator, every cell on the same
items. Only the first agent's template names ``{context}``, so what the solver knows of it comes through the
hand-offs or not at all:

- ``recall``: ``examples/channel/recall-pair.yaml`` (reader -> solver, 1 round) on ``channel_recall`` ("Mira's
  locker code is 47." / "What is Mira's locker code?"); the trained cell is ``latent_r1``;
- ``operands``: ``examples/channel/operands-chain.yaml`` (planner(context) -> critic -> solver, 3 rounds) on
  ``channel_operands`` ("k = 3, q = 8" / "What is k - q?"); the trained cell is ``latent_r3``.

Cells:

- ``blind``: the solver alone (mode single), without the context: its template names no field;
- ``oracle``: the solver alone WITH the context (its template plus a line ``Context: {context}``) and a soft prompt
  of the links' parameter count trained on the links' rows and budget (:mod:`recursivemas.train.prompt_tuning`):
  the ceiling a channel could reach;
- ``soft_prompt_blind``: the same soft prompt trained and run on the solver's own template, without the context: a
  learned constant of the links' size, which can learn the task's format but not an item's facts;
- ``text``: the agents exchanging text (mode text, the topology's rounds);
- ``latent_r1`` / ``latent_r3``: the trained links, latent mode at 1 and 3 rounds (for the recall pair r3 is
  rounds=3, its feedback link included);
- ``untrained``: fresh links, latent at the task's rounds;
- ``swapped``: the trained links at the task's rounds, but every upstream agent reads item ``(i + 1) % n``'s context
  and question while the decoder reads item ``i``'s question (``benchmarks/_swap.py``): only the upstream agents
  name ``{context}``, so the decoder answers its own question from the hand-offs about another item's facts.

Each cell appends its answers to ``OUT/<task>/cells/<cell>.jsonl`` batch by batch, so a rerun with the same
settings continues where it stopped (other settings need another ``--out``). The soft prompts are trained once,
into ``OUT/<task>/soft_prompt_oracle`` and ``OUT/<task>/soft_prompt_blind``. A links directory that does not exist
yet skips the trained cells (latent_r1, latent_r3, swapped) with a message, so blind, oracle and the other untrained
cells can run while training is still going; the links a task's trained cells were answered with are recorded
(``OUT/<task>/links.json``) and other links are refused.

Targets (from the issue): recall ``latent_r1`` >= 0.8 and >= 0.8 x oracle, above blind, soft_prompt_blind,
untrained and swapped each at exact McNemar p <= 0.001; operands ``latent_r3`` >= 0.5 x oracle, above blind,
soft_prompt_blind and swapped at p <= 0.001, and at least text's accuracy at >= 3x less wall time per item.

Run: ``python benchmarks/channel.py --task recall|operands|both [--recall-links DIR] [--operands-links DIR]
[--limit 300] [--cells blind,oracle,...] [--soft-prompt-steps N] [--out eval-results/channel]``. Last line: JSON
with ``<task>_<cell>`` accuracies, ``<task>_p_vs_<cell>`` and ``<task>_discordant_vs_<cell>`` (the trained cell
against each other cell), ``<task>_wall_s_<cell>`` per item, ``<task>_n`` and the ``<task>_target_*`` checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._swap import swapped_items, swapped_topology  # noqa: E402
from benchmarks.accuracy import check_settings, load_done, run_cell  # noqa: E402
from benchmarks.prompt_tuned import soft_prompt_rows, train_matched  # noqa: E402
from recursivemas import prompts  # noqa: E402
from recursivemas.config import Topology, load_topology  # noqa: E402
from recursivemas.eval.datasets import load_eval_dataset  # noqa: E402
from recursivemas.eval.harness import ItemResult, summarise  # noqa: E402
from recursivemas.eval.report import machine  # noqa: E402
from recursivemas.eval.stats import discordant, mcnemar_exact  # noqa: E402
from recursivemas.links.io import WEIGHTS_FILE  # noqa: E402
from recursivemas.runtime import InProcess  # noqa: E402
from recursivemas.train.config import TrainConfig, load_train_config  # noqa: E402
from recursivemas.train.data import resolve_targets  # noqa: E402
from recursivemas.train.outer import used_edges  # noqa: E402
from recursivemas.train.prompt_tuning import MANIFEST, SoftPrompt, SoftPromptRunner  # noqa: E402
from recursivemas.train.setup import load_rows  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "channel"
TASKS = {  # task -> (dataset, default train config, the trained cell, the task's rounds)
    "recall": ("channel_recall", EXAMPLES / "train-recall.yaml", "latent_r1", 1),
    "operands": ("channel_operands", EXAMPLES / "train-operands.yaml", "latent_r3", 3),
}
CELLS = ("blind", "latent_r1", "latent_r3", "swapped", "untrained", "oracle", "soft_prompt_blind", "text")
TRAINED = ("latent_r1", "latent_r3", "swapped")  # the cells that need the trained links
SOFT = {"oracle": "soft_prompt_oracle", "soft_prompt_blind": "soft_prompt_blind"}  # cell -> its cache under OUT/task
CONTEXT = "context"
P_MAX = 0.001


def cell_plan(cell: str, task_rounds: int) -> tuple[str, int]:
    """(mode, rounds) of a cell."""
    if cell in ("blind", "oracle", "soft_prompt_blind"):
        return "single", 1
    if cell in ("latent_r1", "latent_r3"):
        return "latent", int(cell[-1])
    return ("text" if cell == "text" else "latent"), task_rounds


def with_context(topology: Topology) -> Topology:
    """The topology whose decoder's template also reads the context: a line ``Context: {context}`` before its
    question line (named ``<name>-oracle``)."""
    doc = topology.to_dict()
    for agent in doc["agents"]:
        if agent["name"] != topology.decoder:
            continue
        for key in ("prompt", "later_prompt"):
            if agent.get(key) is None:
                continue
            template = prompts.resolve_template(agent[key])
            if CONTEXT in prompts.placeholders(template):
                continue
            lines = template.splitlines(keepends=True)
            at = next((i for i, line in enumerate(lines) if prompts.QUESTION in prompts.placeholders(line)), 0)
            lines.insert(at, "Context: {context}\n")
            agent[key] = "".join(lines)
    doc["name"] = f"{topology.name}-oracle"
    return Topology.model_validate(doc)


def links_state(directory: Path | None) -> str | None:
    """The sha256 of a links directory's weights, or None when there are none (yet)."""
    if directory is None or not (directory / WEIGHTS_FILE).is_file():
        return None
    digest = hashlib.sha256()
    with (directory / WEIGHTS_FILE).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_links(out: Path, flag: str, directory: Path, digest: str, done_trained: bool) -> None:
    """The trained cells of ``out`` continue only with the links they were answered with."""
    path = out / "links.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["sha256"] != digest and done_trained:
            raise SystemExit(f"{flag} {directory}: these links (sha256 {digest[:12]}) are not the ones the trained "
                             f"cells in {out / 'cells'} were answered with ({saved['path']}, sha256 "
                             f"{saved['sha256'][:12]}); pass another --out, or delete "
                             f"{', '.join(f'{c}.jsonl' for c in TRAINED)} there to score these links")
    path.write_text(json.dumps({"path": str(directory), "sha256": digest}, indent=1) + "\n")


def decoder_targets(config: TrainConfig, topology: Topology, rows) -> list[str]:
    """What the links' training teacher-forces on the decoder for each row (its working; the answer if none)."""
    mapping = dict(config.targets)
    if config.data.solutions:
        mapping.setdefault(topology.decoder, "solution")
    field = resolve_targets([a.name for a in topology.agents], topology.decoder, mapping)[topology.decoder]
    return [row.target(field) or row.answer for row in rows]


def soft_prompt(directory: Path, engine, topology: Topology, config: TrainConfig, link_parameters: int,
                steps: int, desc: str) -> SoftPrompt:
    """The soft prompt cached in ``directory``, else trained on the config's rows (their fields reach the template
    where it names them) and saved there."""
    if (directory / MANIFEST).is_file():
        return SoftPrompt.load(directory)
    rows = load_rows(config.data)
    train_rows = soft_prompt_rows(topology, rows, decoder_targets(config, topology, rows))
    soft, losses = train_matched(engine, topology, train_rows, link_parameters, config.outer, config.seed, steps,
                                 desc)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    soft.save(partial, {"decoder": topology.decoder, "topology": topology.name, "steps": steps,
                        "link_parameters": link_parameters, "losses": losses})
    os.replace(partial, directory)  # a run stopped while saving leaves no half cache
    return soft.eval()


def run_task(task: str, args, loaded, cells: list[str]) -> dict:
    dataset, default_config, main_cell, task_rounds = TASKS[task]
    config = load_train_config(getattr(args, f"{task}_config") or default_config)
    base = load_topology(config.topology)
    generation = base.generation.model_dump()
    if args.max_new_tokens is not None:
        generation["max_new_tokens"] = args.max_new_tokens
    base = base.replace(links=None, generation=generation)
    untrained = base.replace(name=f"{base.name}-untrained")
    flag = f"--{task}-links"
    links_dir = Path(getattr(args, f"{task}_links") or config.output).resolve()
    digest = links_state(links_dir)
    trained = base.replace(links=str(links_dir)) if digest else None
    steps = config.outer.steps if args.soft_prompt_steps is None else args.soft_prompt_steps

    items = load_eval_dataset(dataset, limit=args.limit, seed=args.seed)
    out = Path(args.out) / task
    check_settings(out, {"topology": base.to_dict(), "dataset": dataset, "n": len(items), "seed": args.seed,
                         "latent_steps": args.latent_steps, "soft_prompt_steps": steps,
                         "train_data": config.data.model_dump(mode="json"),
                         "train_outer": config.outer.model_dump(mode="json"), "train_seed": config.seed})
    wanted = list(cells)
    if trained is None:
        skipped = [c for c in wanted if c in TRAINED]
        if skipped:
            print(f"{task}: no trained links at {links_dir} (no {WEIGHTS_FILE}): skipping {', '.join(skipped)}. "
                  f"Train them with `recursivemas train --config {config_path(args, task)}` (they go to "
                  f"{config.output}) or pass {flag} DIR", file=sys.stderr)
        wanted = [c for c in wanted if c not in TRAINED]
    else:
        done_trained = any(load_done(out / "cells" / f"{c}.jsonl") for c in TRAINED)
        check_links(out, flag, links_dir, digest, done_trained)

    def link_parameters() -> int:
        links = loaded.system(untrained).links  # fresh links have the trained ones' shapes
        return sum(p.numel() for src, dst in used_edges(base) for p in links.outer_link(src, dst).parameters())

    def soft_runner(cell: str):
        topology = with_context(base) if cell == "oracle" else base
        engine = loaded.system(untrained).backends[base.agent(base.decoder).backbone].engine
        soft = soft_prompt(out / SOFT[cell], engine, topology, config, link_parameters(), steps, f"{task} {cell}")
        return SoftPromptRunner(engine, topology, soft)

    makers = {
        "blind": lambda: loaded.system(untrained), "text": lambda: loaded.system(untrained),
        "untrained": lambda: loaded.system(untrained),
        "latent_r1": lambda: loaded.system(trained), "latent_r3": lambda: loaded.system(trained),
        "swapped": lambda: loaded.system(swapped_topology(trained)),
        "oracle": lambda: soft_runner("oracle"), "soft_prompt_blind": lambda: soft_runner("soft_prompt_blind"),
    }
    results: dict[str, list[ItemResult]] = {}
    for cell in wanted:
        mode, rounds = cell_plan(cell, task_rounds)
        # swapped: item i's upstream agents read item (i + 1) % n's question and context, its decoder its own
        cell_items = swapped_items(items, trained) if cell == "swapped" else items
        results[cell] = run_cell(makers[cell], cell_items, out / "cells" / f"{cell}.jsonl", mode, rounds,
                                 args.latent_steps, args.batch_size, f"{task} {cell}")
    return summary_of(task, main_cell, results, len(items), out)


def config_path(args, task: str) -> Path:
    return Path(getattr(args, f"{task}_config") or TASKS[task][1])


def summary_of(task: str, main_cell: str, results: dict[str, list[ItemResult]], n: int, out: Path) -> dict:
    summary = {c: summarise(*cell_plan(c, TASKS[task][3]), rs) for c, rs in results.items()}
    line: dict = {f"{task}_n": n, **{f"{task}_{c}": round(s.accuracy, 4) for c, s in summary.items()}}
    if main_cell in results:
        mine = [r.correct for r in results[main_cell]]
        for other, rs in results.items():
            if other != main_cell:
                theirs = [r.correct for r in rs]
                line[f"{task}_p_vs_{other}"] = float(f"{mcnemar_exact(mine, theirs):.3g}")
                # (items only the trained cell gets right, items only the other gets right): what the test weighs
                line[f"{task}_discordant_vs_{other}"] = list(discordant(mine, theirs))
    line.update({f"{task}_wall_s_{c}": round(s.wall_s_per_item, 3) for c, s in summary.items()})
    line.update({f"{task}_tokens_{c}": round(s.decoded_tokens_per_item, 1) for c, s in summary.items()})
    line.update(targets(task, main_cell, line))
    (out / "results.json").write_text(json.dumps({"summary": line, "cells": {c: asdict(s) for c, s in
                                                                             summary.items()}}, indent=1) + "\n")
    return line


def targets(task: str, main: str, line: dict) -> dict:
    """The issue's target checks that this run's cells can decide; ``<task>_targets_undecided`` names the rest."""
    acc = line.get(f"{task}_{main}")
    checks: dict[str, bool] = {}
    undecided: list[str] = []

    def check(name: str, needs: list[str], decide) -> None:
        if acc is None or any(f"{task}_{c}" not in line for c in needs):
            undecided.append(name)
        else:
            checks[f"{task}_target_{name}"] = bool(decide())

    def beats(other: str) -> bool:
        return acc > line[f"{task}_{other}"] and line[f"{task}_p_vs_{other}"] <= P_MAX

    if task == "recall":
        check("acc_ge_0.8", [], lambda: acc >= 0.8)
        check("ge_0.8x_oracle", ["oracle"], lambda: acc >= 0.8 * line[f"{task}_oracle"])
        rivals = ["blind", "soft_prompt_blind", "untrained", "swapped"]
    else:
        check("ge_0.5x_oracle", ["oracle"], lambda: acc >= 0.5 * line[f"{task}_oracle"])
        rivals = ["blind", "soft_prompt_blind", "swapped"]
    for other in rivals:
        check(f"beats_{other}_p001", [other], lambda other=other: beats(other))
    if task == "operands":
        check("ge_text_3x_faster", ["text"], lambda: acc >= line[f"{task}_text"] and
              line[f"{task}_wall_s_text"] >= 3 * line[f"{task}_wall_s_{main}"])
    return {**checks, f"{task}_targets_met": bool(checks) and not undecided and all(checks.values()),
            f"{task}_targets_undecided": undecided}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("recall", "operands", "both"), default="both")
    for task, (_, config, _, _) in TASKS.items():
        parser.add_argument(f"--{task}-links", help=f"the {task} links (a `recursivemas train` output directory; "
                                                    f"default: the train config's output)")
        default = config.relative_to(EXAMPLES.parents[1])
        parser.add_argument(f"--{task}-config", help=f"the {task} train config: topology, and the rows and budget the "
                                                     f"soft prompts train on (default: {default})")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, help="default: the topology's")
    parser.add_argument("--latent-steps", type=int, help="default: the topology's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--soft-prompt-steps", type=int, help="default: the train config's outer.steps")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(CELLS)}")
    parser.add_argument("--out", default="eval-results/channel")
    args = parser.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown or not cells:
        parser.error(f"--cells {args.cells!r}: unknown {unknown or 'none given'}; use a comma-separated list of "
                     f"{', '.join(CELLS)}")
    if args.limit < 2:
        parser.error(f"--limit {args.limit}: the swapped cell pairs each item with another; give at least 2")
    if args.soft_prompt_steps is not None and args.soft_prompt_steps < 1:
        parser.error(f"--soft-prompt-steps {args.soft_prompt_steps}: give at least 1 (or leave it out for the "
                     "train config's outer.steps)")
    args.cell_list = list(dict.fromkeys(cells))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    tasks = list(TASKS) if args.task == "both" else [args.task]
    line: dict = {"machine": machine()}
    with InProcess() as loaded:
        for task in tasks:
            line.update(run_task(task, args, loaded, args.cell_list))
    ns = {line[f"{t}_n"] for t in tasks}
    line["n"] = ns.pop() if len(ns) == 1 else {t: line[f"{t}_n"] for t in tasks}
    command = "python benchmarks/channel.py " + " ".join(sys.argv[1:] if argv is None else argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(markdown(line, tasks, command))
    print(json.dumps(line))
    return line


def markdown(line: dict, tasks: list[str], command: str) -> str:
    rows = [f"# Channel benchmark: {line['n']} held-out items per task\n", f"Machine: {line['machine']}.  ",
            f"Command: `{command}`\n"]
    for task in tasks:
        main_cell = TASKS[task][2]
        rows += [f"\n## {task} (trained cell: {main_cell})\n",
                 f"| cell | accuracy | {main_cell} wins / losses | p ({main_cell} vs) | wall s / item |",
                 "|---|---:|---:|---:|---:|"]
        for cell in CELLS:
            if f"{task}_{cell}" not in line:
                continue
            p = line.get(f"{task}_p_vs_{cell}")
            split = " / ".join(map(str, line.get(f"{task}_discordant_vs_{cell}", [])))
            rows.append(f"| {cell} | {line[f'{task}_{cell}']:.3f} | {split} | {'' if p is None else f'{p:.3g}'} | "
                        f"{line[f'{task}_wall_s_{cell}']:.2f} |")
        met = {k.removeprefix(f"{task}_target_"): v for k, v in line.items() if k.startswith(f"{task}_target_")}
        rows.append(f"\nTargets: {met or 'none decided'}; met: {line[f'{task}_targets_met']}; undecided: "
                    f"{line[f'{task}_targets_undecided'] or 'none'}")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
