"""Refuse to serve on a Ray cluster whose ports answer without Ray's token.

Every Ray Serve replica opens a gRPC server on every interface (its inter-deployment channel, which unpickles what
it receives), and so does each raylet and the GCS. Ray checks a token on all of them only when the cluster was
started with ``RAY_AUTH_MODE=token``; a plain ``ray start`` starts none, so anyone who reaches a replica's port can
call the served models without an API key, and probably run code on the server. A local Ray that
``recursivemas serve`` starts itself has the token on; a cluster it joins (``--address``) is checked here, from
outside, the way an attacker would find out: one call to the GCS without a token.
"""

from __future__ import annotations

import grpc

from recursivemas.errors import UserError

__all__ = ["gcs_answers_without_token", "require_token_auth"]

EXPOSED = ("the GCS port (6379 by default), every raylet's and object manager's ports, the dashboard (8265) and "
           "each Serve replica's own gRPC port, bound on every interface")


def _bootstrap(address: str) -> str:
    if address.count(":") == 1 and address.rsplit(":", 1)[1].isdigit():
        return address
    from ray._private.services import canonicalize_bootstrap_address_or_die  # "auto", ray://, ...

    return canonicalize_bootstrap_address_or_die(address)


def gcs_answers_without_token(address: str, timeout_s: float = 10.0) -> bool:
    """Whether the GCS at ``address`` (``host:port``, or ``auto``) answers a call that carries no token."""
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(_bootstrap(address)) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            raise UserError(f"--address {address}: could not reach the Ray cluster's GCS to check its "
                            f"authentication ({exc.code().name}: {exc.details()}); start the cluster first "
                            "(RAY_AUTH_MODE=token ray start --head ...) or fix the address",
                            field="--address") from None
    return True


def require_token_auth(address: str, allow_unauthenticated: bool) -> str | None:
    """Refuse a cluster that answers without Ray's token, unless allowed; return the warning to print then."""
    if not gcs_answers_without_token(address):
        return None
    exposed = f"the cluster at {address} does not enforce Ray's token authentication, so {EXPOSED} answer anyone"
    if allow_unauthenticated:
        return f"warning: {exposed}, including with the served models and without an API key; firewall them"
    raise UserError(f"--address {address}: {exposed}; a replica's port returns completions without an API key. "
                    "Start the cluster with Ray's token (`ray get-auth-token --generate`, then `RAY_AUTH_MODE=token "
                    "ray start ...` on every node; docs/exposing-the-server.md), or pass --allow-unauthenticated-ray "
                    "where a firewall guards every port", field="--address")
