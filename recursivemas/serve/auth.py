"""API keys for the served API: one check for HTTP (``Authorization: Bearer KEY``) and gRPC (``authorization``
metadata), and the rule that refuses to expose the server without one.

Pure logic, no Ray or web framework: the HTTP check is a bare ASGI middleware (:class:`BearerAuth`), and the ingress
hands it the keys of the replica serving the request. The ingress holds SHA-256 digests of the keys, never the keys:
its constructor arguments are stored by Ray (GCS) and shown by its tooling, digests there give nothing away. Every
presented key is hashed and compared with every digest by :func:`hmac.compare_digest`, so the time taken says neither
which key nor how much of one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from recursivemas.serve import playground
from recursivemas.serve.errors import APIError, error_body, new_request_id


ENV_VAR = "RECURSIVEMAS_API_KEY"
OPEN_PATHS = ("/health", *playground.PATHS)
"""Answered without a key: liveness for load balancers (it names the served models, nothing more), and the
playground's page and assets, exactly those paths (static files holding no data: the page asks for the key and
sends it on every API call). Ray Serve's own ``/-/healthz`` and ``/-/routes`` are answered by its proxy, before any
request reaches the ingress."""


def keys_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """``RECURSIVEMAS_API_KEY``: one key, or several separated by commas (as vLLM's ``VLLM_API_KEY``)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [part.strip() for part in value.split(",") if part.strip()]


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a bearer key, or None. Never quotes the key: the reason goes into error messages."""
    if not key:
        return "is empty"
    if not all(33 <= ord(c) <= 126 for c in key):
        return "holds whitespace or a character outside printable ASCII (HTTP headers and gRPC metadata carry neither)"
    return None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCheck:
    """The keys one server accepts, as digests; no digests: every request is let through."""

    def __init__(self, digests: Iterable[str] = ()) -> None:
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    @classmethod
    def of(cls, keys: Iterable[str]) -> KeyCheck:
        return cls(digest(k) for k in keys)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def allows(self, key: str | None) -> bool:
        """True for a configured key (or when none is configured); every digest is compared, match or not."""
        if not self._digests:
            return True
        if not key:
            return False
        presented = hashlib.sha256(key.encode(errors="surrogatepass")).digest()
        match = False
        for expected in self._digests:
            match |= hmac.compare_digest(presented, expected)
        return match

    def problem(self, key: str | None) -> APIError | None:
        """The 401 for a missing or wrong key, or None when ``key`` is let through."""
        if self.allows(key):
            return None
        if not key:
            return unauthorized("Missing API key: send it as the header `Authorization: Bearer KEY` (the openai "
                                "client's api_key; gRPC: metadata `authorization: Bearer KEY`).")
        return unauthorized("Incorrect API key provided: send one of the keys this server was started with "
                            f"(--api-key or {ENV_VAR}) as `Authorization: Bearer KEY`.")

    def __repr__(self) -> str:
        return f"KeyCheck({len(self._digests)} keys)"


def unauthorized(message: str) -> APIError:
    # OpenAI answers a bad key with type invalid_request_error and code invalid_api_key; clients key off the 401.
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def bearer_token(value: str | bytes | None) -> str | None:
    """The key of an ``Authorization`` value: ``Bearer KEY`` (the scheme in any case), else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = (value or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def token_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer key in gRPC invocation metadata (gRPC lowercases names; matched in any case all the same)."""
    for name, value in metadata or ():
        if name.lower() == "authorization":
            return bearer_token(value)
    return None


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BearerAuth:
    """ASGI middleware: every HTTP request but :data:`OPEN_PATHS` needs a key that ``keys()`` accepts.

    ``keys`` is called per request because the app is built (and pickled by Ray Serve) before any replica holds its
    keys. A refused request gets a 401 with OpenAI's error object and ``WWW-Authenticate: Bearer``; nothing of it
    (key, headers, body) is logged or read further.
    """

    def __init__(self, app: ASGIApp, keys: Callable[[], KeyCheck], open_paths: Sequence[str] = OPEN_PATHS) -> None:
        self.app, self.keys, self.open_paths = app, keys, tuple(open_paths)

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self._open(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        err = self.keys().problem(bearer_token(headers.get(b"authorization")))
        if err is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # closed before the handshake: the server answers 403
            return await send({"type": "websocket.close", "code": 1008})
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1") or new_request_id()
        body = json.dumps(error_body(err, request_id)).encode()
        await send({"type": "http.response.start", "status": err.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="recursivemas"'), (b"x-request-id", request_id.encode("latin-1")),
        ]})
        await send({"type": "http.response.body", "body": body})

    def _open(self, scope: dict) -> bool:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        return path in self.open_paths


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: reachable from this machine only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key_when_exposed(config, allow_unauthenticated: bool = False) -> None:
    """Refuse (ValueError, one line) to serve without a key where others can reach the server. ``config`` is a
    :class:`~recursivemas.serve.config.ServeConfig` (its ``host``, ``grpc_port`` and ``api_keys``; not imported here,
    since the config reads its key checks from this module).

    Exposed: a ``host`` other than loopback, or any ``grpc_port``, since Ray Serve's gRPC proxy listens on every
    interface (``[::]``) whatever the HTTP host is.
    """
    if config.api_keys or allow_unauthenticated:
        return
    reasons = []
    if not is_loopback(config.host):
        reasons.append(f"--host {config.host} is not a loopback address")
    if config.grpc_port:
        reasons.append(f"--grpc-port {config.grpc_port} listens on every interface (Ray Serve's gRPC proxy binds [::])")
    if reasons:
        raise ValueError(f"serve: {' and '.join(reasons)}, and no API key is set: give one with --api-key KEY or "
                         f"{ENV_VAR}=KEY, or pass --allow-unauthenticated to serve it open to anyone who can reach it")

