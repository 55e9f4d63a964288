"""Cooperative stopping: a cancelled or past-due question leaves its batch between turns and between decode steps,
and the other questions of the batch get exactly the answers they get without it."""

from __future__ import annotations

import time

import pytest

from recursivemas.config import Topology
from recursivemas.engine import Prompt
from recursivemas.runtime import Executor, RunOptions, build_links
from recursivemas.engine.sampling import Sampling
from recursivemas.runtime.calls import GenerateCall, RowStop
from recursivemas.runtime.host import BackboneHost
from recursivemas.runtime.stopping import RunStop
from tiny import tiny_engine

QUESTIONS = ["What is 2+2?", "Name a colour.", "What is 7*6?"]


def test_a_row_whose_check_says_no_ends_cancelled_and_the_others_decode_on(engines):
    engine = engines("llama")
    prompts = [Prompt([q]) for q in QUESTIONS]
    reference = engine.generate(prompts, Sampling(max_new_tokens=12))
    calls = {"n": 0}

    def until_three():
        calls["n"] += 1
        return calls["n"] <= 3

    out = engine.generate(prompts, Sampling(max_new_tokens=12), alive=[None, until_three, None])
    assert out[1].finish_reason == "cancelled" and len(out[1].token_ids) == 3
    assert out[1].token_ids == reference[1].token_ids[:3]
    assert [out[0].token_ids, out[2].token_ids] == [reference[0].token_ids, reference[2].token_ids]


def test_the_host_ends_rows_by_tag_and_by_deadline():
    host = BackboneHost(tiny_engine("llama"), max_batch=8)
    prompts = tuple(Prompt([q]) for q in QUESTIONS)
    sampling = Sampling(max_new_tokens=8)
    reference = host.generate(GenerateCall(prompts, sampling))
    host.cancel(["gone"])
    out = host.generate(GenerateCall(prompts, sampling, stops=(
        RowStop("gone"), RowStop("late", deadline=time.time() - 1), RowStop("fine", deadline=time.time() + 600))))
    assert [g.finish_reason for g in out[:2]] == ["cancelled", "cancelled"] and not out[0].token_ids
    assert out[2].token_ids == reference[2].token_ids
    with pytest.raises(ValueError, match="2 stops for 3 prompts"):
        GenerateCall(prompts, sampling, stops=(None, None))


@pytest.fixture
def system():
    engine = tiny_engine("llama")
    topology = Topology.model_validate({
        "name": "stops", "backbones": {"a": {"model": "tiny"}}, "pattern": "sequential", "rounds": 2,
        "latent_steps": 2, "generation": {"max_new_tokens": 10},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "a"}]})
    return Executor(topology, {"a": engine}, build_links(topology, {"a": engine})), engine


@pytest.mark.parametrize("mode", ["latent", "text"])
def test_a_stopped_question_takes_no_more_turns_and_its_batch_mates_are_undisturbed(system, mode):
    executor, _ = system
    reference = executor.run_batch(QUESTIONS, RunOptions(mode=mode))
    gone, late = RunStop(), RunStop(deadline=time.time() - 1)
    gone.cancel()
    out = executor.run_batch(QUESTIONS, RunOptions(mode=mode), stops=[gone, None, late])
    assert (out[0].stopped, out[2].stopped, out[1].stopped) == ("cancelled", "deadline", None)
    assert out[0].usage == [] and out[0].text == ""
    assert out[1].text == reference[1].text and len(out[1].usage) == len(reference[1].usage)


def test_a_cancel_during_decoding_ends_that_row_at_the_next_step(system):
    executor, engine = system
    reference = executor.run_batch(QUESTIONS)
    stop = RunStop()
    decode = engine._decode

    def cancelling(*args, **kwargs):  # the caller leaves after the answer's third token
        for step, out in enumerate(decode(*args, **kwargs)):
            if step == 2:
                executor.cancel(stop)
            yield out

    engine._decode = cancelling
    out = executor.run_batch(QUESTIONS, stops=[None, stop, None])
    answer = out[1].usage[-1]
    assert out[1].stopped == "cancelled" and answer.kind == "answer" and answer.finish_reason == "cancelled"
    assert answer.decoded_tokens == 3 and reference[1].text.startswith(out[1].text)
    assert [out[0].text, out[2].text] == [reference[0].text, reference[2].text]
