"""What `recursivemas serve` deploys, as one typed tree: the topologies, where to listen, request limits, how
requests are batched, and the Ray Serve options of each deployment (replicas, autoscaling, actor resources).

The same tree is the ``args`` of the Serve application builder (``recursivemas.serve.app:build``), so a Serve config
file for ``serve run`` / ``serve deploy`` and ``recursivemas serve --config`` read identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from recursivemas.config import Topology, load_yaml_config
from recursivemas.serve.auth import ENV_VAR, key_problem
from recursivemas.serve.openai_api import Limits


# A topology is named (a path or a built-in) or given inline; the discriminator keeps errors to the form used.
TopologyRef = Annotated[
    Annotated[str, Tag("named")] | Annotated[Topology, Tag("inline")],
    Discriminator(lambda value: "named" if isinstance(value, str) else "inline"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class DeploymentOptions(_Strict):
    """Ray Serve options passed through to one deployment; unset fields keep recursivemas's defaults."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    """Ray Serve's autoscaling config (min_replicas, max_replicas, target_ongoing_requests, ...), passed as is."""
    max_ongoing_requests: int | None = Field(None, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    """Merged over what the topology declares (num_cpus, num_gpus, resources), e.g. ``{num_gpus: 1}``."""

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError(f"num_replicas ({self.num_replicas}) and autoscaling_config both set: give one; "
                             "autoscaling_config's min_replicas/max_replicas bound the replica count")
        return self

    def serve_options(self, ray_actor_options: dict[str, Any], max_ongoing_requests: int) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``: our defaults, then what this config sets."""
        options: dict[str, Any] = {
            "ray_actor_options": {**ray_actor_options, **self.ray_actor_options},
            "max_ongoing_requests": self.max_ongoing_requests or max_ongoing_requests,
        }
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = dict(self.autoscaling_config)
        return options


class BackboneDeployment(DeploymentOptions):
    """One backbone's deployment: Serve options plus how its replicas coalesce concurrent engine calls."""

    max_batch: int = Field(16, ge=1)
    """Most prompts in one batched rollout or generation."""
    batch_wait_s: float = Field(0.005, ge=0)
    """How long a lone engine call waits for company before it runs."""
    torch_threads: int | None = Field(None, ge=1)
    """Intra-op threads per replica; None: the topology's ``torch_threads``, else the CPUs Ray reserves for it (at
    least 1). On a CPU machine with fractional reservations, giving each backbone every core batches far better
    (docs/benchmarks.md)."""


class RequestBatching(_Strict):
    """Concurrent requests with the same model and settings become one batched run (the router's
    :class:`~recursivemas.serve.batcher.AdaptiveBatcher`), so every backbone call of the recursion carries them all."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    """How long a request arriving at an idle router waits for others."""
    rejoin_s: float = Field(0.5, ge=0)
    """After a batch, how long the next one waits for as many requests as that batch held (its callers coming
    back); small next to a run's seconds, and paid only when a caller does not return."""
    max_concurrent_batches: int = Field(1, ge=1)
    """Batched runs in flight at once per router replica. 1 (measured best on a CPU machine, docs/benchmarks.md): the
    requests that arrive during a run wait and all go in the next batch. Above 1, one batch can use one backbone
    while another uses the next (backbones on separate devices), at the price of smaller batches."""


class ServeConfig(_Strict):
    # A rejected value is never echoed back: it may be an API key.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True)

    topologies: list[TopologyRef] = Field(default_factory=lambda: ["sequential-demo"], min_length=1)
    """YAML paths, built-in names, or inline topologies; each is served under its name (the OpenAI ``model``)."""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int | None = Field(None, ge=1, le=65535)
    limits: Limits = Field(default_factory=Limits)
    batching: RequestBatching = Field(default_factory=RequestBatching)
    backbones: dict[str, BackboneDeployment] = Field(default_factory=dict)
    """Keyed by a backbone's ``model`` as the topologies spell it (``smollm2-135m-instruct``); every deployment of
    that model takes these options."""
    router: DeploymentOptions = Field(default_factory=DeploymentOptions)
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    playground: bool = True
    """Serve the web playground at ``/`` (``recursivemas.serve.playground``): a page that only calls the API, so it
    needs the same key; off (``--no-playground``), ``/`` is a 404 for those who want nothing but the API."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer keys a client must send (HTTP ``Authorization: Bearer KEY``, gRPC metadata ``authorization``) on every
    route but ``/health``; empty: none is asked. Give them at deploy time, with ``--api-key`` or
    ``RECURSIVEMAS_API_KEY`` (read by ``recursivemas serve`` and by the builder, ``recursivemas.serve.app:build``),
    not in a file: they never show in ``repr``, logs or errors, ``--print-config`` leaves them out, and the ingress
    receives only their digests."""

    @field_validator("topologies", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``serve run recursivemas.serve.app:build topologies=a.yaml,b.yaml`` passes one string."""
        if isinstance(value, str | Path):
            return [part.strip() for part in str(value).split(",") if part.strip()]
        # A Topology object goes in as its data: validated again as a model it would see its preset's expansion
        # (edges beside a pattern) and refuse it.
        return [str(v) if isinstance(v, Path) else v.to_dict() if isinstance(v, Topology) else v for v in value]

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_keys(cls, value: Any) -> Any:
        """One string holds several keys separated by commas, as ``RECURSIVEMAS_API_KEY`` does."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",")]
        return value

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            problem = key_problem(key.get_secret_value())
            if problem:
                raise ValueError(f"key {i + 1} of {len(keys)} (from --api-key, {ENV_VAR} or the config) {problem}; "
                                 "use one token such as `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return list({k.get_secret_value(): k for k in keys}.values())  # a key given twice counts once

    @model_validator(mode="after")
    def _router_takes_its_batches(self) -> ServeConfig:
        need = self.batching.max_batch_size * self.batching.max_concurrent_batches
        given = self.router.max_ongoing_requests
        if given is not None and given < need:
            raise ValueError(f"router.max_ongoing_requests {given} < batching.max_batch_size x "
                             f"max_concurrent_batches = {need}: the router could never fill its batches; raise it "
                             f"to at least {need} or lower the batching")
        return self

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        return load_yaml_config(Path(path), cls, "serve config", "topologies, limits, ...", empty_ok=True)

    def with_keys(self, keys: list[str]) -> ServeConfig:
        """This config accepting ``keys`` too (e.g. :func:`~recursivemas.serve.auth.keys_from_env`), validated."""
        if not keys:
            return self
        return type(self).model_validate({**self.model_dump(exclude_unset=True), "api_keys": [*self.api_keys, *keys]})
