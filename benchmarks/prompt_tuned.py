"""Train the parameter-matched single-agent baseline (``acc_prompt_tuned`` in ``benchmarks/accuracy.py``).

The decoder of a train config's topology gets a soft prompt with about as many trainable parameters as the outer
links stage 2 trains (:mod:`recursivemas.train.prompt_tuning`), trained on the same rows, targets, steps, batch size
and schedule as that config's stage 2. Rows bring their fields (``{context}``, ...) to a decoder template that names
them (``benchmarks/channel.py``'s oracle trains it that way, through :func:`train_matched`).

Run: ``python benchmarks/prompt_tuned.py [--config examples/train-demo.yaml] [--out runs/prompt-tuned]``. Last line:
JSON with the parameter counts, the first and last losses and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from recursivemas.config import Topology  # noqa: E402
from recursivemas.runtime.executor import framing_of  # noqa: E402
from recursivemas.train.config import OuterStageConfig, TrainConfig, load_train_config  # noqa: E402
from recursivemas.train.data import Row  # noqa: E402
from recursivemas.train.outer import agent_fields, outer_parameters  # noqa: E402
from recursivemas.train.prompt_tuning import SoftPrompt, train_soft_prompt  # noqa: E402
from recursivemas.train.setup import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def soft_prompt_rows(topology: Topology, rows: Sequence[Row], targets: Sequence[str]) -> list[tuple]:
    """``(question, target, fields)`` per row: the fields the decoder's template names, from the row (a missing one
    is an error naming agent and field)."""
    return [(row.question, target, agent_fields(topology, topology.decoder, row.fields()))
            for row, target in zip(rows, targets)]


def train_matched(engine, topology: Topology, rows: Sequence[tuple], link_parameters: int, cfg: OuterStageConfig,
                  seed: int, steps: int | None = None, desc: str = "soft prompt") -> tuple[SoftPrompt, list[float]]:
    """A soft prompt of about ``link_parameters`` parameters, as long as the hand-off (stage 2's latent steps),
    trained on ``rows`` (:func:`soft_prompt_rows`) with stage 2's ``cfg`` (``steps`` overrides its steps) and seed,
    in the decoder's template and framing."""
    steps = cfg.steps if steps is None else steps
    length = cfg.latent_steps or topology.latent_steps
    torch.manual_seed(seed)
    soft = SoftPrompt.matching(engine.hidden_size, length, link_parameters, engine.embedding_scale)
    with tqdm(total=steps, desc=desc) as bar:
        losses = train_soft_prompt(engine, topology.template(topology.decoder), soft, rows, steps,
                                   cfg.batch_size, cfg.lr, cfg.warmup_steps,
                                   on_step=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")),
                                   framing=framing_of(topology, topology.decoder))
    return soft, losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "examples" / "train-demo.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "prompt-tuned"))
    args = parser.parse_args()
    config: TrainConfig = load_train_config(args.config)
    setup = prepare(config)
    topology, cfg = setup.topology, config.outer
    engine = setup.engines[topology.agent(topology.decoder).backbone]
    link_parameters = sum(p.numel() for p in outer_parameters(setup.links, topology))
    rows = soft_prompt_rows(topology, setup.rows, [setup.decoder_target(row) for row in setup.rows])
    began = time.perf_counter()
    soft, losses = train_matched(engine, topology, rows, link_parameters, cfg, config.seed)
    result = {"config": str(args.config), "decoder": topology.decoder, "length": soft.config["length"],
              "soft_prompt_parameters": soft.num_parameters(), "link_parameters": link_parameters,
              "steps": cfg.steps, "batch_size": cfg.batch_size, "loss_first10": sum(losses[:10]) / min(10, len(losses)),
              "loss_last10": sum(losses[-10:]) / min(10, len(losses)), "wall_s": round(time.perf_counter() - began, 1)}
    soft.save(args.out, {"decoder": topology.decoder, "train_config": str(args.config), "losses": losses})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
