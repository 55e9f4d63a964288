"""Build the Serve application for one or more topologies: ``serve run recursivemas.serve.app:app`` style, or
``recursivemas serve TOPOLOGY.yaml [...]``.

Topologies that name the same backbone (same model, dtype and device) share one backbone deployment, so serving a
second topology over the same models costs no second copy of the weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ray import serve

from recursivemas.config import BackboneConfig, Topology, load_topology
from recursivemas.model_zoo import resolve_model
from recursivemas.serve.deployments import BackboneServer, Router, make_ingress


GRPC_SERVICER = "recursivemas.serve.proto.recursivemas_pb2_grpc.add_RecursiveMASServicer_to_server"


def start(host: str = "127.0.0.1", port: int = 8000, grpc_port: int | None = None) -> None:
    """Start Serve's HTTP proxy (and its gRPC proxy with our service) on this Ray cluster."""
    from ray.serve.config import gRPCOptions

    grpc = gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]) if grpc_port else None
    serve.start(http_options={"host": host, "port": port}, grpc_options=grpc)


def backbone_deployment_name(cfg: BackboneConfig) -> str:
    """One name per unique (model, dtype, device): the key that makes topologies share a deployment."""
    digest = hashlib.sha1(f"{cfg.model}|{cfg.dtype}|{cfg.device}".encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "-" for c in Path(cfg.model).name)[:40]
    return f"backbone-{stem}-{digest}"


def build_app(topologies: Sequence[str | Path | Topology], limits: dict | None = None, max_batch: int = 16,
              batch_wait_s: float = 0.005):
    """The ingress application over every topology given (paths, built-in names or ``Topology`` objects)."""
    from fastapi import FastAPI

    loaded = [t if isinstance(t, Topology) else load_topology(t) for t in topologies]
    if not loaded:
        raise ValueError("serve: name at least one topology (a YAML file or a built-in name)")
    names = [t.name for t in loaded]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"serve: topology names must be unique (they are the OpenAI `model`); {clashes} repeat")
    backbones: dict[str, object] = {}
    keys: dict[str, dict[str, str]] = {}
    for topology in loaded:
        keys[topology.name] = {}
        for name, cfg in topology.backbones.items():
            key = backbone_deployment_name(cfg)
            if key not in backbones:
                options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
                if cfg.resources:
                    options["resources"] = dict(cfg.resources)
                backbones[key] = serve.deployment(BackboneServer, name=key).options(
                    ray_actor_options=options, max_ongoing_requests=64,
                ).bind(name, resolve_model(cfg.model), cfg.dtype, cfg.device, max_batch, batch_wait_s,
                       max(1, int(cfg.num_cpus)))
            keys[topology.name][name] = key
    router = serve.deployment(Router, name="router").options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256,
    ).bind([t.to_dict() for t in loaded], backbones, keys)
    ingress = serve.deployment(make_ingress(FastAPI(title="recursivemas")), name="ingress").options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256,
    )
    return ingress.bind(router, limits or {})
