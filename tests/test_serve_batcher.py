"""The router's batcher as pure asyncio: stragglers rejoin the batch they left instead of splitting it for good, a
lone client never waits, failures reach only their own callers, and at most ``max_concurrent_batches`` run."""

from __future__ import annotations

import asyncio
import time

import pytest

from recursivemas.serve.batcher import AdaptiveBatcher


class Work:
    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds, self.running, self.peak = seconds, 0, 0

    async def __call__(self, jobs: list) -> list:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.seconds)
        self.running -= 1
        return [ValueError(f"bad {j}") if j == "bad" else j * 2 for j in jobs]


async def clients(batcher: AdaptiveBatcher, n: int, rounds: int, spread_s: float) -> None:
    """n closed-loop clients; client i takes i * spread_s / n to send its next request (uneven hops)."""

    async def client(i: int) -> None:
        for _ in range(rounds):
            await asyncio.sleep(i * spread_s / n)
            assert await batcher.submit(i) == 2 * i

    await asyncio.gather(*(client(i) for i in range(n)))


def test_stragglers_rejoin_instead_of_splitting_the_batch():
    """Clients come back spread over 150 ms: a fixed 50 ms window would cut them into two batches for good."""
    batcher = AdaptiveBatcher(Work(0.1), max_batch_size=8, batch_wait_timeout_s=0.05, rejoin_s=0.5)
    asyncio.run(clients(batcher, 8, 5, spread_s=0.15))
    # the cold start splits (about 3 clients, then the rest a round behind); from then on every batch is full, and
    # the clients that ran ahead finish with the last one
    first, *middle, last = batcher.sizes
    assert middle == [8] * 4 and first + last == 8, batcher.sizes


def test_a_lone_client_does_not_wait_for_company():
    batcher = AdaptiveBatcher(Work(0.0), batch_wait_timeout_s=0.2, rejoin_s=0.5)

    async def go() -> float:
        await batcher.submit(1)  # the cold start may wait its 0.2 s
        start = time.perf_counter()
        for _ in range(5):
            await batcher.submit(1)
        return time.perf_counter() - start

    assert asyncio.run(go()) < 0.2  # five requests, no 0.2 s window paid between them
    assert batcher.sizes == [1] * 6


def test_failures_reach_only_their_callers():
    batcher = AdaptiveBatcher(Work(0.01), max_batch_size=4, batch_wait_timeout_s=0.05)

    async def go():
        return await asyncio.gather(*(batcher.submit(j) for j in (1, "bad", 3)), return_exceptions=True)

    good, bad, other = asyncio.run(go())
    assert (good, other) == (2, 6) and isinstance(bad, ValueError) and batcher.sizes == [3]


@pytest.mark.parametrize("slots", [1, 2])
def test_max_concurrent_batches(slots):
    work = Work(0.05)
    batcher = AdaptiveBatcher(work, max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=slots)

    async def go():
        await asyncio.gather(*(batcher.submit(j) for j in range(6)))

    asyncio.run(go())
    assert work.peak == slots and batcher.sizes == [1] * 6
