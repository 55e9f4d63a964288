"""Faults under load: kill a backbone replica's process while requests run at concurrency 8, over real HTTP.

Every request in flight must get its answer or a clean 5xx that names its request id, within its deadline; none
may hang; the service must recover by itself (Serve replaces the replica) and answer the requests after. The kill
is a SIGKILL of the replica's process, the way an OOM killer or a lost node ends it, after ``--kill-after``
answers.

Run: ``python benchmarks/serve_faults.py [--requests 64] [--concurrency 8] [--kill-after 8] [--timeout-s 60]
[--topology sequential-demo] [--rounds 1] [--latent-steps 8] [--max-tokens 16]``. Last line: JSON with
``requests``, ``answered``, ``clean_errors`` (5xx with an OpenAI error body holding the request id),
``hung`` (no reply within the deadline plus a margin: target 0), ``lost`` (anything else: a dropped connection, a
4xx, a body without the id: target 0) and ``recovery_s`` (from the kill to the first answer of a request sent after
it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import QUESTIONS  # noqa: E402
from benchmarks.serve_load import add_request_args, free_port  # noqa: E402

MARGIN_S = 30.0  # past its deadline, how long a client waits before it calls its request hung


def one(port: int, body: dict, timeout_s: float) -> dict:
    """One request: its outcome (answered, clean_error, hung, lost), and when it was sent and ended."""
    sent = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s + MARGIN_S)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "timeout_s": timeout_s}),
                     {"content-type": "application/json"})
        response = conn.getresponse()
        status, raw, request_id = response.status, response.read(), response.getheader("x-request-id")
    except TimeoutError:
        return {"outcome": "hung", "sent": sent, "ended": time.monotonic()}
    except (OSError, http.client.HTTPException) as exc:
        return {"outcome": "lost", "why": type(exc).__name__, "sent": sent, "ended": time.monotonic()}
    finally:
        conn.close()
    ended = time.monotonic()
    try:
        data = json.loads(raw)
    except ValueError:
        return {"outcome": "lost", "why": f"{status} without JSON", "sent": sent, "ended": ended}
    if status == 200 and data.get("object") == "chat.completion":
        return {"outcome": "answered", "sent": sent, "ended": ended}
    error = data.get("error") if isinstance(data, dict) else None
    if status >= 500 and isinstance(error, dict) and request_id and error.get("request_id") == request_id:
        return {"outcome": "clean_error", "status": status, "sent": sent, "ended": ended}
    return {"outcome": "lost", "why": f"{status}: {str(data)[:120]}", "sent": sent, "ended": ended}


def under_fault(port: int, bodies: list[dict], concurrency: int, kill_after: int, kill, timeout_s: float) -> dict:
    """Send ``bodies`` at ``concurrency``; call ``kill()`` once ``kill_after`` requests are answered; then keep
    asking until one sent after the kill is answered. The counts and ``recovery_s``."""
    killed_at: list[float] = []
    done = [0]
    lock = threading.Lock()

    def send(body: dict) -> dict:
        result = one(port, body, timeout_s)
        with lock:
            done[0] += result["outcome"] == "answered"
            if done[0] >= kill_after and not killed_at:
                killed_at.append(time.monotonic())
                kill()
        return result

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(send, bodies))
    if not killed_at:
        raise RuntimeError(f"only {done[0]} of {len(bodies)} requests were answered before any fault")
    kill_time = killed_at[0]
    after = [r for r in results if r["sent"] > kill_time and r["outcome"] == "answered"]
    recovered = min((r["ended"] for r in after), default=None)
    probe_until = time.monotonic() + 120
    while recovered is None and time.monotonic() < probe_until:  # the traffic ended first: ask until answered
        probe = one(port, bodies[0], timeout_s)
        if probe["outcome"] == "answered":
            recovered = probe["ended"]
    counts = {kind: sum(r["outcome"] == kind for r in results) for kind in ("answered", "clean_error", "hung", "lost")}
    return {"requests": len(results), **counts, "clean_error_statuses": sorted({r["status"] for r in results
                                                                               if r["outcome"] == "clean_error"}),
            "lost_why": sorted({r["why"] for r in results if r["outcome"] == "lost"})[:5],
            "recovery_s": None if recovered is None else round(recovered - kill_time, 2)}


def kill_replica(handle) -> int:
    """SIGKILL one replica of a backbone deployment (the one this handle's call reaches); its pid."""
    pid = handle.pid.remote().result()
    os.kill(pid, signal.SIGKILL)
    return pid


def main() -> None:
    parser = argparse.ArgumentParser()
    add_request_args(parser, requests=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=8, help="answers before the replica is killed")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="each request's deadline (timeout_s)")
    args = parser.parse_args()

    from ray import serve

    from recursivemas.cluster import Cluster
    from recursivemas.config import load_topology
    from recursivemas.serve.app import APP_NAME, backbone_deployment_name, build, start

    topology = load_topology(args.topology)
    port = free_port()
    bodies = [{"model": topology.name, "max_tokens": args.max_tokens, "temperature": 0, "rounds": args.rounds,
               "latent_steps": args.latent_steps,
               "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]} for i in range(args.requests)]
    victim = next(iter(topology.backbones.values()))
    with Cluster():
        start("127.0.0.1", port)
        serve.run(build({"topologies": [args.topology]}), name=APP_NAME, route_prefix="/")
        one(port, bodies[0], args.timeout_s)  # warm-up
        handle = serve.get_deployment_handle(backbone_deployment_name(victim), app_name=APP_NAME)
        report = under_fault(port, bodies, args.concurrency, args.kill_after, lambda: kill_replica(handle),
                             args.timeout_s)
        serve.shutdown()
    print(json.dumps({"device": "cpu", "topology": topology.name, "concurrency": args.concurrency,
                      "killed": backbone_deployment_name(victim), "timeout_s": args.timeout_s, **report}))


if __name__ == "__main__":
    main()
