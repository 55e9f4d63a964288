"""The OpenAI-compatible requests, as pure logic: parse a chat-completion request, validate it against
:class:`Limits` (errors: :mod:`recursivemas.serve.errors`) and turn the chat into the topology's question. No Ray,
no web framework; the response bodies are in :mod:`recursivemas.serve.openai_responses`.

Request fields (``POST /v1/chat/completions``), decided one by one:

- used: ``model`` (the topology name), ``messages``, ``max_tokens`` (``max_completion_tokens`` is accepted as its
  newer name; both at once must agree), ``temperature`` [0, 2], ``top_p`` (0, 1], ``stream``,
  ``stream_options.include_usage`` (and ``include_turns``, ours: a ``recursivemas.turn`` event per agent turn as
  it finishes), ``stop`` (a string or up to 4), ``seed``, ``user`` (for logs), and the extensions ``rounds``,
  ``latent_steps``, ``mode`` (``latent`` | ``text`` | ``single``) within :class:`Limits`, and
  ``timeout_s`` (the request's deadline in seconds, capped at ``Limits.max_timeout_s``), and the ``recursivemas``
  object: ``fields`` (``{name: text}``, the fields the topology's templates name, such as ``{context}``) and
  ``context`` (shorthand for ``fields.context``). The last user message (as below) and these fields become the run's
  :class:`~recursivemas.runtime.Query`. A field that a template of the topology names (for the request's mode) but
  the request lacks is a 400 with ``param`` ``recursivemas.fields.<name>``, naming the agent; so is a field no
  template of the topology names (a misspelt field must not be dropped), and a value that is not a string.
- accepted only at their no-op value, a 400 naming the field otherwise (the answer would silently differ from what
  was asked): ``n`` = 1, ``presence_penalty`` = ``frequency_penalty`` = 0, ``logprobs`` false, ``top_logprobs`` 0,
  ``logit_bias`` {}, ``response_format`` ``{"type": "text"}``, ``tools`` [], ``tool_choice`` ``none``/``auto``;
  ``parallel_tool_calls`` and ``stream_options.include_obfuscation`` are accepted and ignored (no tools, no
  obfuscation). ``null`` for any optional field means "not sent".
- any other field: 400 ``unknown_parameter`` naming it, as OpenAI answers "Unrecognized request argument": a
  misspelt ``latent_step`` must not be ignored.
- messages: roles ``system``, ``developer`` (a system message under its newer name), ``user``, ``assistant``;
  content a non-empty string or a list of ``{"type": "text", "text": ...}`` parts; an optional ``name`` is ignored,
  and so are ``refusal``, ``tool_calls``, ``function_call``, ``annotations``, ``audio`` when null or empty (clients
  echo them back with an assistant message). Tool and function messages, images and audio are refused. The last
  message must be the user's question.

Types are strict: ``"max_tokens": "64"`` or ``64.0`` is a 400, as is a bool where a number goes. Every error names
the field (``param``, e.g. ``messages[1].content``), the value and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recursivemas.config import Mode
from recursivemas.errors import RequestError
from recursivemas.runtime.calls import GenerationOverrides, RunOptions
from recursivemas.runtime.query import CONTEXT, FieldNeeds, Query, named_fields
from recursivemas.serve.errors import APIError
from recursivemas.serve.limits import Limits as Limits  # re-exported: the request checks take it
from recursivemas.serve.request_body import decode_body


# ---------------------------------------------------------------------------------------------------- the request


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None
    # what clients echo back with an assistant message: accepted when null or empty (no tools, no audio)
    refusal: Any = None
    tool_calls: Any = None
    function_call: Any = None
    annotations: Any = None
    audio: Any = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_turns: bool | None = None  # our extension: a `recursivemas.turn` event per agent turn as it finishes
    include_obfuscation: bool | None = None  # accepted, ignored: nothing is obfuscated


class ResponseFormat(_Strict):
    type: Literal["text"]


class Extension(_Strict):
    """The request's ``recursivemas`` object: the text fields the topology's templates name beside the question."""

    context: str | None = None
    fields: dict[str, Any] | None = None  # any value here: a non-string is named by _check_fields, not pydantic

    def given(self) -> dict[str, Any]:
        """Every field sent: ``fields``, plus ``context`` as the ``context`` field."""
        out = dict(self.fields or {})
        if self.context is not None:
            out[CONTEXT] = self.context
        return out


class ChatCompletionRequest(_Strict):
    """A validated ``POST /v1/chat/completions`` body (see the module docstring for each field's treatment)."""

    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    # extensions
    rounds: int | None = None
    latent_steps: int | None = None
    mode: Mode | None = None
    timeout_s: float | int | None = Field(None, gt=0)
    recursivemas: Extension | None = None
    # accepted at their no-op value only
    n: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    @property
    def stop_sequences(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def include_turns(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_turns)

    def question(self) -> str:
        return question_from_messages(self.messages)

    def query(self) -> Query:
        """The question with the fields of the ``recursivemas`` extension: what the run is asked."""
        return Query.of(self.question(), fields=self.recursivemas.given() if self.recursivemas else None)

    def run_options(self) -> RunOptions:
        """The run this request asks for: what was sent, the topology's own settings for the rest."""
        generation = GenerationOverrides(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                         top_p=self.top_p, seed=self.seed, stop=tuple(self.stop_sequences) or None)
        return RunOptions(mode=self.mode or "latent", rounds=self.rounds, latent_steps=self.latent_steps,
                          generation=generation)


_FIELDS = {name for m in (ChatCompletionRequest, ChatMessage, TextPart, StreamOptions, ResponseFormat, Extension)
           for name in m.model_fields}
_EXPECTED = {
    "model": "a topology name as a string (GET /v1/models lists them)",
    "messages": "a list of {\"role\": ..., \"content\": ...} objects",
    "message": "an object like {\"role\": \"user\", \"content\": \"...\"}",
    "role": "one of system, developer, user, assistant (tool and function messages are not supported)",
    "content": "a non-empty string or a list of {\"type\": \"text\", \"text\": ...} parts (text only)",
    "type": "\"text\" (only text is supported)",
    "text": "a string",
    "name": "a string",
    "max_tokens": "an integer (at least 1)",
    "max_completion_tokens": "an integer (at least 1)",
    "temperature": "a number from 0 to 2 (0 is greedy)",
    "top_p": "a number greater than 0 and at most 1",
    "stream": "true or false",
    "stream_options": "an object like {\"include_usage\": true}",
    "include_usage": "true or false",
    "include_turns": "true or false",
    "include_obfuscation": "true or false",
    "stop": "a string or a list of strings",
    "seed": "an integer",
    "user": "a string",
    "rounds": "an integer (at least 1)",
    "latent_steps": "an integer (at least 0)",
    "mode": "one of latent, text, single",
    "timeout_s": "a number of seconds greater than 0 (the server caps it)",
    "recursivemas": "an object like {\"context\": \"...\"} or {\"fields\": {\"context\": \"...\"}}",
    "context": "a string: the text of the {context} field",
    "fields": "an object of field names to strings, like {\"context\": \"...\"}",
    "n": "1 (one choice per request)",
    "presence_penalty": "0 (penalties are not supported)",
    "frequency_penalty": "0 (penalties are not supported)",
    "logprobs": "false (log probabilities are not returned)",
    "top_logprobs": "0",
    "logit_bias": "{} (logit bias is not supported)",
    "response_format": "{\"type\": \"text\"} (JSON modes are not supported)",
    "tools": "[] (tool calling is not supported)",
    "tool_choice": "\"none\"",
    "parallel_tool_calls": "true or false",
}


def _param(loc: Sequence[str | int]) -> str:
    """``('messages', 0, 'content', 'str')`` -> ``messages[0].content`` (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _FIELDS or not out:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)  # ASCII: safe to echo whatever was sent
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(param: str, problem: str, value: Any = ..., fix: str = "", status: int = 400, code: str = "invalid_value",
         **kw) -> APIError:
    got = "" if value is ... else f" (got {_show(value)})"
    return APIError(status, f"{param}: {problem}{got}. {fix}".rstrip(), param=param, code=code, **kw)


def _from_validation(err: ValidationError) -> APIError:
    errors = err.errors(include_url=False)
    # Of a union's alternatives, the deepest complaint is the useful one: messages[0].content[0].type, not content.
    e = max(errors, key=lambda x: _param(x["loc"]).count(".") + _param(x["loc"]).count("["))
    param = _param(e["loc"])
    if e["type"] == "extra_forbidden":  # the unknown name itself is no field of ours: keep it
        param = f"{_param(e['loc'][:-1])}.{e['loc'][-1]}".lstrip(".")
    leaf = param.rsplit(".", 1)[-1]
    leaf = "message" if leaf.startswith("messages[") else leaf.split("[", 1)[0]
    if e["type"] == "extra_forbidden":
        return _bad(param, "unknown parameter", code="unknown_parameter",
                    fix="Remove it or fix its spelling (the extensions are rounds, latent_steps, mode, "
                        "timeout_s and recursivemas: {context, fields}).")
    if e["type"] == "missing":
        return _bad(param, "is required", fix=f"Send {_EXPECTED.get(leaf, 'it')}.", code="missing_required_parameter")
    code = "invalid_type" if e["type"].endswith("_type") or e["type"] == "model_attributes_type" else "invalid_value"
    problem = "wrong type" if code == "invalid_type" else e["msg"][0].lower() + e["msg"][1:]
    return _bad(param, problem, e.get("input"), f"Send {_EXPECTED.get(leaf, 'a valid value')}.", code=code)


def parse_request(body: bytes, limits: Limits, models: Collection[str],
                  needs: Mapping[str, FieldNeeds] | None = None) -> ChatCompletionRequest:
    """Parse and validate a raw request body; any problem is an :class:`APIError` (4xx) naming the field.
    ``needs`` (model -> :func:`field_needs`), where given, is what the request's fields are checked against."""
    return parse_payload(decode_body(body, limits.max_body_bytes), limits, models, needs)


def parse_payload(data: Any, limits: Limits, models: Collection[str],
                  needs: Mapping[str, FieldNeeds] | None = None) -> ChatCompletionRequest:
    """Validate an already-decoded request (a JSON object as a dict); the gRPC path comes in here too."""
    if not isinstance(data, Mapping):
        kind = "null" if data is None else {list: "an array", str: "a string", bool: "a boolean"}.get(type(data),
                                                                                                 "a number")
        raise APIError(400, f"The request body must be a JSON object, not {kind} (got {_show(data)}). "
                            'Send {"model": ..., "messages": [...]}.', code="invalid_json")
    try:
        req = ChatCompletionRequest.model_validate(dict(data))
    except ValidationError as e:
        raise _from_validation(e) from None
    _check_messages(req, limits)
    if req.model not in models:
        names = ", ".join(sorted(models)) or "none"
        raise _bad("model", "no such model", req.model, f"Use one of the served topologies: {names}.", status=404,
                   code="model_not_found")
    _check_numbers(req, limits)
    _check_no_ops(req)
    _check_fields(req, None if needs is None else needs.get(req.model))
    return req


_ECHOED = ("refusal", "tool_calls", "function_call", "annotations", "audio")


def _check_messages(req: ChatCompletionRequest, limits: Limits) -> None:
    msgs = req.messages
    if not msgs:
        raise _bad("messages", "is empty", fix="Send at least one message with role user.", code="empty_messages")
    if len(msgs) > limits.max_messages:
        raise _bad("messages", f"{len(msgs)} messages, over the limit of {limits.max_messages}",
                   fix="Send fewer messages (drop or summarise the oldest turns).")
    for i, m in enumerate(msgs):
        for name in _ECHOED:
            if getattr(m, name) not in (None, [], {}, ""):
                raise _bad(f"messages[{i}].{name}", "tools, refusals and audio are not supported", getattr(m, name),
                           "Send null or leave it out.", code="unsupported_parameter")
        if not m.text.strip():
            raise _bad(f"messages[{i}].content", f"the {m.role} message is empty", m.content,
                       "Send non-empty text, or drop the message.")
    if not any(m.role == "user" for m in msgs):
        raise _bad("messages", "there is no user message", fix="Add a message with role user: the question.")
    if msgs[-1].role != "user":
        i = len(msgs) - 1
        raise _bad(f"messages[{i}].role", "the last message must be the user's question", msgs[-1].role,
                   "End the messages with a user message (assistant prefill is not supported).")


def _check_numbers(req: ChatCompletionRequest, limits: Limits) -> None:
    if (req.max_tokens is not None and req.max_completion_tokens is not None
            and req.max_tokens != req.max_completion_tokens):
        raise _bad("max_completion_tokens", f"disagrees with max_tokens={req.max_tokens}", req.max_completion_tokens,
                   "Send only one of the two.")
    for name, low, high in (("max_tokens", 1, limits.max_tokens), ("max_completion_tokens", 1, limits.max_tokens),
                            ("rounds", 1, limits.max_rounds), ("latent_steps", 0, limits.max_latent_steps)):
        value = getattr(req, name)
        if value is not None and not low <= value <= high:
            where = "over the server's limit" if value > high else "too small"
            raise _bad(name, f"{where}", value, f"Send an integer from {low} to {high}.")
    if req.seed is not None and not -(2**63) <= req.seed < 2**63:  # the engine's generator takes a 64-bit seed
        raise _bad("seed", "out of range", req.seed, "Send an integer from -2**63 to 2**63-1.")
    if req.stop is not None:
        stops = req.stop_sequences
        if len(stops) > limits.max_stop:
            raise _bad("stop", f"{len(stops)} sequences, over the limit of {limits.max_stop}", req.stop,
                       f"Send at most {limits.max_stop}.")
        for i, s in enumerate(stops):
            if not s:
                raise _bad("stop" if isinstance(req.stop, str) else f"stop[{i}]", "empty stop sequence", s,
                           "Send non-empty strings, or leave stop out.")
    if req.stream_options is not None and not req.stream:
        sent = req.stream_options.model_dump(exclude_none=True)
        raise _bad("stream_options", "is only allowed when stream is true", sent,
                   "Set \"stream\": true, or leave stream_options out.")


def _check_fields(req: ChatCompletionRequest, needs: FieldNeeds | None) -> None:
    """Fields are text; with the topology's ``needs``, every field its templates name (in the request's mode) is
    given, and every field given is named by some template of the topology (in any mode)."""
    ext = req.recursivemas or Extension()
    for name, value in (ext.fields or {}).items():
        if not isinstance(value, str):
            raise _bad(f"recursivemas.fields.{name}", "must be text", value,
                       f"Send a string: the text that fills {{{name}}} in the templates.", code="invalid_type")
    sent = (ext.fields or {}).get(CONTEXT)
    if ext.context is not None and sent is not None and sent != ext.context:
        raise _bad("recursivemas.context", "disagrees with recursivemas.fields.context", ext.context,
                   "Send only one of the two.")
    if needs is None:
        return
    given = ext.given()
    for name, agents in needs.get(req.mode or "latent", {}).items():
        if name not in given:
            shorthand = ' (or "recursivemas": {"context": "..."})' if name == CONTEXT else ""
            raise APIError(
                400, f"recursivemas.fields.{name}: the template of agent {agents[0]!r} of topology {req.model!r} "
                     f"names {{{name}}}, but the request brings no {name!r} field (fields sent: "
                     f"{sorted(given) or 'none'}). Send it as \"recursivemas\": {{\"fields\": {{\"{name}\": "
                     f"\"...\"}}}}{shorthand}; over gRPC, as RunRequest.fields[\"{name}\"].",
                param=f"recursivemas.fields.{name}", code="missing_required_parameter")
    named = named_fields(needs)
    for name in given:
        if name not in named:
            param = "recursivemas.context" if name == CONTEXT and ext.context is not None else \
                f"recursivemas.fields.{name}"
            raise _bad(param, f"no template of topology {req.model!r} names {{{name}}}", given[name],
                       f"Leave it out or fix its name; the topology's templates name "
                       f"{', '.join(named) or 'no fields'}.", code="unknown_parameter")


def _check_no_ops(req: ChatCompletionRequest) -> None:
    unsupported = [
        ("n", req.n not in (None, 1), "only n=1 is supported", "Leave n out or send 1; send several requests for "
                                                                "several answers."),
        ("presence_penalty", req.presence_penalty not in (None, 0), "penalties are not supported", "Send 0."),
        ("frequency_penalty", req.frequency_penalty not in (None, 0), "penalties are not supported", "Send 0."),
        ("logprobs", bool(req.logprobs), "log probabilities are not returned", "Send false or leave it out."),
        ("top_logprobs", req.top_logprobs not in (None, 0), "log probabilities are not returned", "Leave it out."),
        ("logit_bias", bool(req.logit_bias), "logit bias is not supported", "Leave it out."),
        ("tools", bool(req.tools), "tool calling is not supported", "Leave tools out."),
        ("tool_choice", req.tool_choice not in (None, "none", "auto"), "tool calling is not supported",
         "Leave tool_choice out."),
    ]
    for name, bad, problem, fix in unsupported:
        if bad:
            raise _bad(name, problem, getattr(req, name), fix, code="unsupported_parameter")


def question_from_messages(messages: Sequence[ChatMessage | Mapping[str, Any]]) -> str:
    """The topology's ``{question}`` for a chat.

    A chat of one user message (plus nothing else) is that message's text, unchanged: the same question
    ``recursivemas run --prompt`` would ask, so HTTP, gRPC and the CLI agree. Otherwise the question is, separated
    by blank lines: the system (and developer) texts in order; the turns before the last user message as a
    transcript under ``Conversation so far:`` (``User: ...`` / ``Assistant: ...`` lines); then the last user
    message, unlabelled, last. Every agent's prompt template receives this same text: the agents have no chat
    history of their own, and the latest request stays at the end where the templates expect the task.
    """
    msgs = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(dict(m)) for m in messages]
    last = max((i for i, m in enumerate(msgs) if m.role == "user"), default=None)
    if last is None:
        raise RequestError("messages: no user message; the last user message is the question", "messages")
    system = [m.text.strip() for m in msgs[:last] if m.role in ("system", "developer")]
    turns = [f"{m.role.capitalize()}: {m.text.strip()}" for m in msgs[:last] if m.role in ("user", "assistant")]
    parts = [*system, *(["Conversation so far:\n" + "\n".join(turns)] if turns else []), msgs[last].text.strip()]
    return "\n\n".join(p for p in parts if p)
