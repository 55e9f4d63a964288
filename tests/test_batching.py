"""Coalescing of concurrent engine calls (pure threading: a scripted engine stands in for the model)."""

from __future__ import annotations

import threading
import time

import pytest

from recursivemas.engine.coalescing import CoalescingEngine
from recursivemas.engine import Sampling


class SlowEngine:
    """Records batch sizes; answers each prompt with a value derived from it, after a delay per call."""

    hidden_size = 8

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.calls: list[tuple[str, int]] = []

    def rollout(self, prompts, steps, inner):
        assert len(inner) == len(prompts)  # one link per row survives the merge
        self.calls.append(("rollout", len(prompts)))
        time.sleep(self.delay)
        return [(p, steps, link) for p, link in zip(prompts, inner)]

    def generate(self, prompts, sampling, alive=None):
        if any(p == "boom" for p in prompts):
            raise ValueError("bad prompt")
        self.calls.append(("generate", len(prompts)))
        time.sleep(self.delay)
        return [(p, sampling.temperature) for p in prompts]


def run_callers(n: int, turns: int, engine: CoalescingEngine) -> list[list]:
    """n callers in lock-step, like runs moving agent to agent: each waits for its answer before the next call."""
    out: list[list] = [[] for _ in range(n)]

    def caller(i: int) -> None:
        for t in range(turns):
            out[i].extend(engine.rollout([f"c{i}t{t}"], 4, [f"link{i}"]))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_lockstep_callers_share_batches_and_get_their_own_rows():
    inner = SlowEngine()
    engine = CoalescingEngine(inner, max_batch=16, wait_s=0.02)
    out = run_callers(6, 5, engine)
    assert out == [[(f"c{i}t{t}", 4, f"link{i}") for t in range(5)] for i in range(6)]
    sizes = [n for kind, n in inner.calls]
    assert sum(sizes) == 30
    assert max(sizes) == 6 and len(sizes) <= 8, sizes  # callers rejoin one batch instead of alternating groups


def test_max_batch_is_respected():
    inner = SlowEngine()
    engine = CoalescingEngine(inner, max_batch=4, wait_s=0.02)
    run_callers(10, 2, engine)
    assert max(n for _, n in inner.calls) <= 4


def test_incompatible_requests_do_not_mix():
    inner = SlowEngine()
    engine = CoalescingEngine(inner, wait_s=0.05)
    results = {}

    def call(name, fn):
        results[name] = fn()

    threads = [
        threading.Thread(target=call, args=("g0", lambda: engine.generate(["a"], Sampling(temperature=0.0)))),
        threading.Thread(target=call, args=("g1", lambda: engine.generate(["b"], Sampling(temperature=0.7)))),
        threading.Thread(target=call, args=("r", lambda: engine.rollout(["c"], 2, [None]))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"g0": [("a", 0.0)], "g1": [("b", 0.7)], "r": [("c", 2, None)]}
    assert sorted(inner.calls) == [("generate", 1), ("generate", 1), ("rollout", 1)]


def test_a_failing_request_fails_alone():
    engine = CoalescingEngine(SlowEngine(), wait_s=0.05)
    results, errors = {}, {}

    def call(prompt):
        try:
            results[prompt] = engine.generate([prompt], Sampling(temperature=0.0))
        except ValueError as exc:
            errors[prompt] = str(exc)

    threads = [threading.Thread(target=call, args=(p,)) for p in ("x", "boom", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == {"boom": "bad prompt"}
    assert results == {"x": [("x", 0.0)], "y": [("y", 0.0)]}


def test_attributes_pass_through():
    assert CoalescingEngine(SlowEngine()).hidden_size == 8
    with pytest.raises(AttributeError):
        _ = CoalescingEngine(SlowEngine()).no_such_thing


def test_a_lone_caller_never_waits_for_company():
    inner = SlowEngine(delay=0.01)
    engine = CoalescingEngine(inner, wait_s=0.0, rejoin_s=0.5)
    start = time.monotonic()
    run_callers(1, 10, engine)
    assert time.monotonic() - start < 1.0  # 10 calls of 10 ms; a wrong rejoin wait would cost 0.5 s each
