"""Stage 2 under DeepSpeed ZeRO on 2 Ray Train gloo workers (CPU): ZeRO-2 and ZeRO-3 (backbones sharded) each take
the same steps as one process, keep the replicas identical and leave the backbones untouched; a checkpoint resumes."""

from __future__ import annotations

import json
import sys

import pytest
import ray
import torch
import yaml

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.train.local import load_train_config, prepare, train_outer
from recursivemas.train.zero import DeepSpeedOptions
from tiny import save_tiny_pair

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker below runs in Ray Train workers
STAGES = {"zero2": {"stage": 2}, "zero3": {"stage": 3, "param_persistence_threshold": 0}}  # 0: shard every weight


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    topology = {
        "name": "deepspeed-seq",
        "backbones": {name: {"model": path} for name, path in save_tiny_pair(root).items()},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 2, "latent_steps": 2,
    }
    (root / "topology.yaml").write_text(yaml.safe_dump(topology))
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "plan": f"add {i} to itself"} for i in range(4)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "train.yaml").write_text(yaml.safe_dump({
        "topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "targets": {"planner": "plan"},
        "outer": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "max_latent_tokens": 6, "lr": 1e-3},
        "output": "out/links",
    }))
    return load_train_config(root / "train.yaml")


def _worker(loop: dict) -> None:
    import ray.train
    import torch.distributed as dist

    from recursivemas.train.local import TrainConfig, cosine
    from recursivemas.train.outer import outer_parameters, unroll_loss
    from recursivemas.train.zero import initialize

    torch.set_num_threads(1)
    config = TrainConfig.model_validate(loop["config"])
    cfg = config.outer
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    out = {}
    for name, options in STAGES.items():  # stage 3 shards the backbones in place: a fresh setup for each
        setup = prepare(config)
        backbones = [engine.model for engine in setup.engines.values()]
        before = [{k: v.clone() for k, v in model.state_dict().items()} for model in backbones]
        outer_parameters(setup.links)  # inner links frozen, outer links trained
        trainer = initialize(setup.links, backbones, options, cfg.lr,
                             lambda step: cosine(step, cfg.warmup_steps, cfg.steps))

        def step(index: int, trainer=trainer, setup=setup) -> float:
            rows = [setup.rows[(index * cfg.batch_size + i) % len(setup.rows)] for i in range(cfg.batch_size)]
            mine = rows[rank::world]
            loss = torch.stack([
                unroll_loss(setup.topology, setup.engines, setup.links, row.question, row.answer,
                            {agent: row.target(field) for agent, field in setup.targets.items()},
                            cfg.max_latent_tokens, cfg.aux_weight)
                for row in mine
            ]).mean()  # DeepSpeed averages gradients over workers: each passes the mean of its own rows
            trainer.backward(loss)
            trainer.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            return total.item() / world

        # Step 0, save, step 1; then reload the checkpoint and take step 1 again: the two must agree.
        losses = [step(0)]
        saved = trainer.trainable_state_dict()
        trainer.save(f"{loop['dir']}/{name}-ckpt")
        first_try = step(1), trainer.trainable_state_dict()
        trainer.load(f"{loop['dir']}/{name}-ckpt")
        reloaded = trainer.trainable_state_dict()
        losses.append(step(1))
        links = trainer.trainable_state_dict()
        sharded = [k for model in backbones for k, p in model.named_parameters() if p.numel() == 0]
        embeddings = [k for model in backbones for k, p in model.named_parameters()
                      if any(p is q for q in model.get_input_embeddings().parameters())]
        with trainer.gathered():
            untouched = all(torch.equal(model.state_dict()[k], v)
                            for model, state in zip(backbones, before) for k, v in state.items())
        out[name] = {"losses": losses, "links": links, "untouched": untouched, "sharded": sharded,
                     "embeddings": embeddings, "saved": saved, "reloaded": reloaded, "first_try": first_try,
                     "steps": trainer.global_steps}
    torch.save(out, f"{loop['dir']}/rank{rank}.pt")
    ray.train.report({"done": 1})


@pytest.mark.ray
def test_zero_matches_single_process_on_two_workers(config, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    reference = prepare(config)
    initial = {k: v.clone() for k, v in reference.links.state_dict().items()}
    expected_losses = train_outer(reference, config.outer, progress=False)
    expected = reference.links.state_dict()

    with Cluster(num_cpus=2):
        TorchTrainer(
            _worker, train_loop_config={"config": config.model_dump(), "dir": str(tmp_path)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(tmp_path / "ray_results")),
        ).fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for name in STAGES:
        first, second = ranks[0][name], ranks[1][name]
        assert all(torch.isfinite(torch.tensor(loss)) for loss in first["losses"]), name
        assert first["losses"] == second["losses"], name
        assert first["losses"] == pytest.approx(expected_losses, abs=1e-5), name
        assert first["untouched"] and second["untouched"], f"{name}: a backbone weight changed"
        if name == "zero3":  # backbone weights are split across the workers, the input embeddings stay whole
            assert len(first["sharded"]) > 10 and not set(first["sharded"]) & set(first["embeddings"])
        else:
            assert first["sharded"] == []
        outer = [k for k in initial if k.startswith("outer.")]
        assert outer and all(not torch.equal(first["links"][k], initial[k]) for k in outer), f"{name}: links unchanged"
        for key, value in first["links"].items():
            assert torch.equal(value, second["links"][key]), f"{name}: ranks disagree on {key}"
            if key.startswith("inner."):
                assert torch.equal(value, initial[key]), f"{name}: frozen inner link {key} changed"
            torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=0, msg=f"{name}: {key}")
        loss, weights = first["first_try"]  # load() restored weights, optimizer state, schedule and step count
        assert loss == first["losses"][1], name
        for key, value in first["links"].items():
            assert torch.equal(first["reloaded"][key], first["saved"][key]), f"{name}: reload of {key}"
            torch.testing.assert_close(weights[key], value, atol=1e-6, rtol=0, msg=f"{name}: resumed {key}")
        assert any(not torch.equal(weights[k], first["saved"][k]) for k in outer), f"{name}: step 1 changed nothing"
        assert first["steps"] == config.outer.steps, name


def test_deepspeed_is_installed():
    import deepspeed  # a dev dependency (pyproject.toml): missing, this fails rather than skips

    major, minor = (int(part) for part in deepspeed.__version__.split(".")[:2])
    assert (major, minor) >= (0, 16)


def test_options_name_the_field():
    assert DeepSpeedOptions().stage == 2
    with pytest.raises(ValueError, match="param_persistence_threshold.*set stage: 3"):
        DeepSpeedOptions(stage=2, param_persistence_threshold=0)
    with pytest.raises(ValueError, match="stage"):
        DeepSpeedOptions(stage=1)
    with pytest.raises(ValueError, match="offload"):
        DeepSpeedOptions(offload=True)


def test_initialize_needs_a_process_group(config):
    from recursivemas.train.zero import initialize

    setup = prepare(config)
    with pytest.raises(RuntimeError, match="process group"):
        initialize(setup.links, [], {"stage": 2}, 1e-3, lambda step: 1.0)
