"""Stage 2 on Ray Train (replicated, 2 gloo workers) gives the same losses and links as one process."""

from __future__ import annotations

import json

import pytest
import ray
import torch
import yaml

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.links import LinkSet, load_links
from recursivemas.train.local import load_train_config, prepare, train_outer
from recursivemas.train.ray_train import train_outer_replicated
from tiny import save_tiny_pair


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-train")
    topology = {
        "name": "ray-train-seq",
        "backbones": {name: {"model": path} for name, path in save_tiny_pair(root).items()},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 2, "latent_steps": 2,
    }
    (root / "topology.yaml").write_text(yaml.safe_dump(topology))
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "plan": f"add {i} to itself"} for i in range(4)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "train.yaml").write_text(yaml.safe_dump({
        "topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "targets": {"planner": "plan"},
        "outer": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "max_latent_tokens": 6, "lr": 1e-3},
        "output": "out/links",
    }))
    return load_train_config(root / "train.yaml")


def single_process(config):
    setup = prepare(config)
    return train_outer(setup, config.outer, progress=False), setup.links


def test_replicated_matches_single_process(config):
    expected_losses, expected = single_process(config)
    with Cluster(num_cpus=2):
        result = train_outer_replicated(config, num_workers=2)
    assert ray.is_initialized() is False
    assert result.metrics["losses"] == pytest.approx(expected_losses, abs=1e-5)
    with result.checkpoint.as_directory() as directory:
        template = LinkSet({"planner": 64, "solver": 48}, [("planner", "solver"), ("solver", "planner")])
        trained = load_links(f"{directory}/links", into=template)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, atol=1e-5, rtol=0)


def test_uneven_batch_is_refused(config):
    bad = config.model_copy(update={"outer": config.outer.model_copy(update={"batch_size": 3})})
    with pytest.raises(ValueError, match="outer.batch_size"):
        train_outer_replicated(bad, num_workers=2)
