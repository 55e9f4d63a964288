"""Framing and per-round templates (issue 14): a system turn, chat-template options and the no-template policy
travel with every prompt; an agent may switch templates from round 2 on, and ``{round}`` says where it is."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from recursivemas.config import Topology
from recursivemas.engine import Framing, Prompt
from recursivemas.engine.inputs import render_pieces
from recursivemas.runtime import Executor, build_links
from tiny import byte_tokenizer, tiny_engine

# A ChatML template that also shows a system turn and reacts to a template option, as Qwen3's enable_thinking does.
THINKING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}"
)


def text_of(tokenizer, prompt: Prompt) -> str:
    return "".join(p if isinstance(p, str) else f"<{p.shape[0]} latents>" for p in render_pieces(tokenizer, prompt))


def test_a_system_turn_and_template_options_reach_the_chat_template():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = THINKING
    latent = torch.zeros(2, 8)
    framed = Prompt(["Plan: ", latent, " now solve."],
                    framing=Framing("You are a helpful assistant.", (("enable_thinking", False),)))
    assert text_of(tokenizer, framed) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPlan: <2 latents> now solve.<|im_end|>\n<|im_start|>assistant\n<think></think>")
    assert text_of(tokenizer, Prompt(["Hi"])) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_without_a_chat_template_gets_the_plain_frame_or_a_refusal():
    plain = byte_tokenizer(chat=False)
    assert text_of(plain, Prompt(["Hi"], framing=Framing("Be brief."))) == "<bos>Be brief.\n\nHi\n\nResponse:"
    with pytest.raises(ValueError, match="no chat template.*no_chat_template: refuse"):
        render_pieces(plain, Prompt(["Hi"], framing=Framing(without_template="refuse")))


def topology(**extra) -> Topology:
    return Topology.model_validate({
        "name": "framed", "backbones": {"a": {"model": "tiny-llama"}}, "pattern": "sequential", "rounds": 2,
        "latent_steps": 2, "generation": {"max_new_tokens": 3},
        "agents": [{"name": "planner", "backbone": "a", **extra.pop("planner", {})},
                   {"name": "solver", "backbone": "a"}], **extra})


def test_agent_framing_overrides_the_topologys_field_by_field():
    t = topology(framing={"system_prompt": "Team rules.", "chat_template_kwargs": {"enable_thinking": False}},
                 planner={"framing": {"system_prompt": "You plan."}})
    planner, solver = t.framing_of("planner"), t.framing_of("solver")
    assert (planner.system_prompt, planner.chat_template_kwargs) == ("You plan.", {"enable_thinking": False})
    assert (solver.system_prompt, solver.no_chat_template) == ("Team rules.", "plain")
    assert "framing" not in topology().to_dict()  # unset: topologies (and run settings) read as before
    with pytest.raises(ValidationError, match="no_chat_template"):
        topology(framing={"no_chat_template": "maybe"})


def test_later_rounds_use_their_own_template_with_the_round_number():
    later = "Round {round} of a recursive system. Question: {question}\nLast attempt: {feedback}\nRevise the plan."
    t = topology(planner={"prompt": "Question: {question}\nWrite a plan.", "later_prompt": later})
    assert t.template("planner", 1) == "Question: {question}\nWrite a plan."
    assert t.template("planner", 2) == later and t.template("solver", 2) == t.template("solver", 1)
    engine = tiny_engine("llama")
    seen: list[str] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(engine, name)

        def rollout(self, prompts, steps, inner):
            seen.extend("".join(s for s in p.segments if isinstance(s, str)) for p in prompts)
            return engine.rollout(prompts, steps, inner)

    backbone = Recording()
    Executor(t, {"a": backbone}, build_links(t, {"a": engine})).run("What is 2+2?")
    planner = [text for text in seen if text.startswith(("Question: What", "Round "))]  # not the solver's
    assert planner[0] == "Question: What is 2+2?\nWrite a plan."
    assert planner[1].startswith("Round 2 of a recursive system. Question: What is 2+2?\nLast attempt: ")


def test_template_checks_name_the_field_and_the_slot():
    with pytest.raises(ValidationError, match=r"agents.planner.later_prompt: no slot for the hand-off from 'solver'"):
        topology(planner={"prompt": "Q: {question}", "later_prompt": "Round {round}: {question}"})
    with pytest.raises(ValidationError, match=r"agents.planner.prompt: no slot for the hand-off from 'solver'"):
        topology(planner={"prompt": "Q: {question}"})  # one template for every round must take the feedback
    with pytest.raises(ValidationError, match=r"agents.planner.later_prompt: the template has no \{question\}"):
        topology(planner={"later_prompt": "Round {round}. {feedback}"})
    topology(planner={"prompt": "Q: {question}", "later_prompt": "Q: {question} Last: {feedback}"})  # valid


@pytest.mark.parametrize("setting, expected", [("float32", torch.float32), ("auto", torch.bfloat16),
                                               ("float16", torch.float16)])
def test_links_run_in_the_dtype_asked_for(tmp_path, setting, expected):
    """``links_dtype: auto`` keeps a 16-bit checkpoint's dtype, as the authors run their releases; float32 (the
    default) upcasts; hand-offs leave the host in the links' dtype and the engine casts them to its own."""
    from recursivemas.links import save_links, stored_dtype
    from recursivemas.runtime.calls import ThinkCall
    from recursivemas.runtime.host import BackboneHost

    engine = tiny_engine("llama")
    plain = topology()
    save_links(build_links(plain, {"a": engine}).to(torch.bfloat16), tmp_path / "links")
    assert stored_dtype(tmp_path / "links") == torch.bfloat16
    t = plain.replace(links=str(tmp_path / "links"), links_dtype=setting)
    links = build_links(t, {"a": engine})
    assert {p.dtype for p in links.parameters()} == {expected}
    (thought,) = BackboneHost(engine).think(ThinkCall(("planner",), (Prompt(["What is 2+2?"]),), 2, (("solver",),),
                                                      links=t.name), links)
    assert thought.handoffs["solver"].dtype == expected and torch.isfinite(thought.handoffs["solver"]).all()
    assert Executor(t, {"a": engine}, links).run("What is 2+2?").text is not None
