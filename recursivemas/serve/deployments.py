"""The Ray Serve deployments behind the ingress: one per unique backbone, one router for every served topology.

- ``BackboneServer`` is a thin Serve wrapper over a :class:`~recursivemas.runtime.host.BackboneHost` (engine and
  request coalescing), as the cluster's ``BackboneActor`` is: concurrent requests from every topology that names
  the backbone are batched into its rollout and generation calls.
- ``Router`` runs each topology's :class:`~recursivemas.runtime.Executor` over one
  :class:`~recursivemas.actors.remote.RemoteBackend` per backbone deployment handle. Hand-offs stay object
  references owned by the backbone replica that made them: the replica that reads one fetches it from the object
  store; the router and the ingress never hold a latent. Serve always hands latents over by object store.
"""


import asyncio
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from recursivemas.actors.backbone import links_from
from recursivemas.actors.latents import fetched, lower
from recursivemas.actors.remote import BackboneFailure, RemoteBackend
from recursivemas.config import BackboneConfig, Topology
from recursivemas.runtime import Executor, RunResult, build_links
from recursivemas.runtime.calls import BackboneDims, GenerateCall, RunOptions, ThinkCall
from recursivemas.runtime.host import BackboneHost, HostOptions
from recursivemas.runtime.query import Query, as_queries
from recursivemas.runtime.stopping import RunStop
from recursivemas.serve.batcher import AdaptiveBatcher
from recursivemas.serve.errors import APIError, deadline_exceeded, overloaded
from recursivemas.runtime.query import field_needs
from recursivemas.serve.openai_api import Limits

log = logging.getLogger("recursivemas")
POOL_THREADS = 64  # concurrent runs (and backbone calls) a replica keeps in flight
ROUTER = "router"  # the router deployment's name in the application


class BackboneServer:
    """One backbone, loaded once per replica, shared by every topology and request that names it.

    Calls wait in threads of their own (not the event loop's small default pool), so that many requests reach the
    coalescer at once and share batched forwards."""

    def __init__(self, name: str, config: BackboneConfig, options: HostOptions) -> None:
        self.name = name
        self.host = BackboneHost.from_config(name, config, options)
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="backbone-call")

    def info(self) -> dict:
        return self.host.info()

    async def think(self, call: ThinkCall, links_ref: list, *latents):
        def work():
            thoughts = self.host.think(lower(call, fetched(latents)), links_from(self.host, call, links_ref))
            for thought in thoughts:
                thought.handoffs = {dst: ray.put(latent) for dst, latent in thought.handoffs.items()}
            return thoughts

        return await self._in_pool(work)

    async def generate(self, call: GenerateCall, *latents) -> list:
        return await self._in_pool(lambda: self.host.generate(lower(call, fetched(latents))))

    async def _in_pool(self, work):
        """Fetching latents and the engine call both block: neither may run on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    def stream(self, call: GenerateCall, *latents):
        yield from self.host.stream(lower(call, fetched(latents)))

    async def cancel(self, tags: list[str]) -> None:
        self.host.cancel(tags)

    def pid(self) -> int:
        """This replica's process (the fault benchmark kills it)."""
        return os.getpid()

    def batch_sizes(self) -> list[int]:
        return self.host.batch_sizes


def handle_backend(handle, links_ref: ray.ObjectRef, timeout_s: float | None = None) -> RemoteBackend:
    """A :class:`RemoteBackend` over a backbone deployment handle (called from router worker threads). A call that
    outlives ``timeout_s`` (a replica that died mid-call and is not coming back) fails rather than holding its
    thread for ever."""
    def call(method: str, *args):
        try:
            return getattr(handle, method).remote(*args).result(timeout_s=timeout_s)
        except TimeoutError as exc:
            name = getattr(handle, "deployment_name", "backbone")
            raise BackboneFailure(name, f"no answer within {timeout_s:g} s") from exc

    return RemoteBackend(call, links_ref, stream=lambda *args: iter(handle.options(stream=True).stream.remote(*args)))


class Router:
    """Every served topology's executor; a request names its topology (the OpenAI ``model``)."""

    async def __init__(self, topologies: list[dict], backbones: dict[str, object],
                       keys: dict[str, dict[str, str]], batching: dict | None = None, limits: dict | None = None
                       ) -> None:
        # keys: topology name -> {its backbone name: the deployment name serving it}
        info = {key: await handle.info.remote() for key, handle in backbones.items()}
        self.executors: dict[str, Executor] = {}
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="run")
        self.batcher = AdaptiveBatcher(self._run_jobs, **(batching or {}))
        self.limits = Limits.model_validate(limits or {})
        self.pending = 0  # requests admitted and not yet answered: the bound that gives backpressure
        call_timeout = self.limits.max_timeout_s + 60  # no backbone call outlives the longest deadline by much
        for raw in topologies:
            topology = Topology.model_validate(raw)
            mine = keys[topology.name]
            dims = {name: BackboneDims.of(info[key]) for name, key in mine.items()}
            links_ref = ray.put(build_links(topology, dims))
            self.executors[topology.name] = Executor(topology, {
                name: handle_backend(backbones[key], links_ref, call_timeout) for name, key in mine.items()})

        from ray.util.metrics import Counter, Histogram

        tags = ("model", "mode")
        self.runs = Counter("recursivemas_runs", "Finished runs", tag_keys=tags)
        self.tokens = Counter("recursivemas_decoded_tokens", "Tokens decoded by every agent", tag_keys=tags)
        self.latent = Counter("recursivemas_latent_steps", "Latent steps taken by every agent", tag_keys=tags)
        self.seconds = Histogram("recursivemas_run_seconds", "Wall time of a run", tag_keys=tags,
                                 boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120])

    def models(self) -> list[str]:
        return list(self.executors)

    def fields(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        """Per model, per mode: the fields its templates name -> the agents that read them (what the ingress checks
        a request's ``recursivemas.fields`` against before the run starts)."""
        return {name: field_needs(executor.topology) for name, executor in self.executors.items()}

    def batch_sizes(self) -> list[int]:
        return list(self.batcher.sizes)

    def in_flight(self) -> int:
        """Requests admitted and not yet answered (what ``limits.max_queued`` bounds)."""
        return self.pending

    def _count(self, model: str, result: RunResult) -> RunResult:
        """Prometheus metrics of a finished run (Ray exports them with Serve's own request metrics)."""
        tags = {"model": model, "mode": result.mode}
        self.runs.inc(1, tags)
        for counter, value in ((self.tokens, sum(u.decoded_tokens for u in result.usage)),
                               (self.latent, sum(u.latent_steps for u in result.usage))):
            if value:  # Ray counters take positive increments only
                counter.inc(value, tags)
        self.seconds.observe(result.wall_s, tags)
        return result

    def topology(self, model: str) -> dict:
        return self.executors[model].topology.to_dict()

    async def run_batch(self, model: str, questions: list[str | Query], options: RunOptions) -> list[RunResult]:
        """The runner interface over Serve (:class:`~recursivemas.serve.client.ServedSystem`): one batched run of
        ``questions`` (strings or :class:`Query` objects with their fields), beside the requests the HTTP ingress
        batches."""
        executor = self.executors[model]

        def work() -> list[RunResult]:
            results = executor.run_batch(as_queries(questions), options)
            for result in results:
                self._count(model, result)
            return results

        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    async def run(self, model: str, question: str | Query, options: RunOptions, deadline: float | None = None,
                  request_id: str = "") -> RunResult:
        """One request's run (its question and fields), batched with its concurrent peers. Past ``deadline``
        (``time.time()``) it is a 504; a caller that goes away (Serve cancels this call) stops its run, and its
        batch-mates go on."""
        job = self._admit(model, question, options, deadline, request_id)
        try:
            outcome = await self.batcher.submit(job)
        except asyncio.CancelledError:
            self._cancel(job)
            raise
        finally:
            self.pending -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _admit(self, model: str, question: str | Query, options: RunOptions, deadline: float | None,
               request_id: str) -> "_Job":
        if self.pending >= self.limits.max_queued:
            raise overloaded(self.limits.max_queued, self.limits.retry_after_s)
        self.pending += 1
        return _Job(model, Query.of(question), options, RunStop(deadline), request_id, time.time())

    def _cancel(self, job: "_Job") -> None:
        """Stop the job's run now, at its next turn and decode step (the backbone calls run in the pool)."""
        job.stop.cancel()
        self.pool.submit(self.executors[job.model].cancel, job.stop)

    def _outcome(self, job: "_Job", result: RunResult):
        if result.stopped == "deadline":
            return deadline_exceeded(job.request_id, round(job.stop.deadline - job.admitted, 3))
        if result.stopped == "cancelled":
            return APIError(499, "The client closed the request.", code="cancelled")
        return self._count(job.model, result)

    async def _run_jobs(self, jobs: list["_Job"]) -> list:
        """Concurrent requests with the same model and settings run as one batched run: every backbone call of the
        recursion then carries all of them, whatever the timing of the hops in between (each with its own
        fields)."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.model, job.options), []).append(i)  # same topology and settings: one run
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
            results = self.executors[first.model].run_batch([j.query for j in jobs], first.options,
                                                             stops=[j.stop for j in jobs])
        except Exception as exc:  # noqa: BLE001
            if len(jobs) == 1:
                return [exc]
            return [outcome for job in jobs for outcome in self._run_group([job])]
        return [self._outcome(job, r) for job, r in zip(jobs, results)]

    async def stream(self, model: str, question: str | Query, options: RunOptions, deadline: float | None = None,
                     request_id: str = "", turns: bool = False):
        """Text deltas of the answer as the decoder produces them, then the run's ``RunResult``; with ``turns``,
        each agent turn's ``AgentUsage`` too, as the turn finishes (this replica drives the rounds, so that is
        live). A caller that stops reading (a closed connection) stops the run."""
        job = self._admit(model, question, options, deadline, request_id)
        executor, loop, queue = self.executors[model], asyncio.get_running_loop(), asyncio.Queue()

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                result = executor.run(job.query, options, stop=job.stop, on_delta=put, on_turn=put if turns else None)
                put(self._outcome(job, result))
            except BaseException as exc:  # handed to the caller, which maps it to an error event
                put(exc)

        threading.Thread(target=work, daemon=True, name=f"stream-{model}").start()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if isinstance(item, RunResult):
                    finished = True
                    return
        finally:
            self.pending -= 1
            if not finished:
                self._cancel(job)


@dataclasses.dataclass(frozen=True)
class _Job:
    model: str
    query: Query  # the question and the fields its agents read
    options: RunOptions
    stop: RunStop = dataclasses.field(compare=False)
    request_id: str = dataclasses.field(default="", compare=False)
    admitted: float = dataclasses.field(default=0.0, compare=False)
