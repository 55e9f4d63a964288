"""Request batching that waits for the callers it expects, not for a fixed window.

A fixed window (``@serve.batch``'s ``batch_wait_timeout_s``) fits neither load. At concurrency 8 the clients a batch
just answered come back over a spread of HTTP and Serve hops; a window shorter than that spread cuts off the
stragglers, which then run as a batch of their own, and the split repeats forever (measured: batches of 7 and 1).
At concurrency 1 the same window is pure added latency. So the batcher counts the callers each finished batch
answered and waits (up to ``rejoin_s``) until they are back, and for no one else; with no batch finished lately it
waits ``batch_wait_timeout_s`` for company. A lone client never waits; a departed one costs one ``rejoin_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class AdaptiveBatcher:
    """``await submit(job)`` -> the job's result from ``run(jobs) -> results`` (one result per job, in order)."""

    def __init__(self, run: Callable[[list], Awaitable[list]], max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.05, rejoin_s: float = 0.5, max_concurrent_batches: int = 1) -> None:
        self.run, self.max_batch_size, self.rejoin_s = run, max_batch_size, rejoin_s
        self.wait_s = batch_wait_timeout_s
        self._queue: list[tuple[Any, asyncio.Future, float]] = []  # (job, its caller's future, arrival time)
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        # [expiry, callers not back yet] per finished batch: while any is unexpired the router is warm
        self._returns: list[list[float]] = []
        self._worker: asyncio.Task | None = None
        self.sizes: list[int] = []  # every batch's size, for tests and the load benchmark

    async def submit(self, job: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._worker is None:  # started lazily: it must live on the replica's event loop
            self._worker = loop.create_task(self._serve())
        for entry in self._returns:  # most likely one of the callers a batch answered, coming back
            if entry[1] > 0:
                entry[1] -= 1
                break
        future = loop.create_future()
        entry = (job, future, time.monotonic())
        self._queue.append(entry)
        self._arrived.set()
        try:
            return await future
        except asyncio.CancelledError:  # the caller left while waiting: its place in the next batch is freed
            self._queue = [queued for queued in self._queue if queued is not entry]
            raise

    def _ready(self) -> float:
        """0 when a batch should start now, else how long to wait at most for more requests."""
        now = time.monotonic()
        self._returns = [entry for entry in self._returns if entry[0] > now]
        if len(self._queue) >= self.max_batch_size:
            return 0.0
        if self._returns:  # warm: wait for the callers still expected back, and for no one else
            if not sum(count for _, count in self._returns):
                return 0.0
            return max(expiry for expiry, _ in self._returns) - now
        return max(0.0, self._queue[0][2] + self.wait_s - now)  # cold: a short wait for company

    async def _serve(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            while (left := self._ready()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    pass
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
            self.sizes.append(len(batch))
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future, float]]) -> None:
        try:
            results = await self.run([job for job, _, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch hears of it
            results = [exc] * len(batch)
        finally:
            self._slots.release()
        self._returns.append([time.monotonic() + self.rejoin_s, len(batch)])
        for (_, future, _), result in zip(batch, results):
            if future.done():  # the caller went away (a dropped HTTP connection)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
