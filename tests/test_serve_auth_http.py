"""API keys on a real Ray Serve app on 127.0.0.1 (tiny models): the ``openai`` client without or with a wrong key gets
``AuthenticationError`` with OpenAI's error body, the right key (from the config or ``RECURSIVEMAS_API_KEY``) gets
answers, ``/health`` stays open, gRPC answers ``UNAUTHENTICATED`` without the key, and no log holds a key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import openai
import pytest

from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
from recursivemas.serve.app import APP_NAME, build, start
from recursivemas.serve.auth import ENV_VAR
from recursivemas.serve.proto import recursivemas_pb2 as pb
from recursivemas.serve.proto import recursivemas_pb2_grpc
from test_serve_http import free_port
from tiny import write_pair_topology

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out

CONFIG_KEY, ENV_KEYS = "sk-config-key-1", ("sk-env-key-2", "sk-env-key-3")
PROMPT = "What is 2+3? zebra-7781"
APPLICATION = ("application", APP_NAME)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve-auth")
    write_pair_topology(root, latent_steps=2, max_new_tokens=4)
    port, grpc_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as env, Cluster(num_cpus=2) as cluster:
        env.setenv(ENV_VAR, ",".join(ENV_KEYS))  # read by the builder, as `serve run`/`serve deploy` would
        start("127.0.0.1", port, grpc_port)
        serve.run(build({"topologies": str(root / "seq.yaml"), "api_keys": [CONFIG_KEY]}), name=APP_NAME,
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", cluster
        serve.shutdown()


def client(http: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http}/v1", api_key=key, max_retries=0, timeout=60)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_no_key_or_a_wrong_key_is_a_401_with_openai_error(server):
    http = server[0]
    with pytest.raises(openai.AuthenticationError) as info:
        client(http, "sk-wrong").chat.completions.create(model="seq", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["param"] is None
    assert "Incorrect API key" in info.value.message and "sk-wrong" not in info.value.message
    with pytest.raises(openai.AuthenticationError):
        client(http, "sk-wrong").models.list()
    for path in ("/v1/models", "/v1/chat/completions", "/openapi.json", "/docs"):
        status, headers, body = get(f"{http}{path}")  # no Authorization header at all
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path
        assert body["error"]["code"] == "invalid_api_key" and "Missing API key" in body["error"]["message"]
        assert set(body["error"]) >= {"message", "type", "param", "code"}


def test_health_is_open(server):
    status, _, body = get(f"{server[0]}/health")
    assert status == 200 and body["models"] == ["seq"]


def test_each_configured_key_gets_answers(server):
    http = server[0]
    messages = [{"role": "user", "content": PROMPT}]
    texts = []
    for key in (CONFIG_KEY, *ENV_KEYS):
        c = client(http, key)
        assert [m.id for m in c.models.list()] == ["seq"]
        reply = c.chat.completions.create(model="seq", messages=messages, max_tokens=4, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        texts.append(reply.choices[0].message.content)
    assert len(set(texts)) == 1
    pieces = [chunk.choices[0].delta.content or "" for chunk in client(http, ENV_KEYS[0]).chat.completions.create(
        model="seq", messages=messages, max_tokens=4, temperature=0, stream=True) if chunk.choices]
    assert "".join(pieces) == texts[0]  # the stream passes through the middleware untouched


def test_grpc_needs_the_key_in_metadata(server):
    address = server[1]
    request = pb.RunRequest(model="seq", prompt=PROMPT, max_tokens=4, temperature=0)
    with grpc.insecure_channel(address) as channel:
        stub = recursivemas_pb2_grpc.RecursiveMASStub(channel)
        for metadata in ((APPLICATION,), (APPLICATION, ("authorization", "Bearer sk-wrong")),
                         (APPLICATION, ("authorization", CONFIG_KEY))):  # no "Bearer": not a bearer key
            with pytest.raises(grpc.RpcError) as info:
                stub.Run(request, metadata=metadata, timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.RunStream(request, metadata=metadata, timeout=60))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (APPLICATION, ("authorization", f"Bearer {ENV_KEYS[1]}"))
        reply = stub.Run(request, metadata=metadata, timeout=60)
        assert reply.text and reply.usage.completion_tokens > 0
        chunks = list(stub.RunStream(request, metadata=metadata, timeout=60))
        assert "".join(c.delta for c in chunks) == reply.text
        with pytest.raises(grpc.RpcError) as info:  # a stream refused before its first chunk still fails
            list(stub.RunStream(pb.RunRequest(model="nope", prompt="x"), metadata=metadata, timeout=60))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_no_log_holds_a_key_or_the_prompt(server):
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert any(path.parent.name == "serve" for path in files)  # the proxy's and replicas' logs are among them
    secrets = (CONFIG_KEY, *ENV_KEYS, "zebra-7781")
    for path in files:
        text = path.read_bytes()
        assert not any(s.encode() in text for s in secrets), path
