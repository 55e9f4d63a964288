"""Coalescing: concurrent requests from different runs become one batched engine call.

A backbone shared by several topologies (or by many in-flight runs of one) sees rollout and generate requests arrive
from many threads. Serving them one by one leaves the matrix units idle on small batches; instead, a request waits up
to ``wait_s`` for company, and compatible requests (a rollout with the same number of steps, a generation with the same
sampling settings) run as one left-padded batch of at most ``max_batch`` prompts. Each row keeps its own inner link,
so agents of different topologies batch together. Pure threading, no Ray: the actor just wraps its engine in this.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from recursivemas.engine.sampling import DEFAULT_SAMPLING, Sampling


@dataclass
class _Request:
    kind: str  # "rollout" | "generate"
    key: tuple  # requests with equal keys may share a batch: (kind, latent steps or the typed Sampling)
    prompts: list
    links: list  # per prompt: a rollout's inner link, a generation's liveness check
    future: Future = field(default_factory=Future)


class CoalescingEngine:
    """Same ``rollout``/``generate`` interface as the engine; concurrent callers are batched together."""

    def __init__(self, engine, max_batch: int = 16, wait_s: float = 0.005, rejoin_s: float = 0.05):
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.rejoin_s = rejoin_s
        self._returning = 0  # rows just answered, whose callers are likely to send their next request now
        self._waiting_at_return = 0
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self.batches: list[int] = []  # sizes of the engine calls made, for tests and metrics
        threading.Thread(target=self._serve, name="coalescer", daemon=True).start()

    def __getattr__(self, name: str) -> Any:  # hidden_size, embedding_scale, tokenizer, ...
        return getattr(self.engine, name)

    def rollout(self, prompts: Sequence, steps: int, inner) -> list:
        links = list(inner) if isinstance(inner, (list, tuple)) else [inner] * len(prompts)
        return self._submit(_Request("rollout", ("rollout", steps), list(prompts), links))

    def generate(self, prompts: Sequence, sampling: Sampling = DEFAULT_SAMPLING, alive: Sequence | None = None
                 ) -> list:
        checks = list(alive) if alive is not None else [None] * len(prompts)  # per row, like a rollout's links
        return self._submit(_Request("generate", ("generate", sampling), list(prompts), checks))

    def _submit(self, request: _Request) -> list:
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
        return request.future.result()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                # Callers that the last batch just answered tend to come straight back (the next agent of their
                # run). Waiting briefly for them keeps concurrent runs in one batch instead of two alternating ones.
                if self._returning:  # rows that were waiting when the last batch ended, plus the callers it answered
                    expected = min(self.max_batch, self._waiting_at_return + self._returning)
                else:
                    expected = self.max_batch
                deadline = time.monotonic() + (self.rejoin_s if self._returning else self.wait_s)
                while self._rows() < expected and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                self._returning = 0
                first = self._queue[0]
                group, rows = [], 0
                for request in list(self._queue):
                    if request.key == first.key and (not group or rows + len(request.prompts) <= self.max_batch):
                        group.append(request)
                        rows += len(request.prompts)
                        self._queue.remove(request)
            self._run(group)

    def _rows(self) -> int:
        return sum(len(r.prompts) for r in self._queue)

    def _run(self, group: list[_Request]) -> None:
        prompts = [p for r in group for p in r.prompts]
        first = group[0]
        try:
            if first.kind == "rollout":
                outputs = self.engine.rollout(prompts, first.key[1], [link for r in group for link in r.links])
            else:
                outputs = self.engine.generate(prompts, first.key[1], alive=[c for r in group for c in r.links])
        except BaseException as exc:  # noqa: BLE001 - hand every waiting caller its own failure
            if len(group) > 1:  # one bad request must not fail its batch-mates: retry them alone
                for request in group:
                    self._run([request])
                return
            first.future.set_exception(exc)
            return
        self.batches.append(len(prompts))
        with self._cond:
            self._returning, self._waiting_at_return = len(prompts), self._rows()
        start = 0
        for request in group:
            request.future.set_result(outputs[start : start + len(request.prompts)])
            start += len(request.prompts)
