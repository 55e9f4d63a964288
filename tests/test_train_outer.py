"""Stage 2 (outer links) on tiny models: the loss reaches only outer links, through frozen backbones, and falls."""

from __future__ import annotations

import pytest
import torch

from recursivemas.config import Topology
from recursivemas.runtime import build_links
from recursivemas.train.outer import outer_parameters, unroll_loss, unroll_losses, used_edges
from tiny import tiny_engine

ROW = {"question": "What is 6*7?", "answer": "42", "plan": "multiply six by seven", "refined_plan": "6*7=42"}


def setup(rounds=2):
    topology = Topology.model_validate({
        "backbones": {"a": {"model": "tiny-llama"}, "b": {"model": "tiny-qwen2"}},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "critic", "backbone": "b"},
                   {"name": "solver", "backbone": "a"}],
        "pattern": "sequential", "rounds": rounds, "latent_steps": 4,
    })
    engines = {"a": tiny_engine("llama", seed=11), "b": tiny_engine("qwen2", chat=False, seed=12)}
    return topology, engines, build_links(topology, engines)


def loss_of(topology, engines, links, **kw):
    return unroll_loss(topology, engines, links, ROW["question"], ROW["answer"],
                       {"planner": ROW["plan"], "critic": ROW["refined_plan"]}, **kw)


def test_gradients_reach_every_outer_link_and_nothing_else():
    topology, engines, links = setup()
    before = {n: {k: v.clone() for k, v in e.model.state_dict().items()} for n, e in engines.items()}
    params = outer_parameters(links)
    loss_of(topology, engines, links).backward()
    for key, link in links.outer.items():  # planner->critic, critic->solver and the feedback solver->planner
        assert link.proj2.weight.grad is not None and link.proj2.weight.grad.abs().sum() > 0, key
    assert all(p.grad is None for p in links.inner.parameters())
    assert all(p.grad is None for e in engines.values() for p in e.model.parameters())
    torch.optim.AdamW(params, lr=1e-3).step()
    for name, engine in engines.items():
        assert all(torch.equal(before[name][k], v) for k, v in engine.model.state_dict().items())


def test_one_round_has_no_feedback_gradient():
    topology, engines, links = setup(rounds=1)
    outer_parameters(links)
    loss_of(topology, engines, links).backward()
    assert links.outer["solver->planner"].proj2.weight.grad is None  # feedback never used in a 1-round unroll
    assert links.outer["critic->solver"].proj2.weight.grad is not None


def test_aux_weight_adds_earlier_rounds():
    topology, engines, links = setup()
    plain = loss_of(topology, engines, links)
    with_aux = loss_of(topology, engines, links, aux_weight=0.1)
    assert with_aux > plain


def test_training_the_outer_links_lowers_the_answer_loss():
    # Random tiny backbones leave the latents little to say about "42": the loss falls, then plateaus. A clear
    # learning test on a task whose answer depends on the hand-offs belongs to the full stage-2 trainer.
    topology, engines, links = setup()
    optimizer = torch.optim.AdamW(outer_parameters(links), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = loss_of(topology, engines, links, max_latent_tokens=8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02, losses


def test_gradient_checkpointing_gives_the_same_gradients():
    """Recomputing each backbone call in backward changes memory, not the result."""
    grads = []
    for checkpointing in (False, True):
        topology, engines, links = setup()
        for engine in engines.values():
            engine.gradient_checkpointing = checkpointing
        params = outer_parameters(links)
        loss_of(topology, engines, links).backward()
        grads.append([p.grad.clone() for p in params])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


def test_used_edges_follow_the_rounds():
    topology, _, _ = setup(rounds=1)
    assert used_edges(topology) == [("planner", "critic"), ("critic", "solver")]
    topology, _, _ = setup(rounds=2)
    assert used_edges(topology) == [("planner", "critic"), ("critic", "solver"), ("solver", "planner")]


# --- rollout forcing: the states a real rollout hands on, with gradients ------------------------------------------

def _rollout_case(family="llama", steps=5):
    from recursivemas.engine import Prompt
    from recursivemas.links import InnerLink

    engine = tiny_engine(family, seed=3)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    with torch.no_grad():
        link.proj2.weight.normal_(0, 0.05)  # not the identity-like init: the fed-back path matters
    latent = (torch.randn(3, engine.hidden_size) * 0.02).requires_grad_(True)
    return engine, link, latent, Prompt(["Question: 3+4?", latent, " think"]), steps


def _recompute_loop(engine, link, prompt, steps):
    """The rollout by definition, no KV cache: h_{t+1} = last state of decoder([prompt; R(h_1) .. R(h_t)])."""
    embeds = engine.embed(prompt, steps).embeds
    states = []
    for _ in range(steps):
        hidden = engine.decoder(inputs_embeds=embeds.unsqueeze(0), use_cache=False).last_hidden_state[0, -1]
        states.append(hidden)
        embeds = torch.cat([embeds, link(hidden).unsqueeze(0)])
    return torch.stack(states)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_truncated_latent_states_reproduce_the_rollout(family):
    engine, link, _, prompt, steps = _rollout_case(family)
    (rollout,) = engine.rollout([prompt], steps, link)
    for gradient in ("truncated", "full"):
        (states,) = engine.latent_states([prompt], steps, link, gradient)
        assert states.shape == rollout.states.shape
        assert (states - rollout.states).abs().max() < 1e-4, gradient


def test_full_gradients_match_autograd_through_a_recompute_loop():
    engine, link, latent, prompt, steps = _rollout_case()
    weights = torch.randn(steps, engine.hidden_size)
    (states,) = engine.latent_states([prompt], steps, link, "full")
    (full,) = torch.autograd.grad((states * weights).sum(), latent)
    (loop,) = torch.autograd.grad((_recompute_loop(engine, link, prompt, steps) * weights).sum(), latent)
    assert torch.allclose(full, loop, atol=1e-5, rtol=1e-4), (full - loop).abs().max()
    (states,) = engine.latent_states([prompt], steps, link, "truncated")
    (truncated,) = torch.autograd.grad((states * weights).sum(), latent)
    cosine = torch.nn.functional.cosine_similarity(truncated.flatten(), full.flatten(), dim=0).item()
    print(f"cosine(truncated, full) gradient on the prompt's latent slot: {cosine:.3f}")
    assert 0.3 < cosine < 1.0 - 1e-6  # the same direction, roughly, but not the same gradient: paths are cut


@pytest.mark.parametrize("gradient", ["truncated", "full"])
def test_rollout_forcing_trains_every_used_outer_link_without_role_texts(gradient):
    topology, engines, links = setup(rounds=2)
    outer_parameters(links)
    unroll_loss(topology, engines, links, ROW["question"], ROW["answer"], forcing="rollout",
                gradient=gradient).backward()
    for key, link in links.outer.items():
        assert link.proj2.weight.grad is not None and link.proj2.weight.grad.abs().sum() > 0, key
    assert all(p.grad is None for p in links.inner.parameters())


def test_rollout_forcing_ignores_upstream_text_and_role_text_needs_it():
    topology, engines, links = setup()
    with torch.no_grad():
        one = unroll_loss(topology, engines, links, ROW["question"], ROW["answer"], {"planner": "42", "critic": "42"})
        other = unroll_loss(topology, engines, links, ROW["question"], ROW["answer"], {"planner": "7", "critic": "7"})
        assert torch.equal(one, other)  # the hand-offs come from rollouts, whatever the rows' role fields say
        leaky = unroll_loss(topology, engines, links, ROW["question"], ROW["answer"], {"planner": "42", "critic": "42"},
                            forcing="role_text")
    assert not torch.equal(one, leaky)
    with pytest.raises(ValueError, match="role_texts"):
        unroll_loss(topology, engines, links, ROW["question"], ROW["answer"], forcing="role_text")


def test_the_relay_loss_teaches_the_first_hop_from_its_receiver():
    """relay_weight adds each receiving upstream agent's loss on its own target (the critic's, given the planner's
    hand-off): the total grows by exactly that, and the first hop's gradient holds that loss's direct share."""
    from recursivemas.train.outer import UnrollRow, answer_loss
    from recursivemas.runtime.executor import fill_prompt, framing_of

    topology, engines, links = setup(rounds=1)
    row = UnrollRow(ROW["question"], ROW["answer"], None, {"planner": ROW["plan"], "critic": ROW["refined_plan"]})
    outer_parameters(links)
    plain = unroll_losses(topology, engines, links, [row])[0]
    relayed = unroll_losses(topology, engines, links, [row], relay_weight=0.5)[0]
    planner = engines["a"].latent_states([fill_prompt(topology.template("planner", 1), row.question, {}, {}, round=1,
                                                      framing=framing_of(topology, "planner"))],
                                         topology.latent_steps, links.inner_link("planner"))[0]
    critic_prompt = fill_prompt(topology.template("critic", 1), row.question,
                                {"planner": links.handoff(planner.float(), "planner", "critic", topology.handoff)},
                                {}, round=1, framing=framing_of(topology, "critic"))
    critic_loss = answer_loss(engines["b"], critic_prompt, ROW["refined_plan"])
    torch.testing.assert_close(relayed - plain, 0.5 * critic_loss, atol=1e-5, rtol=1e-4)
    first_hop = links.outer["planner->critic"].proj2.weight
    (relayed - plain).backward()
    assert first_hop.grad is not None and first_hop.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="relay_weight needs role_texts"):
        unroll_losses(topology, engines, links, [UnrollRow(ROW["question"], ROW["answer"])], relay_weight=0.5)
