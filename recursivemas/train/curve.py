"""The learning curve of stage 2 as a picture: validation accuracy and inference-path loss against the step.

A falling loss alone proves nothing (issue 12: a lower loss with worse answers), so the plot puts accuracy first and
draws the decoder alone on the same validation rows as a dashed line when the summary has it. Needs matplotlib
(the ``eval`` extra); training writes the PNG when it is installed and skips it otherwise.

Run: ``python -m recursivemas.train.curve runs/links/train_summary.json [runs/links/learning_curve.png]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_learning_curve(summary: dict, path: str | Path) -> Path | None:
    """Write the curve of ``summary["validation_curve"]`` to ``path``; None when there is no curve or matplotlib."""
    curve = [c for c in summary.get("validation_curve", []) if c.get("val_accuracy") is not None]
    if not curve:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    ax.plot(steps, [c["val_accuracy"] for c in curve], "o-", color="tab:blue", label="latent accuracy")
    if summary.get("val_accuracy_single") is not None:
        ax.axhline(summary["val_accuracy_single"], ls="--", color="gray", label="decoder alone")
    if summary.get("best_step") is not None:
        ax.axvline(summary["best_step"], ls=":", color="tab:green", label=f"kept (step {summary['best_step']})")
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation accuracy")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, [c["val_loss"] for c in curve], "s-", color="tab:red", alpha=0.6, label="inference-path loss")
    loss_ax.set_ylabel("loss (nats / token)")
    lines = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    summary_path = Path(args[0])
    out = Path(args[1]) if len(args) > 1 else summary_path.with_name("learning_curve.png")
    written = plot_learning_curve(json.loads(summary_path.read_text()), out)
    print(written or "no validation curve in the summary (or matplotlib is not installed)")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
