"""A bounded soak of the served API: good, bad and disconnecting clients at once, over real HTTP on 127.0.0.1.

N requests (after a warm-up of good ones) at a fixed concurrency against one topology, in a seeded random mix:

- good: valid requests, alternately plain (``chat.completion``) and ``stream: true`` (the SSE stream read to
  ``data: [DONE]``);
- bad: malformed JSON, an unknown field, a wrong type, an unknown model, an oversized ``max_tokens``: each must get
  a 4xx with an OpenAI error body (``{"error": {"message", "type", ...}}``);
- disconnecting: a valid streaming request whose socket is reset after the first chunk or two, and a valid plain
  request whose socket is reset right after it is sent (SO_LINGER 0: an RST, not a polite FIN).

Deadlines (504) and backpressure (503, ``Retry-After``) are clean errors: counted by kind, never fatal. The resident
memory (RSS) of every Serve replica of the app (router, ingress, backbones) is read with psutil after the warm-up
and at the end; their PIDs come from Ray's actor table (``ray.util.state.list_actors`` where a dashboard runs, the
GCS table otherwise: ``Cluster()`` starts Ray without one).

Run: ``python benchmarks/serve_soak.py [--requests 600] [--concurrency 16] [--good 0.8] [--bad 0.1]
[--disconnect 0.1] [--topology sequential-demo] [--rounds 1] [--latent-steps 8] [--max-tokens 16]
[--timeout-s 120] [--warmup 32] [--torch-threads N]``. Last line: JSON with ``lost`` (requests that got neither an
answer nor a clean error within ``--timeout-s``: target 0), ``errors_by_kind`` (good requests that failed and bad
requests that did not get a 4xx with an error body, by status or exception class), ``p50_latency_s`` /
``p99_latency_s`` (good requests answered), ``rss_growth`` (the largest relative RSS growth of a replica from
warm-up to the end: target <= 0.10, ``rss_ok``), ``healthy_after`` (a good request answered after the soak) and
``ok`` (all of these targets met).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import struct
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import QUESTIONS  # noqa: E402
from benchmarks.serve_load import add_request_args, add_serving_args, free_port, serve_config  # noqa: E402

PATH = "/v1/chat/completions"
BAD_VARIANTS = ("malformed_json", "unknown_field", "wrong_type", "unknown_model", "oversized_max_tokens")


class Lost(Exception):
    """Neither an answer nor a clean error: a timeout, a dropped connection, a stream cut short."""


def good_body(args, i: int, stream: bool) -> dict:
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": 0, "rounds": args.rounds,
            "latent_steps": args.latent_steps, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
    if stream:
        body["stream"] = True
    return body


def bad_payload(args, i: int, variant: str) -> bytes:
    body = good_body(args, i, stream=False)
    if variant == "malformed_json":
        return json.dumps(body).encode()[:-7]  # cut mid-object
    if variant == "unknown_field":
        body["latent_step"] = 8  # a misspelt extension
    elif variant == "wrong_type":
        body["max_tokens"] = "16"
    elif variant == "unknown_model":
        body["model"] = "no-such-topology"
    elif variant == "oversized_max_tokens":
        body["max_tokens"] = 10**7
    return json.dumps(body).encode()


def error_problem(raw: bytes) -> str | None:
    """None if ``raw`` is an OpenAI error body, else what is wrong with it."""
    try:
        err = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return "no_error_body"
    ok = isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
    return None if ok else "malformed_error_body"


def post(port: int, payload: bytes, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", PATH, body=payload, headers={"content-type": "application/json"})
    return conn, conn.getresponse()


def good_plain(port: int, payload: bytes, timeout: float) -> str | None:
    """None when answered; the failure's label when the server answered with an error."""
    conn, resp = post(port, payload, timeout)
    try:
        raw = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        return f"http_{resp.status}"
    try:
        ok = json.loads(raw)["object"] == "chat.completion"
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else "bad_completion_body"


def good_stream(port: int, payload: bytes, timeout: float, deadline: float) -> str | None:
    conn, resp = post(port, payload, timeout)
    try:
        if resp.status != 200:
            resp.read()
            return f"http_{resp.status}"
        chunks = 0
        while True:
            if time.monotonic() > deadline:
                raise Lost("stream_over_timeout")
            line = resp.readline()
            if not line:
                raise Lost("stream_ended_without_done")
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                return None if chunks else "stream_without_chunks"
            try:
                event = json.loads(data)
            except ValueError:
                return "stream_bad_event"
            if "error" in event:  # a clean error after the 200: the event, then [DONE]
                return f"stream_error_{(event['error'] or {}).get('code')}"
            chunks += event.get("object") == "chat.completion.chunk"
    finally:
        conn.close()


def raw_send(port: int, payload: bytes, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    sock.sendall(head + payload)
    return sock


def reset(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0 makes close() send an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def disconnect_stream(port: int, payload: bytes, timeout: float, deadline: float, events: int) -> str | None:
    """Read the status and ``events`` SSE events, then reset the connection; a non-200 status is its label."""
    sock = raw_send(port, payload, timeout)
    try:
        buf = b""
        while b"\r\n\r\n" not in buf or (buf.startswith(b"HTTP/1.1 200") and buf.count(b"data: ") < events):
            if time.monotonic() > deadline:
                raise Lost("stream_over_timeout")
            got = sock.recv(65536)
            if not got:
                if b"\r\n\r\n" in buf and b"[DONE]" in buf:
                    return None  # the whole answer came before we hung up
                raise Lost("closed_before_first_chunks")
            buf += got
        status = buf.split(b" ", 2)[1].decode(errors="replace")
        return None if status == "200" else f"http_{status}"
    finally:
        reset(sock)


def disconnect_plain(port: int, payload: bytes, timeout: float) -> None:
    sock = raw_send(port, payload, timeout)
    time.sleep(0.05)  # let the proxy take the request in before the reset
    reset(sock)


def one(port: int, job: tuple, timeout: float) -> dict:
    kind, variant, payload = job
    start = time.monotonic()
    deadline = start + timeout
    out = {"kind": kind, "variant": variant, "error": None, "lost": None}
    try:
        if kind == "good":
            if variant == "stream":
                out["error"] = good_stream(port, payload, timeout, deadline)
            else:
                out["error"] = good_plain(port, payload, timeout)
        elif kind == "bad":
            conn, resp = post(port, payload, timeout)
            try:
                raw = resp.read()
            finally:
                conn.close()
            out["status"] = resp.status
            if not 400 <= resp.status < 500:
                out["error"] = f"http_{resp.status}"
            else:
                out["error"] = error_problem(raw)
        elif variant == "plain":
            disconnect_plain(port, payload, timeout)
        else:
            out["error"] = disconnect_stream(port, payload, timeout, deadline, int(variant[-1]))
    except Lost as exc:
        out["error"] = out["lost"] = str(exc)
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, refused connections, bad HTTP
        out["error"] = out["lost"] = type(exc).__name__
    out["latency_s"] = time.monotonic() - start
    if out["latency_s"] > timeout and out["lost"] is None and out["error"] is None and kind == "good":
        out["error"] = out["lost"] = "over_timeout"
    return out


def plan(args) -> list[tuple]:
    """The seeded mix of (kind, variant, payload) jobs."""
    rng = random.Random(args.seed)
    n_bad = round(args.requests * args.bad)
    n_disc = round(args.requests * args.disconnect)
    kinds = ["bad"] * n_bad + ["disconnect"] * n_disc + ["good"] * (args.requests - n_bad - n_disc)
    rng.shuffle(kinds)
    jobs, seen = [], Counter()
    for i, kind in enumerate(kinds):
        k = seen[kind]
        seen[kind] += 1
        if kind == "bad":
            variant = BAD_VARIANTS[k % len(BAD_VARIANTS)]
            jobs.append((kind, variant, bad_payload(args, i, variant)))
        else:  # half plain, half streaming; a disconnecting stream hangs up after one or two events
            cycle = ("plain", "stream") if kind == "good" else ("stream_1", "plain", "stream_2", "plain")
            variant = cycle[k % len(cycle)]
            jobs.append((kind, variant, json.dumps(good_body(args, i, variant != "plain")).encode()))
    return jobs


def replica_pids(app_name: str) -> dict[str, int]:
    """``{deployment#n: pid}`` for every live Serve replica of ``app_name``."""
    prefix = f"ServeReplica:{app_name}:"
    try:
        from ray.util.state import list_actors

        rows = [(a.class_name, a.pid) for a in
                list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000, timeout=10)]
    except Exception:  # noqa: BLE001 - no dashboard (Cluster() starts Ray without one): Ray's GCS actor table
        from ray._private import state

        rows = [(a["ActorClassName"], a["Pid"]) for a in state.actors().values() if a["State"] == "ALIVE"]
    out, seen = {}, Counter()
    for class_name, pid in sorted(rows):
        if class_name.startswith(prefix):
            name = class_name[len(prefix):]
            out[f"{name}#{seen[name]}"] = pid
            seen[name] += 1
    return out


def rss(pids: dict[str, int]) -> dict[str, int | None]:
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            out[name] = None
    return out


def soak(port: int, jobs: list[tuple], concurrency: int, timeout: float) -> tuple[list[dict], float]:
    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda job: one(port, job, timeout), jobs))
    return results, time.monotonic() - start


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser()
    add_request_args(parser, requests=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--good", type=float, default=0.8, help="fraction of good clients (the rest of the mix)")
    parser.add_argument("--bad", type=float, default=0.1, help="fraction of malformed or invalid requests")
    parser.add_argument("--disconnect", type=float, default=0.1, help="fraction of clients that hang up early")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per request: later is lost")
    parser.add_argument("--warmup", type=int, default=32, help="good requests before the first RSS sample")
    parser.add_argument("--rss-limit", type=float, default=0.10, help="largest allowed relative RSS growth")
    parser.add_argument("--seed", type=int, default=0)
    add_serving_args(parser)
    args = parser.parse_args()
    if abs(args.good + args.bad + args.disconnect - 1) > 1e-6 or min(args.good, args.bad, args.disconnect) < 0:
        parser.error("--good, --bad and --disconnect must be fractions adding up to 1")

    from ray import serve

    from recursivemas.cluster import Cluster
    from recursivemas.config import load_topology
    from recursivemas.serve.app import APP_NAME, build, start

    topology = load_topology(args.topology)
    args.model = topology.name
    port = free_port()
    jobs = plan(args)
    warm_args = argparse.Namespace(**{**vars(args), "requests": args.warmup, "bad": 0.0, "disconnect": 0.0})
    with Cluster():
        start("127.0.0.1", port)
        serve.run(build(serve_config(args, topology)), name=APP_NAME, route_prefix="/")
        warm, warm_wall = soak(port, plan(warm_args), args.concurrency, args.timeout_s)
        pids = replica_pids(APP_NAME)
        rss_warm = rss(pids)
        results, wall = soak(port, jobs, args.concurrency, args.timeout_s)
        rss_end = rss(pids)
        pids_end = replica_pids(APP_NAME)
        after = one(port, ("good", "plain", json.dumps(good_body(args, 0, False)).encode()), args.timeout_s)
        serve.shutdown()

    by_kind = Counter(r["kind"] for r in results)
    errors: dict[str, Counter] = {k: Counter() for k in ("good", "bad", "disconnect")}
    lost = Counter()
    for r in results:
        if r["error"] is not None:
            errors[r["kind"]][f"{r['variant']}:{r['error']}"] += 1
        if r["lost"] is not None:
            lost[f"{r['kind']}:{r['variant']}:{r['lost']}"] += 1
    bad_status = Counter(f"{r['variant']}:{r.get('status')}" for r in results if r["kind"] == "bad")
    answered = [r["latency_s"] for r in results if r["kind"] == "good" and r["error"] is None]
    replicas, growths = {}, []
    for name, pid in pids.items():
        before, end = rss_warm.get(name), rss_end.get(name)
        growth = (end - before) / before if before and end else None
        replicas[name] = {"pid": pid, "rss_warm_mb": round(before / 2**20, 1) if before else None,
                          "rss_end_mb": round(end / 2**20, 1) if end else None,
                          "growth": round(growth, 4) if growth is not None else None}
        growths.append(growth)
    measured = bool(growths) and all(g is not None for g in growths)
    rss_growth = round(max(growths), 4) if measured else None
    rss_ok = measured and rss_growth <= args.rss_limit and pids_end == pids
    warm_errors = sum(r["error"] is not None for r in warm)
    print(f"warm-up: {args.warmup} good requests in {warm_wall:.1f} s, {warm_errors} errors")
    print(f"soak: {len(results)} requests in {wall:.1f} s at concurrency {args.concurrency}, "
          f"{len(answered)} good answered, {sum(lost.values())} lost")
    for name, row in replicas.items():
        print(f"replica {name} (pid {row['pid']}): {row['rss_warm_mb']} MB -> {row['rss_end_mb']} MB, "
              f"growth {row['growth']}")
    if pids_end != pids:
        print(f"replicas changed during the soak: {pids} -> {pids_end}")
    n_lost = sum(lost.values())
    bad_ok = not errors["bad"]
    print(json.dumps({
        "device": "cpu", "topology": topology.name, "requests": len(results), "concurrency": args.concurrency,
        "rounds": args.rounds, "latent_steps": args.latent_steps, "max_tokens": args.max_tokens,
        "torch_threads": args.torch_threads, "timeout_s": args.timeout_s, "warmup": args.warmup,
        "wall_s": round(wall, 1), "by_kind": dict(by_kind),
        "by_variant": dict(Counter(f"{r['kind']}:{r['variant']}" for r in results)),
        "errors_by_kind": {k: dict(v) for k, v in errors.items()}, "bad_statuses": dict(bad_status),
        "lost": n_lost, "lost_by_reason": dict(lost),
        "p50_latency_s": round(statistics.median(answered), 3) if answered else None,
        "p99_latency_s": percentile(answered, 0.99), "good_answered": len(answered),
        "replicas": replicas, "replicas_changed": pids_end != pids, "rss_growth": rss_growth, "rss_ok": rss_ok,
        "healthy_after": after["error"] is None,
        "ok": n_lost == 0 and bad_ok and rss_ok and after["error"] is None,
    }))


if __name__ == "__main__":
    main()
