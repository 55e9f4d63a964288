"""Load on the served API: the same requests at concurrency 1 and at concurrency 8, over real HTTP on 127.0.0.1.

At concurrency 8 the router batches concurrent requests into one run (``recursivemas.serve.batcher``), so every
backbone call of the recursion carries all of them: one forward over 8 rows costs far less than 8 forwards. How much
less depends on the intra-op threads each backbone replica gets (``--torch-threads``): on one thread a CPU forward
is nearly compute-bound already, and batching buys little.

Run: ``python benchmarks/serve_load.py [--requests 200] [--topology sequential-demo] [--rounds 1] [--latent-steps 8]
[--max-tokens 16] [--torch-threads N]``. Last line: JSON with ``throughput_gain_c8`` (requests/s at 8 over at 1;
target >= 2.0 on CPU), ``errors`` (target 0) and ``p99_latency_s_c8``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import QUESTIONS  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(url: str, body: dict) -> tuple[float, bool]:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            ok = response.status == 200 and json.loads(response.read())["object"] == "chat.completion"
    except (urllib.error.URLError, OSError, ValueError):
        ok = False
    return time.perf_counter() - start, ok


def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: one_request(url, b), bodies))
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in results)
    return {"requests": len(bodies), "wall_s": wall, "throughput": len(bodies) / wall,
            "errors": sum(not ok for _, ok in results), "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def add_request_args(parser: argparse.ArgumentParser, requests: int) -> None:
    """The request shape every serve benchmark sends (and the topology it sends it to)."""
    parser.add_argument("--topology", default="sequential-demo")
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latent-steps", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)


def add_serving_args(parser: argparse.ArgumentParser) -> None:
    """How the served app batches requests and how many threads each backbone replica computes on."""
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests the router batches into one run")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.05, help="the router's batching window")
    parser.add_argument("--max-concurrent-batches", type=int, default=1, help="batched runs in flight at once")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="intra-op threads per backbone replica (default: every core; the serve default is "
                             "the CPUs Ray reserves, 1 for the demo's 0.25)")


def serve_config(args: argparse.Namespace, topology) -> dict:
    """The served app's config from :func:`add_serving_args`' flags."""
    return {"topologies": [args.topology],
            "batching": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
                         "max_concurrent_batches": args.max_concurrent_batches},
            "backbones": {cfg.model: {"torch_threads": args.torch_threads} for cfg in topology.backbones.values()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_request_args(parser, requests=200)
    add_serving_args(parser)
    args = parser.parse_args()

    from ray import serve

    from recursivemas.cluster import Cluster
    from recursivemas.config import load_topology
    from recursivemas.serve.app import APP_NAME, backbone_deployment_name, build, start

    topology = load_topology(args.topology)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    bodies = [{"model": topology.name, "max_tokens": args.max_tokens, "temperature": 0, "rounds": args.rounds,
               "latent_steps": args.latent_steps,
               "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
              for i in range(args.requests)]
    with Cluster():
        start("127.0.0.1", port)
        serve.run(build(serve_config(args, topology)), name=APP_NAME, route_prefix="/")
        load(url, bodies[:2], 1)  # warm-up: first calls pay for lazy initialisation
        results = {c: load(url, bodies, c) for c in (1, 8)}
        # the batches concurrency 8 produced: the router's batched runs, then each backbone's engine calls
        router = serve.get_deployment_handle("router", app_name=APP_NAME)
        print(f"router batch sizes: {router.batch_sizes.remote().result()[-20:]}")
        for name, cfg in topology.backbones.items():
            handle = serve.get_deployment_handle(backbone_deployment_name(cfg), app_name=APP_NAME)
            print(f"backbone {name} batch sizes: {handle.batch_sizes.remote().result()[-30:]}")
        serve.shutdown()
    for c, r in results.items():
        print(f"concurrency {c}: {r['throughput']:.3f} req/s, p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, "
              f"{r['errors']} errors, {r['wall_s']:.1f} s for {r['requests']} requests")
    one, eight = results[1], results[8]
    print(json.dumps({
        "device": "cpu", "topology": topology.name, "requests": args.requests, "rounds": args.rounds,
        "latent_steps": args.latent_steps, "max_tokens": args.max_tokens, "torch_threads": args.torch_threads,
        "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
        "max_concurrent_batches": args.max_concurrent_batches,
        "throughput_c1": round(one["throughput"], 4), "throughput_c8": round(eight["throughput"], 4),
        "throughput_gain_c8": round(eight["throughput"] / one["throughput"], 3),
        "errors": one["errors"] + eight["errors"],
        "p50_latency_s_c8": round(eight["p50"], 3), "p99_latency_s_c8": round(eight["p99"], 3),
    }))


if __name__ == "__main__":
    main()
