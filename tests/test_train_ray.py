"""Stage 2 on Ray Train gives the same losses and links as one process, for both placements and two topologies.

``pipelined`` puts each backbone on its own gloo worker: hand-offs and their gradients cross processes point to
point, so agreement to 1e-5 with the single-process loop is the test that the distributed backward is right.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from recursivemas.cli import main
from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.links import load_links
from recursivemas.train.config import ClusterTrainConfig, load_train_config
from recursivemas.train.loop import train_inner_links, train_outer
from recursivemas.train.parallel import World
from recursivemas.train.ray_train import train_on_ray
from recursivemas.train.setup import prepare
from tiny import save_tiny_pair

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out

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


def assert_links(config, expected: dict, atol=1e-5):
    trained = load_links(config.output, into=prepare(config).links).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(trained[key], value, atol=atol, rtol=0, msg=key)


def single_process(config):
    setup = prepare(config)
    return train_outer(setup, config.outer, progress=False), setup


@pytest.mark.parametrize("pattern,placement,workers,forcing", [
    ("sequential", "replicated", 2, "rollout"), ("sequential", "pipelined", 1, "rollout"),
    ("sequential", "pipelined", 1, "role_text"),  # the paper's recipe: teacher-forced role texts cross ranks
    ("mixture", "replicated", 2, "rollout"),
    ("mixture", "pipelined", 2, "rollout"),  # two data-parallel copies of a two-stage pipeline: 4 ranks
])
def test_placement_matches_single_process(root, ray_cluster, pattern, placement, workers, forcing):
    """Rollout forcing: each upstream rollout runs on its backbone's rank and the hand-off's gradient crosses back."""
    config = load_train_config(root / f"{pattern}-train.yaml")
    config.outer.forcing = forcing
    expected_losses, expected = single_process(config)
    config = config.model_copy(update={
        "cluster": ClusterTrainConfig(placement=placement, workers=workers, cpus_per_worker=0.5),
        "output": str(root / "out" / f"{pattern}-{placement}-{workers}-{forcing}"),
    })
    result = train_on_ray(config, stage="outer")
    assert result.metrics["outer_losses"] == pytest.approx(expected_losses, abs=1e-5)
    assert_links(config, expected.links.state_dict())
    moved = [k for k, v in expected.links.state_dict().items() if k.startswith("outer.")
             and not torch.equal(v, prepare(config).links.state_dict()[k])]
    assert moved, "stage 2 changed no outer link"


def test_deepspeed_matches_single_process_and_resumes_from_its_sharded_checkpoint(root, ray_cluster):
    """ZeRO-2 through the same loop: the one-process losses and links; then a new run started from the step-2
    checkpoint (links, each rank's optimizer shard, schedule) ends with exactly the same links."""
    config = load_train_config(root / "sequential-train.yaml")
    config.outer.checkpoint_every = 2
    expected_losses, expected = single_process(config)
    config = config.model_copy(update={
        "cluster": ClusterTrainConfig(workers=2, cpus_per_worker=0.5, deepspeed={"stage": 2}),
        "output": str(root / "out" / "zero"), "eval": config.eval.model_copy(update={"n": 0}),
    })
    first = train_on_ray(config, stage="outer", storage_path=str(root / "zero_results"))
    assert first.metrics["outer_losses"] == pytest.approx(expected_losses, abs=1e-5)
    assert_links(config, expected.links.state_dict())
    saved = [c for c in (root / "zero_results").glob("*/checkpoint_*") if c.is_dir()]
    (step2,) = [c for c in saved if torch.load(c / "trainer.pt", weights_only=True)["step"] == 2]
    assert sorted(p.name for p in (step2 / "zero" / "zero").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    config.output = str(root / "out" / "zero-resumed")
    second = train_on_ray(config, stage="outer", resume_from=str(step2))
    assert second.metrics["resumed_from_step"] == 2
    assert second.metrics["outer_losses"] == pytest.approx(expected_losses[2:], abs=1e-5)
    assert_links(config, expected.links.state_dict())


def test_train_command_on_ray_runs_both_stages_and_evaluates(root, ray_cluster, capsys):
    """``recursivemas train`` with a ``cluster:`` block: stage 1 with the two agents trained at once on two ranks
    (same inner links as one process trains one after the other), stage 2, then a held-out evaluation."""
    config = yaml.safe_load((root / "sequential-train.yaml").read_text())
    config.update(data={"generator": "basic_arithmetic", "n": 4, "seed": 3}, targets={},
                  inner={"steps": 2, "batch_size": 2}, eval={"n": 2, "max_new_tokens": 4},
                  validation={"n": 2, "every": 2, "max_new_tokens": 4},
                  cluster={"placement": "replicated", "workers": 2, "cpus_per_worker": 0.5}, output="out/cli")
    (root / "cli-train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(root / "cli-train.yaml")]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert printed["outer_steps"] == 3 and printed["eval_rows"] == 2
    assert printed["eval_answer_loss"] > 0 and 0 <= printed["eval_accuracy"] <= 1
    summary = json.loads((root / "out" / "cli" / "train_summary.json").read_text())
    assert [c["step"] for c in summary["validation_curve"]] == [0, 2, 3]  # before, every 2 steps, after the last
    assert summary["best_step"] in (0, 2, 3) and 0 <= summary["val_accuracy_single"] <= 1

    local = load_train_config(root / "cli-train.yaml")
    local.cluster = None
    setup = prepare(local)
    train_inner_links(setup, local, World(), progress=False)
    trained = load_links(root / "out" / "cli", into=prepare(local).links).state_dict()
    for key, value in setup.links.state_dict().items():
        if key.startswith("inner."):
            torch.testing.assert_close(trained[key], value, atol=1e-6, rtol=0, msg=key)
