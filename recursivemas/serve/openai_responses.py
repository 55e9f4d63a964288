"""The OpenAI-compatible responses, as pure logic: completion, stream-chunk (server-sent events), usage and
model-list bodies built from a run's :class:`~recursivemas.runtime.accounting.RunResult`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.serve.errors import APIError, error_body

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}


def completion_id(request_id: str) -> str:
    return request_id if request_id.startswith("chatcmpl-") else f"chatcmpl-{request_id}"


def usage_body(result: RunResult) -> dict:
    """OpenAI ``usage`` plus the ``recursivemas`` extension.

    ``prompt_tokens`` and ``completion_tokens`` count every agent in every round (what the run cost), the answer's
    included; ``completion_tokens_details.reasoning_tokens`` is the part the other agents decoded (text mode), as
    OpenAI counts a reasoning model's hidden tokens. Latent steps are not tokens: they are in the extension, with
    the run's mode, rounds, latent steps per turn and in all, wall time and, per agent in topology order, turns,
    prompt tokens, latent steps, decoded tokens and tool calls. ``turns`` lists every agent turn in run order (agent,
    round, kind, latent steps, decoded and prompt tokens, wall time, tool calls): the per-agent sums hide which round
    cost what, and a client drawing a timeline (the playground) needs the turns themselves. A turn's ``wall_s`` is
    its batched backbone call's, shared by the turns that ran together (see ``AgentUsage``).
    """
    r, t = result, result.totals
    agents: dict[str, dict[str, int]] = {}
    for u in r.usage:
        a = agents.setdefault(u.agent, {"turns": 0, "prompt_tokens": 0, "latent_steps": 0, "decoded_tokens": 0,
                                        "tool_calls": 0})
        a["turns"] += 1
        a["prompt_tokens"] += u.prompt_tokens
        a["latent_steps"] += u.latent_steps
        a["decoded_tokens"] += u.decoded_tokens
        a["tool_calls"] += u.tool_calls
    answer = sum(u.decoded_tokens for u in r.usage if u.kind == "answer")
    return {
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.decoded_tokens,
        "total_tokens": t.prompt_tokens + t.decoded_tokens,
        "completion_tokens_details": {"reasoning_tokens": t.decoded_tokens - answer},
        "recursivemas": {
            "mode": r.mode, "rounds": r.rounds, "latent_steps": r.latent_steps,
            "latent_steps_total": t.latent_steps, "decoded_tokens": t.decoded_tokens, "answer_tokens": answer,
            "tool_calls": t.tool_calls, "wall_s": round(r.wall_s, 6), "agents": agents,
            "turns": [turn_body(u) for u in r.usage],
        },
    }


def turn_body(u: AgentUsage) -> dict:
    """One entry of ``usage.recursivemas.turns``: what one agent did in one round (no message text: the usage
    carries numbers only, the answer is in the choices)."""
    return {"agent": u.agent, "round": u.round, "kind": u.kind, "latent_steps": u.latent_steps,
            "decoded_tokens": u.decoded_tokens, "prompt_tokens": u.prompt_tokens, "wall_s": round(u.wall_s, 6),
            "tool_calls": u.tool_calls}


def completion_body(request_id: str, model: str, created: int | None, text: str,
                    result: RunResult) -> dict:
    """A ``chat.completion`` object: one choice holding ``text`` and the run's ``finish_reason`` (``length`` when
    the answer was cut off), and :func:`usage_body` of ``result``."""
    finish = result.finish_reason
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else int(created),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": None}],
        "usage": usage_body(result),
    }


def chunk_body(request_id: str, model: str, created: int, *, role: str | None = None, content: str | None = None,
               finish: str | None = None, usage: dict | None = None, include_usage: bool = False) -> dict:
    """A ``chat.completion.chunk``: a choice with a ``delta`` (``role`` and/or ``content``) or a ``finish`` reason;
    with ``usage`` given, the usage chunk instead (no choices), as sent last when ``stream_options.include_usage``.
    ``include_usage`` adds ``"usage": null`` to the other chunks, as OpenAI does."""
    body: dict[str, Any] = {"id": completion_id(request_id), "object": "chat.completion.chunk",
                            "created": int(created), "model": model}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
        return body
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    if include_usage:
        body["usage"] = None
    return body


def sse(obj: Any) -> bytes:
    """One server-sent event: ``data: <compact JSON>`` and a blank line (JSON escapes newlines, so one line)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


class ChunkStream:
    """The SSE bytes of one streamed completion, in order: :meth:`start` (the role), :meth:`delta` per piece of
    text, then :meth:`end` (finish reason, the usage chunk if asked for, ``[DONE]``), or :meth:`error` instead."""

    def __init__(self, request_id: str, model: str, created: int | None = None, include_usage: bool = False):
        self.request_id, self.model, self.include_usage = request_id, model, include_usage
        self.created = int(time.time()) if created is None else int(created)

    def _chunk(self, **kw) -> bytes:
        return sse(chunk_body(self.request_id, self.model, self.created, include_usage=self.include_usage, **kw))

    def start(self) -> bytes:
        return self._chunk(role="assistant", content="")

    def delta(self, text: str) -> bytes:
        return self._chunk(content=text) if text else b""

    def turn(self, usage: AgentUsage) -> bytes:
        """One agent turn as it finished: a named ``recursivemas.turn`` event, which OpenAI clients skip (they
        read unnamed events only), so only a client that asked (``include_turns``) reads it."""
        body = {"id": completion_id(self.request_id), "object": "recursivemas.turn", "created": self.created,
                "model": self.model, "turn": turn_body(usage)}
        return b"event: recursivemas.turn\n" + sse(body)

    def end(self, result: RunResult) -> bytes:
        out = self._chunk(finish=result.finish_reason)
        if self.include_usage:
            out += sse(chunk_body(self.request_id, self.model, self.created, usage=usage_body(result)))
        return out + SSE_DONE

    def error(self, err: APIError) -> bytes:
        """An error after the stream started (the status is already sent): an error event, which the ``openai``
        client raises as ``APIError``, then ``[DONE]``."""
        return sse(error_body(err, self.request_id)) + SSE_DONE


def models_body(names: Iterable[str], created: int = 0, owned_by: str = "recursivemas",
                fields: Mapping[str, Iterable[str]] | None = None) -> dict:
    """``GET /v1/models``: one ``model`` object per served topology, sorted by name. With ``fields`` (model -> the
    fields its templates name), each card gets the ``recursivemas`` extension ``{"fields": [...]}``: what a request
    for it must send as ``recursivemas.fields`` (the playground shows a box per field)."""
    cards = []
    for n in sorted(names):
        card = {"id": n, "object": "model", "created": int(created), "owned_by": owned_by}
        if fields is not None:
            card["recursivemas"] = {"fields": list(fields.get(n, ()))}
        cards.append(card)
    return {"object": "list", "data": cards}
