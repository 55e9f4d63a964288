"""``recursivemas plan``: what a topology needs in memory and where Ray would put it, before anything loads.

Everything comes from each backbone's ``config.json`` alone: the parameters are counted on a model built on the meta
device (tied embeddings once, the text model only: the engine never loads a vision tower), the KV cache from the
layer types (full, sliding-window, linear-attention), the links from the agents' hidden sizes. Where a config comes
from, offline: a local directory, a pulled zoo model, the hub cache, or the configs shipped for the built-ins
(``topologies/backbone_configs/``). Placement mimics Ray: one actor per unique backbone, ``num_gpus`` per actor,
whole GPUs taken whole and fractions packed first-fit; Ray accounts GPUs, not memory, so the memory check is ours.
:mod:`recursivemas.plan_report` renders the result (table, JSON, markdown) and the advice when it does not fit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from recursivemas.config import BUILTIN_TOPOLOGIES, BackboneConfig, Topology

SHIPPED_CONFIGS = BUILTIN_TOPOLOGIES / "backbone_configs"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ATTENTION = ("full_attention", "sliding_attention", "chunked_attention")


def shipped_name(model: str) -> str:
    """The folder under ``backbone_configs/`` for a model spec: ``owner/name`` -> ``owner--name`` (the hub cache's
    spelling); a zoo name stays itself."""
    return model.removeprefix("zoo:").replace("/", "--")


def find_config(model: str) -> tuple[Path, str]:
    """The ``config.json`` of a backbone's model, found without any download, and where it came from."""
    from recursivemas import model_zoo

    local = Path(model).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json", "local directory"
    zoo = model.removeprefix(model_zoo.ZOO_PREFIX)
    if zoo in model_zoo.ZOO and model_zoo.is_pulled(zoo):
        return model_zoo.model_dir(zoo) / "config.json", "zoo (pulled)"
    if zoo not in model_zoo.ZOO and not local.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            if isinstance(cached, str):
                return Path(cached), "hub cache"
        except Exception:  # no hub library or a malformed id: fall through to the shipped configs
            pass
    shipped = SHIPPED_CONFIGS / shipped_name(model) / "config.json"
    if shipped.is_file():
        return shipped, "shipped with recursivemas"
    raise FileNotFoundError(
        f"model {model!r}: no config.json offline (not a local directory, a pulled zoo model, in the hub cache, or "
        f"shipped under {SHIPPED_CONFIGS}); fetch just the config (`hf download {model} config.json`) or point "
        "the backbone at a local model directory")


@lru_cache(maxsize=64)
def load_config(path: str):
    """The text model's config (a multimodal wrapper's ``text_config``: the engine loads only the language model)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(Path(path).parent), local_files_only=True).get_text_config()


@lru_cache(maxsize=64)
def count_parameters(path: str) -> int:
    """Parameters of the causal LM a config builds, counted on the meta device (nothing allocated); a parameter
    tied to another (the LM head to the embeddings) is counted once."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(load_config(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


@dataclass(frozen=True)
class CacheShape:
    """Per-request cache of one model: per-token K/V bytes of each attention layer (and its window), and the fixed
    state of each linear-attention layer. ``bytes(tokens, dtype)`` is what a DynamicCache holds after ``tokens``."""

    kv_per_token: tuple[tuple[int, int | None], ...]  # (K+V elements per token, sliding window or None)
    linear_state: tuple[tuple[int, int], ...]  # (conv elements in the model dtype, recurrent elements, float32)
    unknown_layers: tuple[str, ...] = ()

    def bytes(self, tokens: int, dtype: str) -> int:
        width = DTYPE_BYTES[dtype]
        kv = sum(per * (tokens if window is None else min(tokens, window - 1)) for per, window in self.kv_per_token)
        return width * kv + sum(conv * width + recurrent * 4 for conv, recurrent in self.linear_state)

    @property
    def sliding_windows(self) -> list[int]:
        return sorted({w for _, w in self.kv_per_token if w is not None})


def cache_shape(config) -> CacheShape:
    """The cache a config's model keeps, read as transformers' DynamicCache lays it out: ``layer_types`` when the
    config has them, else sliding-window layers when it sets ``sliding_window``, else full attention."""
    layers = config.num_hidden_layers
    types = list(getattr(config, "layer_types", None) or [])
    if not types:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) else (
            "chunked_attention" if getattr(config, "attention_chunk_size", None) else "full_attention")
        types = [kind] * layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = {"sliding_attention": getattr(config, "sliding_window", None),
              "chunked_attention": getattr(config, "attention_chunk_size", None)}
    kv, linear, unknown = [], [], []
    for kind in types:
        if kind in ATTENTION:
            kv.append((2 * kv_heads * head_dim, window.get(kind)))
        elif kind == "linear_attention" and hasattr(config, "linear_num_value_heads"):
            k_heads, v_heads = config.linear_num_key_heads, config.linear_num_value_heads
            k_dim, v_dim = config.linear_key_head_dim, config.linear_value_head_dim
            conv = (2 * k_heads * k_dim + v_heads * v_dim) * config.linear_conv_kernel_dim
            linear.append((conv, v_heads * k_dim * v_dim))
        else:
            unknown.append(kind)
    return CacheShape(tuple(kv), tuple(linear), tuple(unknown))


def link_parameters(dims: dict[str, int], edges: list[tuple[str, str]], norm: bool = True) -> dict[str, int]:
    """Parameters of every link, by its LinkSet key (``inner.AGENT``, ``outer.SRC->DST``): the inner link
    ``2d^2 + 6d`` (``2d^2 + 2d`` without norms), the outer link ``3 s t + 2 t^2 + 2 s + 6 t`` (``+ 4 t`` without)."""
    out = {f"inner.{a}": 2 * d * d + (6 * d if norm else 2 * d) for a, d in dims.items()}
    for src, dst in edges:
        s, t = dims[src], dims[dst]
        out[f"outer.{src}->{dst}"] = 3 * s * t + 2 * t * t + (2 * s + 6 * t if norm else 4 * t)
    return out


def turn_tokens(topology: Topology, prompt_tokens: int, latent_steps: int | None = None,
                max_new_tokens: int | None = None) -> dict[str, int]:
    """The longest cache each agent builds in one turn (a turn's cache is dropped when the turn ends): its prompt,
    the latents handed to it (``latent_steps`` per in-round source, and per feedback source from round 2), then
    its own latent steps, or, for the decoder's final turn, the answer (and the answer nudge, when set)."""
    from recursivemas.runtime.graph import Plan

    plan, rounds = Plan.from_topology(topology), topology.rounds
    steps = topology.latent_steps if latent_steps is None else latent_steps
    answer = topology.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
    nudge = topology.generation.answer_nudge.max_new_tokens if topology.generation.answer_nudge else 0
    out = {}
    for agent in (a.name for a in topology.agents):
        inputs = steps * (len(plan.sources[agent]) + (len(plan.feedback_sources[agent]) if rounds > 1 else 0))
        think = prompt_tokens + inputs + steps if (agent != plan.decoder or rounds > 1) else 0
        decode = prompt_tokens + inputs + answer + nudge if agent == plan.decoder else 0
        out[agent] = max(think, decode)
    return out


@dataclass
class Actor:
    """One backbone actor (a unique model, dtype, device), shared by every backbone name and agent that has it."""

    names: list[str]
    config: BackboneConfig
    agents: list[str]
    source: str
    params: int
    hidden_size: int
    architecture: str
    cache: CacheShape
    agent_tokens: dict[str, int]
    levels: list[list[str]]  # the topology's levels, this actor's agents only: they run at once

    def weight_bytes(self, dtype: str | None = None) -> int:
        return self.params * DTYPE_BYTES[dtype or self.config.dtype]

    def kv_bytes(self, dtype: str | None = None) -> int:
        """Per request: the most this actor's agents hold at once (agents in one level run together)."""
        dtype = dtype or self.config.dtype
        return max((sum(self.cache.bytes(self.agent_tokens[a], dtype) for a in level) for level in self.levels),
                   default=0)

    @property
    def on_gpu(self) -> bool:
        return self.config.device.startswith("cuda") or self.config.num_gpus > 0


@dataclass
class Placement:
    """Where Ray would start each actor on ``gpus`` GPUs of ``memory`` bytes, and what that leaves."""

    gpus: int
    memory: int
    batch: int
    overhead: int
    assigned: dict[str, list[int]] = field(default_factory=dict)  # actor (its first name) -> GPU indices
    unplaced: list[str] = field(default_factory=list)
    used: list[int] = field(default_factory=list)  # bytes per GPU
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


def need(actor: Actor, batch: int, overhead: int, dtype: str | None = None) -> int:
    """Bytes an actor needs on its GPU: weights, ``batch`` requests' caches, and the runtime overhead."""
    return actor.weight_bytes(dtype) + batch * actor.kv_bytes(dtype) + overhead


def place(actors: list[Actor], gpus: int, memory: int, batch: int = 1, overhead: int = 0) -> Placement:
    """Ray's GPU accounting, first fit: an actor asking ``num_gpus >= 1`` takes that many free GPUs (and the engine
    uses the first: a backbone lives on one device), a fraction shares a GPU whose reservations leave room."""
    result = Placement(gpus, memory, batch, overhead, used=[0] * gpus)
    free = [1.0] * gpus
    for actor in actors:
        name, want = actor.names[0], actor.config.num_gpus
        if not actor.on_gpu:
            continue
        if want == 0:
            result.problems.append(f"backbone {name!r}: device {actor.config.device} but num_gpus 0: Ray hides the "
                                   "GPUs from an actor that reserves none; set num_gpus")
            result.unplaced.append(name)
            continue
        if want >= 1:
            if want != int(want):
                result.problems.append(f"backbone {name!r}: num_gpus {want:g}: Ray takes whole GPUs above 1")
            chosen = [i for i in range(gpus) if free[i] >= 1.0 - 1e-9][: math.ceil(want)]
            if len(chosen) < math.ceil(want):
                chosen = []
        else:
            chosen = next(([i] for i in range(gpus) if free[i] >= want - 1e-9), [])
        if not chosen:
            result.unplaced.append(name)
            continue
        for i in chosen:
            free[i] -= min(want, 1.0)
        result.assigned[name] = chosen
        result.used[chosen[0]] += need(actor, batch, overhead)
    reserved = sum(a.config.num_gpus for a in actors if a.on_gpu)
    if result.unplaced and not result.problems:
        result.problems.append(f"Ray cannot place {', '.join(result.unplaced)}: the backbones reserve "
                               f"{reserved:g} GPUs, the cluster has {gpus}; they would wait forever")
    elif result.unplaced:
        result.problems.append(f"unplaced: {', '.join(result.unplaced)}")
    for i, used in enumerate(result.used):
        if used > memory:
            on = [n for n, g in result.assigned.items() if g[0] == i]
            result.problems.append(f"GPU {i}: {', '.join(on)} need {used / 1e9:.1f} GB, over its "
                                   f"{memory / 1e9:.1f} GB")
    return result


def in_process(actors: list[Actor], memory: int, batch: int = 1, overhead: int = 0) -> int:
    """Bytes on the one visible GPU when the topology runs in one process (no Ray): every GPU backbone there."""
    gpu = [a for a in actors if a.on_gpu]
    return sum(a.weight_bytes() + batch * a.kv_bytes() for a in gpu) + (overhead if gpu else 0)


def build_actors(topology: Topology, prompt_tokens: int = 512, latent_steps: int | None = None,
                 max_new_tokens: int | None = None) -> list[Actor]:
    """One :class:`Actor` per unique backbone key, in the order the topology names its backbones."""
    from recursivemas.runtime.graph import Plan

    tokens = turn_tokens(topology, prompt_tokens, latent_steps, max_new_tokens)
    levels = Plan.from_topology(topology).levels
    actors: dict[tuple, Actor] = {}
    for name, cfg in topology.backbones.items():
        if cfg.key in actors:
            actors[cfg.key].names.append(name)
            continue
        path, source = find_config(cfg.model)
        config = load_config(str(path))
        actors[cfg.key] = Actor([name], cfg, [], source, count_parameters(str(path)), config.hidden_size,
                                (json.loads(path.read_text()).get("architectures") or [type(config).__name__])[0],
                                cache_shape(config), {}, [])
    for agent in topology.agents:
        actor = actors[topology.backbones[agent.backbone].key]
        actor.agents.append(agent.name)
        actor.agent_tokens[agent.name] = tokens[agent.name]
    for actor in actors.values():
        actor.levels = [[a for a in level if a in actor.agent_tokens] for level in levels]
    return list(actors.values())


def links_of(topology: Topology, actors: list[Actor]) -> dict:
    """The links' parameters and bytes, in the dtype they run in (``links_dtype``; ``auto`` reads the checkpoint)."""
    dims = {}
    for actor in actors:
        for agent in actor.agents:
            dims[agent] = actor.hidden_size
    params = link_parameters(dims, [*topology.edges, *topology.feedback], topology.link_norm)
    dtype, why = topology.links_dtype, "links_dtype"
    if dtype == "auto":
        if topology.links:
            from recursivemas.links import stored_dtype

            dtype, why = str(stored_dtype(Path(topology.links))).removeprefix("torch."), "the checkpoint's dtype"
        else:
            dtype, why = "float32", "auto without a links checkpoint: fresh links run in float32"
    total = sum(params.values())
    return {"parameters": total, "dtype": dtype, "dtype_reason": why, "bytes": total * DTYPE_BYTES[dtype],
            "inner": len(dims), "outer": len(params) - len(dims), "per_link": params}
