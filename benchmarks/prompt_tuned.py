"""Train the parameter-matched single-agent baseline (``acc_prompt_tuned`` in ``benchmarks/accuracy.py``).

The decoder of a train config's topology gets a soft prompt with about as many trainable parameters as the outer
links stage 2 trains (:mod:`recursivemas.train.prompt_tuning`), trained on the same rows, targets, steps, batch size
and schedule as that config's stage 2.

Run: ``python benchmarks/prompt_tuned.py [--config examples/train-demo.yaml] [--out runs/prompt-tuned]``. Last line:
JSON with the parameter counts, the first and last losses and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from recursivemas.train.config import load_train_config  # noqa: E402
from recursivemas.train.outer import outer_parameters  # noqa: E402
from recursivemas.train.prompt_tuning import SoftPrompt, train_soft_prompt  # noqa: E402
from recursivemas.train.setup import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "examples" / "train-demo.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "prompt-tuned"))
    args = parser.parse_args()
    config = load_train_config(args.config)
    setup = prepare(config)
    topology, cfg = setup.topology, config.outer
    engine = setup.engines[topology.agent(topology.decoder).backbone]
    link_parameters = sum(p.numel() for p in outer_parameters(setup.links, topology))
    length = cfg.latent_steps or topology.latent_steps
    torch.manual_seed(config.seed)
    soft = SoftPrompt.matching(engine.hidden_size, length, link_parameters, engine.embedding_scale)
    rows = [(row.question, setup.decoder_target(row)) for row in setup.rows]
    began = time.perf_counter()
    with tqdm(total=cfg.steps, desc="soft prompt") as bar:
        losses = train_soft_prompt(engine, topology.template(topology.decoder), soft, rows, cfg.steps,
                                   cfg.batch_size, cfg.lr, cfg.warmup_steps,
                                   on_step=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
    result = {"config": str(args.config), "decoder": topology.decoder, "length": length,
              "soft_prompt_parameters": soft.num_parameters(), "link_parameters": link_parameters,
              "steps": cfg.steps, "batch_size": cfg.batch_size, "loss_first10": sum(losses[:10]) / min(10, len(losses)),
              "loss_last10": sum(losses[-10:]) / min(10, len(losses)), "wall_s": round(time.perf_counter() - began, 1)}
    soft.save(args.out, {"decoder": topology.decoder, "train_config": str(args.config), "losses": losses})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
