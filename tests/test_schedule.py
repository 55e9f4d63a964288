"""One schedule: inference (the executor) and training (stage 2's unroll) walk the plan's turns in the same order,
with the same hand-off targets, for every pattern and round count."""

from __future__ import annotations

import pytest
import torch

from recursivemas.runtime import Executor, Plan, RunOptions, build_links
from recursivemas.runtime.backend import LocalBackend
from recursivemas.runtime.host import BackboneHost
from recursivemas.train.outer import unroll_loss
from recursivemas.train.parallel import Wire
from test_executor import PATTERN_AGENTS, make_topology
from tiny import tiny_engine


class RecordingBackend(LocalBackend):
    def __init__(self, engine, links, seen):
        super().__init__(BackboneHost(engine), links)
        self.seen = seen

    def think(self, call):
        self.seen.extend((agent, tuple(dsts)) for agent, dsts in zip(call.agents, call.targets))
        return super().think(call)


class RecordingWire(Wire):
    """Hears every turn (``here``) and every hand-off (``carry``) of an unrolled row."""

    def __init__(self):
        super().__init__()
        self.turns: list[list] = []

    def here(self, agent):
        self.turns.append([agent, []])
        return True

    def carry(self, src, dst, make):
        assert self.turns[-1][0] == src
        self.turns[-1][1].append(dst)
        return make()


@pytest.fixture(scope="module")
def engines():
    return {"a": tiny_engine("llama"), "b": tiny_engine("qwen2", chat=False)}


@pytest.mark.parametrize("rounds", [1, 2, 3])
@pytest.mark.parametrize("pattern", sorted(PATTERN_AGENTS))
def test_inference_and_training_visit_the_same_turns(pattern, rounds, engines):
    topology = make_topology(pattern, rounds=rounds, steps=2, new_tokens=2)
    links = build_links(topology, engines)
    plan = Plan.from_topology(topology)
    levels = [[(t.round, t.agent, t.targets) for t in level] for level in plan.schedule(rounds)]
    expected = [turn for level in levels for turn in level]
    assert expected[-1] == (rounds, plan.decoder, ())  # the run ends with the decoder, handing nothing on

    thought: list = []
    backends = {name: RecordingBackend(engine, links, thought) for name, engine in engines.items()}
    heard = []
    Executor(topology, backends, links).run_batch(["q?"], RunOptions(mode="latent"), on_turn=heard.append)
    # a level's turns run at once (grouped by backbone), so within a level only the set is fixed
    inference, at = [], 0
    for level in levels:
        inference.append(sorted((u.round, u.agent) for u in heard[at : at + len(level)]))
        at += len(level)
    assert inference == [sorted((r, a) for r, a, _ in level) for level in levels]
    assert sorted(thought) == sorted((a, targets) for _, a, targets in expected[:-1])

    wire = RecordingWire()
    with torch.no_grad():
        unroll_loss(topology, engines, links, "q?", "42", wire=wire, latent_steps=2)
    assert [(a, tuple(dsts)) for a, dsts in wire.turns] == [(a, targets) for _, a, targets in expected]


def test_feedback_hand_offs_land_in_the_next_round():
    topology = make_topology("sequential", rounds=2)
    plan = Plan.from_topology(topology)
    first, second = plan.turn(1, 2, "solver"), plan.turn(2, 2, "solver")
    assert first.handoffs == (("planner", True),) and not first.decodes
    assert second.decodes and second.handoffs == ()
    assert plan.used_edges(1) == [("planner", "critic"), ("critic", "solver")]
    assert plan.used_edges(2)[-1] == ("solver", "planner")
