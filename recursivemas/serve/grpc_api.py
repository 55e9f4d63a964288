"""gRPC <-> the OpenAI layer: a ``RunRequest`` is validated exactly as an HTTP body is (same limits, same errors),
and a run's result becomes a ``RunResponse`` or ``RunStreamChunk`` messages with the same usage numbers.

Needs ``protobuf`` (the generated messages); ``grpc`` itself only for :func:`grpc_status`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.serve.errors import APIError
from recursivemas.runtime.query import FieldNeeds
from recursivemas.serve.openai_api import ChatCompletionRequest, Limits, parse_payload
from recursivemas.serve.openai_responses import turn_body, usage_body
from recursivemas.serve.proto import recursivemas_pb2 as pb

# An HTTP status -> the gRPC status code's name (grpc.StatusCode[name]).
GRPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               413: "RESOURCE_EXHAUSTED", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
               503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
SERVICE = "recursivemas.v1.RecursiveMAS"
_OPTIONAL = ("max_tokens", "temperature", "top_p", "rounds", "latent_steps", "seed")


def add_servicer_to_server(servicer, server) -> None:
    """Register ``servicer`` as the generated ``add_RecursiveMASServicer_to_server`` does, but hand it each request as
    its bytes, which :func:`request_from_proto` parses: bytes that are no ``RunRequest`` (a string that is not UTF-8,
    a cut message) are then INVALID_ARGUMENT, where Ray's gRPC proxy, parsing them itself, answered UNKNOWN."""
    import grpc

    handlers = {
        "Run": grpc.unary_unary_rpc_method_handler(servicer.Run, response_serializer=pb.RunResponse.SerializeToString),
        "RunStream": grpc.unary_stream_rpc_method_handler(
            servicer.RunStream, response_serializer=pb.RunStreamChunk.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def request_from_proto(msg: pb.RunRequest | bytes, limits: Limits, models: Collection[str],
                       needs: Mapping[str, FieldNeeds] | None = None) -> ChatCompletionRequest:
    """Validate a ``RunRequest`` (or its bytes) as the equivalent chat-completion body; :class:`APIError` on any
    problem. Its ``fields`` map is the body's ``recursivemas.fields``, checked against ``needs`` (model ->
    :func:`~recursivemas.runtime.query.field_needs`) where given."""
    if isinstance(msg, bytes):  # from add_servicer_to_server
        if len(msg) > limits.max_body_bytes:
            raise APIError(413, f"The request is {len(msg)} bytes, over the limit of {limits.max_body_bytes}. "
                                "Send a shorter prompt or fewer messages.", code="request_too_large")
        try:
            msg = pb.RunRequest.FromString(msg)
        except DecodeError as e:
            raise APIError(400, f"The request is not a RunRequest message ({e}). Send one built from "
                                "recursivemas.proto.", code="invalid_request") from None
    size = msg.ByteSize()
    if size > limits.max_body_bytes:
        raise APIError(413, f"The request is {size} bytes, over the limit of {limits.max_body_bytes}. "
                            "Send a shorter prompt or fewer messages.", code="request_too_large")
    if msg.prompt and len(msg.messages):
        raise APIError(400, "prompt: both prompt and messages are set. Send one of them.", param="prompt",
                       code="invalid_value")
    messages = ([{"role": "user", "content": msg.prompt}] if msg.prompt
                else [{"role": m.role, "content": m.content} for m in msg.messages])
    data: dict[str, Any] = {"model": msg.model, "messages": messages}
    for name in _OPTIONAL:
        if msg.HasField(name):
            data[name] = getattr(msg, name)
    if msg.mode != pb.MODE_UNSPECIFIED:
        names = {v.number: v.name for v in pb.Mode.DESCRIPTOR.values}
        if msg.mode not in names:
            raise APIError(400, f"mode: unknown enum value {msg.mode}. Send MODE_LATENT, MODE_TEXT or MODE_SINGLE.",
                           param="mode", code="invalid_value")
        data["mode"] = names[msg.mode].removeprefix("MODE_").lower()
    if len(msg.stop):
        data["stop"] = list(msg.stop)
    if msg.user:
        data["user"] = msg.user
    if len(msg.fields):
        data["recursivemas"] = {"fields": dict(msg.fields)}
    if msg.include_turns:  # RunStream reads it (as a streamed HTTP request would); Run has no turns to send
        data.update(stream=True, stream_options={"include_turns": True})
    return parse_payload(data, limits, models, needs)


def usage_to_proto(result: RunResult) -> pb.Usage:
    """The same numbers as the HTTP ``usage`` (see ``openai_responses.usage_body``)."""
    u = usage_body(result)
    ext = u["recursivemas"]
    return pb.Usage(
        prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"], total_tokens=u["total_tokens"],
        mode=ext["mode"], rounds=ext["rounds"], latent_steps=ext["latent_steps"],
        latent_steps_total=ext["latent_steps_total"], wall_s=ext["wall_s"],
        agents=[pb.AgentUsage(agent=name, **a) for name, a in ext["agents"].items()],
        turns=[pb.Turn(**turn) for turn in ext["turns"]],
    )


def response_to_proto(request_id: str, model: str, text: str, result: RunResult
                      ) -> pb.RunResponse:
    return pb.RunResponse(id=request_id, model=model, text=text, finish_reason=result.finish_reason,
                          usage=usage_to_proto(result))


def chunk_to_proto(request_id: str, model: str, delta: str) -> pb.RunStreamChunk:
    return pb.RunStreamChunk(id=request_id, model=model, delta=delta)


def turn_chunk_to_proto(request_id: str, model: str, usage: AgentUsage) -> pb.RunStreamChunk:
    return pb.RunStreamChunk(id=request_id, model=model, turn=pb.Turn(**turn_body(usage)))


def final_chunk_to_proto(request_id: str, model: str, result: RunResult) -> pb.RunStreamChunk:
    return pb.RunStreamChunk(id=request_id, model=model, finish_reason=result.finish_reason,
                             usage=usage_to_proto(result))


def grpc_status(err: APIError):
    """The ``grpc.StatusCode`` for an :class:`APIError` (set it with the error's message as the details)."""
    import grpc

    return grpc.StatusCode[GRPC_STATUS.get(err.status, "INTERNAL" if err.status >= 500 else "INVALID_ARGUMENT")]
