"""How stage 2 turns a step's loss into new outer-link weights: plain AdamW with link gradients summed over ranks,
or DeepSpeed ZeRO (replicated placement). The loop calls ``backward`` once per step on this rank's loss (already
divided by the batch size) and then ``step``; both give the paper's AdamW, warm-up + cosine schedule and clipping.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recursivemas.train.config import DeepSpeedOptions, OuterStageConfig
from recursivemas.train.parallel import World, sum_gradients


def cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (the paper's schedule)."""
    import math

    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TorchUpdater:
    """AdamW over the used outer links; every rank sums the gradients and takes the same step."""

    def __init__(self, params: list[torch.nn.Parameter], cfg: OuterStageConfig, world: World) -> None:
        self.params, self.world = params, world
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine(step, cfg.warmup_steps, cfg.steps))

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        sum_gradients(self.world, self.params)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    shards = None  # everything is in state_dict()

    def load_state_dict(self, state: dict) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])


class ZeroUpdater:
    """DeepSpeed ZeRO over the outer links (stage 3 also shards the frozen backbones). DeepSpeed averages
    gradients over ranks, so this rank's share of the batch-mean loss is scaled by the world size.

    Its optimizer state is sharded: each rank writes its shard into the checkpoint (``shards``) and reads it back
    on resume, with the schedule and step count (DeepSpeed's own checkpoint format, in ``zero/``)."""

    def __init__(self, links, engines: dict, params: list[torch.nn.Parameter], cfg: OuterStageConfig, world: World,
                 options: DeepSpeedOptions) -> None:
        from recursivemas.train.zero import initialize

        wanted = {id(p) for p in params}
        for param in links.outer.parameters():  # ZeRO would decay links the topology never uses
            param.requires_grad_(id(param) in wanted)
        self.world = world
        self.trainer = initialize(links.outer, [e.model for e in engines.values()], options, cfg.lr,
                                  lambda step: cosine(step, cfg.warmup_steps, cfg.steps))

    def backward(self, loss: torch.Tensor) -> None:
        self.trainer.backward(loss * self.world.size)

    def step(self) -> None:
        self.trainer.step()

    @property
    def lr(self) -> float:
        return self.trainer.lr

    def state_dict(self) -> dict:
        return {}

    def shards(self, directory: Path) -> None:
        self.trainer.save(directory / "zero")

    def load_state_dict(self, state: dict) -> None:
        saved = Path(state.get("directory", "")) / "zero"
        if saved.is_dir():
            self.trainer.load(saved)
        elif state.get("step"):  # a checkpoint without shards (after stage 1): the links are loaded already
            raise ValueError(f"{state.get('directory')}: no DeepSpeed state (zero/) to resume stage 2 from; "
                             "resume DeepSpeed runs from their own checkpoints")
