"""``recursivemas train`` in one process: stage 1 then stage 2, writing a link checkpoint that ``run`` loads.

The same loop runs on Ray Train workers (:mod:`recursivemas.train.ray_train`); here it has the whole machine, keeps
resumable checkpoints next to the output (``<output>.checkpoints``) and picks up from the newest one when rerun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recursivemas.links import save_links
from recursivemas.train.checkpoints import LocalCheckpoints
from recursivemas.train.config import TrainConfig, load_train_config
from recursivemas.train.curve import plot_learning_curve
from recursivemas.train.loop import Stage, fit, train_outer
from recursivemas.train.setup import Setup, eval_rows, prepare, validation_rows
from recursivemas.train.updaters import cosine

__all__ = ["Setup", "TrainConfig", "cosine", "load_train_config", "prepare", "train", "train_outer"]

log = logging.getLogger("recursivemas")


def train(config: TrainConfig, stage: Stage = "both", progress: bool = True, resume: bool = True) -> Path:
    """Train the topology's links and save them to ``config.output``; returns the checkpoint directory.

    With ``resume`` (the default) a rerun continues from the newest checkpoint in ``<output>.checkpoints``.
    """
    setup = prepare(config)
    checkpoints = LocalCheckpoints(config.checkpoint_dir, resume=resume)
    summary = fit(setup, config, checkpoints, stage=stage, progress=progress, heldout=eval_rows(config),
                  validation_rows=validation_rows(config))
    path = save_links(setup.links, config.output)
    (path / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_learning_curve(summary, path / "learning_curve.png")
    log.info("saved links to %s (%s)", path, _brief(summary))
    return path


def _brief(summary: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
