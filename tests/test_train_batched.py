"""A stage-2 step's rows unrolled together (one backbone call per agent turn) give the losses, the outer-link
gradients and the per-round hand-off gradient norms of the same rows one by one, on two backbone families."""

from __future__ import annotations

import copy

import pytest
import torch

from recursivemas.config import Topology
from recursivemas.runtime import build_links
from recursivemas.train.config import OuterStageConfig
from recursivemas.train.data import Row
from recursivemas.train.loop import train_outer, unroll_rows
from recursivemas.train.outer import UnrollRow, handoff_keys, outer_parameters, unroll_losses, used_edges
from recursivemas.train.setup import Setup
from test_fields import pair
from tiny import tiny_engine

ROWS = [  # questions and targets of different lengths, so the batch is left-padded
    UnrollRow("What is 6*7?", "42", role_texts={"planner": "multiply", "critic": "6*7=42"}),
    UnrollRow("Add three and four, then double the sum. What do you get?", "14",
              role_texts={"planner": "add, then double the sum", "critic": "3+4=7, 7*2=14"}),
    UnrollRow("1+1?", "The answer is 2.", role_texts={"planner": "count", "critic": "1+1=2"}),
]


def setup(rounds=2):
    topology = Topology.model_validate({
        "backbones": {"a": {"model": "tiny-llama"}, "b": {"model": "tiny-qwen2"}},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "critic", "backbone": "b"},
                   {"name": "solver", "backbone": "a"}],
        "pattern": "sequential", "rounds": rounds, "latent_steps": 3,
    })
    engines = {"a": tiny_engine("llama", seed=11), "b": tiny_engine("qwen2", chat=False, seed=12)}
    links = build_links(topology, engines)
    with torch.no_grad():  # off the zero init: every path through the links carries a gradient
        for param in links.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return topology, engines, links


def run(topology, engines, links, groups, **kw):
    """Per-row losses and the outer links' gradients of their sum, unrolling ``groups`` of rows one after another."""
    params = outer_parameters(links, topology)
    for p in params:
        p.grad = None
    handoffs = dict.fromkeys(handoff_keys(topology), 0.0)
    losses = torch.cat([unroll_losses(topology, engines, links, group, handoff_grads=handoffs, **kw)
                        for group in groups])
    losses.sum().backward()
    return losses.detach(), [p.grad.clone() for p in params], handoffs


@pytest.mark.parametrize("forcing,gradient", [("rollout", "truncated"), ("rollout", "full"),
                                              ("role_text", "truncated")])
def test_batched_rows_match_rows_one_by_one(forcing, gradient):
    topology, engines, links = setup()
    kw = dict(aux_weight=0.3, forcing=forcing, gradient=gradient, max_latent_tokens=6)
    one_by_one = run(topology, engines, links, [[row] for row in ROWS], **kw)
    batched = run(topology, engines, links, [ROWS], **kw)
    torch.testing.assert_close(batched[0], one_by_one[0], atol=1e-5, rtol=1e-5)
    for together, alone in zip(batched[1], one_by_one[1]):
        assert alone.abs().max() > 0
        torch.testing.assert_close(together, alone, atol=1e-5 * alone.abs().max().item(), rtol=1e-4)
    assert set(batched[2]) == set(one_by_one[2]) == {
        ("planner", "critic", 1), ("critic", "solver", 1), ("solver", "planner", 1),
        ("planner", "critic", 2), ("critic", "solver", 2)}
    for key, alone in one_by_one[2].items():
        assert alone > 0, key
        assert batched[2][key] == pytest.approx(alone, rel=1e-4), key


def test_aux_weight_adds_each_rows_earlier_rounds():
    topology, engines, links = setup()
    with torch.no_grad():
        plain = unroll_losses(topology, engines, links, ROWS)
        with_aux = unroll_losses(topology, engines, links, ROWS, aux_weight=0.5)
    assert plain.shape == with_aux.shape == (len(ROWS),)
    assert (with_aux > plain).all()


def test_a_batch_reads_each_rows_own_fields():
    engine = tiny_engine("llama", seed=5)
    topology = pair(rounds=2)
    links = build_links(topology, {"a": engine})
    rows = [UnrollRow("What is the code?", "4711", {"context": "The code is 4711."}),
            UnrollRow("Which colour?", "red", {"context": "The sky was red that evening, very red."}),
            UnrollRow("What is the code?", "4711", {"context": "nothing here"})]
    with torch.no_grad():
        batched = unroll_losses(topology, {"a": engine}, links, rows, aux_weight=0.2)
        alone = torch.cat([unroll_losses(topology, {"a": engine}, links, [row], aux_weight=0.2) for row in rows])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert batched[0] != pytest.approx(batched[2].item(), abs=1e-6)  # same question, another context


class Recorder:
    """Checkpoints that keep the metrics and write nothing."""

    def __init__(self):
        self.metrics: list[dict] = []

    def restore(self, links):
        return None

    def save(self, metrics, links, state, shards=None):
        self.metrics.append(metrics)


def test_the_training_log_carries_gradient_norms_per_link_and_round():
    topology, engines, links = setup()
    rows = [Row(question=r.question, answer=r.answer) for r in ROWS[:2]]
    data = Setup(topology, rows, {"solver": "answer"}, engines, links)
    expected = copy.deepcopy(links)  # the gradient of the first step, computed alongside
    _, grads, handoffs = run(topology, engines, expected, [unroll_rows(data, rows)])
    checkpoints = Recorder()
    cfg = OuterStageConfig(steps=1, batch_size=2, checkpoint_every=1)
    train_outer(data, cfg, progress=False, checkpoints=checkpoints)
    (step,) = checkpoints.metrics[0]["steps"]
    params = iter(grads)
    for src, dst in used_edges(topology):
        link = [next(params) for _ in expected.outer_link(src, dst).parameters()]
        norm = torch.cat([g.flatten() for g in link]).norm().item() / cfg.batch_size  # the step's mean loss
        assert step[f"grad_norm/{src}->{dst}"] == pytest.approx(norm, rel=1e-4)
    for (src, dst, round_), squared in handoffs.items():
        assert step[f"grad_norm/{src}->{dst}/r{round_}"] == pytest.approx(squared**0.5 / cfg.batch_size, rel=1e-4)
