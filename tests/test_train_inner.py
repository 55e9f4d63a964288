"""Stage 1 (inner links) on tiny models: only the link learns, the backbone stays bit-identical, the loss falls."""

from __future__ import annotations

import torch

from recursivemas.links import InnerLink
from recursivemas.prompts import ROLE_PROMPTS
from recursivemas.train.inner import InnerExample, agent_prompt, inner_loss, train_inner
from tiny import tiny_engine

TARGETS = ["First add 24 and 18, then subtract 30.", "Multiply 3 by 12 and take away 7.",
           "Distance is speed times time.", "Take 15 percent of 240."]


def examples():
    return [InnerExample(agent_prompt(ROLE_PROMPTS["planner"], f"Question {i}?"), t) for i, t in enumerate(TARGETS)]


def test_gradients_reach_only_the_link_and_the_backbone_is_untouched():
    engine = tiny_engine("qwen2", chat=False, seed=5)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    loss = inner_loss(engine, link, examples()[:2])
    loss.backward()
    assert all(p.grad is not None for n, p in link.named_parameters() if not n.startswith("proj1"))
    assert all(p.grad is None for p in engine.model.parameters())
    train_inner(engine, link, examples(), steps=3)
    after = engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_matches_its_definition():
    engine = tiny_engine("llama", seed=6)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    batch = examples()[:1]
    forced = engine.forward_states([batch[0].prompt], [batch[0].target])[0]
    with torch.no_grad():
        expected = (1 - torch.nn.functional.cosine_similarity(
            link(forced.states), engine.embedding(forced.target_ids), dim=-1)).mean()
        got = inner_loss(engine, link, batch)
    torch.testing.assert_close(got, expected)


def test_training_lowers_the_loss():
    engine = tiny_engine("llama", seed=7)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    losses = train_inner(engine, link, examples(), steps=40, lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
