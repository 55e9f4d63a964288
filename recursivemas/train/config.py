"""The train config tree (``train.yaml``): what to train, on which rows, for how long, and where it runs.

One typed tree serves the single-process trainer and both Ray Train placements, so a config that trains on a laptop
trains on a cluster by adding a ``cluster:`` block. Relative paths in the file are relative to the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recursivemas.answers import BOXED_INSTRUCTION
from recursivemas.config import load_yaml_config


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    """Rows from a JSONL file (``path``) or from a built-in generator (``generator``, ``n``, ``seed``, ``options``:
    the generator's own settings, e.g. ``{max_terms: 3, max_digits: 1}``; the held-out rows use the same ones).

    ``instruction`` is appended (after a blank line) to every generated question, as ``recursivemas eval`` does, so
    a system is trained on the prompt it is evaluated on; ``null`` keeps questions bare. JSONL questions are used
    verbatim (the file owns its prompt).

    ``solutions`` adds a ``solution`` field to every row, the decoder's default target: a worked solution that ends
    in the answer (:mod:`recursivemas.train.solutions`; ``procedural`` or ``sampled`` from the decoder alone, up to
    ``solution_tries`` samples a question; rows with no accepted sample are dropped). A bare-answer target teaches
    the decoder to stop reasoning.

    ``max_length`` bounds the tokens of any role target or answer: a longer one is a data error named by row and
    field, found before training starts rather than as a memory blow-up hours in.
    """

    path: str | None = None
    generator: str | None = None
    n: int = Field(200, ge=1)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)
    instruction: str | None = BOXED_INSTRUCTION
    solutions: Literal["procedural", "sampled"] | None = None
    solution_tries: int = Field(4, ge=1)
    max_length: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.generator is None):
            raise ValueError("data: set exactly one of `path` (a JSONL file) or `generator` (e.g. basic_arithmetic)")
        if self.options and self.generator is None:
            raise ValueError("data.options: generator settings need `generator`; a JSONL `path` takes none")
        return self


class EvalConfig(Strict):
    """Held-out rows scored after training: the generator's held-out split, or a JSONL ``path``. ``n: 0`` skips."""

    path: str | None = None
    n: int = Field(20, ge=0)
    max_new_tokens: int = Field(16, ge=1)


class ValidationConfig(Strict):
    """Scored during stage 2, every ``every`` outer steps (and before the first and after the last): latent-mode
    accuracy with the benchmark's scorer and the answer loss on the inference path, on ``n`` rows of the
    generator's validation split (or a JSONL ``path``). ``keep: best`` saves the links of the step with the best
    validation accuracy (ties: the lower loss); ``last`` the final ones. ``n: 0`` turns validation off."""

    path: str | None = None
    n: int = Field(24, ge=0)
    every: int = Field(20, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    keep: Literal["best", "last"] = "best"


class StageConfig(Strict):
    steps: int = Field(100, ge=0)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    warmup_steps: int = Field(10, ge=0)


class InnerStageConfig(StageConfig):
    """Stage 1 (:mod:`recursivemas.train.inner`). ``loss``: ``cosine`` (the paper's) or ``vocab`` (the image must
    also be nearer its token than any other one). ``rollout_rounds``: after the teacher-forced ``steps``, this many
    rounds of rolling out with the link (``outer.latent_steps`` steps) and ``steps`` more on the pooled rollout and
    teacher-forced states, so the link keeps its own rollout on the text it was taught. ``inputs``: what fills an
    agent's slots in its stage-1 prompt: ``none`` (its first-round prompt, no hand-offs) or ``upstream_text`` (each
    in-round source's target, as text), so an agent that relays what it receives (a critic between a reader and
    the solver) learns to think from it."""

    loss: Literal["cosine", "vocab"] = "cosine"
    rollout_rounds: int = Field(0, ge=0)
    inputs: Literal["none", "upstream_text"] = "none"


class OuterStageConfig(StageConfig):
    """``forcing``: what upstream agents hand on while the decoder is trained (:mod:`recursivemas.train.outer`):
    ``rollout`` (their real latent rollouts, as at inference; ``gradient`` ``truncated`` or ``full``, over
    ``latent_steps``, default the topology's) or ``role_text`` (teacher-forced on per-agent ``targets``, up to
    ``max_latent_tokens`` states). ``init``: how an outer link between two *different* backbones starts
    (:mod:`recursivemas.links.alignment`): ``embedding_map`` (a least-squares map between their input embeddings
    over the tokens both vocabularies spell alike, so the receiver reads soft tokens from step 0) or
    ``orthogonal`` (a random orthogonal map). Links within one backbone start as the identity either way."""

    forcing: Literal["rollout", "role_text"] = "rollout"
    init: Literal["embedding_map", "orthogonal"] = "orthogonal"
    gradient: Literal["truncated", "full"] = "truncated"
    latent_steps: int | None = Field(None, ge=1)
    max_latent_tokens: int = Field(80, ge=1)
    aux_weight: float = Field(0.0, ge=0)
    relay_weight: float = Field(0.0, ge=0)  # each receiving upstream agent's loss on its own target (train/outer.py)
    checkpoint_every: int = Field(50, ge=1)
    gradient_checkpointing: bool = True  # recompute each backbone call in backward: less memory, about +1/3 time


class DeepSpeedOptions(Strict):
    """DeepSpeed ZeRO for stage 2 (:mod:`recursivemas.train.zero`). What to shard: ``stage: 2`` shards optimizer
    state and gradients of the trainable links; ``stage: 3`` also their parameters and the frozen backbones'."""

    stage: Literal[2, 3] = 2
    # Stage 3 only: a parameter with at most this many elements is kept whole on every worker (DeepSpeed's
    # ``stage3_param_persistence_threshold``): small ones are not worth a gather per module call. 0 shards them all.
    param_persistence_threshold: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _stage3_only(self) -> DeepSpeedOptions:
        if self.param_persistence_threshold is not None and self.stage != 3:
            raise ValueError(
                f"param_persistence_threshold: only stage 3 shards parameters (stage is {self.stage}); "
                "remove param_persistence_threshold or set stage: 3"
            )
        return self


class ClusterTrainConfig(Strict):
    """Run on Ray Train. ``replicated``: every worker holds every backbone, ``workers`` data-parallel copies.
    ``pipelined``: one worker per backbone, latents and their gradients cross workers point to point; ``workers``
    is then the number of data-parallel copies of that pipeline."""

    placement: Literal["replicated", "pipelined"] = "replicated"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_failures: int = Field(1, ge=0)
    deepspeed: DeepSpeedOptions | None = None  # replicated placement only

    @model_validator(mode="after")
    def _deepspeed_replicated(self) -> ClusterTrainConfig:
        if self.deepspeed is not None and self.placement != "replicated":
            raise ValueError("cluster.deepspeed: DeepSpeed is offered for `placement: replicated` only; "
                             "remove `deepspeed` or set `placement: replicated`")
        return self


class TrainConfig(Strict):
    topology: str
    data: DataConfig
    targets: dict[str, str] = Field(default_factory=dict)
    inner: InnerStageConfig = Field(default_factory=InnerStageConfig)
    outer: OuterStageConfig = Field(default_factory=OuterStageConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    cluster: ClusterTrainConfig | None = None
    output: str = "runs/links"
    seed: int = 0

    @property
    def checkpoint_dir(self) -> str:
        """Resumable training state (links, optimizer, scheduler, step) of single-process runs."""
        return f"{self.output}.checkpoints"


def load_train_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    config = load_yaml_config(path, TrainConfig, "train config", "topology, data, targets, ...")
    here = path.parent  # relative paths in the file are relative to the file
    if not Path(config.topology).is_absolute() and (here / config.topology).is_file():
        config.topology = str((here / config.topology).resolve())
    if not Path(config.output).is_absolute():
        config.output = str((here / config.output).resolve())
    for section in (config.data, config.eval, config.validation):
        if section.path and not Path(section.path).is_absolute():
            section.path = str((here / section.path).resolve())
    return config
