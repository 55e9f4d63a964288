"""Resume is exact: after a worker is killed mid-run (Ray Train) or a run restarts from its checkpoints (one
process), training continues from the saved step and data position and ends with the links of an unbroken run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import psutil
import pytest
import torch
import yaml
from pathlib import Path

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.links import load_links
from recursivemas.train.checkpoints import LocalCheckpoints
from recursivemas.train.config import ClusterTrainConfig, load_train_config
from recursivemas.train.local import train
from recursivemas.train.loop import train_outer
from recursivemas.train.ray_train import train_on_ray
from recursivemas.train.setup import prepare
from tiny import save_tiny_pair


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    backbones = {name: {"model": path} for name, path in save_tiny_pair(root).items()}
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(6)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "topology.yaml").write_text(yaml.safe_dump({
        "name": "resume", "backbones": backbones, "pattern": "sequential", "rounds": 1, "latent_steps": 2,
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
    }))
    (root / "train.yaml").write_text(yaml.safe_dump({
        "topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "eval": {"n": 0},
        "outer": {"steps": 24, "batch_size": 2, "warmup_steps": 2, "max_latent_tokens": 4, "lr": 1e-3,
                  "checkpoint_every": 4},
        "output": "out/links",
    }))
    return load_train_config(root / "train.yaml")


def unbroken(config):
    setup = prepare(config)
    train_outer(setup, config.outer, progress=False)
    return setup.links.state_dict()


def assert_same_links(path, config, expected):
    trained = load_links(path, into=prepare(config).links).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(trained[key], value, atol=1e-5, rtol=0, msg=key)


def kill_a_worker_after_first_checkpoint(storage, killed: list) -> None:
    """SIGKILL one Ray Train worker process of this run once it has a registered checkpoint (a real crash, from
    outside)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not killed:
        snapshots = list(storage.glob("*/checkpoint_manager_snapshot.json"))
        if snapshots and "checkpoint_" in snapshots[0].read_text():  # Ray Train has registered a checkpoint
            for proc in psutil.Process().children(recursive=True):  # this test's Ray only (it started the raylet)
                try:
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                        return
                except psutil.Error:  # gone meanwhile
                    continue
        time.sleep(0.05)


@pytest.mark.ray
def test_killed_worker_resumes_from_checkpoint(config, tmp_path):
    expected = unbroken(config)
    storage = tmp_path / "ray_results"
    config = config.model_copy(update={
        # one two-stage pipeline; a second failure allowed for the teardown races of a loaded 2-core machine
        "cluster": ClusterTrainConfig(placement="pipelined", workers=1, cpus_per_worker=0.5, max_failures=2),
        "output": str(tmp_path / "links"),
    })
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, args=(storage, killed), daemon=True)
    with Cluster(num_cpus=2):
        killer.start()
        result = train_on_ray(config, stage="outer", storage_path=str(storage))
    killer.join(timeout=1)
    assert killed, "no Ray Train worker was found to kill"
    resumed = result.metrics["resumed_from_step"]
    assert 4 <= resumed < 24 and resumed % 4 == 0  # continued from a checkpoint, not from step 0
    assert len(result.metrics["outer_losses"]) == 24 - resumed  # the step counter went on, not over
    assert_same_links(config.output, config, expected)  # same data position, optimizer and schedule


def test_rerun_continues_from_the_newest_local_checkpoint(config, tmp_path):
    config = config.model_copy(update={"output": str(tmp_path / "links"),
                                       "outer": config.outer.model_copy(update={"steps": 6, "checkpoint_every": 2})})
    first = train(config, stage="outer", progress=False)
    expected = load_links(first, into=prepare(config).links).state_dict()
    checkpoints = LocalCheckpoints(config.checkpoint_dir)
    assert [p.name for p in checkpoints.saved()] == ["step-000004-outer", "step-000006-outer"]
    reports = [json.loads(line) for line in (tmp_path / "links.checkpoints" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for report in reports if report.get("stage") == "outer" for s in report["steps"]]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]  # every step, also of the pruned checkpoints
    assert all(any(k.startswith("grad_norm/") and k.endswith("/r1") for k in s) for s in steps), steps[0]
    shutil.rmtree(checkpoints.latest())  # as if the run had died between step 4 and step 6
    shutil.rmtree(first)
    second = train(config, stage="outer", progress=False)
    summary = json.loads((second / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and len(summary["outer_losses"]) == 2
    assert_same_links(second, config, expected)


def test_rerun_on_other_data_refuses_the_old_checkpoints(config, tmp_path):
    """Resuming is for the same run: a changed data source (or seed, targets, topology) must not silently continue
    the old run's links; a longer schedule (more steps) is the same run and resumes."""
    config = config.model_copy(update={"output": str(tmp_path / "links"),
                                       "outer": config.outer.model_copy(update={"steps": 2, "checkpoint_every": 2})})
    train(config, stage="outer", progress=False)
    longer = config.model_copy(update={"outer": config.outer.model_copy(update={"steps": 4})})
    summary = json.loads((train(longer, stage="outer", progress=False) / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and len(summary["outer_losses"]) == 2
    other_forcing = [{"outer": longer.outer.model_copy(update=change)}
                     for change in ({"forcing": "role_text"}, {"gradient": "full"}, {"latent_steps": 7})]
    for changed in ({"seed": 1}, {"data": config.data.model_copy(update={"n": 3})}, *other_forcing):
        with pytest.raises(ValueError, match="trained on other data, targets, topology, seed or forcing") as err:
            train(longer.model_copy(update=changed), stage="outer", progress=False)
        assert "step-000004-outer" in str(err.value) and "new `output`" in str(err.value)


def test_train_state_round_trips_through_the_flat_trainer_file_format():
    from recursivemas.train.checkpoints import TrainState

    state = TrainState("outer", 12, 48, "digest", {"optimizer": {"lr": 1}, "scheduler": {}, "curve": [1]})
    flat = state.state_dict()
    assert flat == {"optimizer": {"lr": 1}, "scheduler": {}, "curve": [1], "stage": "outer", "step": 12,
                    "rows_seen": 48, "problem": "digest"}  # what trainer.pt has always held
    back = TrainState.from_state_dict(flat, "/ckpt")
    assert (back.stage, back.step, back.rows_seen, back.problem, back.parts, back.directory) == (
        "outer", 12, 48, "digest", state.parts, "/ckpt")
    assert back.for_parts()["directory"] == "/ckpt" and "directory" not in TrainState().for_parts()
    assert TrainState.from_state_dict({"stage": "inner", "step": 0}).parts == {}  # an inner-stage file


def test_the_end_of_stage_one_is_kept_so_a_stage_two_variant_can_start_from_it(config, tmp_path):
    config = config.model_copy(update={"output": str(tmp_path / "links"),
                                       "outer": config.outer.model_copy(update={"steps": 6, "checkpoint_every": 2})})
    train(config, progress=False)
    checkpoints = LocalCheckpoints(config.checkpoint_dir)
    assert [p.name for p in checkpoints.saved()] == ["step-000000-inner", "step-000004-outer", "step-000006-outer"]
    variant = config.model_copy(update={"output": str(tmp_path / "variant"), "outer": config.outer.model_copy(
        update={"steps": 2, "relay_weight": 0.5})})
    Path(variant.checkpoint_dir).mkdir(parents=True)
    shutil.copytree(checkpoints.saved()[0], Path(variant.checkpoint_dir) / "step-000000-inner")
    summary = json.loads((Path(train(variant, progress=False)) / "train_summary.json").read_text())
    assert summary["resumed_from_stage"] == "inner" and "inner_loss" not in summary
