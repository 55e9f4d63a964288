"""Stage 2 on Ray Train (replicated, 2 gloo workers) gives the same losses and links as one process."""

from __future__ import annotations

import json

import pytest
import ray
import torch
import yaml

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.config import load_topology
from recursivemas.links import LinkSet, load_links
from recursivemas.runtime import build_links, load_engines
from recursivemas.train.data import resolve_targets
from recursivemas.train.local import _train_outer, load_rows, load_train_config
from recursivemas.train.ray_train import train_outer_replicated
from tiny import save_tiny


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-train")
    topology = {
        "name": "ray-train-seq",
        "backbones": {"a": {"model": save_tiny(root / "llama", "llama")},
                      "b": {"model": save_tiny(root / "qwen2", "qwen2", chat=False)}},
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
    torch.manual_seed(config.seed)
    topology = load_topology(config.topology)
    engines = load_engines(topology)
    links = build_links(topology, engines)
    targets = resolve_targets([a.name for a in topology.agents], topology.decoder, config.targets)
    losses = _train_outer(topology, engines, links, load_rows(config.data), targets, config.outer, progress=False)
    return losses, links


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
