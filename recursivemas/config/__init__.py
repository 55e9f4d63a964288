"""Typed configuration: a topology is data, validated before any model loads.

A :class:`Topology` names the backbones (one engine or actor each, shared by every agent that names it), the agents,
and the graph: either a paper ``pattern`` preset or explicit ``edges`` / ``feedback`` / ``decoder``. Presets expand
into the same explicit graph, so one executor serves all patterns. Every validator names the field, the bad value and
the fix, because a YAML typo should cost a user seconds, not a traceback hunt.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recursivemas import prompts
from recursivemas.engine.sampling import Sampling, StopTokens
from recursivemas.errors import ConfigError as ConfigError  # re-exported: configs raise it
from recursivemas.config.graph_checks import check_graph
from recursivemas.config.loading import format_validation_error as format_validation_error, load_yaml_config

Pattern = Literal["sequential", "mixture", "distillation", "deliberation"]
Mode = Literal["latent", "text", "single"]
Handoff = Literal["inner_outer", "outer"]  # what crosses an edge: outer(inner(H)), or outer(H)
Transport = Literal["object_store", "gloo", "nccl"]  # how latents travel between Ray actors
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(Strict):
    """A frozen causal LM: a hub id, a local directory, or an offline zoo name (``recursivemas models list``)."""

    model: str = Field(min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    # Cluster placement (ignored in-process): fractions share a device; `resources` pins to nodes that offer them.
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(0.25, gt=0)
    resources: dict[str, float] = Field(default_factory=dict)
    max_restarts: int = Field(1, ge=0)
    torch_threads: int | None = Field(None, ge=1)
    """Intra-op CPU threads of this backbone's actor; None: the CPUs Ray reserves for it (at least 1). Agents in a
    chain take turns, so on a CPU machine each backbone may use every core without reserving them all."""

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two backbones one: topologies whose backbones have equal keys share one loaded engine (in
        one process), one actor (on a cluster) and one deployment (under Serve)."""
        return (self.model, self.dtype, self.device)


class FramingConfig(Strict):
    """How an agent's prompt is framed as a conversation. Set at the topology level for every agent, and per agent
    to override a field; an unset field keeps the default (no system turn, no template options, ``plain``)."""

    system_prompt: str | None = None
    """A system turn before the user turn (the authors' agents get a short "helpful assistant" line)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Keyword arguments for the tokenizer's chat template, e.g. ``{enable_thinking: false}`` for Qwen3."""
    no_chat_template: Literal["plain", "refuse"] | None = None
    """For a model without a chat template: the plain "prompt, then Response:" frame, or an error."""


class AgentConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    backbone: str
    prompt: str | None = None
    """A role preset name (planner, critic, solver, expert, summarizer, learner, reflector, tool_caller, agent) or a
    template with ``{question}`` and slots; None picks the preset for the agent's place in the pattern."""
    later_prompt: str | None = None
    """The template (or preset) for rounds 2 and on, e.g. one that tells the first agent it is revising the team's
    last attempt; None keeps ``prompt`` every round. ``{round}`` in either gives the round number."""
    framing: FramingConfig | None = None
    tools: bool = False
    """Give this agent the tool loop (Python, search) when it decodes text."""


NUDGE_DEFAULTS = {  # per style: (suffix, max_new_tokens) when the topology leaves them unset
    "continue": ("\n\nThe final answer, in \\boxed{}, is: \\boxed{", 32),
    "authors": ("\nFinal Answer: \\boxed{", 16),
}


class AnswerNudge(Strict):
    r"""When the final answer lacks ``pattern`` (a regular expression), decode once more after ``suffix``, up to
    ``max_new_tokens``, and append what comes to the answer. It decodes with the answer's sampling (temperature,
    top_p, stop tokens), as the authors' retry samples with their run's settings, and every answer of a call that
    needs it goes in one batched call. Two styles:

    - ``continue`` (the default): the decoder's own reply goes on. The suffix is appended to the answer inside its
      chat turn, so the model still reads its whole prompt (the question, the hand-offs' latents) while it boxes
      the answer. Suffix ``"\n\nThe final answer, in \boxed{}, is: \boxed{"``, 32 new tokens.
    - ``authors``: the retry of the authors' released code (``--ans``). A fresh prompt of plain text,
      ``answer.rstrip() + suffix``, with no chat template, no system turn, no question and no latents (only the
      BOS the tokenizer adds to a plain string, if any); the answer becomes that text plus what comes. Suffix
      ``"\nFinal Answer: \boxed{"``, 16 new tokens.

    An unset ``suffix`` or ``max_new_tokens`` takes its style's value."""

    style: Literal["continue", "authors"] = "continue"
    pattern: str = r"\\boxed\{"
    suffix: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc}); write it for Python's re module, "
                             "e.g. \\\\boxed\\{ matches \\boxed{") from None
        return value

    @model_validator(mode="after")
    def _style_defaults(self) -> AnswerNudge:
        suffix, budget = NUDGE_DEFAULTS[self.style]
        if self.suffix is None:
            self.__dict__["suffix"] = suffix
        if self.max_new_tokens is None:
            self.__dict__["max_new_tokens"] = budget
        return self


class GenerationConfig(Strict):
    """Sampling for decoded text. ``max_new_tokens`` caps the final answer; ``message_max_new_tokens`` caps each
    text-mode message an agent writes for the next one (unset: the answer's cap).

    ``from_model: true`` takes each backbone's own sampling (its ``generation_config``: temperature, top_p, and
    greedy when it does not sample) for every field not written here; fields written here win."""

    max_new_tokens: int = Field(Sampling.max_new_tokens, ge=1)
    message_max_new_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(Sampling.temperature, ge=0)
    top_p: float = Field(Sampling.top_p, gt=0, le=1)
    seed: int | None = None
    from_model: bool = False
    stop_tokens: StopTokens = "generation_config"
    """The end tokens that end a decode: every end token the model's ``generation_config`` and tokenizer name
    (``generation_config``), or only the tokenizer's ``eos_token_id`` (``tokenizer``, as the authors' code stops)."""
    answer_nudge: AnswerNudge | None = None
    """Decode once more when the answer lacks a pattern (``\\boxed{`` by default): see :class:`AnswerNudge`."""

    def from_model_fields(self) -> tuple[str, ...]:
        """The sampling fields each backbone's own settings fill (empty unless ``from_model``)."""
        if not self.from_model:
            return ()
        return tuple(f for f in ("temperature", "top_p") if f not in self.model_fields_set)


class ToolsConfig(Strict):
    python_timeout_s: float = Field(10.0, gt=0)
    python_memory_mb: int = Field(512, ge=64)
    max_rounds: int = Field(5, ge=0)
    python_sandbox: Literal["bwrap", "bwrap_cgroup", "none"] = "bwrap"
    """Where model-written code runs (the tool-caller's Python tool, code scoring): ``bwrap``, the bubblewrap OS
    sandbox (refused when it cannot run here; one memory budget per run from a control group where the host gives
    one, else per-process limits that sum to it), ``bwrap_cgroup`` (the same, refused without a control group),
    or ``none``: unisolated, rlimits only, never on an exposed server."""


def _edge(value: object) -> tuple[str, str]:
    if isinstance(value, str) and "->" in value:
        src, dst = (part.strip() for part in value.split("->", 1))
        return src, dst
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return str(value[0]), str(value[1])
    raise ValueError(f"an edge must be 'source->target' or [source, target], got {value!r}")


class Topology(BaseModel):
    """The whole system as data. Change it with :meth:`replace`, which validates again."""

    model_config = ConfigDict(extra="forbid")

    name: str = "topology"
    backbones: dict[str, BackboneConfig] = Field(min_length=1)
    agents: list[AgentConfig] = Field(min_length=1)
    pattern: Pattern | None = None
    edges: list[tuple[str, str]] | None = None
    feedback: list[tuple[str, str]] | None = None
    decoder: str | None = None
    rounds: int = Field(3, ge=1)
    latent_steps: int = Field(32, ge=0)
    handoff: Handoff = "inner_outer"
    transport: Transport = "object_store"
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = None
    """On a cluster, place the backbone actors this topology starts as one Ray placement group with this strategy."""
    """How latents cross between backbone actors on a cluster: Ray's object store, or Ray Direct Transport over a
    collective group (gloo on CPU, nccl on GPUs). Direct transport gives the topology its own backbone actors."""
    links: str | None = None
    link_norm: bool = True
    links_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """The dtype links run in at inference: ``auto`` keeps the dtype the checkpoint stores (the authors' 16-bit
    releases run so), float32 upcasts (the default; training always uses float32)."""
    framing: FramingConfig | None = None
    """Every agent's framing (each agent's own ``framing`` overrides it field by field)."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)

    @field_validator("edges", "feedback", mode="before")
    @classmethod
    def _parse_edges(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list of 'source->target' edges, got {value!r}")
        return [_edge(v) for v in value]

    @model_validator(mode="after")
    def _expand_and_check(self) -> Topology:
        names = [a.name for a in self.agents]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"agents: duplicate agent name(s) {dupes}; give every agent a unique name")
        reserved = [n for n in names if n in prompts.RESERVED]
        if reserved:
            raise ValueError(
                f"agents: name(s) {reserved} are reserved for the {{question}}/{{inputs}}/{{feedback}} prompt "
                "placeholders; rename the agent(s)"
            )
        for agent in self.agents:
            if agent.backbone not in self.backbones:
                raise ValueError(
                    f"agents.{agent.name}.backbone: unknown backbone {agent.backbone!r}; "
                    f"declared backbones are {sorted(self.backbones)}"
                )
        if self.pattern is not None:
            if self.edges is not None or self.feedback is not None or self.decoder is not None:
                raise ValueError("pattern: set either a pattern preset or explicit edges/feedback/decoder, not both")
            self._apply_preset(self.pattern)
        if self.decoder is None:
            raise ValueError("decoder: name the agent that writes the answer (or pick a pattern preset)")
        object.__setattr__(self, "edges", self.edges or [])
        object.__setattr__(self, "feedback", self.feedback or [])
        check_graph(names, self.edges, self.feedback, self.decoder)
        self._default_prompts()
        self._check_slots()
        return self

    # --- presets -------------------------------------------------------------------------------------------------
    def _apply_preset(self, pattern: str) -> None:
        names = [a.name for a in self.agents]
        need = {"distillation": 2, "deliberation": 2}.get(pattern)
        if need is not None and len(names) != need:
            raise ValueError(f"pattern: {pattern!r} needs exactly {need} agents, got {len(names)} ({names})")
        if len(names) < 2:
            raise ValueError(f"pattern: {pattern!r} needs at least 2 agents, got {names}")
        *firsts, last = names
        if pattern == "mixture":
            edges = [(e, last) for e in firsts]
            feedback = [(last, e) for e in firsts]
        else:
            edges = list(zip(names, names[1:]))
            feedback = [(last, names[0])]
        roles = {
            "sequential": ["planner"] + ["critic"] * (len(names) - 2) + ["solver"],
            "mixture": ["expert"] * len(firsts) + ["summarizer"],
            "distillation": ["expert", "learner"],
            "deliberation": ["reflector", "tool_caller"],
        }[pattern]
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "feedback", feedback)
        object.__setattr__(self, "decoder", last)
        for agent, role in zip(self.agents, roles):
            if agent.prompt is None:
                object.__setattr__(agent, "prompt", role)
        if pattern == "deliberation":
            object.__setattr__(self.agents[-1], "tools", True)

    def _default_prompts(self) -> None:
        for agent in self.agents:
            if agent.prompt is None:
                preset = agent.name if agent.name in prompts.ROLE_PROMPTS else "agent"
                object.__setattr__(agent, "prompt", preset)

    def _check_slots(self) -> None:
        """Every template has the question, no slot without an edge, and a slot for every hand-off it receives:
        in-round hand-offs every round, feedback from round 2 on (so a first-round ``prompt`` beside a
        ``later_prompt`` needs no feedback slot). A placeholder that names no agent is a field (``{context}``)."""
        names = {a.name for a in self.agents}
        for agent in self.agents:
            incoming = [(s, False) for s, d in self.edges if d == agent.name]
            incoming += [(s, True) for s, d in self.feedback if d == agent.name]
            sources = {s for s, _ in incoming}
            checks = [("prompt", agent.prompt, agent.later_prompt is None)]
            if agent.later_prompt is not None:
                checks.append(("later_prompt", agent.later_prompt, True))
            for name, raw, gets_feedback in checks:
                field = f"agents.{agent.name}.{name}"
                template = prompts.resolve_template(raw or "")
                found = prompts.placeholders(template)
                if prompts.QUESTION not in found:
                    raise ValueError(f"{field}: the template has no {{question}} placeholder; add one where it goes")
                for slot in found:
                    if slot in names and slot not in sources:  # another name is a field the question brings
                        raise ValueError(
                            f"{field}: slot {{{slot}}} has no edge {slot}->{agent.name}; "
                            f"agents handing over to {agent.name}: {sorted(sources) or 'none'}"
                        )
                for src, is_feedback in incoming:
                    if (gets_feedback or not is_feedback) and prompts.slot_for(template, src, is_feedback) is None:
                        kind = "feedback" if is_feedback else "inputs"
                        typo = difflib.get_close_matches(src, prompts.field_names(template, names), n=1)
                        hint = (f" ({{{typo[0]}}} names no agent, so it is read as a field of the question; did "
                                f"you mean {{{src}}}?)" if typo else "")
                        raise ValueError(f"{field}: no slot for the hand-off from {src!r}; add {{{src}}} or "
                                         f"{{{kind}}} to the template{hint}")

    # --- helpers -------------------------------------------------------------------------------------------------
    def agent(self, name: str) -> AgentConfig:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"no agent named {name!r}; agents are {[a.name for a in self.agents]}")

    def template(self, agent: str, round: int = 1) -> str:
        """The agent's template for ``round``: ``later_prompt`` from round 2 on when it has one."""
        config = self.agent(agent)
        chosen = config.later_prompt if round > 1 and config.later_prompt is not None else config.prompt
        return prompts.resolve_template(chosen or "")

    def fields_of(self, agent: str, later: bool = True) -> list[str]:
        """The fields (``{context}``, ``{document}``, ...) that the agent's templates name (its ``later_prompt``'s
        too unless ``later`` is false), in order: text each question must bring for this agent, which the agents
        whose templates do not name it never see."""
        config, agents = self.agent(agent), [a.name for a in self.agents]
        raws = (config.prompt, config.later_prompt) if later else (config.prompt,)
        found = [f for raw in raws if raw is not None
                 for f in prompts.field_names(prompts.resolve_template(raw), agents)]
        return list(dict.fromkeys(found))

    def fields(self, mode: Mode = "latent") -> dict[str, list[str]]:
        """Every field a run in ``mode`` needs -> the agents that read it (``single`` runs the decoder alone)."""
        agents = [self.decoder] if mode == "single" else [a.name for a in self.agents]
        out: dict[str, list[str]] = {}
        for agent in agents:
            for name in self.fields_of(agent, later=mode != "single"):
                out.setdefault(name, []).append(agent)
        return out

    def framing_of(self, agent: str) -> FramingConfig:
        """The agent's framing, every field resolved: its own, else the topology's, else the default."""
        mine, common = self.agent(agent).framing or FramingConfig(), self.framing or FramingConfig()

        def pick(name: str):
            value = getattr(mine, name)
            return getattr(common, name) if value is None else value

        return FramingConfig(system_prompt=pick("system_prompt"),
                             chat_template_kwargs=pick("chat_template_kwargs") or {},
                             no_chat_template=pick("no_chat_template") or "plain")

    def to_dict(self) -> dict:
        """Plain data that validates back into an equal topology (a preset stays a preset)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self.pattern is not None:
            for key in ("edges", "feedback", "decoder"):
                data.pop(key, None)
        else:
            data["edges"] = [f"{s}->{d}" for s, d in self.edges]
            data["feedback"] = [f"{s}->{d}" for s, d in self.feedback]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: object) -> Topology:
        """A validated copy with some top-level fields changed (e.g. ``rounds``, ``latent_steps``)."""
        return Topology.model_validate({**self.to_dict(), **changes})


BUILTIN_TOPOLOGIES = Path(__file__).parents[1] / "topologies"


def load_topology(path: str | Path) -> Topology:
    """Load a topology from a YAML file, or by the name of a built-in one (e.g. ``sequential-demo``)."""
    path = Path(path)
    builtin = BUILTIN_TOPOLOGIES / f"{path}.yaml"
    if not path.is_file() and builtin.is_file():
        path = builtin
    known = sorted(p.stem for p in BUILTIN_TOPOLOGIES.glob("*.yaml"))
    topology = load_yaml_config(path, Topology, "topology", "backbones, agents, ...",
                                missing_hint=f" (built-in topologies: {known})")
    here = path.resolve().parent  # relative paths in the file are relative to where it really is (symlinks)
    if topology.links and not Path(topology.links).is_absolute():
        topology.links = str((here / topology.links).resolve())
    for backbone in topology.backbones.values():  # a local model directory next to the file, not a hub id or zoo name
        if not Path(backbone.model).is_absolute() and (here / backbone.model).is_dir():
            backbone.model = str((here / backbone.model).resolve())
    return topology
