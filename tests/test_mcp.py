"""``recursivemas mcp``, driven by the MCP SDK's own client: over stdio and streamable HTTP (a real subprocess each,
on tiny random models) and as a thin client of a ``recursivemas serve`` (a fake OpenAI server on 127.0.0.1 that
checks the key and the body, since starting Ray Serve takes a minute).

What a coding agent relies on: the answer's structured usage lists the agents in topology order, ``list_topologies``
shows the loaded topology, a bad argument is an ``isError`` result naming the argument and the fix, and an answer
cut by its budget says ``finish_reason: length``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from recursivemas.cli import main
from recursivemas.config import load_topology
from recursivemas.mcp_backends import InProcessBackend, ServedBackend
from recursivemas.mcp_server import build_server
from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.serve.errors import APIError, error_body
from recursivemas.serve.openai_responses import completion_body, models_body
from tiny import write_pair_topology

BIN = Path(sys.executable).parent  # the venv's bin: where `recursivemas` is installed
ENV = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Every request here goes to 127.0.0.1: never through a proxy the environment names."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def topology(tmp_path_factory) -> Path:
    """A planner (tiny Llama) -> solver (tiny Qwen2) topology, one round, 2 latent steps, 4 new tokens."""
    return write_pair_topology(tmp_path_factory.mktemp("mcp"))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def agents(result) -> list[str]:
    return [a["agent"] for a in result.structured_content["agents"]]


def error_text(result) -> str:
    assert result.is_error, result
    return result.content[0].text


def test_stdio_ask_list_and_refusals(topology, tmp_path):
    log = (tmp_path / "server.log").open("w+")
    params = StdioServerParameters(command="recursivemas", args=["mcp", "--topology", str(topology)], env=ENV)

    async def session():
        async with Client(stdio_client(params, errlog=log)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            answer = await client.call_tool("ask", {"question": "What is 2+2?"})
            text = await client.call_tool("ask", {"question": "What is 2+2?", "mode": "text", "rounds": 2})
            cut = await client.call_tool("ask", {"question": "What is 2+2?", "max_tokens": 1})
            bogus = await client.call_tool("ask", {"question": "q", "mode": "bogus"})
            zero = await client.call_tool("ask", {"question": "q", "rounds": 0})
            context = await client.call_tool("ask", {"question": "q", "context": "The code is 4711."})
            listed = await client.call_tool("list_topologies", {})
            return tools, answer, text, cut, bogus, zero, context, listed

    tools, answer, text, cut, bogus, zero, context, listed = run(session())
    log.seek(0)
    assert set(tools) == {"ask", "list_topologies"}, log.read()
    schema = tools["ask"].input_schema
    assert schema["required"] == ["question"]
    assert {"context", "mode", "rounds", "latent_steps", "max_tokens"} <= set(schema["properties"])
    assert schema["properties"]["mode"]["enum"] == ["latent", "text", "single"]
    assert "agents" in tools["ask"].output_schema["properties"]

    usage = answer.structured_content
    assert not answer.is_error and agents(answer) == ["planner", "solver"]
    assert (usage["topology"], usage["mode"], usage["rounds"], usage["latent_steps"]) == ("seq", "latent", 1, 2)
    assert [a["latent_steps"] for a in usage["agents"]] == [2, 0]  # the planner thinks, the solver answers
    assert answer.content[0].text.startswith(usage["answer"])
    assert usage["finish_reason"] == "length" and usage["answer_tokens"] == 4  # the topology's budget of 4

    assert agents(text) == ["planner", "solver"] and text.structured_content["mode"] == "text"
    assert [a["turns"] for a in text.structured_content["agents"]] == [2, 2]
    assert text.structured_content["latent_steps_total"] == 0  # text mode: messages, no latent thoughts

    assert (cut.structured_content["finish_reason"], cut.structured_content["answer_tokens"]) == ("length", 1)
    assert "finish_reason length" in cut.content[0].text

    assert error_text(bogus).startswith("mode: 'bogus' is not a mode; pass one of latent, text, single")
    assert error_text(zero).startswith("rounds: 0 is out of range; pass an integer from 1 to 8")
    assert error_text(context).startswith("context: no template of topology 'seq' names {context}")

    shown = listed.structured_content
    assert shown["loaded"]["name"] == "seq" and shown["loaded"]["pattern"] == "sequential"
    assert [a["name"] for a in shown["loaded"]["agents"]] == ["planner", "solver"]
    assert shown["loaded"]["rounds"] == 1 and shown["loaded"]["runs"] == "in this process"
    assert "sequential-demo" in shown["builtin"] and shown["served"] is None
    assert json.loads(listed.content[0].text) == shown


def test_context_reaches_the_agent_that_reads_it(topology, tmp_path):
    """In process (the SDK's in-memory client): a template naming {context} makes context required in the modes
    whose agents read it, and list_topologies shows the field."""
    doc = yaml.safe_load(topology.read_text())
    doc["name"] = "reader"
    doc["agents"][0]["prompt"] = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."
    (tmp_path / "reader.yaml").write_text(yaml.safe_dump(doc))
    backend = InProcessBackend(load_topology(tmp_path / "reader.yaml"))

    async def session():
        async with Client(build_server(backend)) as client:
            return (await client.call_tool("ask", {"question": "What is the code?"}),
                    await client.call_tool("ask", {"question": "What is the code?", "context": "The code is 4711."}),
                    await client.call_tool("ask", {"question": "What is the code?", "mode": "single"}),
                    await client.call_tool("list_topologies", {}))

    missing, given, single, listed = run(session())
    assert error_text(missing).startswith("context: the template of agent 'planner' names {context}; pass context")
    assert not given.is_error and agents(given) == ["planner", "solver"]
    assert not single.is_error and agents(single) == ["solver"]  # the decoder alone reads no context
    assert listed.structured_content["loaded"]["fields"] == ["context"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http(topology, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen(["recursivemas", "mcp", "--topology", str(topology), "--http", "--port", str(port)],
                            env=ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)

        async def session():
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                names = [t.name for t in (await client.list_tools()).tools]
                answer = await client.call_tool("ask", {"question": "What is 7+5?", "rounds": 2,
                                                        "latent_steps": 3})
                bad = await client.call_tool("ask", {"question": "  "})
                return names, answer, bad

        names, answer, bad = run(session())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sorted(names) == ["ask", "list_topologies"]
    assert not answer.is_error and agents(answer) == ["planner", "solver"]
    usage = answer.structured_content
    assert (usage["rounds"], usage["latent_steps"], [a["turns"] for a in usage["agents"]]) == (2, 3, [2, 2])
    assert usage["latent_steps_total"] == sum(a["latent_steps"] for a in usage["agents"]) >= 2 * 3
    assert error_text(bad).startswith("question: is empty")


class FakeServe(BaseHTTPRequestHandler):
    """``recursivemas serve``'s two routes, answering what the real one would for a planner -> solver topology."""

    seen: list[dict] = []
    key = "k1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {self.key}":
            return True
        self._send(401, error_body(APIError(401, "Missing or invalid API key.", code="invalid_api_key")))
        return False

    def do_GET(self) -> None:  # noqa: N802
        if self._authorized():
            self._send(200, models_body(["seq", "other"], fields={"seq": ["context"], "other": []}))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append({"path": self.path, "authorization": self.headers.get("authorization"), "body": body})
        if not self._authorized():
            return
        if body.get("rounds", 1) > 8:
            err = APIError(400, f"rounds: over the server's limit (got {body['rounds']}). Send an integer from 1 to 8.",
                           param="rounds", code="invalid_value")
            return self._send(400, error_body(err, "req-1"))
        usage = [AgentUsage(agent="planner", round=1, backbone="a", kind="text", prompt_tokens=10, decoded_tokens=3),
                 AgentUsage(agent="solver", round=1, backbone="b", kind="answer", prompt_tokens=12, decoded_tokens=5)]
        result = RunResult(question="Q?", text="4711", mode="text", rounds=1, latent_steps=0, wall_s=0.5, usage=usage,
                           finish_reason="length")
        self._send(200, completion_body("req-1", body["model"], 0, result.text, result))


@pytest.fixture
def fake_serve():
    FakeServe.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_thin_client_of_a_server(fake_serve, topology, monkeypatch):
    monkeypatch.setenv("RECURSIVEMAS_API_KEY", "k1")
    # the key from the environment; /v1 is optional; the YAML here names the served topology and describes it
    backend = ServedBackend(fake_serve + "/v1", str(topology))

    async def session():
        async with Client(build_server(backend)) as client:
            answer = await client.call_tool("ask", {"question": "Q?", "context": "The code is 4711.", "mode": "text",
                                                    "rounds": 2, "latent_steps": 3, "max_tokens": 5})
            over = await client.call_tool("ask", {"question": "Q?", "rounds": 99})
            listed = await client.call_tool("list_topologies", {})
            return answer, over, listed

    answer, over, listed = run(session())
    first = FakeServe.seen[0]
    assert (first["path"], first["authorization"]) == ("/v1/chat/completions", "Bearer k1")
    assert first["body"] == {"model": "seq", "messages": [{"role": "user", "content": "Q?"}], "mode": "text",
                             "rounds": 2, "latent_steps": 3, "max_tokens": 5,
                             "recursivemas": {"context": "The code is 4711."}}
    assert not answer.is_error and agents(answer) == ["planner", "solver"]
    assert answer.structured_content["finish_reason"] == "length" and answer.structured_content["answer"] == "4711"
    assert [a["decoded_tokens"] for a in answer.structured_content["agents"]] == [3, 5]
    assert error_text(over) == "rounds: over the server's limit (got 99). Send an integer from 1 to 8."
    shown = listed.structured_content
    assert shown["served"] == ["other", "seq"] and shown["loaded"]["fields"] == ["context"]
    assert shown["loaded"]["name"] == "seq" and shown["loaded"]["runs"] == f"on {fake_serve}"
    assert [a["name"] for a in shown["loaded"]["agents"]] == ["planner", "solver"]


def test_thin_client_errors_name_the_flag(fake_serve, tmp_path):
    wrong = ServedBackend(fake_serve, "seq", api_key="nope")
    closed = ServedBackend(f"http://127.0.0.1:{free_port()}", "seq", api_key="k1")

    async def session():
        async with Client(build_server(wrong)) as a, Client(build_server(closed)) as b:
            return (await a.call_tool("ask", {"question": "Q?"}), await b.call_tool("ask", {"question": "Q?"}),
                    await b.call_tool("list_topologies", {}))

    refused, down, down_listed = run(session())
    assert FakeServe.seen[0]["authorization"] == "Bearer nope"
    assert error_text(refused).startswith(f"--api-key: the server at {fake_serve} refused the key it was given")
    assert "did not answer" in error_text(down) and "recursivemas serve seq" in error_text(down)
    assert "did not answer" in error_text(down_listed)


@pytest.mark.parametrize("argv, message", [
    (["--server", "http://127.0.0.1:1", "--links", "x"], "--links: the server at --server runs its own links"),
    (["--api-key", "k"], "--api-key: is the key of the server at --server"),
    (["--port", "9"], "--host/--port: set where --http listens"),
    (["--server", "ftp://x"], "--server 'ftp://x': not an http(s) URL"),
    (["--http", "--host", "0.0.0.0"], "--host 0.0.0.0: not a loopback address"),
])
def test_cli_refuses_bad_flags(argv, message, capsys):
    assert main(["mcp", *argv]) == 2
    assert message in capsys.readouterr().err
