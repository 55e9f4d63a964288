"""The trained demo links shipped in the package: only link weights, exactly the keys and shapes the demo topology
needs, small, and loaded by the built-in topology without touching a model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from recursivemas.config import load_topology
from recursivemas.links.io import MANIFEST_FILE, WEIGHTS_FILE
from recursivemas.runtime import build_links


class Dims:  # what build_links reads of a backbone; the widths come from the checkpoint's manifest
    def __init__(self, hidden_size: int) -> None:
        self.hidden_size, self.embedding_scale = hidden_size, 1.0


def test_demo_topology_names_the_shipped_links_and_they_load_with_exact_keys():
    topology = load_topology("sequential-demo")
    assert topology.links and Path(topology.links).is_dir()
    manifest = json.loads((Path(topology.links) / MANIFEST_FILE).read_text())
    dims = {a.backbone: Dims(manifest["agents"][a.name]["dim"]) for a in topology.agents}
    links = build_links(topology, dims)  # raises on any missing, extra or misshapen key
    with safe_open(str(Path(topology.links) / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert keys == set(links.state_dict())
    assert {k.split(".")[0] for k in keys} == {"inner", "outer"}  # link weights only, no backbone tensor
    assert {k.split(".")[1] for k in keys if k.startswith("outer.")} == {"planner->critic", "critic->solver",
                                                                        "solver->planner"}
    assert dtypes == {torch.bfloat16}  # stored small; loading casts to the links' float32
    assert (Path(topology.links) / WEIGHTS_FILE).stat().st_size < 20 * 2**20
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in links.parameters())


def test_the_demo_asks_the_first_test_item_of_the_task_its_links_were_trained_on():
    from recursivemas.cli import DEMO_PROMPT
    from recursivemas.eval.datasets import load_eval_dataset
    from recursivemas.train.config import load_train_config

    config = load_train_config(Path(__file__).parents[1] / "examples" / "train-demo.yaml")
    first = load_eval_dataset(config.data.generator, limit=1, seed=0, options=config.data.options)[0]
    assert DEMO_PROMPT == first.question
    # and the topology serves the rollout length the links were trained with
    assert load_topology("sequential-demo").latent_steps == config.outer.latent_steps
