"""Both training stages on Ray Train: ``TorchTrainer`` workers run the same loop as one process
(:func:`recursivemas.train.loop.fit`), over a gloo (CPU) process group.

- ``replicated``: ``workers`` ranks, each with every backbone; rows split, link gradients summed.
- ``pipelined``: one rank per backbone (``workers`` copies of that pipeline), for backbones that do not fit together:
  hand-offs and their gradients cross ranks point to point.

Checkpoints (links + optimizer, scheduler, step) go through ``ray.train.Checkpoint``; a worker that dies is
replaced and the group resumes from the newest one (``cluster.max_failures``), and a new job can start from a
checkpoint directory (``resume_from``, on storage every worker can read). When the run ends the driver copies
the links to ``config.output``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from recursivemas.config import load_topology
from recursivemas.links import LinkSet
from recursivemas.train.checkpoints import LINKS_DIR, Shards, TrainState, read_checkpoint, write_checkpoint
from recursivemas.train.config import ClusterTrainConfig, TrainConfig
from recursivemas.train.loop import Stage, fit
from recursivemas.train.parallel import World, check_batch_split, pipeline_stages
from recursivemas.train.setup import eval_rows, prepare, validation_rows


class RayCheckpoints:
    """The loop's checkpoints as Ray Train reports: every rank reports, rank 0 attaches the directory."""

    def __init__(self, rank: int, resume_from: str | None = None) -> None:
        self.rank, self.resume_from = rank, resume_from

    def restore(self, links: LinkSet) -> TrainState | None:
        """This run's newest checkpoint (after a worker failure), else the one the run was started from."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return read_checkpoint(self.resume_from, links) if self.resume_from else None
        return read_checkpoint(checkpoint.to_directory(), links)  # a local copy that outlives this call

    def save(self, metrics: dict, links: LinkSet, state: TrainState, shards: Shards | None = None) -> None:
        """Rank 0 writes links and trainer state; with ``shards`` every rank adds its own files, and Ray Train
        gathers every rank's directory into one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                write_checkpoint(tmp, links, state)
            if shards is not None:
                shards(Path(tmp))
            attach = self.rank == 0 or shards is not None
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if attach else None)


def _worker(loop_config: dict) -> None:
    import ray.train
    import torch

    config = TrainConfig.model_validate(loop_config["config"])
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_worker)))
    context = ray.train.get_context()
    world = World(context.get_world_rank(), context.get_world_size(), tuple(loop_config["stages"]))
    setup = prepare(config, world)
    checkpoints = RayCheckpoints(world.rank, loop_config["resume_from"])
    summary = fit(setup, config, checkpoints, world, stage=loop_config["stage"], progress=False,
                  heldout=eval_rows(config), validation_rows=validation_rows(config))
    # Ray keeps the metrics of the newest checkpoint as the result's: the summary goes with a final one
    checkpoints.save({"done": True, **_flat(summary)}, setup.links,
                     TrainState("done", config.outer.steps))


def _flat(summary: dict) -> dict:
    out = {}
    for key, value in summary.items():
        out.update(value if isinstance(value, dict) else {key: value})
    return out


def world_size(config: TrainConfig) -> tuple[int, tuple[str, ...]]:
    """Ranks and pipeline stages (backbone per stage; empty when replicated) for a config."""
    cluster = config.cluster or ClusterTrainConfig()
    if cluster.placement == "replicated":
        return cluster.workers, ()
    stages = pipeline_stages(load_topology(config.topology))
    return cluster.workers * len(stages), stages


def train_on_ray(config: TrainConfig, stage: Stage = "both", storage_path: str | None = None,
                 resume_from: str | None = None):
    """Train on the Ray cluster this process is connected to; returns the ``ray.train.Result`` after copying the
    trained links to ``config.output``."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cluster = config.cluster or ClusterTrainConfig()
    size, stages = world_size(config)
    replicas = size // len(stages) if stages else size
    check_batch_split(config.outer.batch_size, replicas)
    if resume_from is not None:
        resume_from = str(Path(resume_from).resolve())
        if not (Path(resume_from) / "trainer.pt").is_file():
            raise FileNotFoundError(f"--resume {resume_from}: not a training checkpoint (no trainer.pt); pass a "
                                    f"checkpoint_* directory of a Ray Train run of this config")
    config = config.model_copy(update={"cluster": cluster})
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.gpus_per_worker:
        resources["GPU"] = cluster.gpus_per_worker
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config.model_dump(), "stage": stage, "stages": list(stages),
                           "resume_from": resume_from},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=size, use_gpu=bool(cluster.gpus_per_worker),
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{Path(config.output).name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path or str(Path(config.output).parent / "ray_results"),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as directory:
            shutil.rmtree(config.output, ignore_errors=True)
            shutil.copytree(Path(directory) / LINKS_DIR, config.output)
        summary = {k: v for k, v in result.metrics.items() if k != "done"}
        (Path(config.output) / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


__all__ = ["RayCheckpoints", "read_checkpoint", "train_on_ray", "world_size"]
