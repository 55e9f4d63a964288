"""Where ``recursivemas mcp`` gets its answers: a topology loaded in this process, or a running ``recursivemas serve``.

Both backends answer the same two calls, ``ask`` (one run, as an :class:`AskResult`) and ``describe``
(:class:`Topologies`), and both summarise a run from the same OpenAI ``usage`` body
(:func:`~recursivemas.serve.openai_responses.usage_body`): in process from the ``RunResult``, over HTTP from the
server's answer. An MCP client therefore reads the same numbers whichever way the server runs. The thin client
speaks plain HTTP with the standard library (no Ray, no web client to install) and loads no model here.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError

from recursivemas.config import BUILTIN_TOPOLOGIES, Mode, Topology, load_topology
from recursivemas.errors import InternalError, RequestError, UserError
from recursivemas.runtime.query import CONTEXT, Query, field_needs, named_fields
from recursivemas.serve.limits import Limits

MODES: tuple[str, ...] = get_args(Mode)


class BackendError(InternalError):
    """A backend that cannot answer, through no fault of the arguments: models that fail to load, a server that is
    down or answers badly. The message says what to do; the MCP tool returns it as an error result."""


class AgentSummary(BaseModel):
    """One agent's share of a run, summed over its turns."""

    agent: str
    turns: int
    prompt_tokens: int
    latent_steps: int
    decoded_tokens: int
    tool_calls: int


class AskResult(BaseModel):
    """What ask returns as structured content: the answer, why it ended, and what each agent spent."""

    answer: str
    topology: str
    mode: Mode
    finish_reason: Literal["stop", "length"] = Field(
        description="length: the answer was cut off (max_tokens, the topology's budget or the context window)")
    rounds: int
    latent_steps: int = Field(description="latent steps per thought (0 outside latent mode)")
    latent_steps_total: int
    prompt_tokens: int
    decoded_tokens: int = Field(description="tokens decoded by every agent, the answer's included")
    answer_tokens: int
    wall_s: float
    agents: list[AgentSummary] = Field(description="per agent, in topology order")

    @classmethod
    def from_usage(cls, topology: str, answer: str, finish_reason: str, usage: Mapping[str, Any]) -> AskResult:
        """From an OpenAI completion's parts: its text, ``finish_reason`` and ``usage`` (with the extension)."""
        ext = usage["recursivemas"]
        return cls(answer=answer, topology=topology, mode=ext["mode"], finish_reason=finish_reason,
                   rounds=ext["rounds"], latent_steps=ext["latent_steps"],
                   latent_steps_total=ext["latent_steps_total"], prompt_tokens=usage["prompt_tokens"],
                   decoded_tokens=ext["decoded_tokens"], answer_tokens=ext["answer_tokens"], wall_s=ext["wall_s"],
                   agents=[AgentSummary(agent=name, **numbers) for name, numbers in ext["agents"].items()])


class AgentInfo(BaseModel):
    name: str
    backbone: str
    model: str


class TopologyInfo(BaseModel):
    """A topology as list_topologies shows it; only its name is known of a served one with no local YAML."""

    name: str
    runs: str = Field(description="where its runs happen: in this process, or on a recursivemas serve URL")
    pattern: str | None = None
    agents: list[AgentInfo] = Field(default_factory=list)
    rounds: int | None = None
    latent_steps: int | None = None
    fields: list[str] = Field(default_factory=list, description="fields its templates name ({context}, ...)")
    links: str | None = None

    @classmethod
    def of(cls, topology: Topology, runs: str) -> TopologyInfo:
        agents = [AgentInfo(name=a.name, backbone=a.backbone, model=topology.backbones[a.backbone].model)
                  for a in topology.agents]
        return cls(name=topology.name, runs=runs, pattern=topology.pattern, agents=agents, rounds=topology.rounds,
                   latent_steps=topology.latent_steps, fields=named_fields(field_needs(topology)),
                   links=topology.links)


class Topologies(BaseModel):
    """list_topologies: the topology this server answers with, the built-in ones, and what a server serves."""

    loaded: TopologyInfo
    builtin: list[str]
    served: list[str] | None = Field(None, description="the topologies the recursivemas serve server serves")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_TOPOLOGIES.glob("*.yaml"))


@dataclass(frozen=True)
class AskRequest:
    """One ``ask``: the tool's arguments, checked here so a bad one is refused before anything runs."""

    question: str
    context: str | None = None
    mode: str = "latent"
    rounds: int | None = None
    latent_steps: int | None = None
    max_tokens: int | None = None

    def check(self, limits: Limits | None) -> None:
        """Refuse (:class:`RequestError` naming the argument, the value and the fix) what no run could do; with
        ``limits``, also what is over them (a server checks its own)."""
        if not self.question.strip():
            raise RequestError("question: is empty; pass the question or task for the agents", "question")
        if self.mode not in MODES:
            raise RequestError(f"mode: {self.mode!r} is not a mode; pass one of {', '.join(MODES)} (or leave it out "
                               "for latent)", "mode")
        for name, low, limit in (("rounds", 1, "max_rounds"), ("latent_steps", 0, "max_latent_steps"),
                                 ("max_tokens", 1, "max_tokens")):
            value, high = getattr(self, name), None if limits is None else getattr(limits, limit)
            if value is not None and (value < low or (high is not None and value > high)):
                span = f"from {low} to {high}" if high is not None else f"of at least {low}"
                raise RequestError(f"{name}: {value} is out of range; pass an integer {span}, or leave it out for "
                                   "the topology's own", name)


class InProcessBackend:
    """The topology run in this process. Its models load on the first ``ask``, not at start: an MCP client's
    handshake and ``list_tools`` must not wait for weights, and a client that never asks loads none."""

    def __init__(self, topology: Topology, limits: Limits | None = None) -> None:
        self.topology, self.name, self.limits = topology, topology.name, limits or Limits()
        self._system = None
        self._lock = threading.Lock()  # one run at a time: the engines are this process's, and so are its cores

    def describe(self) -> Topologies:
        return Topologies(loaded=TopologyInfo.of(self.topology, "in this process"), builtin=builtin_names())

    def ask(self, request: AskRequest) -> AskResult:
        from recursivemas.runtime import RunOptions
        from recursivemas.serve.openai_responses import usage_body

        request.check(self.limits)
        query = self._query(request)
        generation = {} if request.max_tokens is None else {"max_new_tokens": request.max_tokens}
        options = RunOptions(request.mode, request.rounds, request.latent_steps, generation)
        with self._lock:
            result = self._loaded().run(query, options)
        return AskResult.from_usage(self.name, result.text, result.finish_reason, usage_body(result))

    def _query(self, request: AskRequest) -> Query:
        """The question and its context, checked against the fields the topology's templates name (as
        ``recursivemas run --context`` is)."""
        named = named_fields(field_needs(self.topology))
        if request.context is not None and CONTEXT not in named:
            raise RequestError(f"context: no template of topology {self.name!r} names {{context}}, so no agent would "
                               f"read it; leave context out (its templates name {', '.join(named) or 'no fields'})",
                               "context")
        for name, agents in self.topology.fields(request.mode).items():
            if name == CONTEXT and request.context is None:
                raise RequestError(f"context: the template of agent {agents[0]!r} names {{context}}; pass context, "
                                   "the text it reads", "context")
            if name != CONTEXT:
                raise RequestError(f"{name}: the template of agent {agents[0]!r} names {{{name}}}, which ask cannot "
                                   f"pass (it passes context only); use `recursivemas run --field {name}=TEXT`", name)
        return Query.of(request.question, context=request.context)

    def _loaded(self):
        if self._system is None:
            from recursivemas.runtime import load_system

            try:
                self._system = load_system(self.topology)
            except UserError:
                raise
            except (OSError, RuntimeError, ValueError) as exc:
                raise BackendError(f"loading topology {self.name!r} failed: {exc}; fix its backbones (a model path "
                                   "or `recursivemas models list` name) and restart the MCP server") from exc
        return self._system


class ServedBackend:
    """A thin client of a running ``recursivemas serve``: ``ask`` is one ``POST /v1/chat/completions`` with the
    extension fields (``mode``, ``rounds``, ``latent_steps``, ``recursivemas.context``), ``describe`` reads
    ``GET /v1/models``. The server checks its own limits; its 4xx come back naming the tool argument."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 660.0) -> None:
        from recursivemas.serve.auth import keys_from_env

        self.base, self.timeout_s = _base_url(url), timeout_s
        self.api_key = api_key if api_key is not None else next(iter(keys_from_env()), None)
        try:  # a built-in name or a YAML file here describes the served topology, served under its `name`
            self.topology: Topology | None = load_topology(model)
        except (OSError, ValueError):
            self.topology = None
        self.name = self.topology.name if self.topology else model

    def describe(self) -> Topologies:
        cards = self._call("GET", "/v1/models").get("data", [])
        runs = f"on {self.base}"
        info = TopologyInfo.of(self.topology, runs) if self.topology else TopologyInfo(name=self.name, runs=runs)
        for card in cards:
            if card.get("id") == self.name and "recursivemas" in card:
                info.fields = list(card["recursivemas"].get("fields", []))
        return Topologies(loaded=info, builtin=builtin_names(), served=[c["id"] for c in cards])

    def ask(self, request: AskRequest) -> AskResult:
        request.check(None)
        body: dict[str, Any] = {"model": self.name, "messages": [{"role": "user", "content": request.question}],
                                "mode": request.mode}
        for name in ("rounds", "latent_steps", "max_tokens"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if request.context is not None:
            body["recursivemas"] = {"context": request.context}
        answer = self._call("POST", "/v1/chat/completions", body)
        try:
            choice = answer["choices"][0]
            return AskResult.from_usage(self.name, choice["message"]["content"], choice["finish_reason"],
                                        answer["usage"])
        except (KeyError, IndexError, TypeError, ValidationError) as exc:
            raise BackendError(f"the server at {self.base} answered a completion without the recursivemas usage "
                               f"({type(exc).__name__}: {exc}); is it a recursivemas serve?") from None

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"accept": "application/json", "content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise self._refusal(err) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise BackendError(f"the server at {self.base} did not answer ({reason}); start it with `recursivemas "
                               f"serve {self.name}`, or fix --server") from None
        except ValueError:
            raise BackendError(f"the server at {self.base} answered {path} with something other than JSON; is "
                               "--server the URL of a recursivemas serve?") from None

    def _refusal(self, err: urllib.error.HTTPError) -> Exception:
        """The server's error answer as the error of the MCP argument (or server flag) at fault."""
        try:
            error = json.loads(err.read())["error"]
            message, param = str(error["message"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, param = f"HTTP {err.code} {err.reason}", None
        if err.code == 401:
            sent = "the key it was given" if self.api_key else "a request without a key"
            return UserError(f"--api-key: the server at {self.base} refused {sent} ({message}); pass its key with "
                             "--api-key KEY or RECURSIVEMAS_API_KEY", "--api-key")
        if err.code == 404 and param == "model":
            return UserError(f"--topology {self.name}: {message} Restart `recursivemas mcp` with one of them.",
                             "--topology")
        if 400 <= err.code < 500 and err.code != 429:
            arg = _argument(param)
            return RequestError(message if message.startswith(f"{arg}:") else f"{arg}: {message}", arg)
        return BackendError(f"the server at {self.base} could not answer (HTTP {err.code}): {message}")


def _argument(param: str | None) -> str:
    """The ``ask`` argument an OpenAI error's ``param`` is about."""
    if param is None:
        return "request"
    if param.startswith("messages"):
        return "question"
    if param in ("recursivemas.context", f"recursivemas.fields.{CONTEXT}"):
        return "context"
    return "max_tokens" if param == "max_completion_tokens" else param


def _base_url(url: str) -> str:
    """``http://host:port`` of a server given with or without ``/v1``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--server {url!r}: not an http(s) URL; pass the URL of a running `recursivemas serve`, "
                        "e.g. http://127.0.0.1:8000", "--server")
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base
