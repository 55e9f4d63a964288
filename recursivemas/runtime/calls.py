"""The typed calls between the executor and whatever runs a backbone, and between callers and a runner.

vLLM v1 keeps its coordinator and workers apart with one request type and one output type; this is that boundary
for RecursiveMAS. A backend receives a :class:`ThinkCall` (roll agents out, hand their latents on) or a
:class:`GenerateCall` (decode text), and answers with :class:`Thought` or the engine's ``Generation`` (text, token
ids, ``finish_reason``, token counts). The same frozen objects cross threads, Ray actors and Serve replicas, so a
field added here (a round index, a deadline) reaches every host the same way.

A caller asks a runner for a run with :class:`RunOptions`; its :class:`GenerationOverrides` are merged over the
topology's ``generation:`` into one :class:`Sampling` per kind of decoding turn (answers, text-mode messages).
A request's ``max_tokens`` thus travels from the HTTP ingress to ``BackboneEngine.generate`` in typed fields only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from recursivemas.config import GenerationConfig, Handoff, Mode, Topology, Transport
from recursivemas.engine.inputs import Prompt
from recursivemas.engine.sampling import Sampling
from recursivemas.errors import RequestError


def _check_names(cls: type, value: Mapping[str, Any], what: str, field_name: str | None) -> None:
    """A mapping given for a dataclass of settings names only its fields: a typo is a ``RequestError`` naming it."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise RequestError(f"{what}: unknown setting(s) {unknown}; use {', '.join(sorted(known))}",
                           field_name or unknown[0])


@dataclass(frozen=True)
class GenerationOverrides:
    """A run's changes to the topology's ``generation:``; None keeps the topology's value."""

    max_new_tokens: int | None = None
    message_max_new_tokens: int | None = None  # text-mode messages; unset there too: the answer's budget
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    @classmethod
    def of(cls, value: GenerationOverrides | Mapping[str, Any] | None) -> GenerationOverrides:
        """Overrides from themselves, a mapping of the same names (checked: a typo is an error) or None."""
        if value is None or isinstance(value, cls):
            return value or cls()
        _check_names(cls, value, "generation", "generation")
        stop = value.get("stop")
        return cls(**{**value, "stop": None if stop is None else tuple(stop)})

    def over(self, config: GenerationConfig) -> tuple[Sampling, Sampling]:
        """(answer sampling, text-mode message sampling) of a run."""
        def pick(name: str, default: Any) -> Any:
            mine = getattr(self, name)
            return default if mine is None else mine

        answer = Sampling(max_new_tokens=pick("max_new_tokens", config.max_new_tokens),
                          temperature=pick("temperature", config.temperature), top_p=pick("top_p", config.top_p),
                          seed=pick("seed", config.seed), stop=pick("stop", ()),
                          from_model=tuple(f for f in config.from_model_fields() if getattr(self, f) is None),
                          stop_tokens=config.stop_tokens)
        budget = pick("message_max_new_tokens", config.message_max_new_tokens)
        return answer, answer if budget is None else replace(answer, max_new_tokens=budget)


@dataclass(frozen=True)
class RunOptions:
    """What one run may change: mode, rounds, latent steps (None: the topology's) and sampling overrides.

    The one container a run's settings travel in, from every front door (CLI, Python API, ``Cluster``, HTTP, gRPC)
    to the executor; a topology is never rewritten to carry them. ``generation`` may be given as a mapping of
    :class:`GenerationOverrides` names. Hashable: runs with equal options may share one batched run."""

    mode: Mode = "latent"
    rounds: int | None = None
    latent_steps: int | None = None
    generation: GenerationOverrides = field(default_factory=GenerationOverrides)

    def __post_init__(self) -> None:
        object.__setattr__(self, "generation", GenerationOverrides.of(self.generation))

    @classmethod
    def of(cls, value: RunOptions | Mapping[str, Any] | None) -> RunOptions:
        """Options from themselves, a mapping of the same names (checked: a typo is an error) or None."""
        if value is None or isinstance(value, cls):
            return value or cls()
        _check_names(cls, value, "run options", None)
        return cls(**value)

    def rounds_for(self, topology: Topology) -> int:
        """The rounds this run takes: its own, else the topology's (the one place that default is read)."""
        return topology.rounds if self.rounds is None else self.rounds

    def latent_steps_for(self, topology: Topology) -> int:
        """The latent steps per thought this run takes: its own, else the topology's."""
        return topology.latent_steps if self.latent_steps is None else self.latent_steps


@dataclass(frozen=True)
class ThinkCall:
    """Roll ``agents`` out from their ``prompts`` for ``steps`` latent steps; hand each agent's latents to its
    ``targets`` through the link set named ``links`` (a host may hold several topologies' links)."""

    agents: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    steps: int
    targets: tuple[tuple[str, ...], ...]
    links: str = ""  # the link set's key on a shared host: the topology's name
    handoff: Handoff = "inner_outer"
    transport: Transport = "object_store"  # how a Ray host publishes the hand-offs; in-process they are tensors

    def __post_init__(self) -> None:
        if not (len(self.agents) == len(self.prompts) == len(self.targets)):
            raise ValueError(f"ThinkCall: {len(self.agents)} agents, {len(self.prompts)} prompts and "
                             f"{len(self.targets)} target lists; pass one of each per row")

    def with_prompts(self, prompts: Sequence[Prompt]) -> ThinkCall:
        return replace(self, prompts=tuple(prompts))


@dataclass(frozen=True)
class GenerateCall:
    """Decode each prompt with ``sampling``; ``stream`` asks for text deltas of a single prompt as they come.

    ``stops`` (one per prompt, or empty) name each prompt's run and its wall-clock deadline, so the host ends a
    row between decode steps when the run is cancelled (:meth:`BackboneHost.cancel`) or past due."""

    prompts: tuple[Prompt, ...]
    sampling: Sampling = field(default_factory=Sampling)
    stream: bool = False
    stops: tuple[RowStop | None, ...] = ()

    def __post_init__(self) -> None:
        if self.stream and len(self.prompts) != 1:
            raise ValueError(f"GenerateCall: streaming is for one prompt, got {len(self.prompts)}")
        if self.stops and len(self.stops) != len(self.prompts):
            raise ValueError(f"GenerateCall: {len(self.stops)} stops for {len(self.prompts)} prompts")

    def with_prompts(self, prompts: Sequence[Prompt]) -> GenerateCall:
        return replace(self, prompts=tuple(prompts))


@dataclass(frozen=True)
class RowStop:
    """What may end one prompt's decoding early: its run's cancel tag and deadline (``time.time()`` seconds)."""

    tag: str
    deadline: float | None = None


@dataclass
class Thought:
    """One agent's latent turn: what it read and what it hands to each target."""

    prompt_tokens: int
    latent_tokens: int
    handoffs: dict[str, Any] = field(default_factory=dict)  # target agent -> latent handle


@dataclass(frozen=True)
class BackboneDims:
    """What sizing a backbone's links needs to know of it (``build_links``), wherever the backbone runs."""

    hidden_size: int
    embedding_scale: float

    @classmethod
    def of(cls, engine_or_info: Any) -> BackboneDims:
        """From an engine (or anything with the two attributes) or a host's ``info()`` dict."""
        if isinstance(engine_or_info, Mapping):
            return cls(int(engine_or_info["hidden_size"]), float(engine_or_info["embedding_scale"]))
        return cls(int(engine_or_info.hidden_size), float(engine_or_info.embedding_scale))
