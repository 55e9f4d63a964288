"""Tests for recursivemas.prompts: templates with named latent slots."""

from __future__ import annotations


import pytest

from recursivemas import prompts
from recursivemas.prompts import ROLE_PROMPTS, Slot, placeholders, render, resolve_template, slot_for


def _text(pieces) -> str:
    """The rendered prompt with slots shown as <src>, for readable assertions."""
    return "".join(p if isinstance(p, str) else f"<{p.source}>" for p in pieces)


# --- render -----------------------------------------------------------------------------------------------------


def test_render_drops_line_whose_slots_are_all_empty():
    template = "Question: {question}\nFeedback: {feedback}\nAnswer it."
    pieces = render(template, "What is 2+2?", {})
    assert _text(pieces) == "Question: What is 2+2?\nAnswer it."
    assert not any(isinstance(p, Slot) for p in pieces)


def test_render_drops_line_only_when_every_slot_on_it_is_empty():
    template = "Q: {question}\nBoth: {inputs} and {feedback}\nEnd"
    kept = render(template, "q", {"feedback": ["solver"]})
    assert _text(kept) == "Q: q\nBoth:  and <solver>\nEnd"
    dropped = render(template, "q", {"inputs": [], "feedback": []})
    assert _text(dropped) == "Q: q\nEnd"


def test_render_keeps_question_lines():
    template = "{question}\nAnd again: {question}\n"
    pieces = render(template, "why?", {})
    assert pieces == ["why?\nAnd again: why?\n"]


def test_render_keeps_question_line_even_if_question_empty():
    # the question line has no slot, so it is never dropped
    pieces = render("Q: {question}\nBye", "", {})
    assert pieces == ["Q: \nBye"]


def test_render_single_source_collective_slot_has_no_label():
    pieces = render("Plan: {inputs}\nQ: {question}", "q", {"inputs": ["planner"]})
    assert pieces == ["Plan: ", Slot("planner"), "\nQ: q"]


def test_render_collective_slot_with_several_sources_is_labelled_blocks():
    template = "Q: {question}\nExperts: {inputs}\nDone."
    pieces = render(template, "q", {"inputs": ["e1", "e2", "e3"]})
    assert [p for p in pieces if isinstance(p, Slot)] == [Slot("e1"), Slot("e2"), Slot("e3")]
    text = _text(pieces)
    assert text == "Q: q\nExperts: \n[e1] <e1>\n[e2] <e2>\n[e3] <e3>\nDone."
    # each label comes right before its own slot
    for i, piece in enumerate(pieces):
        if isinstance(piece, Slot):
            assert isinstance(pieces[i - 1], str) and pieces[i - 1].endswith(f"[{piece.source}] ")


def test_render_feedback_collective_slot_also_labels_blocks():
    pieces = render("Prev: {feedback}", "q", {"feedback": ["a", "b"]})
    assert _text(pieces) == "Prev: \n[a] <a>\n[b] <b>"


def test_render_named_slot_with_source():
    pieces = render("From planner: {planner}\nQ: {question}", "q", {"planner": ["planner"]})
    assert pieces == ["From planner: ", Slot("planner"), "\nQ: q"]


def test_render_literal_double_braces_become_single_braces():
    template = "Q: {question}\nAnswer as \\boxed{{answer}} and keep {{inputs}} literal."
    pieces = render(template, "q", {})
    assert pieces == ["Q: q\nAnswer as \\boxed{answer} and keep {inputs} literal."]
    assert "{{" not in pieces[0] and "}}" not in pieces[0]


def test_literal_braces_are_not_placeholders():
    assert placeholders("{question} {{inputs}} \\boxed{{answer}} {feedback}") == ["question", "feedback"]


def test_literal_brace_line_not_dropped_as_empty_slot_line():
    # "{{inputs}}" is text, not a slot: its line must stay
    pieces = render("Q: {question}\nuse {{inputs}}", "q", {})
    assert pieces == ["Q: q\nuse {inputs}"]


def test_render_returns_slot_markers_in_template_order():
    template = "Q: {question}\nB says: {b}\nA says: {a}\nInputs: {inputs}\nFeedback: {feedback}"
    sources = {"a": ["a"], "b": ["b"], "inputs": ["c", "d"], "feedback": ["z"]}
    pieces = render(template, "q", sources)
    assert [p.source for p in pieces if isinstance(p, Slot)] == ["b", "a", "c", "d", "z"]


def test_render_merges_adjacent_text_and_drops_empty_strings():
    pieces = render("{question}{question}", "x", {})
    assert pieces == ["xx"]
    pieces = render("{inputs}{feedback}", "x", {"inputs": ["a"], "feedback": ["b"]})
    assert pieces == [Slot("a"), Slot("b")]


def test_slot_is_frozen_and_hashable():
    slot = Slot("a")
    assert slot == Slot("a") and hash(slot) == hash(Slot("a"))
    with pytest.raises(AttributeError):
        slot.source = "b"  # type: ignore[misc]


# --- slot_for -----------------------------------------------------------------------------------------------------


def test_slot_for_prefers_named_slot_over_inputs():
    template = "{question} {planner} {inputs} {feedback}"
    assert slot_for(template, "planner", feedback=False) == "planner"
    assert slot_for(template, "planner", feedback=True) == "planner"


def test_slot_for_falls_back_to_collective_slot():
    template = "{question} {planner} {inputs} {feedback}"
    assert slot_for(template, "critic", feedback=False) == "inputs"
    assert slot_for(template, "critic", feedback=True) == "feedback"


def test_slot_for_none_when_no_room():
    assert slot_for("{question} {inputs}", "solver", feedback=True) is None
    assert slot_for("{question} {feedback}", "planner", feedback=False) is None
    assert slot_for("{question} {{planner}}", "planner", feedback=False) is None


# --- presets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(ROLE_PROMPTS))
def test_every_preset_has_question_and_collective_slots(role):
    found = placeholders(ROLE_PROMPTS[role])
    assert prompts.QUESTION in found, f"preset {role!r} has no {{question}}"
    # presets fit any topology position
    assert prompts.INPUTS in found and prompts.FEEDBACK in found, f"preset {role!r} lacks {{inputs}}/{{feedback}}"
    assert set(found) <= set(prompts.RESERVED), f"preset {role!r} names an agent slot: {found}"


@pytest.mark.parametrize("role", sorted(ROLE_PROMPTS))
def test_every_preset_renders_without_stray_braces_when_empty(role):
    pieces = render(ROLE_PROMPTS[role], "What is 6*7?", {})
    assert len(pieces) == 1 and isinstance(pieces[0], str)
    text = pieces[0]
    assert "What is 6*7?" in text
    assert "{inputs}" not in text and "{feedback}" not in text and "{question}" not in text
    assert "{{" not in text


def test_resolve_template_maps_preset_names_and_passes_templates_through():
    assert resolve_template("planner") == ROLE_PROMPTS["planner"]
    custom = "Q: {question}"
    assert resolve_template(custom) == custom


def test_unescape():
    assert prompts.unescape("{{a}} b {c}") == "{a} b {c}"
