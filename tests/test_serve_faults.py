"""A backbone replica killed (SIGKILL) under load at concurrency 8: every request in flight gets its answer or a
clean 5xx with its request id within its deadline, none hangs, and the service recovers by itself
(``benchmarks/serve_faults.py`` runs the same on the real demo models)."""

from __future__ import annotations

import pytest

from benchmarks.serve_faults import kill_replica, one, under_fault
from recursivemas.cluster import Cluster
from recursivemas.config import load_topology
from recursivemas.serve.app import APP_NAME, backbone_deployment_name, build, start
from test_serve_http import free_port
from tiny import write_pair_topology

pytestmark = pytest.mark.ray


def test_killing_a_backbone_replica_under_load_loses_no_request_and_the_service_recovers(tmp_path):
    from ray import serve

    topology = load_topology(write_pair_topology(tmp_path, rounds=2, latent_steps=2, max_new_tokens=16))
    port = free_port()
    bodies = [{"model": "seq", "max_tokens": 16, "temperature": 0,
               "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(48)]
    with Cluster(num_cpus=2):
        start("127.0.0.1", port)
        serve.run(build({"topologies": [str(tmp_path / "seq.yaml")]}), name=APP_NAME, route_prefix="/")
        assert one(port, bodies[0], 30)["outcome"] == "answered"
        handle = serve.get_deployment_handle(backbone_deployment_name(topology.backbones["b"]), app_name=APP_NAME)
        report = under_fault(port, bodies, 8, 8, lambda: kill_replica(handle), timeout_s=30)
        after = [one(port, body, 30)["outcome"] for body in bodies[:4]]
        serve.shutdown()
    assert report["hung"] == 0 and report["lost"] == 0, report
    assert report["answered"] + report["clean_error"] == report["requests"] == 48
    assert report["recovery_s"] is not None and report["recovery_s"] < 90, report
    assert after == ["answered"] * 4
