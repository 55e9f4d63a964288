"""Where a set of links was trained versus where it is used: the decoder's held-out loss on three paths.

- ``teacher_right``: upstream agents teacher-forced on the right answer (stage 2's old ``role_text`` path with
  answer targets, whose hand-offs carry the answer);
- ``teacher_wrong``: the same with a wrong answer upstream (how much the decoder reads the answer off its inputs);
- ``inference``: hand-offs from real latent rollouts, the path users run (``rollout`` forcing, no gradients).

Each is the mean cross-entropy (nats per token) of the bare answer and its end-of-turn token; ``inference_solution``
is the inference path's loss of the worked solution the demo's decoder is trained on (``data.solutions``).

Run: ``python benchmarks/loss_paths.py [--topology sequential-demo] [--untrained | --links DIR] [--rows 12]
[--latent-steps N]``.
Last line: JSON with the four losses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from recursivemas.config import load_topology  # noqa: E402
from recursivemas.runtime import build_links, load_engines  # noqa: E402
from recursivemas.train.config import load_train_config  # noqa: E402
from recursivemas.train.outer import unroll_loss  # noqa: E402
from recursivemas.train.setup import load_rows  # noqa: E402

DEMO_TRAINING = Path(__file__).resolve().parents[1] / "examples" / "train-demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="sequential-demo")
    parser.add_argument("--untrained", action="store_true", help="freshly initialised links instead of the topology's")
    parser.add_argument("--links", help="trained links to measure instead of the topology's (a training output)")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--latent-steps", type=int, help="rollout length (default: the topology's)")
    parser.add_argument("--max-latent-tokens", type=int, default=32, help="teacher-forced states handed on")
    args = parser.parse_args()
    topology = load_topology(args.topology)
    if args.untrained:
        topology = topology.replace(links=None)
    elif args.links:
        topology = topology.replace(links=str(Path(args.links).resolve()))
    engines = load_engines(topology)
    links = build_links(topology, engines)  # the topology's `links:` checkpoint, or fresh ones without it
    data = load_train_config(DEMO_TRAINING).data
    rows = load_rows(data.model_copy(update={"solutions": "procedural"}), "heldout", args.rows)
    upstream = [a.name for a in topology.agents if a.name != topology.decoder]
    losses: dict[str, list[float]] = {"teacher_right": [], "teacher_wrong": [], "inference": [],
                                      "inference_solution": []}
    with torch.no_grad():
        for row in rows:
            wrong = str(int(row.answer) + 7)
            for key, target, forcing, role in (
                    ("teacher_right", row.answer, "role_text", row.answer),
                    ("teacher_wrong", row.answer, "role_text", wrong),
                    ("inference", row.answer, "rollout", None),
                    ("inference_solution", row.target("solution"), "rollout", None)):
                roles = {agent: role for agent in upstream} if role is not None else None
                loss = unroll_loss(topology, engines, links, row.question, target, roles, args.max_latent_tokens,
                                   forcing=forcing, latent_steps=args.latent_steps)
                losses[key].append(loss.item())
    print(json.dumps({"topology": topology.name, "links": "untrained" if args.untrained else topology.links,
                      "rows": len(rows), "latent_steps": args.latent_steps or topology.latent_steps,
                      "max_latent_tokens": args.max_latent_tokens,
                      **{f"loss_{k}": round(sum(v) / len(v), 3) for k, v in losses.items()}}))


if __name__ == "__main__":
    main()
