"""Property-based fuzzing of a REAL served app: Ray Serve on 127.0.0.1 with the tiny random-weight models, hit over
HTTP (``POST /v1/chat/completions``) and its gRPC port (``Run``, ``RunStream``).

Why, next to tests/test_fuzz.py: that file fuzzes the request parser alone. A request really goes through Ray's
proxy (uvicorn, the gRPC server), FastAPI, the ingress, the router, the backbone replicas and the engine, and any of
them can turn odd input into a 5xx, an error event of type ``server_error`` or a dead replica. The property: no
input (random JSON shapes and types, unicode edges, lone-surrogate escapes as raw JSON text, NUL, emoji, RTL, huge
numbers, deep nesting, wrong content types, invalid UTF-8, empty or oversized bodies, odd headers and metadata, raw
protobuf bytes) gets a 5xx or a gRPC INTERNAL / UNKNOWN / UNAVAILABLE, and every error body is an OpenAI error
object. Valid-but-extreme requests are mixed in so the models really run; the server's limits keep them tiny
(max_tokens <= 4, rounds <= 2, latent_steps <= 2). Afterwards a normal request still gets its answer and every
Serve actor is the one that was there before (none dead, none restarted).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.serve.app import APP_NAME, build, start
from recursivemas.serve.proto import recursivemas_pb2 as pb
from recursivemas.serve.proto import recursivemas_pb2_grpc
from test_fuzz import json_values
from test_serve_http import free_port
from tiny import write_pair_topology

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out

LIMITS = {"max_tokens": 4, "max_rounds": 2, "max_latent_steps": 2, "max_body_bytes": 16 * 1024}
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
METADATA = (("application", APP_NAME),)
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Served:
    port: int
    grpc_address: str
    actors: dict  # the Serve actors (controller, proxies, replicas) when the app came up


def serve_actors() -> dict[str, tuple]:
    """Every Serve actor by id: (name, state, restarts, pid). Ray's GCS table (the state API needs the dashboard,
    which Cluster leaves off); a replica that crashed and came back shows a new id, pid or restart count."""
    from ray._private import state

    return {a["ActorID"]: (a["Name"], a["State"], a["NumRestarts"], a["Pid"]) for a in state.actors().values()
            if a["Name"].startswith("SERVE_")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve-fuzz")
    write_pair_topology(root, latent_steps=1, max_new_tokens=4)
    port, grpc_port = free_port(), free_port()
    args = {"topologies": str(root / "seq.yaml"), "limits": LIMITS,
            "batching": {"batch_wait_timeout_s": 0, "rejoin_s": 0}}  # requests come one by one: no waiting
    with Cluster(num_cpus=2):
        start("127.0.0.1", port, grpc_port)
        serve.run(build(args), name=APP_NAME, route_prefix="/")
        yield Served(port, f"127.0.0.1:{grpc_port}", serve_actors())
        serve.shutdown()


# ------------------------------------------------------------------------------------------------------------ HTTP

def send(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """POST raw bytes with exactly these headers (http.client adds Host, Content-Length, Accept-Encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def check_http(status: int, content_type: str, raw: bytes) -> None:
    """The property: below 500, an OpenAI error object for any error, a well-formed completion or stream else."""
    assert status < 500, (status, raw[:500])
    if status != 200:
        error = json.loads(raw)["error"]
        assert isinstance(error["message"], str) and error["message"], raw[:500]
        assert isinstance(error["type"], str) and error["type"], raw[:500]
        return
    if content_type.startswith("text/event-stream"):
        events = [line[len("data: "):] for line in raw.decode().split("\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", raw[:500]
        for event in map(json.loads, events[:-1]):
            if "error" in event:  # refused after the 200 went out (a prompt over the context): still the user's
                assert event["error"]["type"] != "server_error" and event["error"]["message"], event
            else:
                assert event["object"] == "chat.completion.chunk", event
        return
    body = json.loads(raw)
    assert body["object"] == "chat.completion", body
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


EXTREME_NUMBERS = st.sampled_from([10**400, -(10**400), 1e308, -1e308, -0.0, 5e-324, 2**31, 2**63 - 1, 2**63, 2**64,
                                   -(2**63) - 1, 0, 1, -1, 4, 5])
RUNNABLE_TEXT = st.sampled_from(["\x00", "a\x00b", "\U0001F600", "\U0001F469\u200d\U0001F4BB", "\u202eRTL\u202c",
                                 "مرحبا بالعالم", "שלום", "\ufeff", "\u0301", "\uffff", "seq", "user"])
EDGE_TEXT = RUNNABLE_TEXT | st.sampled_from([" ", "", "\n\n", "a" * 3000])
TEXT = st.text(max_size=30) | EDGE_TEXT
VALUES = json_values | EXTREME_NUMBERS | EDGE_TEXT
ROLES = st.sampled_from(["system", "developer", "user", "assistant"])
SOME_TEXT = st.text(min_size=1, max_size=40).filter(str.strip) | RUNNABLE_TEXT
CONTENT = SOME_TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": SOME_TEXT}), min_size=1,
                               max_size=2)
MESSAGES = st.tuples(st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), max_size=2),
                     st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT})).map(
    lambda t: [*t[0], t[1]])
STOP = st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3) | RUNNABLE_TEXT, max_size=4)
VALID = st.fixed_dictionaries({"model": st.just("seq"), "messages": MESSAGES}, optional={
    "max_tokens": st.integers(1, 4), "rounds": st.integers(1, 2), "latent_steps": st.integers(0, 2),
    "mode": st.sampled_from(["latent", "text", "single"]), "stop": STOP, "stream": st.booleans(),
    "temperature": st.sampled_from([0, 0.0, -0.0, 2, 1e-30, 0.7]), "top_p": st.sampled_from([1, 5e-324, 0.5]),
    "seed": st.sampled_from([0, -1, 7, 2**63 - 1, -(2**63)]), "n": st.just(1), "user": TEXT,
    "presence_penalty": st.just(-0.0), "logprobs": st.just(False), "tools": st.just([]),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}).map(lambda b: {**b, "stream": True} if "stream_options" in b else b)
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stop",
          "seed", "n", "rounds", "latent_steps", "mode", "stream_options", "response_format", "tools", "tool_choice",
          "logit_bias", "user", "presence_penalty", "unknown_field"]


@st.composite
def mutated(draw) -> dict:
    """A valid request with one field, or one message's field, set to anything."""
    body, field, value = draw(VALID), draw(st.sampled_from(FIELDS)), draw(VALUES)
    if draw(st.booleans()):
        body[field] = value
    else:
        body["messages"][-1][draw(st.sampled_from(["role", "content", "name", "tool_calls", field]))] = value
    return body


def deep(n: int, field: str = "tools") -> bytes:
    """A valid body but for one field nested n arrays deep (the parser, pydantic and the error text all recurse)."""
    return b'{"model": "seq", "messages": [{"role": "user", "content": "x"}], "%s": %s}' % (
        field.encode(), b"[" * n + b"]" * n)


SURROGATES = st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d", b"x\\udc00y", b"\\ud83d\\ude00", b"\\u0000"])
BAD_UTF8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
VALID_BODY = (VALID.map(lambda b: json.dumps(b).encode())
              | VALID.map(lambda b: json.dumps(b, ensure_ascii=False).encode()))
BODIES = st.sampled_from([  # weighted: a third valid (the models run), a sixth one field off, the rest anything
    *[VALID_BODY] * 4,
    *[mutated().map(lambda b: json.dumps(b).encode())] * 2,
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(["model", "content", "role", "stop", "user"]), SURROGATES).map(  # raw JSON text
        lambda t: (b'{"model": "%s", "messages": [{"role": "%s", "content": "%s"}], "stop": "%s", "user": "%s"}'
                   % tuple(t[1] if f == t[0] else {"model": b"seq", "role": b"user"}.get(f, b"x")
                           for f in ("model", "role", "content", "stop", "user")))),
    BAD_UTF8.map(lambda b: b'{"model": "seq", "messages": [{"role": "user", "content": "' + b + b'"}]}'),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.tuples(st.integers(1, 64) | st.integers(1, 1200),
              st.sampled_from(["tools", "stop", "model", "logit_bias", "messages"])).map(lambda t: deep(*t)),
    st.sampled_from([b"", b" ", b"\n\t", b"null", b"{}", b"[]", b'"seq"', b"{\"model\": NaN}", b"1e400", b"\x00"]),
    st.integers(LIMITS["max_body_bytes"] - 60, 3 * LIMITS["max_body_bytes"]).map(
        lambda n: b'{"model": "seq", "messages": [{"role": "user", "content": "' + b"x" * n + b'"}]}'),
    st.binary(max_size=200),
]).flatmap(lambda strategy: strategy)
HEADER_VALUE = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=40)
ASCII_VALUE = st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=40)
HEADERS = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                     "", "\xe9/\xe9"]) | HEADER_VALUE,
    "x-request-id": ASCII_VALUE,  # not UTF-8: a 500 from Ray's own proxy (test_ray_proxy_..., below)
    "accept": HEADER_VALUE, "content-encoding": st.sampled_from(["gzip", "br", "x"]),
    "authorization": HEADER_VALUE, "cookie": HEADER_VALUE, "user-agent": HEADER_VALUE, "x-fuzz": HEADER_VALUE,
})


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=HEALTH)
@given(body=BODIES, headers=HEADERS)
@example(body=json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x"}], "seed": 2**64}).encode(),
         headers={})
@example(body=b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', headers={})
@example(body=b"", headers={"content-type": "text/plain"})
def test_no_http_body_or_header_gets_a_5xx(server, body, headers):
    status, content_type, raw = send(server.port, body, headers)
    event(f"HTTP {status}{' stream' if content_type.startswith('text/event-stream') else ''}")  # how many ran
    check_http(status, content_type, raw)


@pytest.mark.xfail(strict=True, reason="Ray Serve's HTTP proxy decodes x-request-id as UTF-8 (ray/serve/_private/"
                   "proxy.py, `value.decode()`) before any app code runs; not UTF-8, uvicorn answers a bare 500")
def test_ray_proxy_answers_a_non_utf8_request_id_header_with_500(server):
    status, _, raw = send(server.port, b"{}", {"x-request-id": "\xe9"})  # latin-1 on the wire, as HTTP allows
    assert status == 400, (status, raw)


def test_a_tiny_temperature_is_answered(server):
    """Found here: below ~1e-37 the sampler's float32 logits / temperature overflowed and torch.multinomial raised,
    a 500; now it samples in float64 after subtracting the max, and is greedy below 1e-5."""
    body = {"model": "seq", "messages": [{"role": "user", "content": "0"}], "max_tokens": 1, "temperature": 1e-300}
    status, _, raw = send(server.port, json.dumps(body).encode())
    assert status == 200, raw[:300]


def test_a_seed_outside_int64_is_refused_naming_seed(server):
    """Found here: seed 2**64 passed validation and failed inside the engine (torch's seed is 64-bit), after the
    batch had started, as a 400 naming `messages` ("Overflow when unpacking long long")."""
    for seed in (2**64, 2**63, -(2**63) - 1, 10**400):
        status, _, raw = send(server.port, json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x"}],
                                                       "seed": seed}).encode())
        assert status == 400 and json.loads(raw)["error"]["param"] == "seed", (seed, raw[:300])


def test_nesting_at_the_recursion_limit_is_a_4xx(server):
    """Find the depth where the parser gives up ("nested too deeply"), then send every depth just below it in
    each field: deeper frames (pydantic, the error text) must not hit the recursion limit first. Found here: bodies
    a few levels under the JSON decoder's limit (~990 deep) got a 500, the error text's json.dumps recursing past
    it; now anything over request_body.MAX_NESTING is refused up front."""
    low, high = 1, 5000
    while low < high:  # the deepest body still parsed: its error is about the field, not the nesting
        mid = (low + high + 1) // 2
        status, content_type, raw = send(server.port, deep(mid))
        check_http(status, content_type, raw)
        low, high = (mid, high) if b"nested too deeply" not in raw and b"not valid JSON" not in raw else (low, mid - 1)
    for field in ("tools", "stop", "model", "logit_bias", "messages", "user"):
        for n in range(max(1, low - 25), low + 3):
            check_http(*send(server.port, deep(n, field)))


# ------------------------------------------------------------------------------------------------------------ gRPC

INT32 = st.sampled_from([0, 1, 2, 3, 4, 5, -1, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1)
DOUBLE = st.sampled_from([0.0, -0.0, 1.0, 2.0, 0.5, 1e308, -1e308, 5e-324]) | st.floats()
RUN = st.fixed_dictionaries({"model": st.sampled_from(["seq", "seq", "", "nope", "seq\x00", "SEQ"]) | TEXT}, optional={
    "prompt": st.text(min_size=1, max_size=40) | EDGE_TEXT, "messages": st.lists(st.tuples(ROLES | TEXT, TEXT),
                                                                                  max_size=3),
    "max_tokens": INT32, "temperature": DOUBLE, "top_p": DOUBLE, "rounds": INT32, "latent_steps": INT32,
    "mode": st.integers(-3, 6), "stop": st.lists(TEXT, max_size=5), "user": TEXT,
    "seed": st.sampled_from([0, -1, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1),
})
RUN_VALID = st.fixed_dictionaries({"model": st.just("seq"), "prompt": SOME_TEXT},
                                  optional={"max_tokens": st.integers(1, 4), "rounds": st.integers(1, 2),
                                            "latent_steps": st.integers(0, 2), "mode": st.integers(0, 3),
                                            "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
                                            "temperature": st.sampled_from([0.0, 1.0]), "seed": st.integers(-9, 9)})
# Raw request bytes, which the generated stubs would never send: field 1 (model) and 2 (prompt) are proto3 strings.
RAW = st.one_of(
    st.binary(max_size=100),
    st.tuples(st.sampled_from([b"\x0a", b"\x12"]), BAD_UTF8).map(lambda t: t[0] + bytes([len(t[1])]) + t[1]),
    st.integers(1, 12).map(lambda n: pb.RunRequest(model="seq", prompt="What is 2+3?").SerializeToString()[:-n]),
    st.just(b"\x0a\x03seq\x12\x02hi\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),  # max_tokens = -1 as a varint
)
METADATA_EXTRA = st.lists(st.tuples(
    st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True).filter(  # names gRPC itself reserves are left out
        lambda k: not k.startswith("grpc") and not k.endswith("-bin")
        and k not in ("application", "te", "content-type", "host")),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30)), max_size=3)


def proto(fields: dict) -> pb.RunRequest:
    fields = dict(fields)
    messages = [pb.ChatMessage(role=r, content=c) for r, c in fields.pop("messages", [])]
    return pb.RunRequest(messages=messages, **fields)


def call(address: str, request: pb.RunRequest | bytes, stream: bool, metadata) -> None:
    """One RPC; the property: an allowed status with details, or a well-formed reply."""
    method = "/recursivemas.v1.RecursiveMAS/" + ("RunStream" if stream else "Run")
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    with grpc.insecure_channel(address) as channel:
        try:
            event(f"gRPC {'RunStream' if stream else 'Run'}")
            if stream:
                chunks = [pb.RunStreamChunk.FromString(c) for c in channel.unary_stream(method)(
                    raw, metadata=metadata, timeout=120)]
                assert chunks and chunks[-1].finish_reason in ("stop", "length"), chunks
            else:
                reply = pb.RunResponse.FromString(channel.unary_unary(method)(raw, metadata=metadata, timeout=120))
                assert reply.finish_reason in ("stop", "length") and reply.id and reply.usage.total_tokens > 0, reply
            event("gRPC OK")
        except grpc.RpcError as err:
            event(f"gRPC {err.code().name}")
            assert err.code() in GRPC_OK, (err.code(), err.details(), raw[:200])
            assert err.details(), err.code()


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=HEALTH)
@given(request=st.sampled_from([*[RUN_VALID.map(proto)] * 3, RAW,  # weighted: half valid, the models run
                                 *[RUN.map(proto)] * 2]).flatmap(lambda s: s),
       stream=st.booleans(), extra=METADATA_EXTRA)
@example(request=b"\x0a\x02\xff\xfe", stream=False, extra=[])  # found here: a non-UTF-8 model name was UNKNOWN
@example(request=pb.RunRequest(model="seq", prompt="x", temperature=float("nan")), stream=True, extra=[])
def test_no_grpc_request_gets_internal_unknown_or_unavailable(server, request, stream, extra):
    call(server.grpc_address, request, stream, (*METADATA, *extra))


# ---------------------------------------------------------------------------------------------------------- after

def test_the_server_is_well_after_the_fuzzing(server):
    from ray import serve

    status, _, raw = send(server.port, json.dumps({"model": "seq", "messages": [{"role": "user", "content": "2+2?"}],
                                                   "max_tokens": 2}).encode(), {"content-type": "application/json"})
    assert status == 200 and json.loads(raw)["object"] == "chat.completion", raw[:500]
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = recursivemas_pb2_grpc.RecursiveMASStub(channel).Run(
            pb.RunRequest(model="seq", prompt="2+2?", max_tokens=2), metadata=METADATA, timeout=120)
    assert reply.finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
    app = serve.status().applications[APP_NAME]
    assert app.status == "RUNNING", app.message
    for name, deployment in app.deployments.items():
        assert deployment.status == "HEALTHY" and set(deployment.replica_states) == {"RUNNING"}, (name, deployment)
    assert serve_actors() == server.actors  # the same actors, alive, never restarted
    assert all(state == "ALIVE" for _, state, _, _ in server.actors.values())
