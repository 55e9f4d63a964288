"""Why an answer stopped reaches the caller from the engine, not a guess from token counts (issue 13).

The engine's ``eos`` and ``stop`` are OpenAI's ``stop``; an answer cut by the request's ``max_tokens``, by the
topology's default budget or by the context window is ``length``. Text-mode messages have a budget of their own.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recursivemas.config import Topology
from recursivemas.runtime import Executor, RunOptions, build_links
from tiny import tiny_engine

QUESTION = "What is 6*7?"


def biased(engine, eos_bias: float):
    """The engine with its head's end-of-turn logit shifted: +big ends every answer at once, -big never ends it."""
    old = engine.model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[sorted(engine.eos_ids)] = eos_bias
    engine.model.lm_head = head.requires_grad_(False)
    return engine


def system(engine, new_tokens: int = 6, agents=(("planner", "a"), ("solver", "a")), **generation) -> Executor:
    topology = Topology.model_validate({
        "name": "finish", "backbones": {"a": {"model": "tiny-llama"}}, "pattern": "sequential", "rounds": 2,
        "latent_steps": 2, "agents": [{"name": n, "backbone": b} for n, b in agents],
        "generation": {"max_new_tokens": new_tokens, **generation}})
    return Executor(topology, {"a": engine}, build_links(topology, {"a": engine}))


def answer(result):
    (turn,) = [u for u in result.usage if u.kind == "answer"]
    return turn


@pytest.mark.parametrize("mode", ["latent", "text", "single"])
def test_end_of_turn_is_stop(mode):
    result = system(biased(tiny_engine("llama"), 1e4)).run(QUESTION, RunOptions(mode=mode))
    assert (result.finish_reason, answer(result).finish_reason, result.text) == ("stop", "eos", "")


@pytest.mark.parametrize("mode", ["latent", "text", "single"])
def test_cut_by_the_requests_budget_or_the_topologys_default_is_length(mode):
    executor = system(biased(tiny_engine("llama"), -1e4), new_tokens=6)
    by_default = executor.run(QUESTION, RunOptions(mode=mode))  # no max_tokens in the request: the topology's 6
    assert (by_default.finish_reason, answer(by_default).finish_reason) == ("length", "length")
    assert answer(by_default).decoded_tokens == 6
    by_request = executor.run(QUESTION, RunOptions(mode=mode, generation={"max_new_tokens": 3}))
    assert (by_request.finish_reason, answer(by_request).decoded_tokens) == ("length", 3)


def test_cut_by_the_context_window_is_length():
    alone = system(biased(tiny_engine("llama"), -1e4), new_tokens=64).run(QUESTION, RunOptions(mode="single"))
    room = answer(alone).prompt_tokens + 4  # a context with room for 4 answer tokens, far under the budget of 64
    engine = biased(tiny_engine("llama", context=room), -1e4)
    result = system(engine, new_tokens=64).run(QUESTION, RunOptions(mode="single"))
    assert (result.finish_reason, answer(result).decoded_tokens) == ("length", 4)


def test_a_tool_loop_answer_reports_its_last_generations_reason():
    executor = system(biased(tiny_engine("llama"), 1e4))
    tooled = executor.topology.model_copy(update={"agents": [
        a.model_copy(update={"tools": True}) if a.name == "solver" else a for a in executor.topology.agents]})
    tooled_executor = Executor(tooled, {"a": executor.backends["a"].engine}, executor.links)
    result = tooled_executor.run(QUESTION, RunOptions(mode="single"))
    assert (result.finish_reason, answer(result).finish_reason, answer(result).tool_calls) == ("stop", "eos", 0)


def test_text_messages_have_their_own_budget():
    executor = system(biased(tiny_engine("llama"), -1e4), new_tokens=6, message_max_new_tokens=2)
    result = executor.run(QUESTION, RunOptions(mode="text"))
    messages = [u for u in result.usage if u.kind == "text"]
    assert messages and all(u.decoded_tokens == 2 and u.finish_reason == "length" for u in messages)
    assert answer(result).decoded_tokens == 6
    default = system(biased(tiny_engine("llama"), -1e4), new_tokens=6).run(QUESTION, RunOptions(mode="text"))
    assert all(u.decoded_tokens == 6 for u in default.usage if u.kind == "text")  # unset: the answer's budget
    overridden = executor.run(QUESTION, RunOptions(mode="text", generation={"message_max_new_tokens": 3}))
    assert all(u.decoded_tokens == 3 for u in overridden.usage if u.kind == "text")


# --- decoding settings from the model, and the answer nudge (issue 14) -------------------------------------------


def test_sampling_from_the_model_fills_only_the_fields_left_unwritten():
    from transformers import GenerationConfig as HFGeneration

    from recursivemas.config import GenerationConfig
    from recursivemas.runtime.calls import GenerationOverrides

    sampling_model = HFGeneration(do_sample=True, temperature=0.6, top_p=0.95)
    answer, _ = GenerationOverrides().over(GenerationConfig.model_validate({"from_model": True}))
    assert set(answer.from_model) == {"temperature", "top_p"}
    got = answer.for_model(sampling_model)
    assert (got.temperature, got.top_p, got.from_model) == (0.6, 0.95, ())
    assert answer.for_model(HFGeneration(do_sample=False)).temperature == 0.0  # a greedy model stays greedy
    written, _ = GenerationOverrides().over(GenerationConfig.model_validate({"from_model": True, "top_p": 0.5}))
    assert written.for_model(sampling_model).top_p == 0.5  # written in the topology: it wins
    per_run, _ = GenerationOverrides(temperature=0.0).over(GenerationConfig.model_validate({"from_model": True}))
    assert per_run.for_model(sampling_model).temperature == 0.0  # and so does a request's own value
    off, _ = GenerationOverrides().over(GenerationConfig())
    assert off.for_model(sampling_model) == off  # from_model unset: the topology's settings only


def test_the_host_reads_its_own_backbones_generation_config():
    engine = biased(tiny_engine("llama"), -1e4)
    engine.model.generation_config.do_sample = True
    engine.model.generation_config.temperature = 0.7
    seen = []
    real = engine.generate

    def generate(prompts, sampling, alive=None):
        seen.append(sampling)
        return real(prompts, sampling, alive)

    engine.generate = generate
    system(engine, from_model=True).run(QUESTION, RunOptions(mode="single"))
    assert (seen[-1].temperature, seen[-1].top_p) == (0.7, 1.0)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_the_pattern_is_continued_once(stream):
    nudge = {"suffix": " So: \\boxed{", "max_new_tokens": 2}
    executor = system(biased(tiny_engine("llama"), -1e4), new_tokens=3, answer_nudge=nudge)
    pieces: list[str] = []
    result = executor.run(QUESTION, RunOptions(mode="latent"), on_delta=pieces.append if stream else None)
    turn = answer(result)
    assert turn.nudged and turn.decoded_tokens == 3 + 2 and " So: \\boxed{" in result.text
    assert (result.finish_reason, turn.finish_reason) == ("length", "length")  # the continuation's reason
    if stream:
        assert "".join(pieces) == result.text
    kept = system(biased(tiny_engine("llama"), -1e4), new_tokens=3, answer_nudge={"pattern": "."}).run(QUESTION)
    assert not answer(kept).nudged and answer(kept).decoded_tokens == 3  # the pattern is there: no nudge
