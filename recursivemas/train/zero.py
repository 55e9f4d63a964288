"""Stage 2 with DeepSpeed ZeRO, an optional engine for the ``replicated`` placement (tested on CPU with gloo).

When to use it: the plain replicated trainer (``ray_train.py``) keeps on every worker the full backbones, the full
outer links, their gradients and their AdamW state (two more copies of every link weight), and all-reduces the whole
link gradient. That is the cheapest choice while it fits. ZeRO trades extra collectives for memory:

* ``stage: 2`` splits the links' AdamW state and their gradients across the workers (each keeps ``1/N``); every
  worker still holds the whole links and backbones. Worth it for many edges or wide links.
* ``stage: 3`` also splits the parameters, the frozen backbones' included: between uses each worker keeps ``1/N`` of
  every large weight and gathers a module's weights just before its forward (and again for its backward). Worth it
  when the backbones of a topology do not fit on one worker together; each module call costs an all-gather, on
  every latent round, so it is slower. The backbones' input embeddings (and any weight tied to them, such as a tied
  LM head) stay whole on every worker: the engine reads their weight outside their own forward.

Semantics match ``train_outer``: AdamW with betas (0.9, 0.95), a LambdaLR multiplier, gradient clipping, one
optimizer step per :meth:`ZeroTrainer.step`. DeepSpeed *averages* gradients over the workers, so each worker should
pass the mean loss over its own rows (equal shares of the batch give the mean over the whole batch).

:func:`initialize` runs inside a torch.distributed process group that already exists (Ray Train's
``TorchTrainer`` with ``TorchConfig(backend="gloo")`` makes one) and reuses it; DeepSpeed creates none of its own.
On a machine without a GPU DeepSpeed picks its CPU accelerator by itself (``DS_ACCELERATOR=cpu`` forces it on a GPU
machine). DeepSpeed is imported only when this runs, so the package imports without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from recursivemas.train.config import DeepSpeedOptions

_DEFAULT_BUCKET = 500_000_000  # DeepSpeed's own default reduce bucket, in elements


class ZeroTrainer:
    """A DeepSpeed engine over the trainable module (and, with stage 3, the frozen ones). Call :meth:`backward` on
    each worker's loss, then :meth:`step` (optimizer step, learning-rate schedule step, gradients cleared)."""

    def __init__(self, engine, trainable: nn.Module, options: DeepSpeedOptions):
        self.engine = engine
        self.trainable = trainable
        self.options = options

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate this worker's loss; gradients are averaged over the workers (and sharded by ZeRO)."""
        self.engine.backward(loss)

    def step(self) -> None:
        """Clip gradients, take the AdamW step, advance the schedule, clear the gradients."""
        self.engine.step()

    @property
    def lr(self) -> float:
        """The learning rate the next :meth:`step` uses."""
        return float(self.engine.get_lr()[0])

    @property
    def global_steps(self) -> int:
        return int(self.engine.global_steps)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Within this block every parameter the engine holds is whole on every worker (read-only; a no-op for
        stage 2). A collective: all workers must enter it together."""
        if self.options.stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            yield

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """A full copy of the trainable module's weights, on every worker (a collective with stage 3)."""
        with self.gathered():
            return {key: value.detach().clone() for key, value in self.trainable.state_dict().items()}

    def save(self, directory: str | Path) -> Path:
        """Write a resumable checkpoint (trainable weights, sharded optimizer state, schedule, step count) to
        ``directory``; frozen weights are left out. A collective: every worker calls it with the same path (on a
        filesystem they share, or each its own and :meth:`load` from that same path)."""
        directory = Path(directory)
        self.engine.save_checkpoint(str(directory), tag="zero", exclude_frozen_parameters=True)
        return directory

    def load(self, directory: str | Path) -> None:
        """Resume from :meth:`save`'s checkpoint, into a trainer built the same way (same modules, options, world
        size). A collective."""
        path, _ = self.engine.load_checkpoint(str(directory), tag="zero", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint (tag 'zero') to resume from")


def initialize(trainable: nn.Module, frozen: Sequence[nn.Module], options: DeepSpeedOptions | dict | None,
               lr: float, schedule: Callable[[int], float], max_grad_norm: float = 1.0) -> ZeroTrainer:
    """Build a :class:`ZeroTrainer` in the current torch.distributed group.

    ``trainable``'s parameters with ``requires_grad`` are optimised (AdamW, betas (0.9, 0.95), learning rate
    ``lr * schedule(step)``, gradients clipped to ``max_grad_norm``; 0 turns clipping off); its other parameters
    are carried along frozen. ``frozen`` (the backbones, every parameter frozen) are sharded with stage 3 and left
    alone with stage 2. Every worker must call this with identically initialised modules.

    Freeze whatever should not move (e.g. outer links the topology never uses): ZeRO keeps gradients in flat
    buffers, so a parameter that requires grad but gets none still takes AdamW's weight decay each step.
    """
    import torch.distributed as dist

    options = DeepSpeedOptions.model_validate(options or {}) if not isinstance(options, DeepSpeedOptions) else options
    if not dist.is_initialized():
        raise RuntimeError(
            "zero.initialize: no torch.distributed process group; run it on Ray Train workers "
            "(TorchTrainer(..., torch_config=TorchConfig(backend='gloo'))) or call "
            "torch.distributed.init_process_group first"
        )
    if max_grad_norm < 0:
        raise ValueError(f"max_grad_norm: must be >= 0 (0 turns clipping off), got {max_grad_norm}")
    for index, module in enumerate(frozen):
        trained = [name for name, p in module.named_parameters() if p.requires_grad]
        if trained:
            raise ValueError(f"frozen[{index}]: parameter {trained[0]!r} requires grad; freeze the backbone "
                             "(module.requires_grad_(False)) or pass it as part of `trainable`")
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise ValueError("trainable: no parameter requires grad; nothing to optimise")

    import deepspeed

    _skip_shm_op()
    if options.stage == 3:
        parts = [part for module in frozen for part in _shardable_parts(module)]
        model = nn.ModuleDict({"trainable": trainable, "frozen": nn.ModuleList(parts)})
    else:
        model = nn.ModuleDict({"trainable": trainable})
    zero: dict = {"stage": options.stage,
                  # One bucket for all trainable gradients: DeepSpeed allocates a whole bucket per backward.
                  "reduce_bucket_size": max(1, min(_DEFAULT_BUCKET, sum(p.numel() for p in params)))}
    if options.stage == 3 and options.param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = options.param_persistence_threshold
    config = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: the caller forms its own rows and loss
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(max_grad_norm),
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
    }
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config, dist_init_required=False,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return ZeroTrainer(engine, trainable, options)


def _skip_shm_op() -> None:
    """On the CPU accelerator DeepSpeed compiles a shared-memory all-reduce extension (about 80 s of C++ on two
    cores, and a compiler on the machine) when it wraps the process group. Only its inference all-reduce uses it;
    training goes through the gloo group. DeepSpeed keeps the probed op table in one dict, so mark the op absent."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _shardable_parts(module: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``module`` that hold no weight of its input embedding: those ZeRO-3 may shard.

    The embedding weight (and whatever is tied to it) must stay whole: the engine reads its shape and dtype outside
    the embedding's forward, where ZeRO-3 would show an empty tensor.
    """
    get = getattr(module, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    keep = {id(p) for p in embedding.parameters()} if embedding is not None else set()

    def split(node: nn.Module) -> list[nn.Module]:
        if not any(id(p) in keep for p in node.parameters()):
            return [node] if any(True for _ in node.parameters()) else []
        # A node that holds the embedding somewhere below: its own direct weights stay whole, its children split.
        return [part for child in node.children() for part in split(child)]

    return split(module)
