"""Accuracy of the demo system on held-out arithmetic: a single agent, the agents talking in text (Recursive-TextMAS)
and in latents (RecursiveMAS) at 1 and 3 rounds, all on the same items in one run.

The paper's shape is latent r3 > text r3, latent r3 >= latent r1, latent r3 > single. This prints whether the shape
holds for these (small, CPU) models and these links, whatever the answer; docs/results.md says what was measured.

The items are reasoning-gym ``basic_arithmetic`` at the difficulty the demo links were trained on (the ``data.options``
of ``examples/train-demo.yaml``, held-out split); ``--dataset-options '{}'`` gives the generator's own default
difficulty instead (up to 6 terms of up to 4 digits, with * and /).

Run: ``python benchmarks/accuracy.py [--topology sequential-demo] [--limit 200] [--max-new-tokens 64]
[--dataset-options YAML] [--latent-steps N] [--out eval-results/accuracy]``. Last line: JSON with ``acc_single``,
``acc_text_r3``, ``acc_latent_r3``, ``acc_latent_r1`` and the mean decoded tokens and wall time per item of each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recursivemas.cli import parse_mapping  # noqa: E402
from recursivemas.eval.report import machine  # noqa: E402
from recursivemas.eval.run import run_eval  # noqa: E402
from recursivemas.train.config import load_train_config  # noqa: E402

DEMO_TRAINING = Path(__file__).resolve().parents[1] / "examples" / "train-demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="sequential-demo")
    parser.add_argument("--dataset", default="basic_arithmetic")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--latent-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataset-options", help="YAML mapping (default: the demo training's data.options)")
    parser.add_argument("--out", default="eval-results/accuracy")
    args = parser.parse_args()
    if args.dataset_options is None:
        options = load_train_config(DEMO_TRAINING).data.options
    else:
        options = parse_mapping(args.dataset_options, "--dataset-options")

    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    evaluation, _ = run_eval(args.topology, args.dataset, ("single", "text", "latent"), (1, 3), args.limit,
                             args.seed, args.out, batch_size=args.batch_size, latent_steps=args.latent_steps,
                             max_new_tokens=args.max_new_tokens, command=command, dataset_options=options)
    cells = {"single": evaluation.cell("single", 1), "text_r3": evaluation.cell("text", 3),
             "latent_r3": evaluation.cell("latent", 3), "latent_r1": evaluation.cell("latent", 1)}
    acc = {f"acc_{k}": round(c.accuracy, 4) for k, c in cells.items()}
    shape = {"latent_r3_gt_text_r3": acc["acc_latent_r3"] > acc["acc_text_r3"],
             "latent_r3_ge_latent_r1": acc["acc_latent_r3"] >= acc["acc_latent_r1"],
             "latent_r3_gt_single": acc["acc_latent_r3"] > acc["acc_single"]}
    print(json.dumps({
        "machine": machine(), "topology": evaluation.topology, "dataset": args.dataset, "dataset_options": options,
        "n": cells["single"].n,
        "max_new_tokens": args.max_new_tokens, **acc, **shape,
        **{f"tokens_{k}": round(c.decoded_tokens_per_item, 1) for k, c in cells.items()},
        **{f"wall_s_{k}": round(c.wall_s_per_item, 3) for k, c in cells.items()},
    }))


if __name__ == "__main__":
    main()
