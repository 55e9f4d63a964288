"""Ray Serve over real HTTP on 127.0.0.1 with tiny models: the official ``openai`` client gets completions and
streams, two topologies share their backbone deployments, and bad requests get 4xx without hurting the server."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import openai
import pytest
import yaml

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.serve.app import APP_NAME, backbone_deployment_name, build, start
from recursivemas.serve.proto import recursivemas_pb2 as pb
from recursivemas.serve.proto import recursivemas_pb2_grpc
from recursivemas.runtime import RunOptions
from tiny import save_tiny_pair

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out
READER = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."  # {context}: a field
CONTEXT = "The code is 4711."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    backbones = {name: {"model": path, "num_cpus": 0.25} for name, path in save_tiny_pair(root).items()}
    common = {"backbones": backbones, "pattern": "sequential", "rounds": 2, "latent_steps": 2,
              "generation": {"max_new_tokens": 8}}
    seq = {**common, "name": "seq", "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    trio = {**common, "name": "trio", "agents": [{"name": "p", "backbone": "a"}, {"name": "c", "backbone": "b"},
                                                 {"name": "s", "backbone": "a"}]}
    reader = {**common, "name": "reader", "agents": [{"name": "planner", "backbone": "a", "prompt": READER},
                                                     {"name": "solver", "backbone": "b"}]}
    paths = []
    for topology in (seq, trio, reader):
        (root / f"{topology['name']}.yaml").write_text(yaml.safe_dump(topology))
        paths.append(root / f"{topology['name']}.yaml")
    port, grpc_port = free_port(), free_port()
    # Through Serve's application builder, as a Serve config file would: backbone b gets 2 replicas, and a wide
    # batching window lets the batching test's concurrent requests meet (requests sent one by one pay it once).
    args = {"topologies": ",".join(str(p) for p in paths),
            "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.3, "rejoin_s": 0.1},
            "backbones": {backbones["b"]["model"]: {"num_replicas": 2}}}
    with Cluster(num_cpus=2):
        start("127.0.0.1", port, grpc_port)
        serve.run(build(args), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", backbones
        serve.shutdown()


@pytest.fixture(scope="module")
def http(server):
    return server[0]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_completion_and_stream_agree_under_greedy_decoding(http):
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    messages = [{"role": "user", "content": "What is 2+3?"}]
    completion = client.chat.completions.create(model="seq", messages=messages, max_tokens=6, temperature=0)
    text = completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    extension = completion.usage.model_extra["recursivemas"]
    assert extension["mode"] == "latent" and extension["rounds"] == 2
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="seq", messages=messages, max_tokens=6, temperature=0, stream=True) if chunk.choices]
    assert "".join(pieces) == text


def test_finish_reason_comes_from_the_engine(http):
    """Cut at the topology's default budget (no max_tokens sent: nothing to guess from) is "length" in the
    completion, the stream and gRPC alike; the tiny models never reach end-of-turn within 8 tokens."""
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    messages = [{"role": "user", "content": "What is 2+3?"}]
    completion = client.chat.completions.create(model="seq", messages=messages, temperature=0)
    assert completion.usage.model_extra["recursivemas"]["answer_tokens"] == 8  # generation.max_new_tokens
    assert completion.choices[0].finish_reason == "length"
    finals = [c.choices[0].finish_reason for c in client.chat.completions.create(
        model="seq", messages=messages, temperature=0, stream=True) if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]


def test_the_served_system_is_a_runner_with_the_same_answers(http):
    from recursivemas.serve.client import ServedSystem

    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    questions = ["What is 2+3?", "What is 7-4?"]
    expected = [client.chat.completions.create(model="seq", messages=[{"role": "user", "content": q}], max_tokens=6,
                                               temperature=0).choices[0].message.content for q in questions]
    system, heard = ServedSystem("seq"), []
    assert system.topology.name == "seq"
    options = RunOptions(mode="latent", generation={"max_new_tokens": 6})
    results = system.run_batch(questions, options, on_turn=heard.append)
    assert [r.text for r in results] == expected  # one batched run gives what two HTTP requests gave
    assert len(heard) == sum(len(r.usage) for r in results) and heard[-1].kind == "answer"


def test_two_topologies_share_backbone_deployments(http):
    from ray import serve

    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    assert sorted(m.id for m in client.models.list()) == ["reader", "seq", "trio"]
    reply = client.chat.completions.create(model="trio", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           extra_body={"mode": "text", "rounds": 1})
    assert reply.usage.model_extra["recursivemas"]["mode"] == "text"
    deployments = serve.status().applications["recursivemas"].deployments
    assert len([d for d in deployments if d.startswith("backbone-")]) == 2  # a and b, not one per topology


def test_backbone_options_reach_serve(server):
    from ray import serve

    from recursivemas.config import BackboneConfig

    deployments = serve.status().applications[APP_NAME].deployments
    names = {k: backbone_deployment_name(BackboneConfig(model=v["model"])) for k, v in server[2].items()}
    assert deployments[names["b"]].replica_states.get("RUNNING") == 2  # from the config's backbones: block
    assert deployments[names["a"]].replica_states.get("RUNNING") == 1


def test_concurrent_requests_run_as_one_batch_and_a_bad_one_fails_alone(http):
    """Four requests at once: the router batches them into one run; the one over the context fails with its 400,
    its batch-mates get the same answers as when sent alone."""
    from ray import serve

    questions = ["What is 2+3?", "Name a color.", "x" * 5000, "Count to three."]
    bodies = [json.dumps({"model": "seq", "messages": [{"role": "user", "content": q}], "max_tokens": 4,
                          "temperature": 0}).encode() for q in questions]
    router = serve.get_deployment_handle("router", app_name=APP_NAME)
    before = len(router.batch_sizes.remote().result())
    time.sleep(0.2)  # past the fixture's rejoin_s: the router is cold and waits for company
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: post(f"{http}/v1/chat/completions", b), bodies))
    batches = router.batch_sizes.remote().result()[before:]
    assert batches == [4]  # one batched run (inside it, the failed run's members are retried one by one)
    assert [code for code, _ in together] == [200, 200, 400, 200]
    assert "context" in together[2][1]["error"]["message"]
    alone = [post(f"{http}/v1/chat/completions", b) for b in (bodies[0], bodies[1], bodies[3])]
    assert [r["choices"][0]["message"]["content"] for _, r in alone] == \
        [together[i][1]["choices"][0]["message"]["content"] for i in (0, 1, 3)]


def chat(**fields) -> bytes:
    return json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x"}], **fields}).encode()


@pytest.mark.parametrize("body,status", [
    (chat(messages="hi"), 400),
    (chat(messages=[{"role": "user", "content": 7}]), 400),
    (chat(messages=[{"role": "wizard", "content": "x"}]), 400),
    (chat(messages=[{"role": "user", "content": ""}]), 400),
    (chat(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]), 400),
    (chat(model=None), 400),
    (chat(max_tokens=0), 400),
    (chat(top_p=5), 400),
    (chat(n=2), 400),
    (chat(rounds=100), 400),
    (chat(latent_steps=10**6), 400),
    (chat(mode="fast"), 400),
    (chat(stream="yes"), 400),
    (chat(stop=["a", "b", "c", "d", "e"]), 400),
    (chat(latent_step=3), 400),  # a misspelt extension is named, not dropped
    (b"{not json", 400),
    (b"[]", 400),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404),
    (json.dumps({"model": "seq", "messages": []}).encode(), 400),
    (json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}).encode(), 400),
    (json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400),
    (json.dumps({"model": "seq", "messages": [{"role": "user", "content": "x" * 5000}], "max_tokens": 2}).encode(),
     400),  # over the tiny models' context
    (b"{" + b" " * (2 * 1024 * 1024) + b"}", 413),
])
def test_bad_requests_get_4xx_and_the_server_goes_on(http, body, status):
    code, error = post(f"{http}/v1/chat/completions", body)
    assert code == status and error["error"]["message"] and error["error"]["type"]
    ok, reply = post(f"{http}/v1/chat/completions", json.dumps(
        {"model": "seq", "messages": [{"role": "user", "content": "1+1?"}], "max_tokens": 2}).encode())
    assert ok == 200 and reply["object"] == "chat.completion"


def test_grpc_gets_the_same_answer_as_http(server):
    http, address, _ = server
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    expected = client.chat.completions.create(model="seq", messages=[{"role": "user", "content": "What is 2+3?"}],
                                              max_tokens=6, temperature=0).choices[0].message.content
    metadata = (("application", "recursivemas"),)
    with grpc.insecure_channel(address) as channel:
        stub = recursivemas_pb2_grpc.RecursiveMASStub(channel)
        request = pb.RunRequest(model="seq", prompt="What is 2+3?", max_tokens=6, temperature=0)
        reply = stub.Run(request, metadata=metadata, timeout=60)
        assert reply.text == expected and reply.usage.completion_tokens > 0
        chunks = list(stub.RunStream(request, metadata=metadata, timeout=60))
        assert "".join(c.delta for c in chunks) == expected and chunks[-1].finish_reason == reply.finish_reason
        assert stub.Run(pb.RunRequest(model="seq", prompt="What is 2+3?", temperature=0), metadata=metadata,
                        timeout=60).finish_reason == "length"  # cut at the topology's 8 tokens
        with pytest.raises(grpc.RpcError) as info:
            stub.Run(pb.RunRequest(model="nope", prompt="x"), metadata=metadata, timeout=60)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "seq" in info.value.details()


def test_a_field_the_template_names_comes_in_the_recursivemas_extension(http):
    """The reader topology's planner names {context}: with recursivemas.context it answers (streamed = non-streamed,
    and the context reaches the run); without it, or with a non-string, it is a 400 naming the field and the agent,
    before any run starts, streaming or not. The model card lists the field; the Python runner takes it too."""
    from recursivemas.runtime import MissingFieldError
    from recursivemas.serve.client import ServedSystem

    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    cards = {m.id: m.model_extra["recursivemas"]["fields"] for m in client.models.list()}
    assert cards == {"reader": ["context"], "seq": [], "trio": []}
    ask = dict(model="reader", messages=[{"role": "user", "content": "What is the code?"}], max_tokens=6,
               temperature=0)
    reply = client.chat.completions.create(**ask, extra_body={"recursivemas": {"context": CONTEXT}})
    text = reply.choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **ask, stream=True, extra_body={"recursivemas": {"fields": {"context": CONTEXT}}}) if c.choices]
    assert "".join(pieces) == text
    longer = client.chat.completions.create(**ask, extra_body={"recursivemas": {"context": CONTEXT * 4}})
    planner = lambda r: r.usage.model_extra["recursivemas"]["agents"]["planner"]["prompt_tokens"]  # noqa: E731
    assert planner(longer) - planner(reply) == 2 * 3 * len(CONTEXT)  # 2 rounds, byte tokens: the context is in
    for stream in (False, True):
        code, error = post(f"{http}/v1/chat/completions", json.dumps({**ask, "stream": stream}).encode())
        assert code == 400 and error["error"]["param"] == "recursivemas.fields.context", (stream, error)
        assert "agent 'planner'" in error["error"]["message"] and "{context}" in error["error"]["message"]
    code, error = post(f"{http}/v1/chat/completions",
                       json.dumps({**ask, "recursivemas": {"fields": {"context": 4711}}}).encode())
    assert code == 400 and error["error"]["param"] == "recursivemas.fields.context"
    assert error["error"]["code"] == "invalid_type"
    system = ServedSystem("reader")
    assert system.run("What is the code?", RunOptions(generation={"max_new_tokens": 6}), context=CONTEXT).text == text
    with pytest.raises(MissingFieldError, match="agent 'planner'"):
        system.run("What is the code?")


def test_grpc_fields_carry_the_context(server):
    http, address, _ = server
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    expected = client.chat.completions.create(
        model="reader", messages=[{"role": "user", "content": "What is the code?"}], max_tokens=6, temperature=0,
        extra_body={"recursivemas": {"context": CONTEXT}}).choices[0].message.content
    metadata = (("application", "recursivemas"),)
    with grpc.insecure_channel(address) as channel:
        stub = recursivemas_pb2_grpc.RecursiveMASStub(channel)
        request = pb.RunRequest(model="reader", prompt="What is the code?", max_tokens=6, temperature=0,
                                fields={"context": CONTEXT})
        assert stub.Run(request, metadata=metadata, timeout=60).text == expected
        assert "".join(c.delta for c in stub.RunStream(request, metadata=metadata, timeout=60)) == expected
        for call in (stub.Run, lambda r, **kw: list(stub.RunStream(r, **kw))):
            with pytest.raises(grpc.RpcError) as info:
                call(pb.RunRequest(model="reader", prompt="What is the code?"), metadata=metadata, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "recursivemas.fields.context" in info.value.details()
            assert "agent 'planner'" in info.value.details()


def sse_events(response) -> list[tuple[str | None, dict | str]]:
    """``(event name, data)`` of each server-sent event, in arrival order."""
    events, name = [], None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return events


def test_live_turns_arrive_as_named_events_ahead_of_the_answer(http):
    """stream_options.include_turns: one `recursivemas.turn` event per agent turn as it finishes; the upstream
    turns come before the answer's first delta, they match the final usage's turns, and the openai client (which
    reads unnamed events only) still gets the same answer from the same stream."""
    body = {"model": "seq", "messages": [{"role": "user", "content": "What is 2+3?"}], "max_tokens": 6,
            "temperature": 0, "stream": True, "stream_options": {"include_turns": True, "include_usage": True}}
    request = urllib.request.Request(f"{http}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        events = sse_events(response)
    turns = [(i, data["turn"]) for i, (name, data) in enumerate(events) if name == "recursivemas.turn"]
    deltas = [i for i, (name, data) in enumerate(events)
              if name is None and data != "[DONE]" and data.get("choices") and data["choices"][0]["delta"].get("content")]
    usage = next(data["usage"] for name, data in events if name is None and data != "[DONE]" and data.get("usage"))
    assert [t for _, t in turns] == usage["recursivemas"]["turns"]  # every turn, live, as the usage lists them
    upstream = [i for i, t in turns if t["kind"] != "answer"]
    assert len(upstream) == 3 and deltas and max(upstream) < min(deltas)  # planner, solver, planner, then the answer
    assert {t["agent"] for _, t in turns} == {"planner", "solver"} and all(t["wall_s"] > 0 for _, t in turns)
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="seq", messages=body["messages"], max_tokens=6, temperature=0, stream=True,
        stream_options={"include_turns": True}) if chunk.choices)
    assert text == "".join(events[i][1]["choices"][0]["delta"]["content"] for i in deltas)


def test_grpc_streams_the_same_turns(server):
    _, address, _ = server
    metadata = (("application", "recursivemas"),)
    with grpc.insecure_channel(address) as channel:
        stub = recursivemas_pb2_grpc.RecursiveMASStub(channel)
        request = pb.RunRequest(model="seq", prompt="What is 2+3?", max_tokens=6, temperature=0, include_turns=True)
        chunks = list(stub.RunStream(request, metadata=metadata, timeout=60))
        request.ClearField("include_turns")
        plain = list(stub.RunStream(request, metadata=metadata, timeout=60))
    turns = [c.turn for c in chunks if c.HasField("turn")]
    assert [(t.agent, t.round, t.kind) for t in turns] == [(t.agent, t.round, t.kind) for t in chunks[-1].usage.turns]
    first_delta = next(i for i, c in enumerate(chunks) if c.delta)
    assert len(turns) == 4 and all(i < first_delta for i, c in enumerate(chunks)
                                   if c.HasField("turn") and c.turn.kind != "answer")
    assert not any(c.HasField("turn") for c in plain) and "".join(c.delta for c in plain) == "".join(
        c.delta for c in chunks)
