"""API keys without Ray: the shared key check (HTTP header, gRPC metadata), the ASGI middleware's 401, the env var,
keys kept out of repr / errors / --print-config, and the refusal to serve an exposed server without a key."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from pydantic import ValidationError

from recursivemas.cli import _serve_config, build_parser, main
from recursivemas.serve.app import serve_config_file
from recursivemas.serve.auth import (
    ENV_VAR, BearerAuth, KeyCheck, bearer_token, is_loopback, keys_from_env, require_key_when_exposed,
    token_from_metadata,
)
from recursivemas.serve.config import ServeConfig

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)  # a key in the developer's shell must not change these tests


def test_the_check_accepts_each_configured_key_and_nothing_else():
    keys = KeyCheck.of([KEY, "second-key"])
    assert keys.required and keys.allows(KEY) and keys.allows("second-key")
    assert not keys.allows(None) and not keys.allows("") and not keys.allows(KEY + "x") and not keys.allows(KEY[:-1])
    assert keys.problem(KEY) is None
    missing, wrong = keys.problem(None), keys.problem("nope")
    assert (missing.status, missing.type, missing.code) == (401, "invalid_request_error", "invalid_api_key")
    assert "Missing API key" in missing.message and "Incorrect API key" in wrong.message
    assert "nope" not in wrong.message and KEY not in repr(keys) and repr(keys) == "KeyCheck(2 keys)"
    open_server = KeyCheck()
    assert not open_server.required and open_server.allows(None) and open_server.problem(None) is None


@pytest.mark.parametrize("value, token", [
    (f"Bearer {KEY}", KEY), (f"bearer  {KEY} ", KEY), (f"BEARER {KEY}".encode(), KEY),
    (KEY, None), (f"Basic {KEY}", None), ("Bearer", None), ("", None), (None, None),
])
def test_bearer_token(value, token):
    assert bearer_token(value) == token


def test_token_from_grpc_metadata_in_any_case():
    assert token_from_metadata([("application", "recursivemas"), ("authorization", f"Bearer {KEY}")]) == KEY
    assert token_from_metadata([("Authorization", f"Bearer {KEY}")]) == KEY
    assert token_from_metadata([("application", "recursivemas")]) is None and token_from_metadata(None) is None


def test_keys_from_the_env_var_one_or_several():
    assert keys_from_env({ENV_VAR: KEY}) == [KEY]
    assert keys_from_env({ENV_VAR: " a1, b2 ,,c3 "}) == ["a1", "b2", "c3"]
    assert keys_from_env({}) == [] and keys_from_env({ENV_VAR: " , "}) == []


def call(app, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request through an ASGI app: (status, headers, body)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middleware_answers_401_with_openai_error_body():
    app = BearerAuth(ok_app, keys=lambda: KeyCheck.of([KEY]))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        status, sent_headers, body = call(app, "/v1/chat/completions", {**headers, "x-request-id": "r1"})
        error = json.loads(body)["error"]
        assert status == 401 and sent_headers["www-authenticate"].startswith("Bearer")
        assert sent_headers["x-request-id"] == "r1" and error["request_id"] == "r1"
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_api_key")
        assert "wrong" not in error["message"] and KEY not in error["message"]
    assert call(app, "/v1/models", {"authorization": f"Bearer {KEY}"})[::2] == (200, b"ok")
    assert call(app, "/openapi.json")[0] == 401
    assert call(app, "/health")[::2] == (200, b"ok")  # liveness stays open
    assert call(BearerAuth(ok_app, keys=KeyCheck), "/v1/models")[0] == 200  # no keys configured: open
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "websocket", "path": "/ws", "headers": []}, None, send))  # a websocket route, if any
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_keys_never_show_in_repr_errors_or_dumps():
    config = ServeConfig(api_keys=[KEY, "second-key", KEY])
    assert [k.get_secret_value() for k in config.api_keys] == [KEY, "second-key"]  # a repeat counts once
    assert KEY not in repr(config) and KEY not in str(config) and KEY not in json.dumps(config.model_dump(mode="json"))
    assert ServeConfig(api_keys=f"{KEY}, second-key").api_keys == config.api_keys  # one comma-separated string
    for bad in ("has space-" + KEY, "", "ünï-" + KEY):
        with pytest.raises(ValidationError) as info:
            ServeConfig(api_keys=[KEY, bad])
        assert "key 2 of 2" in str(info.value) and "api_keys" in str(info.value)
        assert KEY not in str(info.value) and (not bad or bad not in str(info.value))
    assert "api_keys" not in serve_config_file(config)["applications"][0]["args"]


def test_print_config_leaves_the_keys_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "env-key-1,env-key-2")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"api_keys": ["file-key"], "port": 9000}))
    assert main(["serve", "--config", str(path), "--api-key", KEY, "--host", "0.0.0.0", "--print-config"]) == 0
    out, err = capsys.readouterr()
    file = yaml.safe_load(out)
    assert file["http_options"] == {"host": "0.0.0.0", "port": 9000} and "api_keys" not in str(file)
    for key in (KEY, "env-key-1", "file-key"):
        assert key not in out and key not in err
    assert "not written" in err and ENV_VAR in err


def serve_config(argv: list[str]) -> ServeConfig:
    return _serve_config(build_parser().parse_args(["serve", *argv]))


def test_keys_from_flags_env_and_file_are_all_accepted(tmp_path, monkeypatch):
    assert serve_config([]).api_keys == []
    monkeypatch.setenv(ENV_VAR, "env-key-1, env-key-2")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"api_keys": ["file-key"]}))
    config = serve_config(["--config", str(path), "--api-key", KEY, "--api-key", "flag-key-2"])
    assert [k.get_secret_value() for k in config.api_keys] == ["file-key", KEY, "flag-key-2", "env-key-1", "env-key-2"]
    monkeypatch.setenv(ENV_VAR, "one-env-key")
    assert [k.get_secret_value() for k in serve_config([]).api_keys] == ["one-env-key"]
    assert [k.get_secret_value() for k in ServeConfig().with_keys(keys_from_env()).api_keys] == ["one-env-key"]


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("", False),
    ("myhost.example", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_an_exposed_server_needs_a_key_or_the_explicit_opt_out():
    for exposed in (ServeConfig(host="0.0.0.0"), ServeConfig(host="10.1.2.3"), ServeConfig(grpc_port=9000)):
        with pytest.raises(ValueError, match="--api-key KEY or RECURSIVEMAS_API_KEY=KEY.*--allow-unauthenticated"):
            require_key_when_exposed(exposed)
        require_key_when_exposed(exposed, allow_unauthenticated=True)
        require_key_when_exposed(exposed.with_keys([KEY]))
    require_key_when_exposed(ServeConfig())  # loopback HTTP only: no key needed
    require_key_when_exposed(ServeConfig(host="localhost"))


@pytest.mark.parametrize("argv, needle", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
    (["--grpc-port", "9000"], "--grpc-port 9000 listens on every interface"),
])
def test_cli_refuses_to_expose_an_unauthenticated_server(capsys, argv, needle):
    assert main(["serve", *argv]) == 2  # refused before Ray starts (or the models load)
    err = capsys.readouterr().err
    assert err.startswith("error: serve: ") and needle in err and err.count("\n") == 1
    assert "--api-key" in err and ENV_VAR in err and "--allow-unauthenticated" in err
