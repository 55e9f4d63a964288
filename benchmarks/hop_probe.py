"""Which hop of the operands chain loses the values? The first hop, probed on its own.

The operands chain (``examples/channel/operands-chain.yaml``) hands the values from the planner (the only agent that
reads ``k = 7, q = 3``) to the critic, and from the critic to the solver. Its end-to-end accuracy cannot say which
hand-off drops them. This cuts the chain after the critic: planner -> critic, one round, and the critic decodes
its notes ("restate the values the question needs"). An item counts when every value of its context appears in the
critic's text. Cells, on the same held-out items:

- ``text``: the critic reads the planner's decoded message (mode text): what the agents can do at all;
- ``latent``: the critic reads the planner's latent thoughts through the links of ``--links`` (inner links of both
  agents and the planner->critic outer link, copied from the trained 3-agent link set);
- ``untrained``: the same with fresh links (``--init`` ``orthogonal`` or ``embedding_map`` for the cross-backbone
  link, as training starts it);
- ``blind``: the critic alone (mode single): chance, since its template names no context.

Run: ``python benchmarks/hop_probe.py --links runs/channel-operands-relay [--limit 48] [--init embedding_map]``.
Last line: JSON with ``restated_<cell>`` (the share of items whose values the critic restates) and exact McNemar
``p_latent_vs_<cell>``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recursivemas.config import load_topology  # noqa: E402
from recursivemas.eval.stats import mcnemar_exact  # noqa: E402
from recursivemas.links.alignment import start_as_embedding_map  # noqa: E402
from recursivemas.runtime import Executor, RunOptions, build_links, load_engines  # noqa: E402
from recursivemas.runtime.query import Query  # noqa: E402
from recursivemas.train.config import load_train_config  # noqa: E402
from recursivemas.train.setup import load_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "examples" / "channel" / "operands-chain.yaml"
TRAINING = ROOT / "examples" / "channel" / "train-operands-relay.yaml"


def restated(context: str, text: str) -> bool:
    """Every ``name = value`` of the context has its value in the text, as a whole number."""
    values = re.findall(r"=\s*(-?\d+)", context)
    return bool(values) and all(re.search(rf"(?<!\d){re.escape(v)}(?!\d)", text) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", required=True, help="a trained link set of the 3-agent operands chain")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--init", choices=["orthogonal", "embedding_map"], default="embedding_map")
    args = parser.parse_args()
    chain = load_topology(CHAIN)
    pair = chain.replace(agents=[a.model_dump(mode="json", exclude_none=True) for a in chain.agents
                                 if a.name in ("planner", "critic")], rounds=1, links=None)
    engines = load_engines(pair)
    trained = build_links(chain.replace(links=str(Path(args.links).resolve())), engines)
    links = build_links(pair, engines)
    fresh = build_links(pair, engines)
    if args.init == "embedding_map":
        start_as_embedding_map(fresh.outer_link("planner", "critic"), engines["smol"], engines["gemma"],
                               "planner->critic")
    for name in ("planner", "critic"):
        links.inner[name].load_state_dict(trained.inner[name].state_dict())
    links.outer["planner->critic"].load_state_dict(trained.outer["planner->critic"].state_dict())
    rows = load_rows(load_train_config(TRAINING).data, "heldout", args.limit)
    queries = [Query.of(row.question, row.fields().get("context")) for row in rows]
    cells = {"text": ("text", links), "latent": ("latent", links), "untrained": ("latent", fresh),
             "blind": ("single", links)}
    hits: dict[str, list[bool]] = {}
    for cell, (mode, link_set) in cells.items():
        results = Executor(pair, engines, link_set).run_batch(queries, RunOptions(mode=mode, rounds=1))
        hits[cell] = [restated(q.fields["context"], r.text) for q, r in zip(queries, results)]
        print(f"{cell}: {sum(hits[cell])}/{len(rows)}; e.g. {results[0].text[:120]!r}", file=sys.stderr)
    line = {"n": len(rows), "links": args.links, "init": args.init}
    line.update({f"restated_{c}": round(sum(h) / len(h), 3) for c, h in hits.items()})
    for cell in ("text", "untrained", "blind"):
        line[f"p_latent_vs_{cell}"] = mcnemar_exact(hits["latent"], hits[cell])
    print(json.dumps(line))


if __name__ == "__main__":
    main()
