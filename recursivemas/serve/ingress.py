"""The HTTP and gRPC front door: OpenAI's chat-completions API (``recursivemas.serve.openai_api``) with server-sent
events for ``stream: true``, and the ``RecursiveMAS`` gRPC service, both over the router deployment.

The web playground (``recursivemas.serve.playground``) is served at ``/`` and ``/playground/...`` unless turned off.
With API keys configured, every HTTP route but ``/health`` and the playground's static files needs
``Authorization: Bearer KEY`` and every RPC the ``authorization`` metadata (``recursivemas.serve.auth``); a missing
or wrong key is a 401 / ``UNAUTHENTICATED``. Bad input is a 4xx with an OpenAI error object (gRPC: a status with the
same message), an internal failure a 5xx with a request id. A request becomes a typed
:class:`~recursivemas.runtime.calls.RunOptions` here, and nothing but typed fields carries it on to the engine. The
FastAPI app and the ingress class are defined once, at module level, as Ray Serve LLM does.
"""

import asyncio
import logging
import time

from fastapi import FastAPI, Request  # module level: FastAPI resolves the route annotations against this module
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from recursivemas.serve import playground
from recursivemas.serve.auth import BearerAuth, KeyCheck, token_from_metadata
from recursivemas.errors import UserError
from recursivemas.serve.errors import APIError, deadline_exceeded, error_body, new_request_id
from recursivemas.runtime.query import named_fields
from recursivemas.serve.openai_api import Limits, parse_request
from recursivemas.runtime.accounting import AgentUsage
from recursivemas.serve.openai_responses import SSE_HEADERS, ChunkStream, completion_body, models_body

log = logging.getLogger("recursivemas")
_GRACE_S = 5.0  # past a request's deadline, how long the ingress waits for the router's own 504 before giving one
app = FastAPI(title="recursivemas")


def _replica_keys() -> KeyCheck:
    """The keys of the ingress replica serving this request: the app is frozen before any replica holds them."""
    return serve.get_replica_context().servable_object.keys


# Middleware, not a check per route: /docs, /openapi.json and routes added later are covered too.
app.add_middleware(BearerAuth, keys=_replica_keys)


def _run_args(req, limits: Limits, request_id: str) -> tuple[tuple, float]:
    """(model, query: the question and its fields, typed run options, deadline, request id) for the router, and the
    seconds allowed."""
    seconds = limits.deadline_s(req.timeout_s)
    return (req.model, req.query(), req.run_options(), time.time() + seconds, request_id), seconds


async def _within(call, seconds: float, request_id: str):
    """The router's answer, or a 504 once the request's deadline (plus a grace for the router's own 504) is gone:
    a run whose replica died must not hold its client for ever. Leaving cancels the call, which stops the run."""
    try:
        return await asyncio.wait_for(call, seconds + _GRACE_S)
    except asyncio.TimeoutError:
        raise deadline_exceeded(request_id, seconds) from None


def _grpc_fail(context, exc: Exception, request_id: str) -> None:
    from recursivemas.serve.grpc_api import grpc_status

    err = exc if isinstance(exc, APIError) else _as_api_error(exc, request_id)
    if context is not None:
        context.set_code(grpc_status(err))
        context.set_details(f"{err.message} (request id {request_id})")


def _grpc_refused(keys: KeyCheck, context, request_id: str) -> bool:
    """Answer ``UNAUTHENTICATED`` (True) unless the call's ``authorization`` metadata holds a key ``keys`` accepts."""
    metadata = context.invocation_metadata() if context is not None else ()
    err = keys.problem(token_from_metadata(metadata))
    if err is not None:
        _grpc_fail(context, err, request_id)
    return err is not None


def _as_api_error(exc: Exception, request_id: str) -> APIError:
    """A failure inside a run: the user's fault (:class:`~recursivemas.errors.UserError`: a prompt over the context,
    a field the request lacks) is a 400 naming the field; anything else, an internal invariant included, is a 500
    with the request id and no internal text, its traceback logged."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, APIError):  # the router's own answer: overloaded (503), past its deadline (504)
        return cause
    if isinstance(cause, UserError):
        return APIError(400, str(cause).splitlines()[0], param=cause.field or "messages", code="invalid_request")
    log.error("request %s failed", request_id, exc_info=cause)
    return APIError.internal(request_id)


def _playground_file(enabled: bool, name: str, request: Request) -> Response:
    """One of the playground's files, or a 404 with OpenAI's error body (the playground off, or no such file): a
    client of the API reads the same error shape on every path."""
    found = playground.asset(name) if enabled else None
    if found is None:
        request_id = request.headers.get("x-request-id") or new_request_id()
        why = "No such playground file." if enabled else "The playground is off on this server (--no-playground)."
        err = APIError(404, f"{why} The API is under /v1 (GET /v1/models lists the topologies).", code="not_found")
        return JSONResponse(error_body(err, request_id), status_code=404, headers={"x-request-id": request_id})
    body, media_type = found
    return Response(body, media_type=media_type, headers=playground.HEADERS)


# Serve pickles the class when it is decorated: everything its methods use must be defined above it.
@serve.ingress(app)
class Ingress:
    def __init__(self, router, limits: dict, key_digests: list[str] | None = None,
                 with_playground: bool = True) -> None:
        self.router = router
        self.limits = Limits.model_validate(limits)
        self.keys = KeyCheck(key_digests or ())
        self.with_playground = with_playground
        self.names: list[str] = []
        self.needs: dict[str, dict] = {}  # model -> mode -> {field: the agents that read it}

    async def _models(self) -> list[str]:
        if not self.names:
            self.needs = await self.router.fields.remote()
            self.names = await self.router.models.remote()
        return self.names

    @app.get("/", include_in_schema=False)
    async def playground_page(self, request: Request) -> Response:
        return _playground_file(self.with_playground, playground.INDEX, request)

    @app.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(self, name: str, request: Request) -> Response:
        # index.html only at `/`: one URL per file, and the exempt paths (auth.OPEN_PATHS) are exactly these
        return _playground_file(self.with_playground, "" if name == playground.INDEX else name, request)

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "models": await self._models()}

    @app.get("/v1/models")
    async def list_models(self) -> dict:
        names = await self._models()
        return models_body(names, fields={name: named_fields(self.needs[name]) for name in names})

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        request_id = request.headers.get("x-request-id") or new_request_id()
        headers = {"x-request-id": request_id}
        try:
            req = parse_request(await request.body(), self.limits, await self._models(), self.needs)
        except APIError as err:
            return JSONResponse(error_body(err, request_id), status_code=err.status, headers=headers)
        args, seconds = _run_args(req, self.limits, request_id)
        if req.stream:
            return StreamingResponse(self._events(request_id, req, args, seconds), media_type="text/event-stream",
                                     headers={**SSE_HEADERS, **headers})
        try:
            result = await _within(self.router.run.remote(*args), seconds, request_id)
        except Exception as exc:  # noqa: BLE001 - any failure is this request's, not the server's
            err = _as_api_error(exc, request_id)
            return JSONResponse(error_body(err, request_id), status_code=err.status,
                                headers={**headers, **err.headers()})
        body = completion_body(request_id, req.model, int(time.time()), result.text, result)
        return JSONResponse(body, headers=headers)

    # --- gRPC (the same validation and runs; served through Ray Serve's gRPC proxy) ----------------------------
    async def Run(self, request, grpc_context=None):  # noqa: N802 - the RPC's name in recursivemas.proto
        from recursivemas.serve import grpc_api

        request_id = new_request_id()
        if _grpc_refused(self.keys, grpc_context, request_id):
            return grpc_api.pb.RunResponse(id=request_id)
        try:
            req = grpc_api.request_from_proto(request, self.limits, await self._models(), self.needs)
            args, seconds = _run_args(req, self.limits, request_id)
            result = await _within(self.router.run.remote(*args), seconds, request_id)
        except Exception as exc:  # noqa: BLE001
            _grpc_fail(grpc_context, exc, request_id)
            return grpc_api.pb.RunResponse(id=request_id)
        return grpc_api.response_to_proto(request_id, req.model, result.text, result)

    async def RunStream(self, request, grpc_context=None):  # noqa: N802
        from recursivemas.serve import grpc_api

        request_id = new_request_id()
        if _grpc_refused(self.keys, grpc_context, request_id):
            yield grpc_api.pb.RunStreamChunk(id=request_id)  # carries the status (see below)
            return
        try:
            req = grpc_api.request_from_proto(request, self.limits, await self._models(), self.needs)
            args, seconds = _run_args(req, self.limits, request_id)
            async with asyncio.timeout(seconds + _GRACE_S):
                async for item in self.router.options(stream=True).stream.remote(*args, turns=req.include_turns):
                    if isinstance(item, str):
                        yield grpc_api.chunk_to_proto(request_id, req.model, item)
                    elif isinstance(item, AgentUsage):
                        yield grpc_api.turn_chunk_to_proto(request_id, req.model, item)
                    else:
                        yield grpc_api.final_chunk_to_proto(request_id, req.model, item)
        except TimeoutError:
            _grpc_fail(grpc_context, deadline_exceeded(request_id, seconds), request_id)
            yield grpc_api.pb.RunStreamChunk(id=request_id)
        except Exception as exc:  # noqa: BLE001
            _grpc_fail(grpc_context, exc, request_id)
            # Ray's proxy copies a stream's status from the context only along with a message: without this one
            # (the id alone), a stream failing before its first chunk would end with OK.
            yield grpc_api.pb.RunStreamChunk(id=request_id)

    async def _events(self, request_id: str, req, args, seconds: float):
        chunks = ChunkStream(request_id, req.model, include_usage=req.include_usage)
        yield chunks.start()
        try:
            async with asyncio.timeout(seconds + _GRACE_S):
                async for item in self.router.options(stream=True).stream.remote(*args, turns=req.include_turns):
                    if isinstance(item, str):
                        yield chunks.delta(item)
                    elif isinstance(item, AgentUsage):
                        yield chunks.turn(item)
                    else:
                        yield chunks.end(item)
        except TimeoutError:
            yield chunks.error(deadline_exceeded(request_id, seconds))
        except Exception as exc:  # noqa: BLE001
            yield chunks.error(_as_api_error(exc, request_id))
