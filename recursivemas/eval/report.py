"""Write an evaluation where people read it: JSON for scripts, a markdown table for docs, PNG plots for the eye.

Every file names the machine and the command that produced it, because a number without those cannot be checked
or reproduced.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from recursivemas.eval.harness import Evaluation

PLOTS = {  # file stem -> (cell attribute, y-axis label)
    "accuracy": ("accuracy", "accuracy"),
    "wall_time": ("wall_s_per_item", "wall time per item (s)"),
    "decoded_tokens": ("decoded_tokens_per_item", "decoded tokens per item"),
}
LABELS = {"single": "single agent", "text": "Recursive-TextMAS (text)", "latent": "RecursiveMAS (latent)"}


def machine() -> str:
    """The machine in words: what the numbers were measured on."""
    cores = os.cpu_count() or 0
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {cores} CPU cores"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return f"CPU only: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}"


def markdown_table(evaluation: Evaluation) -> str:
    rows = ["| mode | rounds | n | accuracy | wall s / item | decoded tokens / item |",
            "|---|---:|---:|---:|---:|---:|"]
    for c in evaluation.cells:
        rounds = "-" if c.mode == "single" else str(c.rounds)
        rows.append(f"| {LABELS.get(c.mode, c.mode)} | {rounds} | {c.n} | {c.accuracy:.3f} | {c.wall_s_per_item:.2f} "
                    f"| {c.decoded_tokens_per_item:.1f} |")
    return "\n".join(rows)


def write_report(evaluation: Evaluation, out: str | Path, command: str = "") -> dict[str, Path]:
    """``results.json``, ``results.md`` and one PNG per plot under ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    where = machine()
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({**evaluation.to_dict(), "machine": where, "command": command}, indent=1))
    options = f" {json.dumps(evaluation.dataset_options)}" if evaluation.dataset_options else ""
    header = (f"# {evaluation.topology} on {evaluation.dataset or 'the dataset'}{options}\n\nMachine: {where}.  \n"
              f"Command: `{command}`\n\n" if command else f"# {evaluation.topology}\n\nMachine: {where}.\n\n")
    paths["markdown"].write_text(header + markdown_table(evaluation) + "\n")
    for stem, (attribute, label) in PLOTS.items():
        paths[stem] = out / f"{stem}.png"
        _plot(evaluation, attribute, label, paths[stem])
    return paths


def _plot(evaluation: Evaluation, attribute: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rounds = sorted({c.rounds for c in evaluation.cells if c.mode != "single"}) or [1]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for mode in ("single", "text", "latent"):
        cells = sorted((c for c in evaluation.cells if c.mode == mode), key=lambda c: c.rounds)
        if not cells:
            continue
        if mode == "single":  # no rounds: one value across the axis
            ax.plot(rounds, [getattr(cells[0], attribute)] * len(rounds), "--", color="gray", label=LABELS[mode])
        else:
            ax.plot([c.rounds for c in cells], [getattr(c, attribute) for c in cells], "o-", label=LABELS[mode])
    ax.set_xlabel("rounds")
    ax.set_xticks(rounds)
    ax.set_ylabel(label)
    ax.set_title(f"{evaluation.topology}: {label}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
