"""Stage 2 on Ray Train gives the same losses and links as one process, for both placements and two topologies.

``pipelined`` puts each backbone on its own gloo worker: hand-offs and their gradients cross processes point to
point, so agreement to 1e-5 with the single-process loop is the test that the distributed backward is right.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.links import load_links
from recursivemas.train.config import ClusterTrainConfig, load_train_config
from recursivemas.train.loop import train_outer
from recursivemas.train.ray_train import train_on_ray
from recursivemas.train.setup import prepare
from tiny import save_tiny_pair

TOPOLOGIES = {
    "sequential": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
    # three agents on two backbones: the "a" stage of a pipeline runs two agents
    "mixture": [{"name": "left", "backbone": "a"}, {"name": "right", "backbone": "b"},
                {"name": "summary", "backbone": "a"}],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-train")
    backbones = {name: {"model": path} for name, path in save_tiny_pair(root).items()}
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "plan": f"add {i} to itself"} for i in range(4)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for pattern, agents in TOPOLOGIES.items():
        (root / f"{pattern}.yaml").write_text(yaml.safe_dump({
            "name": f"ray-{pattern}", "backbones": backbones, "agents": agents, "pattern": pattern,
            "rounds": 2, "latent_steps": 2,
        }))
        (root / f"{pattern}-train.yaml").write_text(yaml.safe_dump({
            "topology": f"{pattern}.yaml", "data": {"path": "rows.jsonl"},
            "targets": {"planner": "plan"} if pattern == "sequential" else {},
            "outer": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "max_latent_tokens": 6, "lr": 1e-3},
            "output": f"out/{pattern}",
        }))
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    with Cluster(num_cpus=4):
        yield


def single_process(config):
    setup = prepare(config)
    return train_outer(setup, config.outer, progress=False), setup


@pytest.mark.parametrize("pattern,placement,workers", [
    ("sequential", "replicated", 2), ("sequential", "pipelined", 1),
    ("mixture", "replicated", 2),
    ("mixture", "pipelined", 2),  # two data-parallel copies of a two-stage pipeline: 4 ranks
])
def test_placement_matches_single_process(root, ray_cluster, pattern, placement, workers):
    config = load_train_config(root / f"{pattern}-train.yaml")
    expected_losses, expected = single_process(config)
    config = config.model_copy(update={
        "cluster": ClusterTrainConfig(placement=placement, workers=workers, cpus_per_worker=0.5),
        "output": str(root / "out" / f"{pattern}-{placement}-{workers}"),
    })
    result = train_on_ray(config, stage="outer")
    assert result.metrics["outer_losses"] == pytest.approx(expected_losses, abs=1e-5)
    trained = load_links(config.output, into=prepare(config).links)
    for key, value in expected.links.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, atol=1e-5, rtol=0, msg=key)
    moved = [k for k, v in expected.links.state_dict().items() if k.startswith("outer.")
             and not torch.equal(v, prepare(config).links.state_dict()[k])]
    assert moved, "stage 2 changed no outer link"
