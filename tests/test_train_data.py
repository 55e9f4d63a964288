"""Training rows: JSONL loading with line-accurate errors, role targets, procedural generators with held-out split."""

import json

import pytest

from recursivemas.train.data import (
    DataError,
    Row,
    check_rows_have,
    generate_rows,
    generator_options,
    load_jsonl,
    resolve_targets,
    save_jsonl,
    split_of,
)
from recursivemas.train.solutions import procedural_solution, sampled_solutions

AGENTS = ["planner", "critic", "solver"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_keeps_role_fields(tmp_path):
    f = _write(
        tmp_path / "seq.jsonl",
        [
            json.dumps({"question": "1+1?", "plan": "add", "refined_plan": "add ones", "answer": "2"}),
            "",
            json.dumps({"question": "2*3?", "answer": 6}),
        ],
    )
    rows = load_jsonl(f)
    assert [r.question for r in rows] == ["1+1?", "2*3?"]
    assert rows[0].target("plan") == "add"
    assert rows[0].target("refined_plan") == "add ones"
    assert rows[0].target("answer") == "2"
    assert rows[0].target("nope") is None
    assert rows[1].answer == "6" and rows[1].target("plan") is None
    assert load_jsonl(f, max_rows=1) == rows[:1]


def test_load_jsonl_reports_every_bad_line(tmp_path):
    f = _write(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"question": "ok", "answer": "1"}),
            json.dumps({"question": "no answer"}),
            '{"question": "broken", ',
            json.dumps({"question": "  ", "answer": "3"}),
            json.dumps(["question", "answer"]),
        ],
    )
    with pytest.raises(DataError) as ei:
        load_jsonl(f)
    msg = str(ei.value)
    lines = msg.splitlines()
    assert "bad.jsonl" in lines[0] and "4 problem(s)" in lines[0]
    assert any("line 2" in ln and "'answer'" in ln and "missing" in ln for ln in lines)
    assert any("line 3" in ln and "invalid JSON" in ln for ln in lines)
    assert any("line 4" in ln and "'question'" in ln and "empty" in ln for ln in lines)
    assert any("line 5" in ln and "JSON object" in ln and "list" in ln for ln in lines)
    assert not any("line 1" in ln for ln in lines[1:])


def test_load_jsonl_caps_listed_problems(tmp_path):
    f = _write(tmp_path / "many.jsonl", ["{}"] * 15)  # 2 problems per line
    with pytest.raises(DataError) as ei:
        load_jsonl(f)
    assert len([ln for ln in str(ei.value).splitlines() if ln.startswith("  - ")]) == 20
    assert "10 more problem(s)" in str(ei.value)


def test_load_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found: .*nothere.jsonl"):
        load_jsonl(tmp_path / "nothere.jsonl")


def test_resolve_targets():
    assert resolve_targets(AGENTS, "solver", None) == {"planner": "answer", "critic": "answer", "solver": "answer"}
    got = resolve_targets(AGENTS, "solver", {"planner": "plan", "critic": "refined_plan"})
    assert got == {"planner": "plan", "critic": "refined_plan", "solver": "answer"}
    with pytest.raises(DataError) as ei:
        resolve_targets(AGENTS, "solver", {"plannr": "plan"})
    assert "'plannr'" in str(ei.value) and "planner, critic, solver" in str(ei.value)
    with pytest.raises(DataError, match="decoder 'judge'"):
        resolve_targets(AGENTS, "judge", None)


def test_check_rows_have():
    rows = [
        Row(question="a", answer="1", plan="p1"),
        Row(question="b", answer="2"),
        Row(question="c", answer="3", plan=""),
    ]
    targets = resolve_targets(AGENTS, "solver", {"planner": "plan"})
    with pytest.raises(DataError) as ei:
        check_rows_have(rows, targets)
    msg = str(ei.value)
    assert "row 2, field 'plan'" in msg and "row 3, field 'plan'" in msg and "planner" in msg
    assert "row 1," not in msg
    check_rows_have(rows, resolve_targets(AGENTS, "solver", None))  # answer everywhere: fine


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "gsm_symbolic"])
def test_generate_rows(dataset):
    train = generate_rows(dataset, 200, seed=7)
    held = generate_rows(dataset, 50, seed=7, split="heldout")
    assert len(train) == 200 and len(held) == 50
    assert all(r.question.strip() and r.answer.strip() for r in train + held)
    assert generate_rows(dataset, 20, seed=7) == train[:20]  # deterministic, and independent of n
    assert generate_rows(dataset, 10, seed=7, split="heldout") == held[:10]
    assert not {r.question for r in train} & {r.question for r in held}
    assert len({r.question for r in train}) == 200
    assert [r.question for r in generate_rows(dataset, 10, seed=8)] != [r.question for r in train[:10]]


def test_generate_rows_errors():
    with pytest.raises(DataError, match="basic_arithmetic, gsm_symbolic"):
        generate_rows("no_such_set", 5, seed=0)
    with pytest.raises(DataError, match="split"):
        generate_rows("basic_arithmetic", 5, seed=0, split="test")


EASY = {"min_terms": 2, "max_terms": 2, "max_digits": 1, "operators": ["+"], "allow_parentheses": False,
        "allow_negation": False}


def test_generate_rows_passes_the_generators_own_options():
    train = generate_rows("basic_arithmetic", 60, seed=0, options=EASY)
    held = generate_rows("basic_arithmetic", 15, seed=0, split="heldout", options=EASY)
    for row in train + held:  # "Calculate 3 + 4." and nothing harder (reasoning_gym draws 0..10 for one digit)
        terms = row.question.removeprefix("Calculate ").rstrip(".").split(" + ")
        assert len(terms) == 2 and all(t.isdigit() and int(t) <= 10 for t in terms), row.question
        assert int(row.answer) == sum(map(int, terms))
    assert not {r.question for r in train} & {r.question for r in held}
    assert generate_rows("basic_arithmetic", 60, seed=0) != train  # the options changed the items


def test_generate_rows_option_errors_name_the_option():
    with pytest.raises(DataError, match=r"unknown 'max_term'; accepted: min_terms, max_terms"):
        generate_rows("basic_arithmetic", 5, seed=0, options={"max_term": 3})
    with pytest.raises(DataError, match=r"'operators': \['\^'\]\}: rejected by reasoning_gym: unsupported operator"):
        generate_rows("basic_arithmetic", 5, seed=0, options={"operators": ["^"]})
    with pytest.raises(DataError, match="unknown 'size'"):  # size and seed belong to generate_rows
        generate_rows("basic_arithmetic", 5, seed=0, options={"size": 10})
    assert "max_terms" in generator_options("basic_arithmetic") and "seed" not in generator_options("basic_arithmetic")


def test_save_load_round_trip(tmp_path):
    rows = [Row(question="q1 ünï", answer="a1", plan="p"), Row(question="q2", answer="a2")]
    path = tmp_path / "sub" / "rows.jsonl"
    save_jsonl(rows, path)
    back = load_jsonl(path)
    assert back == rows and back[0].target("plan") == "p"


def test_validation_is_carved_from_the_train_side_and_the_test_split_is_unchanged():
    train = generate_rows("basic_arithmetic", 60, seed=0, options=EASY)
    validation = generate_rows("basic_arithmetic", 8, seed=0, split="validation", options=EASY)
    held = generate_rows("basic_arithmetic", 15, seed=0, split="heldout", options=EASY)
    questions = [{r.question for r in split} for split in (train, validation, held)]
    assert not questions[0] & questions[1] and not questions[0] & questions[2] and not questions[1] & questions[2]
    # the held-out (test) split is the hash's first 20%, as before validation existed: earlier results compare
    assert all(split_of(q) == "heldout" for q in questions[2])
    assert all(0.2 <= _share(q) < 0.3 for q in questions[1]) and all(_share(q) >= 0.3 for q in questions[0])


def _share(question: str) -> float:
    import hashlib

    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2.0**64


def test_procedural_solutions_work_the_sum_out_and_end_in_the_boxed_answer():
    assert procedural_solution("Calculate 0 - 4 - 8.", "-12") == (
        "0 - 4 = -4\n-4 - 8 = -12\nThe final answer is \\boxed{-12}.")
    assert procedural_solution("Calculate 4 * 3 - 2 / 2.\n\nPut your final answer in \\boxed{}.", "11") == (
        "4 * 3 = 12\n2 / 2 = 1\n12 - 1 = 11\nThe final answer is \\boxed{11}.")
    assert procedural_solution("Calculate (1 + 2) * 3.", "9") is None  # parentheses: not worked out
    assert procedural_solution("Calculate 2 + 2.", "5") is None  # a working that misses the answer is no target
    assert procedural_solution("What is the capital of France?", "Paris") is None
    for row in generate_rows("basic_arithmetic", 40, seed=0, options=EASY):
        assert procedural_solution(row.question, row.answer).endswith(f"\\boxed{{{row.answer}}}.")


def test_sampled_solutions_keep_the_first_accepted_sample():
    calls = []

    def sample(questions, attempt):
        calls.append((list(questions), attempt))
        return [f"attempt {attempt}: \\boxed{{{attempt + len(q)}}}" for q in questions]

    # "ab" (2) is right at attempt 1, "abc" (3) at attempt 0, "x" (1) never within 3 tries
    found = sampled_solutions(["ab", "abc", "x"], ["3", "3", "9"], sample, tries=3)
    assert found == ["attempt 1: \\boxed{3}", "attempt 0: \\boxed{3}", None]
    assert calls == [(["ab", "abc", "x"], 0), (["ab", "x"], 1), (["x"], 2)]  # solved questions are not resampled


def test_sampled_solutions_leave_training_rows_to_the_decoder_and_give_checks_a_reference_working():
    from recursivemas.train.config import DataConfig
    from recursivemas.train.setup import load_rows

    data = DataConfig(generator="basic_arithmetic", n=6, options=EASY, solutions="sampled")
    assert all(row.target("solution") is None for row in load_rows(data, "train"))  # sampled later, by the decoder
    for split in ("validation", "heldout"):
        rows = load_rows(data, split)
        assert rows and all(row.target("solution").endswith(f"\\boxed{{{row.answer}}}.") for row in rows)
