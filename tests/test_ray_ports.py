"""The documented cluster recipe, scanned from outside: no port of the head's or the replicas' processes answers
without credentials (issue 23).

It runs ``docs/exposing-the-server.md``'s one-machine recipe on free ports: a token (``RAY_AUTH_TOKEN``), a
``RAY_AUTH_MODE=token ray start --head --block`` of the test's own (stopped by its process group, never by
``ray stop``), and ``recursivemas serve --address`` with an API key, HTTP and gRPC. Then it lists every TCP port
that those processes and all their descendants listen on (``psutil``). A port bound to a specific non-loopback
address fails by its binding alone; one bound to every interface is probed over 127.0.0.1, which reaches it the same
way, and must refuse, without credentials, a model list and a completion (HTTP and the gRPC API) and a call of
Serve's inter-deployment gRPC service carrying a pickle that would create a file if it were loaded. All traffic
goes to 127.0.0.1. The same pickle sent *with* Ray's token does create the file, so the probe reaches what it
claims to; and ``recursivemas serve --address`` refuses a head started without the token.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import pickle
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import psutil
import pytest
import yaml

from ray_head import BIN, Head, base_env, free_ports
from recursivemas.serve.proto import recursivemas_pb2 as pb, recursivemas_pb2_grpc
from recursivemas.serve.ray_auth import gcs_answers_without_token
from tiny import save_tiny_pair

pytestmark = [pytest.mark.slow, pytest.mark.ray]
API_KEY = "rmas-port-scan-key-" + uuid.uuid4().hex


class Planted:
    """Unpickling this creates ``path``: the proof that a port deserialised what a stranger sent."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def topology(root: Path) -> Path:
    backbones = {b: {"model": p, "num_cpus": 0.25} for b, p in save_tiny_pair(root).items()}
    doc = {"name": "scan", "backbones": backbones, "pattern": "sequential", "rounds": 1, "latent_steps": 1,
           "generation": {"max_new_tokens": 2},
           "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    path = root / "scan.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def address(ip: str):
    """The address a socket is bound to, an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``) as its IPv4 self."""
    parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    return getattr(parsed, "ipv4_mapped", None) or parsed


def listening(pids: list[int]) -> set[tuple[str, int, int]]:
    """``(address, port, pid)`` of every TCP socket those processes listen on."""
    found = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def family(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out += [pid, *(child.pid for child in proc.children(recursive=True))]
        except psutil.NoSuchProcess:
            pass
    return sorted(set(out))


def http_answers(port: int) -> list[str]:
    """What a request without a key got over HTTP: the successes (a 2xx) only."""
    answered = []
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", json.dumps(
            {"model": "scan", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
        except (OSError, http.client.HTTPException):
            continue
        if 200 <= status < 300:
            answered.append(f"HTTP {method} {path} -> {status}")
    return answered


def grpc_answers(port: int, marker: Path, metadata=()) -> list[str]:
    """What calls without credentials got over gRPC: a completion from the API, and Serve's inter-deployment
    service loading a pickle (``marker`` appears if it did)."""
    from ray.serve.generated import serve_pb2

    answered = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        api = recursivemas_pb2_grpc.RecursiveMASStub(channel)
        try:
            api.Run(pb.RunRequest(model="scan", prompt="What is 2+2?"), timeout=5,
                    metadata=metadata)
            answered.append("gRPC RecursiveMAS.Run answered")
        except grpc.RpcError:
            pass
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest",
                                   request_serializer=serve_pb2.ASGIRequest.SerializeToString,
                                   response_deserializer=serve_pb2.ASGIResponse.FromString)
        try:
            call(serve_pb2.ASGIRequest(pickled_request_metadata=pickle.dumps(Planted(str(marker)))), timeout=5,
                 metadata=metadata)
        except grpc.RpcError:
            pass
    if marker.exists():
        answered.append("ASGIService.HandleRequest unpickled the request")
    return answered


def serve(root: Path, head: Head, env: dict, *flags: str) -> subprocess.Popen:
    http_port, grpc_port = free_ports(2)
    cmd = [str(BIN / "recursivemas"), "serve", str(topology(root)), "--address", head.gcs, "--api-key", API_KEY,
           "--port", str(http_port), "--grpc-port", str(grpc_port), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root,
                            start_new_session=True)


def test_no_port_of_the_documented_recipe_answers_without_credentials(tmp_path):
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    head = Head(tmp_path, **auth)
    server = None
    try:
        head.wait_for_job_api()
        assert not gcs_answers_without_token(head.gcs)
        server = serve(tmp_path, head, base_env(**auth, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
        deadline, lines = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line)
            if "serving on" in line or server.poll() is not None:
                break
        assert any("serving on" in line for line in lines), "".join(lines)[-4000:]
        time.sleep(3)  # the replicas' own servers are up once serve.run returned; give the proxies a moment
        sockets = listening(family([head.proc.pid, server.pid]))
        exposed = {(ip, port) for ip, port, _ in sockets if not address(ip).is_loopback}
        assert len(sockets) >= 10 and exposed, sockets  # the GCS, raylet, proxies, replicas ... were all found
        specific = [(ip, port) for ip, port in exposed if not address(ip).is_unspecified]
        assert not specific, f"bound to a non-loopback address: {specific}"
        answered = {}
        for ip, port in sorted(exposed):
            marker = tmp_path / f"planted-{port}"
            got = http_answers(port) + grpc_answers(port, marker)
            if got:
                answered[f"{ip}:{port}"] = got
        assert not answered, f"ports that answered without credentials: {answered}"
        reached = [port for _, port in exposed
                   if grpc_answers(port, tmp_path / f"with-token-{port}", (("authorization", f"Bearer {token}"),))]
        assert reached, "no replica port loaded the pickle even with Ray's token: the probe reaches nothing"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        assert not head.stop()


def test_serve_refuses_a_cluster_without_rays_token(tmp_path):
    head = Head(tmp_path)  # plain `ray start`: no token
    try:
        head.wait_for_job_api()
        assert gcs_answers_without_token(head.gcs)
        refused = serve(tmp_path, head, base_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
        out, _ = refused.communicate(timeout=120)
        assert refused.returncode == 2, out
        assert "does not enforce Ray's token authentication" in out and "--allow-unauthenticated-ray" in out
    finally:
        assert not head.stop()
