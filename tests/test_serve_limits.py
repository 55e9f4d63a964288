"""Backpressure, deadlines and disconnects over real HTTP on 127.0.0.1 (tiny models): past the queue bound a request
gets 503 with Retry-After, past its deadline a 504 with its request id, and a client that leaves stops its run and
frees its place; the server serves the next request each time."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import yaml

from recursivemas.cluster import Cluster
from recursivemas.serve.app import APP_NAME, build, start
from test_serve_http import free_port
from transformers import AutoModelForCausalLM

from tiny import byte_tokenizer, tiny_config

pytestmark = pytest.mark.ray
LONG = 16000  # tokens per decoding turn, which this tiny model takes many seconds over (its context is 16384)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("limits")
    # Without a chat template this random model decodes to max_tokens (measured) instead of stopping.
    model = str(root / "tiny")
    AutoModelForCausalLM.from_config(tiny_config("llama", context=16384)).save_pretrained(model)
    byte_tokenizer(chat=False).save_pretrained(model)
    topology = {"name": "seq", "backbones": {"a": {"model": model, "num_cpus": 0.25}}, "pattern": "sequential",
                "rounds": 1, "latent_steps": 1, "generation": {"max_new_tokens": LONG},
                "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "a"}]}
    (root / "seq.yaml").write_text(yaml.safe_dump(topology))
    port = free_port()
    args = {"topologies": str(root / "seq.yaml"),
            "limits": {"max_queued": 2, "retry_after_s": 3, "timeout_s": 60, "max_timeout_s": 120,
                       "max_tokens": LONG},
            "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}}
    with Cluster(num_cpus=2):
        start("127.0.0.1", port)
        serve.run(build(args), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", serve.get_deployment_handle("router", app_name=APP_NAME)
        serve.shutdown()


def request(url: str, body: dict, timeout: float = 60) -> tuple[int, dict, dict]:
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    status, headers, data = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return status, headers, json.loads(data)


def ask(max_tokens: int, **extra) -> dict:
    return {"model": "seq", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def wait_idle(router, within: float) -> float:
    began = time.monotonic()
    while router.in_flight.remote().result() and time.monotonic() - began < within:
        time.sleep(0.1)
    return time.monotonic() - began


def test_the_next_request_is_served(server):
    url, _ = server
    status, _, body = request(url, ask(4))
    assert status == 200 and body["object"] == "chat.completion"


def test_past_its_deadline_a_request_gets_504_with_its_id_and_its_run_stops(server):
    url, router = server
    began = time.monotonic()
    status, headers, body = request(url, ask(LONG, timeout_s=1.0))
    assert status == 504 and time.monotonic() - began < 15
    assert body["error"]["code"] == "timeout" and body["error"]["request_id"] == headers["x-request-id"]
    assert body["error"]["request_id"] in body["error"]["message"]
    assert wait_idle(router, 10) < 10
    assert request(url, ask(4))[0] == 200


def test_past_the_queue_bound_requests_get_503_with_retry_after(server):
    url, router = server
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(request, url, ask(LONG, timeout_s=4.0)) for _ in range(6)]
        outcomes = [f.result() for f in futures]
    refused = [(h, b) for s, h, b in outcomes if s == 503]
    assert len(refused) >= 4, [s for s, _, _ in outcomes]  # at most 2 held at once: the rest are turned away
    assert all(h.get("retry-after") == "3" and b["error"]["code"] == "overloaded" for h, b in refused)
    assert {s for s, _, _ in outcomes} <= {200, 503, 504}  # the 2 admitted finish, or reach their deadline
    assert wait_idle(router, 10) < 10 and request(url, ask(4))[0] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_its_run_and_frees_its_place(server, stream):
    url, router = server
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    # text mode, 2 rounds: three turns of 16000 tokens, far longer than the waits below
    conn.request("POST", "/v1/chat/completions", json.dumps(ask(LONG, stream=stream, mode="text", rounds=2)),
                 {"content-type": "application/json"})
    if stream:
        response = conn.getresponse()
        assert response.status == 200 and response.read(6) == b"data: "  # its run has begun
    else:
        deadline = time.monotonic() + 10
        while not router.in_flight.remote().result() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert router.in_flight.remote().result() == 1
    conn.sock.close()  # the client goes away mid-run
    conn.close()
    assert wait_idle(router, 10) < 10  # a run of LONG tokens would hold its place far longer
    assert request(url, ask(4))[0] == 200
