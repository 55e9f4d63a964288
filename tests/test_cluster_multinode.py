"""Three simulated nodes (ray.cluster_utils.Cluster): backbones land where their resources say, answers unchanged."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster as RayTestCluster

from recursivemas.cluster import Cluster
from recursivemas.config import Topology
from recursivemas.runtime import load_system
from tiny import save_tiny

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out


@pytest.fixture(scope="module")
def nodes():
    sim = RayTestCluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    node_ids = {"head": sim.head_node.node_id}
    for name in ("node_a", "node_b"):
        node_ids[name] = sim.add_node(num_cpus=1, resources={name: 1}).node_id
    sim.wait_for_nodes()
    yield sim, node_ids
    if ray.is_initialized():
        ray.shutdown()
    sim.shutdown()


def test_backbones_follow_their_node_constraints(nodes, tmp_path):
    sim, node_ids = nodes
    topology = Topology.model_validate({
        "name": "pinned",
        "backbones": {
            "a": {"model": save_tiny(tmp_path / "llama", "llama"), "resources": {"node_a": 0.1}},
            "b": {"model": save_tiny(tmp_path / "qwen2", "qwen2", chat=False), "resources": {"node_b": 0.1}},
        },
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "critic", "backbone": "b"},
                   {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 2, "latent_steps": 3, "generation": {"max_new_tokens": 6},
    })
    with Cluster(address=sim.address) as cluster:
        result = cluster.run(topology, "What is 6*7?")
        placed = {info["name"]: info["node_id"] for info in cluster.backbone_info()}
        with pytest.raises(ValueError, match="node_c"):  # a constraint no node satisfies fails fast
            cluster.system(topology.replace(name="nowhere", backbones={
                "a": {"model": topology.backbones["a"].model + "-x", "resources": {"node_c": 1}},
                "b": topology.backbones["b"].model_dump()}))
    assert placed == {"a": node_ids["node_a"], "b": node_ids["node_b"]}
    assert result.text == load_system(topology).run("What is 6*7?").text


@pytest.mark.parametrize("strategy, same_node", [("STRICT_PACK", True), ("STRICT_SPREAD", False)])
def test_placement_strategy_packs_or_spreads_backbones(nodes, tmp_path, strategy, same_node):
    sim, _ = nodes
    topology = Topology.model_validate({
        "name": f"placed-{strategy}",
        "backbones": {"a": {"model": save_tiny(tmp_path / "llama", "llama", seed=1)},
                      "b": {"model": save_tiny(tmp_path / "qwen2", "qwen2", chat=False, seed=1)}},
        "agents": [{"name": "expert", "backbone": "a"}, {"name": "learner", "backbone": "b"}],
        "pattern": "distillation", "rounds": 1, "latent_steps": 2, "generation": {"max_new_tokens": 4},
        "placement": strategy,
    })
    with Cluster(address=sim.address) as cluster:
        cluster.run(topology, "What is 6*7?")
        placed = {info["name"]: info["node_id"] for info in cluster.backbone_info()}
    assert (placed["a"] == placed["b"]) is same_node
