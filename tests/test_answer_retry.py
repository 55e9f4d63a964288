"""Faithfulness to the authors' released code (issue 24, items 4 and 5).

- ``generation.answer_nudge.style: authors`` sends the authors' answer retry: a fresh plain-text prompt
  ``answer.rstrip() + "\\nFinal Answer: \\boxed{"``, no chat template, no question, no latents, 16 new tokens with
  the answer's sampling (their release runner passes its own ``do_sample``/temperature/top_p to the retry), all
  retried answers in one call; ``style: continue`` (the default) still goes on in the answer's own chat turn.
- ``generation.stop_tokens: tokenizer`` stops only at the tokenizer's ``eos_token_id``, as the authors'
  ``generate(eos_token_id=tokenizer.eos_token_id)``; ``generation_config`` (the default) at every end token.
- The built-in released topologies use both, and say "This is round 2." in every later round, as the authors do.
- Setting up prints no warning a user cannot act on (DeepSpeed's "Setting accelerator to CPU" notice).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import processors
from torch import nn

from recursivemas.config import ConfigError, GenerationConfig, Topology, load_topology
from recursivemas.engine import Framing, Prompt, Sampling
from recursivemas.engine.sampling import DEFAULT_SAMPLING
from recursivemas.runtime import Executor, RunOptions, build_links
from recursivemas.runtime.calls import GenerationOverrides
from recursivemas.runtime.executor import _HeldSpace
from test_engine import ScriptedLM
from tiny import tiny_engine

QUESTION = "What is 6*7?"
AUTHORS_SUFFIX = "\nFinal Answer: \\boxed{"
CONTINUE_SUFFIX = "\n\nThe final answer, in \\boxed{}, is: \\boxed{"
RELEASED = ["sequential-light", "sequential-scaled", "mixture", "distillation", "deliberation"]


# --- helpers ---------------------------------------------------------------------------------------------------------
def never_ends(engine):
    """The engine with every end token's logit pushed down: answers run to their budget (and lack ``\\boxed{``)."""
    old = engine.model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[sorted(engine.eos_ids)] = -1e4
    engine.model.lm_head = head.requires_grad_(False)
    return engine


def recording(engine):
    """Record every decode call the engine receives: its prompts, sampling, the token ids it embeds, its output."""
    calls: list[SimpleNamespace] = []
    generate, stream, embed = engine.generate, engine.stream_generation, engine.embed

    def record_embed(prompt, *args, **kwargs):
        item = embed(prompt, *args, **kwargs)
        if calls and calls[-1].decoding:
            calls[-1].ids.append(item.token_ids)
        return item

    def record_generate(prompts, sampling=DEFAULT_SAMPLING, alive=None):
        calls.append(SimpleNamespace(prompts=list(prompts), sampling=sampling, ids=[], decoding=True))
        out = generate(prompts, sampling, alive)
        calls[-1].decoding, calls[-1].out = False, out
        return out

    def record_stream(prompt, sampling=DEFAULT_SAMPLING, alive=None):
        calls.append(SimpleNamespace(prompts=[prompt], sampling=sampling, ids=[], decoding=True))
        for piece in stream(prompt, sampling, alive):
            if not isinstance(piece, str):
                calls[-1].decoding, calls[-1].out = False, [piece]
            yield piece

    engine.generate, engine.stream_generation, engine.embed = record_generate, record_stream, record_embed
    return calls


def system(engine, new_tokens: int = 3, **generation) -> Executor:
    topology = Topology.model_validate({
        "name": "retry", "backbones": {"a": {"model": "tiny-llama"}}, "pattern": "sequential", "rounds": 2,
        "latent_steps": 2, "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "a"}],
        "generation": {"max_new_tokens": new_tokens, **generation}})
    return Executor(topology, {"a": engine}, build_links(topology, {"a": engine}))


def answer_turn(result):
    (turn,) = [u for u in result.usage if u.kind == "answer"]
    return turn


# --- the authors' retry ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["single", "latent", "text"])
def test_the_authors_retry_sends_the_answer_and_suffix_alone_as_plain_text(mode):
    engine = never_ends(tiny_engine("llama"))
    calls = recording(engine)
    result = system(engine, answer_nudge={"style": "authors"}).run(QUESTION, RunOptions(mode=mode))
    answer_call, retry = calls[-2], calls[-1]
    (first,) = answer_call.out
    head = first.text.rstrip() + AUTHORS_SUFFIX
    (prompt,) = retry.prompts
    assert prompt.segments == [head] and prompt.response_prefix == "" and prompt.framing == Framing(raw=True)
    tokenizer = engine.tokenizer
    (ids,) = retry.ids
    assert ids == tokenizer(head)["input_ids"], "the retry's ids are the plain text's, as tokenizer(prompt) gives"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in ids  # no chat template around it
    assert QUESTION not in tokenizer.decode(ids) and "helpful" not in tokenizer.decode(ids)
    assert (retry.sampling.max_new_tokens, retry.sampling.temperature) == (16, 0.0)  # a greedy run: greedy
    turn = answer_turn(result)
    (again,) = retry.out
    assert turn.nudged and result.text == head + again.text
    assert turn.decoded_tokens == 3 + 16 and len(again.token_ids) == 16
    assert turn.prompt_tokens == len(answer_call.ids[0])  # the answer's own prompt, not the retry's


def test_the_retry_decodes_with_the_answers_sampling_as_the_authors_runner_does():
    """Their ``run.py`` always passes ``--do_sample`` and hands the run's temperature and top_p to the retry."""
    engine = never_ends(tiny_engine("llama"))
    calls = recording(engine)
    executor = system(engine, answer_nudge={"style": "authors"}, stop_tokens="tokenizer")
    executor.run(QUESTION, RunOptions(mode="single", generation={"temperature": 0.6, "top_p": 0.95, "seed": 3}))
    answer_sampling, retry_sampling = calls[-2].sampling, calls[-1].sampling
    assert retry_sampling == replace(answer_sampling, max_new_tokens=16)
    assert (retry_sampling.temperature, retry_sampling.top_p, retry_sampling.stop_tokens) == (0.6, 0.95, "tokenizer")


def test_every_answer_a_call_retries_goes_in_one_batched_call():
    engine = never_ends(tiny_engine("llama"))
    calls = recording(engine)
    questions = [QUESTION, "Name a colour.", "What is 2+2?"]
    results = system(engine, answer_nudge={"style": "authors"}).run_batch(questions, RunOptions(mode="single"))
    answers, retry = calls[-2], calls[-1]
    assert len(calls) == 2 and len(retry.prompts) == 3  # one call for the answers, one for all three retries
    assert [p.segments for p in retry.prompts] == [[g.text.rstrip() + AUTHORS_SUFFIX] for g in answers.out]
    assert all(p.framing.raw for p in retry.prompts)
    assert [r.text for r in results] == [a.text.rstrip() + AUTHORS_SUFFIX + g.text
                                         for a, g in zip(answers.out, retry.out)]


def test_an_answer_with_the_pattern_is_not_retried():
    engine = never_ends(tiny_engine("llama"))
    calls = recording(engine)
    result = system(engine, answer_nudge={"style": "authors", "pattern": "."}).run(QUESTION, RunOptions(mode="single"))
    assert len(calls) == 1 and not answer_turn(result).nudged


def test_the_continue_style_still_goes_on_in_the_answers_own_turn():
    engine = never_ends(tiny_engine("llama"))
    calls = recording(engine)
    result = system(engine, answer_nudge={}).run(QUESTION, RunOptions(mode="single"))
    answer_call, retry = calls[-2], calls[-1]
    (first,) = answer_call.out
    (prompt,) = retry.prompts
    assert prompt == replace(answer_call.prompts[0], response_prefix=first.text + CONTINUE_SUFFIX)
    assert not prompt.framing.raw and retry.sampling.max_new_tokens == 32
    assert retry.ids[0][: len(answer_call.ids[0])] == answer_call.ids[0]  # the question's chat turn, continued
    assert result.text == first.text + CONTINUE_SUFFIX + retry.out[0].text and answer_turn(result).nudged


@pytest.mark.parametrize("style", ["authors", "continue"])
def test_a_streamed_retried_answer_joins_to_the_answers_text(style):
    engine = never_ends(tiny_engine("llama"))
    pieces: list[str] = []
    result = system(engine, answer_nudge={"style": style}).run(QUESTION, RunOptions(mode="latent"),
                                                               on_delta=pieces.append)
    assert answer_turn(result).nudged and "".join(pieces) == result.text
    suffix = AUTHORS_SUFFIX if style == "authors" else CONTINUE_SUFFIX
    assert suffix in result.text


def test_held_space_drops_only_the_whitespace_the_retry_strips():
    out: list[str] = []
    held = _HeldSpace(out.append)
    for piece in ["The answer", " is 42", ".\n", "  \n"]:
        held(piece)
    assert "".join(out) == "The answer is 42."
    held.drop()("\nFinal Answer: \\boxed{")
    assert "".join(out) == "The answer is 42.\nFinal Answer: \\boxed{"
    kept: list[str] = []
    untouched = _HeldSpace(kept.append)
    for piece in ["a ", " ", "b\n"]:
        untouched(piece)
    untouched.flush()  # no retry: every character is passed on
    assert "".join(kept) == "a  b\n"


def test_a_raw_prompt_gets_only_the_bos_a_tokenizer_adds_to_plain_text():
    engine = tiny_engine("llama")
    text = "42 is it\nFinal Answer: \\boxed{"
    assert engine.embed(Prompt([text], framing=Framing(raw=True))).token_ids == engine.tokenizer(text)["input_ids"]
    engine.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)])  # a Llama-style tokenizer: BOS on every plain string
    raw = engine.embed(Prompt([text], framing=Framing("ignored system", raw=True))).token_ids
    assert raw == [1, *engine.tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert raw == engine.tokenizer(text)["input_ids"]  # what the authors' tokenizer(prompts) call gives
    chat = engine.embed(Prompt([text])).token_ids
    assert chat.count(1) == 0  # a chat prompt's pieces get no special tokens of the tokenizer's own


def test_a_tool_loop_answer_is_retried_too():
    engine = never_ends(tiny_engine("llama"))
    executor = system(engine, answer_nudge={"style": "authors"})
    tooled = executor.topology.model_copy(update={"agents": [
        a.model_copy(update={"tools": True}) if a.name == "solver" else a for a in executor.topology.agents]})
    calls = recording(engine)
    result = Executor(tooled, {"a": engine}, executor.links).run(QUESTION, RunOptions(mode="single"))
    assert answer_turn(result).nudged and calls[-1].prompts[0].framing.raw
    assert AUTHORS_SUFFIX in result.text


# --- which end tokens stop a decode ----------------------------------------------------------------------------------
def scripted(script_of):
    engine = tiny_engine("llama")
    # <eos> is the model's end token here; a real tokenizer marks such a token special (Qwen's <|endoftext|>)
    engine.tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<eos>"]})
    ids = lambda text: engine.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine.model = ScriptedLM(script_of(ids, engine), engine.embedding.num_embeddings, ids(".")[0])
    return engine, ids


def test_stop_tokens_choose_which_end_tokens_end_a_decode():
    engine = tiny_engine("llama")
    model_end, tokenizer_end = 2, engine.tokenizer.eos_token_id  # <eos> in generation_config, <|im_end|>
    assert tokenizer_end == 4 and engine.eos_ids == {model_end, tokenizer_end}
    assert engine.stop_ids("generation_config") == {2, 4} and engine.stop_ids("tokenizer") == {4}
    with pytest.raises(ValueError, match="stop_tokens: 'tokenize' is not one of"):
        engine.stop_ids("tokenize")

    engine, ids = scripted(lambda ids, e: [*ids("ab"), model_end, *ids("cd"), tokenizer_end])
    (every,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=20))
    assert (every.finish_reason, every.text, every.token_ids) == ("eos", "ab", ids("ab"))
    (own,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=20, stop_tokens="tokenizer"))
    assert (own.finish_reason, own.text) == ("eos", "abcd")  # past the model's <eos>, to the tokenizer's own
    assert own.token_ids == [*ids("ab"), model_end, *ids("cd")]
    *deltas, streamed = engine.stream_generation(Prompt(["q"]), Sampling(max_new_tokens=20, stop_tokens="tokenizer"))
    assert "".join(deltas) == streamed.text == "abcd" and streamed.token_ids == own.token_ids


def test_a_tokenizer_without_an_end_token_stops_at_every_end_token():
    engine = tiny_engine("llama")
    engine.tokenizer.eos_token = None
    assert engine.stop_ids("tokenizer") == engine.stop_ids("generation_config") == frozenset(engine.eos_ids)


def test_the_topologys_stop_tokens_reach_every_decode():
    answer, message = GenerationOverrides().over(GenerationConfig(stop_tokens="tokenizer", message_max_new_tokens=2))
    assert answer.stop_tokens == message.stop_tokens == "tokenizer"
    assert GenerationOverrides().over(GenerationConfig())[0].stop_tokens == "generation_config"
    engine = tiny_engine("llama")
    calls = recording(engine)
    system(engine, stop_tokens="tokenizer").run(QUESTION, RunOptions(mode="text"))
    assert calls and all(c.sampling.stop_tokens == "tokenizer" for c in calls)


@pytest.mark.parametrize("generation, field, value", [
    ({"stop_tokens": "tokenize"}, "generation.stop_tokens", "'tokenize'"),
    ({"answer_nudge": {"style": "author"}}, "generation.answer_nudge.style", "'author'"),
    ({"answer_nudge": {"max_new_tokens": 0}}, "generation.answer_nudge.max_new_tokens", "0"),
])
def test_a_bad_setting_is_refused_naming_the_field_and_the_value(tmp_path, generation, field, value):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"backbones": {"a": {"model": "x"}}, "pattern": "sequential",
                                    "agents": [{"name": "p", "backbone": "a"}, {"name": "s", "backbone": "a"}],
                                    "generation": generation}))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    (line,) = str(info.value).splitlines()[1:]
    assert line.startswith(f"  - {field}: ") and f"(got {value})" in line, line


def test_nudge_defaults_follow_the_style_and_written_fields_win():
    nudge = GenerationConfig.model_validate({"answer_nudge": {}}).answer_nudge
    assert (nudge.style, nudge.suffix, nudge.max_new_tokens) == ("continue", CONTINUE_SUFFIX, 32)
    nudge = GenerationConfig.model_validate({"answer_nudge": {"style": "authors"}}).answer_nudge
    assert (nudge.suffix, nudge.max_new_tokens) == (AUTHORS_SUFFIX, 16)
    nudge = GenerationConfig.model_validate({"answer_nudge": {"style": "authors", "suffix": "\nFinal Choice: "
                                                              "\\boxed{", "max_new_tokens": 4}}).answer_nudge
    assert (nudge.suffix, nudge.max_new_tokens) == ("\nFinal Choice: \\boxed{", 4)
    topology = load_topology("sequential-light")
    assert Topology.model_validate(topology.to_dict()).generation == topology.generation  # round-trips


# --- the built-in released systems -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RELEASED)
def test_the_released_built_ins_retry_and_stop_as_the_authors_do(name):
    topology = load_topology(name)
    generation = topology.generation
    assert generation.stop_tokens == "tokenizer"
    nudge = generation.answer_nudge
    assert (nudge.style, nudge.suffix, nudge.max_new_tokens) == ("authors", AUTHORS_SUFFIX, 16)
    for agent in topology.agents:
        for round_ in (2, 3, 4):  # the same later-round text every later round, never the round's number
            assert "{round}" not in topology.template(agent.name, round_)
            assert f"round {round_}" not in topology.template(agent.name, round_).lower() or round_ == 2
    if name.startswith("sequential"):
        assert "This is round 2." in topology.template("planner", 3)


def test_the_demo_keeps_the_defaults():
    generation = load_topology("sequential-demo").generation
    assert generation.stop_tokens == "generation_config" and generation.answer_nudge is None


# --- quiet setup -----------------------------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("recursivemas")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "recursivemas.cli"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("args", [
    ("models", "list"), ("run", "--help"),
    # a real pull: converts the model where it is not cached yet (the path that imported DeepSpeed), else a no-op
    pytest.param(("models", "pull", "smollm2-135m-instruct"), marks=pytest.mark.slow)],
    ids=["models-list", "run-help", "models-pull"])
def test_setup_commands_print_no_warning(args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert "warning" not in proc.stdout.lower(), proc.stdout  # DeepSpeed's logger writes to stdout


def test_deepspeeds_no_gpu_notice_is_dropped_and_its_other_messages_pass():
    """A first ``models pull`` saves the converted model; accelerate then imports DeepSpeed, whose accelerator
    auto-detection warns "Setting accelerator to CPU" on every machine without a GPU."""
    import recursivemas  # noqa: F401  installs the filter

    logger = logging.getLogger("DeepSpeed")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


def test_deepspeed_imported_after_recursivemas_prints_no_warning():
    code = ("import recursivemas\nfrom deepspeed.accelerator import get_accelerator\n"
            "print(get_accelerator().device_name())")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "cpu"
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
