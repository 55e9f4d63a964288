"""The Ray Serve deployments: one per unique backbone, one router for every served topology, one HTTP ingress.

- ``BackboneServer`` wraps the cluster's backbone core (engine + request coalescing): concurrent requests from every
  topology that names the backbone are batched into its rollout and generation calls.
- ``Router`` runs each topology's :class:`~recursivemas.runtime.Executor` over handles to the backbone deployments.
  Hand-offs stay object references owned by the backbone replica that made them: the replica that reads one fetches
  it from the object store; the router and the ingress never hold a latent.
- ``Ingress`` speaks OpenAI's chat-completions API (``recursivemas.serve.openai_api``), with server-sent events for
  ``stream: true``; bad input is a 4xx with an OpenAI error object, an internal failure a 5xx with a request id.
"""


import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import ray
from fastapi import Request  # module level: FastAPI resolves the route annotations against this module
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from recursivemas.actors import Prompt
from recursivemas.cluster.backbone_actor import BackboneActor, lift_latents, lower_latents
from recursivemas.config import Topology
from recursivemas.runtime import Executor, build_links
from recursivemas.serve.batcher import AdaptiveBatcher
from recursivemas.serve.errors import APIError, error_body, new_request_id
from recursivemas.serve.openai_api import Limits, parse_request
from recursivemas.serve.openai_responses import SSE_HEADERS, ChunkStream, completion_body, models_body

log = logging.getLogger("recursivemas")
POOL_THREADS = 64  # concurrent runs (and backbone calls) a replica keeps in flight


def _resolve(latents: Sequence) -> list:
    """Latent arguments as tensors: references are fetched here, from the replica that made them."""
    refs = [i for i, x in enumerate(latents) if isinstance(x, ray.ObjectRef)]
    out = list(latents)
    for i, value in zip(refs, ray.get([latents[i] for i in refs])):
        out[i] = value
    return out


class BackboneServer:
    """One backbone, loaded once per replica, shared by every topology and request that names it.

    Calls wait in threads of their own (not the event loop's small default pool), so that many requests reach the
    coalescer at once and share batched forwards."""

    def __init__(self, name: str, path: str, dtype: str, device: str, max_batch: int = 16,
                 batch_wait_s: float = 0.005, torch_threads: int = 1) -> None:
        self.core = BackboneActor(name, path, dtype, device, max_batch, batch_wait_s, torch_threads)
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="backbone-call")

    def info(self) -> dict:
        return self.core.info()

    async def think(self, topology: str, links_ref: list, handoff: str, agents: list[str], prompts: list,
                    steps: int, targets: list, *latents):
        return await self._in_pool(lambda: self.core.think(topology, links_ref, handoff, "object_store", agents,
                                                           prompts, steps, targets, *_resolve(latents)))

    async def generate(self, prompts: list, sampling: dict, *latents) -> list:
        return await self._in_pool(lambda: self.core.generate(prompts, sampling, *_resolve(latents)))

    async def _in_pool(self, call):
        """Fetching latents and the engine call both block: neither may run on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    def stream(self, prompt, sampling: dict, *latents):
        (prompt,) = lower_latents([prompt], _resolve(latents))
        yield from self.core.engine.stream_generation(prompt, **sampling)

    def batch_sizes(self) -> list[int]:
        return self.core.batch_sizes()


class HandleBackend:
    """The executor's backend interface over a backbone deployment handle (called from router worker threads)."""

    def __init__(self, handle, topology: str, links_ref: ray.ObjectRef, handoff: str) -> None:
        self.handle, self.topology, self.links_ref, self.handoff = handle, topology, links_ref, handoff

    def think(self, agents, prompts, steps, targets):
        lifted, latents = lift_latents(prompts)
        return self.handle.think.remote(self.topology, [self.links_ref], self.handoff, list(agents), lifted, steps,
                                        [list(t) for t in targets], *latents).result()

    def generate(self, prompts, **sampling):
        lifted, latents = lift_latents(prompts)
        return self.handle.generate.remote(lifted, sampling, *latents).result()

    def stream(self, prompt: Prompt, **sampling):
        (lifted,), latents = lift_latents([prompt])
        yield from self.handle.options(stream=True).stream.remote(lifted, sampling, *latents)


class Router:
    """Every served topology's executor; a request names its topology (the OpenAI ``model``)."""

    async def __init__(self, topologies: list[dict], backbones: dict[str, object],
                       keys: dict[str, dict[str, str]], batching: dict | None = None) -> None:
        # keys: topology name -> {its backbone name: the deployment name serving it}
        info = {key: await handle.info.remote() for key, handle in backbones.items()}
        self.executors: dict[str, Executor] = {}
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="run")
        self.batcher = AdaptiveBatcher(self._run_jobs, **(batching or {}))
        for raw in topologies:
            topology = Topology.model_validate(raw)
            mine = keys[topology.name]
            dims = {name: _Dims(info[key]) for name, key in mine.items()}
            links_ref = ray.put(build_links(topology, dims))
            self.executors[topology.name] = Executor(topology, {
                name: HandleBackend(backbones[key], topology.name, links_ref, topology.handoff)
                for name, key in mine.items()})

        from ray.util.metrics import Counter, Histogram

        tags = ("model", "mode")
        self.runs = Counter("recursivemas_runs", "Finished runs", tag_keys=tags)
        self.tokens = Counter("recursivemas_decoded_tokens", "Tokens decoded by every agent", tag_keys=tags)
        self.latent = Counter("recursivemas_latent_steps", "Latent steps taken by every agent", tag_keys=tags)
        self.seconds = Histogram("recursivemas_run_seconds", "Wall time of a run", tag_keys=tags,
                                 boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120])

    def models(self) -> list[str]:
        return list(self.executors)

    def batch_sizes(self) -> list[int]:
        return list(self.batcher.sizes)

    def _count(self, model: str, result) -> dict:
        """Prometheus metrics of a finished run (Ray exports them with Serve's own request metrics)."""
        tags = {"model": model, "mode": result.mode}
        self.runs.inc(1, tags)
        for counter, value in ((self.tokens, sum(u.decoded_tokens for u in result.usage)),
                               (self.latent, sum(u.latent_steps for u in result.usage))):
            if value:  # Ray counters take positive increments only
                counter.inc(value, tags)
        self.seconds.observe(result.wall_s, tags)
        return result.to_dict()

    async def run(self, model: str, question: str, options: dict, generation: dict) -> dict:
        outcome = await self.batcher.submit(_Job(model, question, options, generation))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _run_jobs(self, jobs: list["_Job"]) -> list:
        """Concurrent requests with the same model and settings run as one batched run: every backbone call of the
        recursion then carries all of them, whatever the timing of the hops in between."""
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.key(), []).append(i)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(*(loop.run_in_executor(self.pool, self._run_group, [jobs[i] for i in members])
                                       for members in groups.values()))
        out: list = [None] * len(jobs)
        for members, outcomes in zip(groups.values(), parts):
            for i, outcome in zip(members, outcomes):
                out[i] = outcome
        return out

    def _run_group(self, jobs: list["_Job"]) -> list:
        """Results (or each job's own failure: one bad prompt must not fail its batch-mates)."""
        first = jobs[0]
        try:
            results = self.executors[first.model].run_batch([j.question for j in jobs], generation=first.generation,
                                                            **first.options)
        except Exception as exc:  # noqa: BLE001
            if len(jobs) == 1:
                return [exc]
            return [outcome for job in jobs for outcome in self._run_group([job])]
        return [self._count(first.model, r) for r in results]

    async def stream(self, model: str, question: str, options: dict, generation: dict):
        """Text deltas of the answer as the decoder produces them, then the run's result (a dict)."""
        executor, loop, queue = self.executors[model], asyncio.get_running_loop(), asyncio.Queue()

        def work() -> None:
            try:
                result = executor.run(question, generation=generation,
                                      on_delta=lambda d: loop.call_soon_threadsafe(queue.put_nowait, d), **options)
                loop.call_soon_threadsafe(queue.put_nowait, self._count(model, result))
            except BaseException as exc:  # handed to the caller, which maps it to an error event
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        threading.Thread(target=work, daemon=True, name=f"stream-{model}").start()
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, dict):
                return


@dataclasses.dataclass(frozen=True)
class _Job:
    model: str
    question: str
    options: dict
    generation: dict

    def key(self) -> str:
        """Jobs with equal keys can share one batched run (same topology, run options and sampling)."""
        return json.dumps([self.model, self.options, self.generation], sort_keys=True)


class _Dims:
    def __init__(self, info: dict) -> None:
        self.hidden_size, self.embedding_scale = info["hidden_size"], info["embedding_scale"]


def make_ingress(app):
    """The ingress class over a FastAPI ``app`` (Serve's ``@serve.ingress`` needs the app at class creation)."""
    @serve.ingress(app)
    class Ingress:
        def __init__(self, router, limits: dict) -> None:
            self.router = router
            self.limits = Limits.model_validate(limits)
            self.names: list[str] = []

        async def _models(self) -> list[str]:
            if not self.names:
                self.names = await self.router.models.remote()
            return self.names

        @app.get("/health")
        async def health(self) -> dict:
            return {"status": "ok", "models": await self._models()}

        @app.get("/v1/models")
        async def list_models(self) -> dict:
            return models_body(await self._models())

        @app.post("/v1/chat/completions")
        async def chat(self, request: Request):
            request_id = request.headers.get("x-request-id") or new_request_id()
            headers = {"x-request-id": request_id}
            try:
                req = parse_request(await request.body(), self.limits, await self._models())
            except APIError as err:
                return JSONResponse(error_body(err, request_id), status_code=err.status, headers=headers)
            args = _run_args(req)
            if req.stream:
                return StreamingResponse(self._events(request_id, req, args), media_type="text/event-stream",
                                         headers={**SSE_HEADERS, **headers})
            try:
                result = await self.router.run.remote(*args)
            except Exception as exc:  # noqa: BLE001 - any failure is this request's, not the server's
                err = _as_api_error(exc, request_id)
                return JSONResponse(error_body(err, request_id), status_code=err.status, headers=headers)
            body = completion_body(request_id, req.model, int(time.time()), result["text"], result)
            return JSONResponse(body, headers=headers)

        # --- gRPC (the same validation and runs; served through Ray Serve's gRPC proxy) ----------------------------
        async def Run(self, request, grpc_context=None):  # noqa: N802 - the RPC's name in recursivemas.proto
            from recursivemas.serve import grpc_api

            request_id = new_request_id()
            try:
                req = grpc_api.request_from_proto(request, self.limits, await self._models())
                result = await self.router.run.remote(*_run_args(req))
            except Exception as exc:  # noqa: BLE001
                _grpc_fail(grpc_context, exc, request_id)
                return grpc_api.pb.RunResponse(id=request_id)
            return grpc_api.response_to_proto(request_id, req.model, result["text"], result)

        async def RunStream(self, request, grpc_context=None):  # noqa: N802
            from recursivemas.serve import grpc_api

            request_id = new_request_id()
            try:
                req = grpc_api.request_from_proto(request, self.limits, await self._models())
                async for item in self.router.options(stream=True).stream.remote(*_run_args(req)):
                    if isinstance(item, str):
                        yield grpc_api.chunk_to_proto(request_id, req.model, item)
                    else:
                        yield grpc_api.final_chunk_to_proto(request_id, req.model, item)
            except Exception as exc:  # noqa: BLE001
                _grpc_fail(grpc_context, exc, request_id)

        async def _events(self, request_id: str, req, args):
            chunks = ChunkStream(request_id, req.model, include_usage=req.include_usage)
            yield chunks.start()
            try:
                async for item in self.router.options(stream=True).stream.remote(*args):
                    if isinstance(item, str):
                        yield chunks.delta(item)
                    else:
                        yield chunks.end(item)
            except Exception as exc:  # noqa: BLE001
                yield chunks.error(_as_api_error(exc, request_id))

    return Ingress


def _run_args(req) -> tuple:
    """(model, question, run options, generation overrides) for the router; None options mean the topology's."""
    options = {k: v for k, v in req.run_options().items() if v is not None}
    return req.model, req.question(), options, req.generation_options()


def _grpc_fail(context, exc: Exception, request_id: str) -> None:
    from recursivemas.serve.grpc_api import grpc_status

    err = exc if isinstance(exc, APIError) else _as_api_error(exc, request_id)
    if context is not None:
        context.set_code(grpc_status(err))
        context.set_details(f"{err.message} (request id {request_id})")


def _as_api_error(exc: Exception, request_id: str) -> APIError:
    """A failure inside a run: the user's fault (a prompt over the context, ...) is a 400, anything else a 500."""
    cause = getattr(exc, "cause", None) or exc
    from recursivemas.actors import ContextLengthError

    if isinstance(cause, ContextLengthError | ValueError):
        return APIError(400, str(cause).splitlines()[0], param="messages", code="invalid_request")
    log.exception("request %s failed", request_id)
    return APIError.internal(request_id)
