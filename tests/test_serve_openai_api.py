"""The OpenAI-compatible layer as pure logic: request validation (each bad request -> status, type, param), the chat
-> question rule, response and chunk bodies, SSE framing; and, when the ``openai`` package is installed, that its own
models accept what we send."""

from __future__ import annotations

import json
import pickle
import re

import pytest

from recursivemas.runtime.calls import GenerationOverrides, RunOptions
from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.serve.errors import APIError, error_body
from recursivemas.config import Topology
from recursivemas.runtime import Query
from recursivemas.runtime.query import field_needs, named_fields
from recursivemas.serve.openai_api import (
    ChatCompletionRequest, Limits, parse_payload, parse_request, question_from_messages,
)
from recursivemas.serve.openai_responses import (
    SSE_DONE, SSE_HEADERS, ChunkStream, chunk_body, completion_body, models_body, sse, usage_body,
)

LIMITS = Limits(max_tokens=256, max_rounds=4, max_latent_steps=64, max_body_bytes=4096, max_messages=6)
MODELS = ("sequential-demo", "mixture-demo")
USER = [{"role": "user", "content": "What is 15% of 240?"}]


def body(**fields) -> bytes:
    return json.dumps({"model": "sequential-demo", "messages": USER, **fields}).encode()


def result(mode="latent", answer_tokens=12, finish="stop") -> RunResult:
    usage = [
        AgentUsage(agent="planner", round=r, backbone="smol", kind="latent", prompt_tokens=20, latent_steps=8,
                   wall_s=0.1) for r in (1, 2)
    ] + [
        AgentUsage(agent="critic", round=1, backbone="gemma", kind="text", prompt_tokens=30, decoded_tokens=5,
                   message="ok"),
        AgentUsage(agent="solver", round=2, backbone="smol", kind="answer", prompt_tokens=40,
                   decoded_tokens=answer_tokens, latent_in=8, message="36",
                   finish_reason="length" if finish == "length" else "eos"),
    ]
    return RunResult(question="What is 15% of 240?", text="36", mode=mode, rounds=2, latent_steps=8, wall_s=1.25,
                     usage=usage, finish_reason=finish)


# ------------------------------------------------------------------------------------------------ bad requests

BIG = b'{"model": "sequential-demo", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'

BAD = [
    # id, raw body, status, type, param, code
    ("too-large", BIG, 413, "invalid_request_error", None, "request_too_large"),
    ("empty-body", b"", 400, "invalid_request_error", None, "invalid_json"),
    ("malformed-json", b'{"model": "sequential-demo", "messages": [', 400, "invalid_request_error", None,
     "invalid_json"),
    ("not-utf8", b'{"model": "\xff"}', 400, "invalid_request_error", None, "invalid_json"),
    ("nan", b'{"model": "sequential-demo", "messages": [], "temperature": NaN}', 400, "invalid_request_error", None,
     "invalid_json"),
    ("too-deep", b"[" * 3000, 400, "invalid_request_error", None, "invalid_json"),
    ("lone-surrogate", body(messages=[{"role": "user", "content": "\ud800?"}]), 400, "invalid_request_error", None,
     "invalid_json"),
    ("array-body", b"[1, 2]", 400, "invalid_request_error", None, "invalid_json"),
    ("string-body", b'"hello"', 400, "invalid_request_error", None, "invalid_json"),
    ("no-model", json.dumps({"messages": USER}).encode(), 400, "invalid_request_error", "model",
     "missing_required_parameter"),
    ("model-not-string", body(model=7), 400, "invalid_request_error", "model", "invalid_type"),
    ("unknown-model", body(model="gpt-4o"), 404, "not_found_error", "model", "model_not_found"),
    ("no-messages", json.dumps({"model": "sequential-demo"}).encode(), 400, "invalid_request_error", "messages",
     "missing_required_parameter"),
    ("messages-not-list", body(messages="hi"), 400, "invalid_request_error", "messages", "invalid_type"),
    ("empty-messages", body(messages=[]), 400, "invalid_request_error", "messages", "empty_messages"),
    ("too-many-messages", body(messages=USER * 7), 400, "invalid_request_error", "messages", "invalid_value"),
    ("message-not-object", body(messages=["hi"]), 400, "invalid_request_error", "messages[0]", "invalid_type"),
    ("bad-role", body(messages=[{"role": "tool", "content": "x"}]), 400, "invalid_request_error",
     "messages[0].role", "invalid_value"),
    ("no-content", body(messages=[{"role": "user"}]), 400, "invalid_request_error", "messages[0].content",
     "missing_required_parameter"),
    ("content-null", body(messages=[*USER, {"role": "assistant", "content": None}, *USER]), 400,
     "invalid_request_error", "messages[1].content", "invalid_type"),
    ("empty-content", body(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": " "}]),
     400, "invalid_request_error", "messages[1].content", "invalid_value"),
    ("image-part", body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, "invalid_request_error", "messages[0].content[0].type", "invalid_value"),
    ("unknown-message-field", body(messages=[{"role": "user", "content": "x", "weight": 1}]), 400,
     "invalid_request_error", "messages[0].weight", "unknown_parameter"),
    ("message-tool-calls", body(messages=[{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}, *USER]),
     400, "invalid_request_error", "messages[0].tool_calls", "unsupported_parameter"),
    ("no-user-message", body(messages=[{"role": "system", "content": "Be brief."}]), 400, "invalid_request_error",
     "messages", "invalid_value"),
    ("last-not-user", body(messages=[*USER, {"role": "assistant", "content": "It is"}]), 400,
     "invalid_request_error", "messages[1].role", "invalid_value"),
    ("max-tokens-string", body(max_tokens="64"), 400, "invalid_request_error", "max_tokens", "invalid_type"),
    ("max-tokens-float", body(max_tokens=64.0), 400, "invalid_request_error", "max_tokens", "invalid_type"),
    ("max-tokens-zero", body(max_tokens=0), 400, "invalid_request_error", "max_tokens", "invalid_value"),
    ("max-tokens-over", body(max_tokens=257), 400, "invalid_request_error", "max_tokens", "invalid_value"),
    ("max-completion-over", body(max_completion_tokens=10_000), 400, "invalid_request_error",
     "max_completion_tokens", "invalid_value"),
    ("max-tokens-disagree", body(max_tokens=10, max_completion_tokens=20), 400, "invalid_request_error",
     "max_completion_tokens", "invalid_value"),
    ("temperature-high", body(temperature=2.5), 400, "invalid_request_error", "temperature", "invalid_value"),
    ("temperature-negative", body(temperature=-0.1), 400, "invalid_request_error", "temperature", "invalid_value"),
    ("temperature-bool", body(temperature=True), 400, "invalid_request_error", "temperature", "invalid_type"),
    ("top-p-zero", body(top_p=0), 400, "invalid_request_error", "top_p", "invalid_value"),
    ("stream-string", body(stream="yes"), 400, "invalid_request_error", "stream", "invalid_type"),
    ("stream-options-no-stream", body(stream_options={"include_usage": True}), 400, "invalid_request_error",
     "stream_options", "invalid_value"),
    ("stream-options-unknown", body(stream=True, stream_options={"usage": True}), 400, "invalid_request_error",
     "stream_options.usage", "unknown_parameter"),
    ("stop-number", body(stop=5), 400, "invalid_request_error", "stop", "invalid_type"),
    ("stop-too-many", body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_request_error", "stop", "invalid_value"),
    ("stop-empty-string", body(stop=["a", ""]), 400, "invalid_request_error", "stop[1]", "invalid_value"),
    ("rounds-over", body(rounds=5), 400, "invalid_request_error", "rounds", "invalid_value"),
    ("rounds-zero", body(rounds=0), 400, "invalid_request_error", "rounds", "invalid_value"),
    ("latent-steps-over", body(latent_steps=65), 400, "invalid_request_error", "latent_steps", "invalid_value"),
    ("latent-steps-negative", body(latent_steps=-1), 400, "invalid_request_error", "latent_steps", "invalid_value"),
    ("bad-mode", body(mode="fast"), 400, "invalid_request_error", "mode", "invalid_value"),
    ("timeout-zero", body(timeout_s=0), 400, "invalid_request_error", "timeout_s", "invalid_value"),
    ("timeout-string", body(timeout_s="5"), 400, "invalid_request_error", "timeout_s", "invalid_type"),
    ("misspelt-extension", body(latent_step=8), 400, "invalid_request_error", "latent_step", "unknown_parameter"),
    ("n-2", body(n=2), 400, "invalid_request_error", "n", "unsupported_parameter"),
    ("presence-penalty", body(presence_penalty=0.5), 400, "invalid_request_error", "presence_penalty",
     "unsupported_parameter"),
    ("frequency-penalty-range", body(frequency_penalty=3), 400, "invalid_request_error", "frequency_penalty",
     "invalid_value"),
    ("logprobs", body(logprobs=True), 400, "invalid_request_error", "logprobs", "unsupported_parameter"),
    ("tools", body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "invalid_request_error", "tools",
     "unsupported_parameter"),
    ("json-mode", body(response_format={"type": "json_object"}), 400, "invalid_request_error",
     "response_format.type", "invalid_value"),
    ("extension-not-object", body(recursivemas="ctx"), 400, "invalid_request_error", "recursivemas", "invalid_type"),
    ("extension-unknown-key", body(recursivemas={"contxt": "x"}), 400, "invalid_request_error",
     "recursivemas.contxt", "unknown_parameter"),
    ("context-not-string", body(recursivemas={"context": 7}), 400, "invalid_request_error", "recursivemas.context",
     "invalid_type"),
    ("fields-not-object", body(recursivemas={"fields": ["x"]}), 400, "invalid_request_error",
     "recursivemas.fields", "invalid_type"),
    ("field-not-string", body(recursivemas={"fields": {"document": {"text": "x"}}}), 400, "invalid_request_error",
     "recursivemas.fields.document", "invalid_type"),
    ("context-twice", body(recursivemas={"context": "a", "fields": {"context": "b"}}), 400, "invalid_request_error",
     "recursivemas.context", "invalid_value"),
]


@pytest.mark.parametrize("raw, status, type_, param, code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request(raw, status, type_, param, code):
    with pytest.raises(APIError) as info:
        parse_request(raw, LIMITS, MODELS)
    err = info.value
    assert (err.status, err.type, err.param, err.code) == (status, type_, param, code), err
    assert err.message.endswith(".") and len(err.message) > 20
    if param is not None:
        assert err.message.startswith(param + ":"), err.message  # the message names the field ...
        assert re.search(r"\. [A-Z]\w+ ", err.message), err.message  # ... and a second sentence: the fix
    body_ = error_body(err, "req-1")
    assert body_ == {"error": {"message": err.message, "type": type_, "param": param, "code": code,
                               "request_id": "req-1"}}
    json.dumps(body_)


def test_bad_request_messages_name_value_and_fix():
    def message(raw: bytes) -> str:
        with pytest.raises(APIError) as info:
            parse_request(raw, LIMITS, MODELS)
        return info.value.message

    assert message(body(max_tokens=257)) == "max_tokens: over the server's limit (got 257). Send an integer from 1 to 256."
    assert message(body(model="gpt-4o")) == ('model: no such model (got "gpt-4o"). '
                                             "Use one of the served topologies: mixture-demo, sequential-demo.")
    assert "4096" in message(BIG) and str(len(BIG)) in message(BIG)
    assert '"64"' in message(body(max_tokens="64")) and "integer" in message(body(max_tokens="64"))
    long = message(body(messages=[{"role": "robot", "content": "x"}], rounds="y" * 500))
    assert len(long) < 400  # long values are cut in the message


def test_many_bad_requests_are_more_than_twenty():
    assert len(BAD) >= 20
    assert {b[2] for b in BAD} == {400, 404, 413}


def test_api_error_defaults():
    assert APIError(429, "slow down").type == "rate_limit_error"
    assert APIError(503, "busy").type == "server_error"
    err = APIError.internal("abc123")
    assert (err.status, err.type, err.code) == (500, "server_error", "internal_error") and "abc123" in err.message
    err = APIError.context_length(2000, 2048, 64, agent="planner")
    assert (err.status, err.param, err.code) == (400, "messages", "context_length_exceeded")
    assert "2064" in err.message and "planner" in err.message
    assert error_body(APIError(400, "x."))["error"] == {"message": "x.", "type": "invalid_request_error",
                                                        "param": None, "code": None}


# ----------------------------------------------------------------------------------------------- good requests


def test_good_request_defaults():
    req = parse_request(body(), LIMITS, MODELS)
    assert isinstance(req, ChatCompletionRequest)
    assert req.model == "sequential-demo" and req.question() == "What is 15% of 240?"
    assert req.run_options() == RunOptions()  # the topology's own settings
    assert not req.stream and not req.include_usage and req.stop_sequences == []


def test_good_request_everything():
    raw = body(max_tokens=64, temperature=0, top_p=0.9, stream=True, stream_options={"include_usage": True},
               stop="\n\n", seed=3, user="u-1", rounds=4, latent_steps=0, mode="text", n=1, presence_penalty=0,
               frequency_penalty=0.0, logprobs=False, top_logprobs=None, logit_bias={},
               response_format={"type": "text"}, tools=[], tool_choice="none", parallel_tool_calls=True)
    req = parse_request(raw, LIMITS, MODELS)
    assert req.run_options() == RunOptions(mode="text", rounds=4, latent_steps=0, generation=GenerationOverrides(
        max_new_tokens=64, temperature=0.0, top_p=0.9, seed=3, stop=("\n\n",)))
    assert req.stream and req.include_usage and req.user == "u-1"


def test_good_request_variants():
    req = parse_request(body(max_completion_tokens=32, stop=["a", "b"], temperature=None), LIMITS, MODELS)
    assert req.max_new_tokens == 32 and req.stop_sequences == ["a", "b"] and req.temperature is None
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]
    req = parse_request(body(messages=[{"role": "developer", "content": "Be brief."},
                                       {"role": "user", "content": parts, "name": "ann"}]), LIMITS, MODELS)
    assert req.question() == "Be brief.\n\nWhat is 2+2?"
    echoed = {"role": "assistant", "content": "4", "refusal": None, "tool_calls": [], "annotations": [],
              "audio": None, "function_call": None}
    req = parse_request(body(messages=[*USER, echoed, *USER]), LIMITS, MODELS)
    assert "Assistant: 4" in req.question()
    at_limits = body(max_tokens=256, rounds=4, latent_steps=64, messages=USER * 6)
    assert parse_request(at_limits, LIMITS, MODELS).max_new_tokens == 256
    assert parse_payload({"model": "mixture-demo", "messages": USER}, LIMITS, MODELS).model == "mixture-demo"
    assert parse_request(b" " + body() + b"\n", LIMITS, MODELS).model == "sequential-demo"


def reader_pair() -> Topology:
    """A reader whose template names {context} (and, from round 2 on, {note}) before a solver that names none."""
    return Topology.model_validate({
        "name": "sequential-demo", "backbones": {"a": {"model": "tiny"}}, "pattern": "sequential", "rounds": 2,
        "agents": [{"name": "reader", "backbone": "a", "prompt": "Context: {context}\nQuestion: {question}",
                    "later_prompt": "Note: {note}\nQuestion: {question}\nFeedback: {feedback}"},
                   {"name": "solver", "backbone": "a"}]})


NEEDS = {"sequential-demo": field_needs(reader_pair()), "mixture-demo": {"latent": {}, "text": {}, "single": {}}}


def test_fields_become_the_query():
    assert named_fields(NEEDS["sequential-demo"]) == ["context", "note"]
    req = parse_request(body(recursivemas={"context": "x = 7", "fields": {"note": "n"}}), LIMITS, MODELS, NEEDS)
    assert req.query() == Query("What is 15% of 240?", {"context": "x = 7", "note": "n"})
    same = parse_request(body(recursivemas={"fields": {"context": "x = 7", "note": "n"}}), LIMITS, MODELS, NEEDS)
    assert same.query() == req.query()
    plain = parse_request(body(), LIMITS, MODELS)  # no needs given: nothing to check, no fields
    assert plain.query() == Query("What is 15% of 240?")
    # single mode runs the solver alone, which names no field; a field another agent reads may still be sent
    assert parse_request(body(mode="single"), LIMITS, MODELS, NEEDS).query().fields == {}
    assert parse_request(body(mode="single", recursivemas={"context": "c"}), LIMITS, MODELS, NEEDS).query().fields \
        == {"context": "c"}


@pytest.mark.parametrize("ext, model, param, code, words", [
    (None, "sequential-demo", "recursivemas.fields.context", "missing_required_parameter",
     ["agent 'reader'", "{context}", "(fields sent: none)", '"recursivemas": {"context": "..."}']),
    ({"context": "c"}, "sequential-demo", "recursivemas.fields.note", "missing_required_parameter",
     ["agent 'reader'", "{note}", "(fields sent: ['context'])", 'RunRequest.fields["note"]']),
    ({"context": "c", "fields": {"note": "n", "nte": "x"}}, "sequential-demo", "recursivemas.fields.nte",
     "unknown_parameter", ["names {nte}", "name context, note"]),
    ({"context": "c"}, "mixture-demo", "recursivemas.context", "unknown_parameter",
     ["'mixture-demo' names {context}", "name no fields"]),
])
def test_field_errors_name_the_field_and_the_agent(ext, model, param, code, words):
    raw = body(model=model, **({"recursivemas": ext} if ext is not None else {}))
    with pytest.raises(APIError) as info:
        parse_request(raw, LIMITS, MODELS, NEEDS)
    err = info.value
    assert (err.status, err.param, err.code) == (400, param, code), err
    assert err.message.startswith(param + ":") and re.search(r"\. [A-Z]\w+ ", err.message), err.message
    for word in words:
        assert word in err.message, (word, err.message)


def test_question_from_messages():
    assert question_from_messages(USER) == "What is 15% of 240?"
    chat = [
        {"role": "system", "content": "You are exact."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "system", "content": "Show the working."},
        {"role": "user", "content": "  And times 3?  "},
    ]
    assert question_from_messages(chat) == (
        "You are exact.\n\nShow the working.\n\n"
        "Conversation so far:\nUser: What is 2+2?\nAssistant: 4\n\n"
        "And times 3?"
    )
    with pytest.raises(ValueError, match="no user message"):
        question_from_messages([{"role": "system", "content": "x"}])


# ----------------------------------------------------------------------------------------------------- responses


def test_usage_body():
    usage = usage_body(result())
    assert usage["prompt_tokens"] == 20 + 20 + 30 + 40
    assert usage["completion_tokens"] == 5 + 12 and usage["total_tokens"] == 110 + 17
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 5}
    ext = usage["recursivemas"]
    assert ext["mode"] == "latent" and ext["rounds"] == 2 and ext["latent_steps"] == 8
    assert ext["latent_steps_total"] == 16 and ext["answer_tokens"] == 12 and ext["wall_s"] == 1.25
    assert list(ext["agents"]) == ["planner", "critic", "solver"]
    assert ext["agents"]["planner"] == {"turns": 2, "prompt_tokens": 40, "latent_steps": 16, "decoded_tokens": 0,
                                        "tool_calls": 0}
    assert ext["agents"]["solver"]["decoded_tokens"] == 12
    back = pickle.loads(pickle.dumps(result()))  # a RunResult crosses Ray (router -> ingress) as itself
    assert usage_body(back) == usage


def test_usage_body_lists_every_turn_in_run_order():
    """``turns`` keeps what the per-agent sums lose (which round, which kind, each turn's wall time), and no message
    text: the usage holds numbers only."""
    turns = usage_body(result())["recursivemas"]["turns"]
    assert [(t["agent"], t["round"], t["kind"]) for t in turns] == [
        ("planner", 1, "latent"), ("planner", 2, "latent"), ("critic", 1, "text"), ("solver", 2, "answer")]
    assert turns[0] == {"agent": "planner", "round": 1, "kind": "latent", "latent_steps": 8, "decoded_tokens": 0,
                        "prompt_tokens": 20, "wall_s": 0.1, "tool_calls": 0}
    assert turns[3]["decoded_tokens"] == 12 and turns[3]["prompt_tokens"] == 40
    ext = usage_body(result())["recursivemas"]
    for name, agent in ext["agents"].items():  # the sums are the turns' sums
        mine = [t for t in turns if t["agent"] == name]
        assert agent["turns"] == len(mine)
        for field in ("prompt_tokens", "latent_steps", "decoded_tokens", "tool_calls"):
            assert agent[field] == sum(t[field] for t in mine)


def test_completion_body():
    out = completion_body("abc", "sequential-demo", 1700000000, "36", result())
    assert out["id"] == "chatcmpl-abc" and out["object"] == "chat.completion" and out["created"] == 1700000000
    assert out["model"] == "sequential-demo"
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "36"}, "finish_reason": "stop",
                               "logprobs": None}]
    assert out["usage"] == usage_body(result())
    cut = completion_body("chatcmpl-x", "m", None, "", result(finish="length"))
    assert cut["id"] == "chatcmpl-x" and cut["choices"][0]["finish_reason"] == "length"
    assert isinstance(completion_body("x", "m", None, "", result())["created"], int)
    json.dumps(out)


def test_finish_reason_is_the_runs_not_a_guess_from_token_counts():
    # 12 tokens of a 12-token budget that ended on end-of-turn is a stop; the reason comes from the engine
    assert completion_body("a", "m", 1, "36", result(answer_tokens=12))["choices"][0]["finish_reason"] == "stop"
    assert completion_body("a", "m", 1, "36", result(answer_tokens=3, finish="length"))["choices"][0][
        "finish_reason"] == "length"


def test_chunk_bodies():
    first = chunk_body("abc", "m", 5, role="assistant", content="")
    assert first == {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 5, "model": "m",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                  "logprobs": None}]}
    assert chunk_body("abc", "m", 5, content="3")["choices"][0]["delta"] == {"content": "3"}
    last = chunk_body("abc", "m", 5, finish="stop", include_usage=True)
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] is None
    usage = chunk_body("abc", "m", 5, usage=usage_body(result()))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 127


def events(stream: bytes) -> list:
    """Parse SSE bytes strictly: every event is exactly one ``data: `` line and a blank line."""
    assert stream.endswith(b"\n\n")
    out = []
    for event in stream[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event, event
        data = event[len(b"data: "):].decode("utf-8")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_sse_framing():
    assert SSE_DONE == b"data: [DONE]\n\n"
    obj = {"text": "line one\nline two\r\n\u2028 and ünïcode", "n": 1}
    frame = sse(obj)
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n") and frame.count(b"\n") == 2
    assert events(frame) == [obj]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunk_stream(include_usage):
    stream = ChunkStream("abc", "sequential-demo", created=7, include_usage=include_usage)
    pieces = ["3", "6", "", " is the answer\n"]
    raw = stream.start() + b"".join(stream.delta(p) for p in pieces) + stream.end(result())
    got = events(raw)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(c["id"] == "chatcmpl-abc" and c["created"] == 7 and c["model"] == "sequential-demo" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "36 is the answer\n"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage_body(result())
        assert all(c["usage"] is None for c in chunks[:-1])
        assert len(chunks) == 1 + 3 + 1 + 1
    else:
        assert all("usage" not in c for c in chunks) and len(chunks) == 1 + 3 + 1


def test_chunk_stream_error():
    raw = ChunkStream("abc", "m", created=1).error(APIError.internal("abc"))
    got = events(raw)
    assert got[-1] == "[DONE]" and got[0]["error"]["type"] == "server_error"
    assert got[0]["error"]["request_id"] == "abc"


def test_models_body():
    out = models_body(["b-topology", "a-topology"], created=3)
    assert out == {"object": "list", "data": [
        {"id": "a-topology", "object": "model", "created": 3, "owned_by": "recursivemas"},
        {"id": "b-topology", "object": "model", "created": 3, "owned_by": "recursivemas"},
    ]}
    assert models_body([]) == {"object": "list", "data": []}
    cards = models_body(["b-topology", "a-topology"], fields={"a-topology": ["context"]})["data"]
    assert [c["recursivemas"] for c in cards] == [{"fields": ["context"]}, {"fields": []}]


# ------------------------------------------------------------------------------------- the official client's models


def test_openai_models_accept_our_bodies():
    import openai.types as openai_types
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    done = ChatCompletion.model_validate(completion_body("abc", "sequential-demo", 1, "36", result(finish="length")))
    assert done.choices[0].message.content == "36" and done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == 110 and done.usage.completion_tokens == 17
    assert done.usage.completion_tokens_details.reasoning_tokens == 5
    assert done.usage.model_extra["recursivemas"]["agents"]["solver"]["decoded_tokens"] == 12

    stream = ChunkStream("abc", "sequential-demo", created=1, include_usage=True)
    raw = stream.start() + stream.delta("36") + stream.end(result())
    chunks = [ChatCompletionChunk.model_validate(e) for e in events(raw)[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "36"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens == 127

    listed = openai_types.Model.model_validate(models_body(["sequential-demo"])["data"][0])
    assert listed.id == "sequential-demo"


# --------------------------------------------------------------- the official client against a stdlib HTTP server


def fake_run(req: ChatCompletionRequest) -> RunResult:
    """Stands in for the topology: answers with the question reversed (deterministic, like greedy decoding)."""
    out = result(mode=req.mode or "latent")
    return out.model_copy(update={"text": req.question()[::-1]})


@pytest.fixture
def openai_server():
    """A minimal HTTP server wired with this module only, as the Serve ingress will be."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, obj: dict, request_id: str) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-request-id", request_id)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, models_body(MODELS), "r0")

        def do_POST(self):
            request_id = "req42"
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                req = parse_request(raw, LIMITS, MODELS)
                if req.user == "crash":
                    raise RuntimeError("boom")
            except APIError as err:
                return self._send(err.status, error_body(err, request_id), request_id)
            except RuntimeError:
                return self._send(500, error_body(APIError.internal(request_id), request_id), request_id)
            run = fake_run(req)
            if not req.stream:
                return self._send(200, completion_body(request_id, req.model, None, run.text, run), request_id)
            self.send_response(200)
            for k, v in SSE_HEADERS.items():
                self.send_header(k, v)
            self.send_header("connection", "close")
            self.end_headers()
            stream = ChunkStream(request_id, req.model, include_usage=req.include_usage)
            self.wfile.write(stream.start())
            for i in range(0, len(run.text), 3):
                self.wfile.write(stream.delta(run.text[i:i + 3]))
            if req.user == "fail-mid-stream":
                self.wfile.write(stream.error(APIError.internal(request_id)))
            else:
                self.wfile.write(stream.end(run))
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_client_end_to_end(openai_server):
    import openai
    client = openai.OpenAI(base_url=openai_server, api_key="unused", max_retries=0, timeout=10)

    assert [m.id for m in client.models.list()] == sorted(MODELS)
    done = client.chat.completions.create(model="sequential-demo", messages=USER, max_tokens=32, temperature=0,
                                          extra_body={"rounds": 2, "mode": "text"})
    assert done.choices[0].message.content == USER[0]["content"][::-1]
    assert done.usage.total_tokens == 127 and done.usage.model_extra["recursivemas"]["mode"] == "text"

    chunks = list(client.chat.completions.create(model="sequential-demo", messages=USER, max_tokens=32,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == done.choices[0].message.content
    assert chunks[-1].usage.total_tokens == done.usage.total_tokens

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="sequential-demo", messages=USER, max_tokens=10_000)
    assert info.value.body["param"] == "max_tokens" and info.value.request_id == "req42"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="sequential-demo", messages=USER, user="crash")
    assert "req42" in info.value.message
    with pytest.raises(openai.APIError, match="req42"):
        list(client.chat.completions.create(model="sequential-demo", messages=USER, stream=True,
                                            user="fail-mid-stream"))
    # the server is still up
    assert client.chat.completions.create(model="sequential-demo", messages=USER).choices[0].finish_reason == "stop"


def test_a_requests_deadline_is_its_own_capped_by_the_server():
    limits = Limits(timeout_s=30, max_timeout_s=60)
    assert (limits.deadline_s(None), limits.deadline_s(5), limits.deadline_s(1000)) == (30, 5, 60)
    assert parse_request(body(timeout_s=2.5), limits, {"sequential-demo"}).timeout_s == 2.5
