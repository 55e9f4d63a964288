"""Stage 2 on Ray Train, ``replicated`` placement: every worker holds all backbones, rows are split across workers,
and only the outer links' gradients are all-reduced (the frozen backbones never need synchronising).

Each worker builds the same links from the same seed and trains them in lock-step, so rank 0's links are everyone's;
rank 0 writes the link checkpoint. The pipelined placement (backbones on different workers) is still to come.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from recursivemas.train.local import TrainConfig, prepare, train_outer


def _worker(loop_config: dict) -> None:
    import ray.train
    import torch

    from recursivemas.links import save_links

    torch.set_num_threads(1)
    config = TrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    setup = prepare(config)  # same seed on every worker: identical links to start from
    links = setup.links
    if loop_config.get("links"):
        links.load_state_dict(loop_config["links"])
    losses = train_outer(setup, config.outer, progress=False, rank=rank, world=world)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_links(links, Path(tmp) / "links")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"outer_loss": losses[-1] if losses else float("nan"), "losses": losses},
                         checkpoint=checkpoint)


def train_outer_replicated(config: TrainConfig, num_workers: int = 2, cpus_per_worker: float = 0.5,
                           storage_path: str | None = None, initial_links: dict | None = None):
    """Run stage 2 on ``num_workers`` Ray Train workers; returns the ``ray.train.Result`` (metrics, checkpoint)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if config.outer.batch_size % num_workers:
        raise ValueError(f"outer.batch_size: {config.outer.batch_size} rows per step do not split evenly over "
                         f"{num_workers} workers; use a multiple of {num_workers}")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config.model_dump(), "links": initial_links},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(storage_path=storage_path or str(Path(config.output).parent / "ray_results")),
    )
    return trainer.fit()
