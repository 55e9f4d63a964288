"""The gRPC interface: the committed stubs import, match the .proto (stale stubs fail here), round-trip messages,
serve Run and RunStream over a real channel on 127.0.0.1, register with Ray Serve's gRPC options, and a RunRequest
is validated exactly as an HTTP body."""

from __future__ import annotations

import subprocess
from concurrent import futures
from pathlib import Path

import pytest

import grpc  # noqa: E402  (a dev dependency: missing, this fails)

from recursivemas.runtime.accounting import AgentUsage, RunResult  # noqa: E402
from recursivemas.runtime.calls import GenerationOverrides, RunOptions  # noqa: E402
from recursivemas.serve import grpc_api  # noqa: E402
from recursivemas.serve.errors import APIError  # noqa: E402
from recursivemas.serve.openai_api import Limits  # noqa: E402
from recursivemas.serve.openai_responses import usage_body  # noqa: E402
from recursivemas.serve.proto import generate  # noqa: E402
from recursivemas.serve.proto import recursivemas_pb2 as pb  # noqa: E402
from recursivemas.serve.proto import recursivemas_pb2_grpc as pb_grpc  # noqa: E402

SERVICER_FUNCTION = "recursivemas.serve.proto.recursivemas_pb2_grpc.add_RecursiveMASServicer_to_server"
LIMITS = Limits(max_tokens=256, max_rounds=4, max_latent_steps=64, max_body_bytes=4096)
MODELS = ("sequential-demo",)


def result(finish: str = "stop") -> RunResult:
    usage = [
        AgentUsage(agent="planner", round=1, backbone="smol", kind="latent", prompt_tokens=20, latent_steps=8),
        AgentUsage(agent="solver", round=1, backbone="smol", kind="answer", prompt_tokens=40, decoded_tokens=3),
    ]
    return RunResult(question="q", text="36", mode="latent", rounds=1, latent_steps=8, wall_s=0.5, usage=usage,
                     finish_reason=finish)


def test_stubs_import_and_name_the_service():
    assert pb.DESCRIPTOR.name == "recursivemas/serve/proto/recursivemas.proto"
    assert pb.DESCRIPTOR.package == "recursivemas.v1"
    service = pb.DESCRIPTOR.services_by_name["RecursiveMAS"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Run", "RunStream"}
    assert not methods["Run"].server_streaming and methods["RunStream"].server_streaming
    assert methods["Run"].output_type.name == "RunResponse"
    assert methods["RunStream"].output_type.name == "RunStreamChunk"
    assert callable(pb_grpc.add_RecursiveMASServicer_to_server)
    assert pb_grpc.RecursiveMASStub and pb_grpc.RecursiveMASServicer
    text = Path(pb_grpc.__file__).read_text()
    assert "from recursivemas.serve.proto import recursivemas_pb2" in text  # a package import, no fix-up


def test_messages_round_trip():
    req = pb.RunRequest(model="sequential-demo", messages=[pb.ChatMessage(role="system", content="Be brief."),
                                                           pb.ChatMessage(role="user", content="2+2? ünï")],
                        max_tokens=64, temperature=0.7, top_p=0.9, rounds=2, latent_steps=0, mode=pb.MODE_TEXT,
                        stop=["\n\n"], seed=-3, user="u")
    back = pb.RunRequest.FromString(req.SerializeToString())
    assert back == req and back.temperature == 0.7  # double: no float32 rounding
    assert back.HasField("latent_steps") and back.latent_steps == 0  # explicit presence: 0 is not "unset"
    assert not pb.RunRequest(model="m").HasField("latent_steps")
    resp = grpc_api.response_to_proto("id1", "sequential-demo", "36", result("length"))
    back = pb.RunResponse.FromString(resp.SerializeToString())
    assert back == resp and back.usage.agents[1].decoded_tokens == 3 and back.finish_reason == "length"
    chunk = grpc_api.final_chunk_to_proto("id1", "m", result())
    assert pb.RunStreamChunk.FromString(chunk.SerializeToString()) == chunk


def test_stubs_match_the_proto(tmp_path):
    """The descriptor compiled now from the .proto equals the one in the committed stubs (any protoc version)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"--proto_path={generate.ROOT}", f"--descriptor_set_out={out}",
                        str(generate.PROTO)]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    messages = list(fresh.message_type)
    while messages:  # the Python generator embeds the descriptor without json_name; the rest must be equal
        message = messages.pop()
        for field in [*message.field, *message.extension]:
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh, "stubs are stale: run `make proto` and commit the generated files"


def test_make_proto_runs_the_generator():
    root = generate.ROOT
    dry = subprocess.run(["make", "-n", "proto"], cwd=root, capture_output=True, text=True)
    if dry.returncode != 0 and "No rule" in dry.stderr:
        pytest.fail("the Makefile has no `proto` target")
    assert "recursivemas/serve/proto/generate.py" in dry.stdout, dry.stdout + dry.stderr


class FakeServicer(pb_grpc.RecursiveMASServicer):
    """What the ingress deployment does, minus Ray: validate, run (a canned result), answer or stream."""

    def Run(self, request, context):
        try:
            req = grpc_api.request_from_proto(request, LIMITS, MODELS)
        except APIError as err:
            context.abort(grpc_api.grpc_status(err), err.message)
        return grpc_api.response_to_proto("rid", req.model, "36 " + req.question(), result())

    def RunStream(self, request, context):
        req = grpc_api.request_from_proto(request, LIMITS, MODELS)
        for piece in ["3", "6 ", req.question()]:
            yield grpc_api.chunk_to_proto("rid", req.model, piece)
        yield grpc_api.final_chunk_to_proto("rid", req.model, result())


@pytest.fixture
def stub():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RecursiveMASServicer_to_server(FakeServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.RecursiveMASStub(channel)
    finally:
        channel.close()
        server.stop(None)


def test_run_and_stream_over_a_channel(stub):
    reply = stub.Run(pb.RunRequest(model="sequential-demo", prompt="What is 2+2?"), timeout=10)
    assert reply.text == "36 What is 2+2?" and reply.usage.total_tokens == 63 and reply.usage.mode == "latent"
    chunks = list(stub.RunStream(pb.RunRequest(model="sequential-demo", prompt="What is 2+2?"), timeout=10))
    assert "".join(c.delta for c in chunks) == reply.text
    assert [c.finish_reason for c in chunks] == ["", "", "", "stop"] and chunks[-1].HasField("usage")
    assert chunks[-1].usage == reply.usage
    with pytest.raises(grpc.RpcError) as info:
        stub.Run(pb.RunRequest(model="nope", prompt="x"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "sequential-demo" in info.value.details()
    assert stub.Run(pb.RunRequest(model="sequential-demo", prompt="ok?"), timeout=10).text == "36 ok?"


def test_ray_serve_grpc_options_import_the_servicer_function():
    import ray.serve.config as config
    options = config.gRPCOptions(port=9000, grpc_servicer_functions=[SERVICER_FUNCTION])
    assert options.grpc_servicer_func_callable == [pb_grpc.add_RecursiveMASServicer_to_server]


def test_usage_matches_http():
    usage, http = grpc_api.usage_to_proto(result()), usage_body(result())
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        http["prompt_tokens"], http["completion_tokens"], http["total_tokens"])
    assert [a.agent for a in usage.agents] == ["planner", "solver"]
    assert usage.latent_steps_total == 8 and usage.wall_s == 0.5
    fields = ("agent", "round", "kind", "latent_steps", "decoded_tokens", "prompt_tokens", "wall_s", "tool_calls")
    assert [{f: getattr(t, f) for f in fields} for t in usage.turns] == http["recursivemas"]["turns"]


def test_request_from_proto():
    req = grpc_api.request_from_proto(
        pb.RunRequest(model="sequential-demo", messages=[pb.ChatMessage(role="system", content="Be brief."),
                                                         pb.ChatMessage(role="user", content="2+2?")],
                      max_tokens=16, temperature=0.0, rounds=2, latent_steps=0, mode=pb.MODE_SINGLE, stop=["x"],
                      seed=1, user="u"), LIMITS, MODELS)
    assert req.question() == "Be brief.\n\n2+2?"
    assert req.run_options() == RunOptions(mode="single", rounds=2, latent_steps=0, generation=GenerationOverrides(
        max_new_tokens=16, temperature=0.0, seed=1, stop=("x",)))
    plain = grpc_api.request_from_proto(pb.RunRequest(model="sequential-demo", prompt="hi"), LIMITS, MODELS)
    assert plain.question() == "hi" and plain.run_options() == RunOptions()


def test_request_fields_map_to_the_query():
    from recursivemas.runtime import Query
    from test_serve_openai_api import NEEDS

    msg = pb.RunRequest(model="sequential-demo", prompt="hi", fields={"context": "x = 7", "note": "n"})
    assert pb.RunRequest.FromString(msg.SerializeToString()).fields == {"context": "x = 7", "note": "n"}
    req = grpc_api.request_from_proto(msg.SerializeToString(), LIMITS, MODELS, NEEDS)  # as the ingress gets it
    assert req.query() == Query("hi", {"context": "x = 7", "note": "n"})
    with pytest.raises(APIError) as info:
        grpc_api.request_from_proto(pb.RunRequest(model="sequential-demo", prompt="hi", fields={"note": "n"}),
                                    LIMITS, MODELS, NEEDS)
    err = info.value
    assert err.param == "recursivemas.fields.context" and "agent 'reader'" in err.message
    assert 'RunRequest.fields["context"]' in err.message
    assert grpc_api.grpc_status(err) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("msg, status, param, code", [
    (pb.RunRequest(model="sequential-demo"), 400, "messages", "empty_messages"),
    (pb.RunRequest(model="sequential-demo", prompt="a", messages=[pb.ChatMessage(role="user", content="b")]),
     400, "prompt", "invalid_value"),
    (pb.RunRequest(model="other", prompt="a"), 404, "model", "model_not_found"),
    (pb.RunRequest(model="sequential-demo", prompt="a", max_tokens=0), 400, "max_tokens", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a", max_tokens=257), 400, "max_tokens", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a", rounds=9), 400, "rounds", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a", latent_steps=65), 400, "latent_steps", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a", temperature=float("nan")), 400, "temperature",
     "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a", mode=9), 400, "mode", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", messages=[pb.ChatMessage(role="robot", content="b")]), 400,
     "messages[0].role", "invalid_value"),
    (pb.RunRequest(model="sequential-demo", prompt="a" * 5000), 413, None, "request_too_large"),
])
def test_request_from_proto_errors(msg, status, param, code):
    with pytest.raises(APIError) as info:
        grpc_api.request_from_proto(msg, LIMITS, MODELS)
    err = info.value
    assert (err.status, err.param, err.code) == (status, param, code), err
    expected = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED}[status]
    assert grpc_api.grpc_status(err) == expected
    assert grpc_api.grpc_status(APIError.internal("r")) == grpc.StatusCode.INTERNAL
