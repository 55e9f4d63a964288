"""Build the Serve application from a :class:`~recursivemas.serve.config.ServeConfig`.

Three ways in, one builder:

- ``recursivemas serve TOPOLOGY.yaml [...] [--config serve.yaml]``;
- ``serve run recursivemas.serve.app:build topologies=a.yaml,b.yaml`` (Ray Serve's application-builder protocol);
- a Serve config file for ``serve deploy`` / ``serve run``, written by ``recursivemas serve --print-config``
  (:func:`serve_config_file`), whose application ``args`` are the same tree.

Topologies that name the same backbone (same model, dtype and device) share one backbone deployment, so serving a
second topology over the same models costs no second copy of the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ray import serve

from recursivemas.config import BackboneConfig, Topology, load_topology
from recursivemas.serve.auth import digest, is_loopback, keys_from_env
from recursivemas.serve.config import BackboneDeployment, ServeConfig
from recursivemas.serve.deployments import ROUTER, BackboneServer, Router
from recursivemas.runtime.host import HostOptions
from recursivemas.serve.ingress import Ingress

GRPC_SERVICER = "recursivemas.serve.grpc_api.add_servicer_to_server"  # requests as bytes: see its docstring
APP_NAME = "recursivemas"


def start(host: str = "127.0.0.1", port: int = 8000, grpc_port: int | None = None) -> None:
    """Start Serve's HTTP proxy (and its gRPC proxy with our service) on this Ray cluster."""
    from ray.serve.config import gRPCOptions

    grpc = gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]) if grpc_port else None
    serve.start(http_options={"host": host, "port": port}, grpc_options=grpc)


def backbone_deployment_name(cfg: BackboneConfig) -> str:
    """One name per unique (model, dtype, device): the key that makes topologies share a deployment."""
    digest = hashlib.sha1("|".join(cfg.key).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "-" for c in Path(cfg.model).name)[:40]
    return f"backbone-{stem}-{digest}"


def build(args: dict[str, Any]):
    """Ray Serve's application builder: ``args`` is a :class:`ServeConfig` as a mapping, plus the keys in
    ``RECURSIVEMAS_API_KEY`` where the builder runs (``serve deploy``: the application's ``runtime_env``)."""
    return build_app(ServeConfig.model_validate(args).with_keys(keys_from_env()))


def build_app(config: ServeConfig):
    """The ingress application over every topology of ``config``."""
    loaded = [t if isinstance(t, Topology) else load_topology(t) for t in config.topologies]
    names = [t.name for t in loaded]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"serve: topology names must be unique (they are the OpenAI `model`); {clashes} repeat")
    _refuse_unsandboxed_tools(loaded, config)
    models = {cfg.model for t in loaded for cfg in t.backbones.values()}
    unknown = sorted(set(config.backbones) - models)
    if unknown:
        raise ValueError(f"serve config: backbones {unknown} name no model of the served topologies; "
                         f"key `backbones:` by one of {sorted(models)}")
    backbones: dict[str, object] = {}
    keys: dict[str, dict[str, str]] = {}
    for topology in loaded:
        keys[topology.name] = {}
        for name, cfg in topology.backbones.items():
            key = backbone_deployment_name(cfg)
            if key not in backbones:
                backbones[key] = _backbone_deployment(key, name, cfg, config)
            keys[topology.name][name] = key
    batching = config.batching
    ongoing = max(256, batching.max_batch_size * batching.max_concurrent_batches)
    router = serve.deployment(Router, name=ROUTER).options(
        **config.router.serve_options({"num_cpus": 0}, ongoing),
    ).bind([t.to_dict() for t in loaded], backbones, keys, batching.model_dump(), config.limits.model_dump())
    ingress = serve.deployment(Ingress, name="ingress").options(
        **config.ingress.serve_options({"num_cpus": 0}, 256),
    )
    digests = [digest(key.get_secret_value()) for key in config.api_keys]  # Ray stores these; never the keys
    return ingress.bind(router, config.limits.model_dump(), digests, config.playground)


def _refuse_unsandboxed_tools(topologies: list[Topology], config: ServeConfig) -> None:
    """Model-written code without the sandbox is for a machine of one's own, never a server others can reach."""
    exposed = not is_loopback(config.host) or config.grpc_port is not None  # gRPC binds every interface
    for topology in topologies:
        callers = [a.name for a in topology.agents if a.tools]
        if exposed and callers and topology.tools.python_sandbox == "none":
            where = f"--host {config.host}" if not is_loopback(config.host) else f"--grpc-port {config.grpc_port}"
            raise ValueError(f"topology {topology.name!r}: tools.python_sandbox: none runs model-written code "
                             f"unisolated, and {where} lets others reach it; use python_sandbox: bwrap, or serve "
                             "on 127.0.0.1 only")
        if callers and topology.tools.python_sandbox == "bwrap_cgroup":  # the level it names, before Ray starts
            from recursivemas.runtime.sandbox import unavailable_reason

            if (reason := unavailable_reason("bwrap_cgroup")) is not None:
                raise ValueError(f"topology {topology.name!r}: {reason}")


def _backbone_deployment(key: str, name: str, cfg: BackboneConfig, config: ServeConfig):
    """The deployment serving one backbone: the topology's resources, then the serve config's options."""
    options = config.backbones.get(cfg.model) or BackboneDeployment()
    resources: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    if cfg.resources:
        resources["resources"] = dict(cfg.resources)
    serve_options = options.serve_options(resources, 64)
    reserved = serve_options["ray_actor_options"].get("num_cpus", cfg.num_cpus)
    threads = options.torch_threads or cfg.torch_threads or max(1, int(reserved))
    return serve.deployment(BackboneServer, name=key).options(**serve_options).bind(
        name, cfg, HostOptions(options.max_batch, options.batch_wait_s, threads))


def serve_config_file(config: ServeConfig) -> dict[str, Any]:
    """A Ray Serve config file (``serve deploy`` / ``serve run``) that builds this application on any cluster.

    API keys are left out (a file gets copied, committed, shown by ``serve config``): the builder reads them from
    ``RECURSIVEMAS_API_KEY`` where it runs.
    """
    rest = config.model_dump(mode="json", exclude={"host", "port", "grpc_port", "topologies", "api_keys"},
                             exclude_defaults=True)
    args = {"topologies": [_portable(t) for t in config.topologies], **rest}
    out: dict[str, Any] = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": config.host, "port": config.port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:build", "args": args}],
    }
    if config.grpc_port:
        out["grpc_options"] = {"port": config.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]}
    return out


def _portable(topology: str | Topology) -> str | dict:
    """A topology as the config file carries it: files by absolute path (Serve imports from its own working
    directory), built-in names as they are, objects inline."""
    if isinstance(topology, Topology):
        return topology.to_dict()
    return str(Path(topology).resolve()) if Path(topology).is_file() else topology
