"""Stage 1 (inner links) on tiny models: only the link learns, the backbone stays bit-identical, the loss falls."""

from __future__ import annotations

import pytest
import torch

from recursivemas.links import InnerLink
from recursivemas.prompts import ROLE_PROMPTS
from recursivemas.train.inner import (
    VOCAB_TEMPERATURE, InnerExample, agent_prompt, inner_loss, rollout_pairs, token_loss, train_inner,
)
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


def test_vocab_loss_is_the_cosine_plus_a_cross_entropy_over_the_vocabulary():
    engine = tiny_engine("llama", seed=8)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    batch = examples()[:2]
    with torch.no_grad():
        cosine = inner_loss(engine, link, batch, "cosine")
        vocab = inner_loss(engine, link, batch, "vocab")
        forced = engine.forward_states([e.prompt for e in batch], [e.target for e in batch])
        mapped = link(torch.cat([f.states for f in forced]))
        table = torch.nn.functional.normalize(engine.embedding.weight, dim=-1)
        logits = torch.nn.functional.normalize(mapped, dim=-1) @ table.T / VOCAB_TEMPERATURE
        expected = torch.nn.functional.cross_entropy(logits, torch.cat([f.target_ids for f in forced])) + cosine
    torch.testing.assert_close(vocab, expected)
    with pytest.raises(ValueError, match="inner.loss: 'mse'"):
        inner_loss(engine, link, batch, "mse")


def test_rollout_pairs_are_the_links_own_rollout_states_against_the_target_tokens():
    engine = tiny_engine("llama", seed=9)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    batch = examples()[:3]
    states, ids = rollout_pairs(engine, link, batch, steps=5, batch_size=2)
    wanted = [engine.tokenizer(e.target, add_special_tokens=False)["input_ids"][:5] for e in batch]
    assert ids.tolist() == [t for w in wanted for t in w]
    rolled = engine.rollout([batch[2].prompt], 5, link)[0].states.float()
    torch.testing.assert_close(states[-len(wanted[2]):], rolled[:len(wanted[2])])


def test_rollout_rounds_train_on_the_rollout_and_lower_its_loss():
    engine = tiny_engine("llama", seed=10)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    pairs = examples()

    def rollout_loss() -> float:
        with torch.no_grad():
            states, ids = rollout_pairs(engine, link, pairs, steps=6)
            return token_loss(engine, link(states), ids, "vocab").item()

    before = rollout_loss()
    losses = train_inner(engine, link, pairs, steps=15, lr=3e-3, loss="vocab", rollout_rounds=2, rollout_steps=6)
    assert len(losses) == 15 * 3  # teacher-forced steps, then the same number after each rollout round
    assert rollout_loss() < 0.8 * before, (before, rollout_loss())
    assert not link.training
