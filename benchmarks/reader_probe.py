"""What a reader's latent thoughts hold: the probes behind docs/results.md's channel_recall diagnosis.

The trained recall links learned the answer's format but not the number. Two probes of the reader's rollout say why:
- ``decoded``: the LM head read off each latent state, for a few held-out items (does the rollout stay on the
  reader's text path and reach the number?);
- ``follows_reply``: the fraction of held-out rollout positions whose LM-head token is the reader's own greedy reply
  token at that position (1.0: the latent thoughts are the text the reader would send), and ``number_reached``:
  the fraction of items whose decoded thoughts contain the number;
- ``probe_acc_*``: a linear probe for the number's last digit (chance 0.10), fitted on the rollout states of training
  items and scored on held-out ones: from the first state, the last, and all of them together.

Run: ``python benchmarks/reader_probe.py [--links runs/channel-recall] [--latent-steps N] [--train 600]
[--test 150]``. Last line: JSON with the probe accuracies and the decoded thoughts.
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
from recursivemas.runtime.executor import fill_prompt, framing_of  # noqa: E402
from recursivemas.train.data import generate_rows  # noqa: E402
from recursivemas.engine import Sampling  # noqa: E402

PAIR = Path(__file__).resolve().parents[1] / "examples" / "channel" / "recall-pair.yaml"


def reader_prompts(topology, rows) -> list:
    return [fill_prompt(topology.template("reader"), r.question, {}, {}, framing=framing_of(topology, "reader"),
                        fields={"context": r.target("context")}) for r in rows]


def rollout_states(topology, engine, links, rows, steps: int) -> torch.Tensor:
    out = []
    for start in range(0, len(rows), 16):
        prompts = reader_prompts(topology, rows[start : start + 16])
        out += [r.states for r in engine.rollout(prompts, steps, links.inner_link("reader"))]
    return torch.stack(out).float()


def follows_reply(engine, topology, rows, thought_ids: torch.Tensor) -> float:
    """How much of the rollout is the reader's own greedy text, position by position."""
    replies = engine.generate(reader_prompts(topology, rows), Sampling(max_new_tokens=thought_ids.shape[1]))
    hits = total = 0
    for reply, thought in zip(replies, thought_ids.tolist()):
        wanted = engine.tokenizer(reply.text, add_special_tokens=False)["input_ids"][: len(thought)]
        hits += sum(a == b for a, b in zip(wanted, thought))
        total += len(wanted)
    return hits / max(total, 1)


def probe(train: torch.Tensor, test: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor) -> float:
    """A linear probe on standardised features (Adam, 300 full-batch steps, seeded)."""
    torch.manual_seed(0)
    mean, std = train.mean(0), train.std(0) + 1e-5
    model = torch.nn.Linear(train.shape[1], 10)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model((train - mean) / std), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float((model((test - mean) / std).argmax(-1) == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", default="runs/channel-recall", help="a recall training's output ('' for fresh)")
    parser.add_argument("--latent-steps", type=int, help="default: the topology's")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=150)
    args = parser.parse_args()
    topology = load_topology(PAIR).replace(links=str(Path(args.links).resolve()) if args.links else None)
    engine = load_engines(topology)["smol"]
    links = build_links(topology, {"smol": engine})
    steps = args.latent_steps or topology.latent_steps
    train_rows = generate_rows("channel_recall", args.train, 0, "train")
    test_rows = generate_rows("channel_recall", args.test, 0, "heldout")
    with torch.inference_mode():
        train, test = (rollout_states(topology, engine, links, rows, steps)
                       for rows in (train_rows, test_rows))
        head = engine.model.get_output_embeddings()
        thought_ids = head(test).argmax(-1)
        thoughts = [engine.tokenizer.decode(ids) for ids in thought_ids.tolist()]
        decoded = {r.target("context"): text for r, text in zip(test_rows[:4], thoughts[:4])}
        follows = follows_reply(engine, topology, test_rows, thought_ids)
    reached = sum(r.answer in text for r, text in zip(test_rows, thoughts)) / len(test_rows)
    digit = lambda rows: torch.tensor([int(r.answer) % 10 for r in rows])  # noqa: E731
    views = {"first": lambda x: x[:, 0], "last": lambda x: x[:, -1], "all": lambda x: x.flatten(1)}
    result = {"links": args.links or "fresh", "latent_steps": steps, "train": len(train_rows),
              "test": len(test_rows), "follows_reply": round(follows, 3),
              "number_reached": round(reached, 3), "chance": 0.1,
              **{f"probe_acc_{name}": round(probe(view(train), view(test), digit(train_rows), digit(test_rows)), 3)
                 for name, view in views.items()},
              "decoded": decoded}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
