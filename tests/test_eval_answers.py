"""Answer extraction, scoring and the sandboxed HumanEval checker.

Benchmark accuracy is only as good as the reading of the answers: a number missed inside ``\\boxed{\\frac{1}{2}}``,
a choice letter taken from "A cat", or a hung completion that takes the evaluation down would all show up as
wrong numbers in a report. These hand-written cases pin down each shape models and datasets actually use.
"""

from __future__ import annotations

import pytest

from recursivemas.answers import Score, extract_answer, numbers_equal, score
from recursivemas.runtime.code_exec import build_program, check_completion, run_program

# ---------------------------------------------------------------- extraction: numbers


@pytest.mark.parametrize("text, expected", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "1/2"),
    ("first \\boxed{3}, on reflection \\boxed{5}", "5"),
    ("Natalia sold 48 clips in April and 24 in May.\n#### 1,234", "1234"),
    ("It costs $12.50 in total.", "12.50"),
    ("That is 50% of the class.", "50%"),
    ("The temperature dropped to -7 degrees.", "-7"),
    ("5-3 = 2, so the answer is 2.", "2"),
    ("The answer is: $1,000,000 and then 7 more words", "1000000"),
    ("Answer:\n42", "42"),
    ("Let me see what the answer is. We have 3 + 4 = 7", "7"),  # a marker not followed by a number is ignored
    ("we get \\dfrac{3}{4} of the pie", "3/4"),
    ("3/4 of the pie", "3/4"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{\\$1,200}", "1200"),
    ("\\boxed{-\\frac{1}{3}}", "-1/3"),
    ("\\boxed{10,\\!000}", "10000"),  # MATH's LaTeX thousands separator
    ("the angle is \\boxed{90^\\circ}", "90"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # not a number: kept for string comparison
    ("the total is 6 then \\boxed{12", "12"),  # unbalanced box: fall back to the last number
])
def test_extract_number(text, expected):
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize("text", ["", "   \n", "no digits here at all", "\\boxed{", "}}{{\\boxed{{"])
def test_extract_number_none(text):
    assert extract_answer(text, "number") is None


# ---------------------------------------------------------------- extraction: choices, text, code


@pytest.mark.parametrize("text, expected", [
    ("The answer is (C).", "C"),
    ("Answer: B", "B"),
    ("**Answer: (E)**", "E"),
    ("Thinking... \\boxed{D}", "D"),
    ("\\boxed{(A)} is my pick", "A"),
    ("A cat sat on a mat. I think (B) fits", "B"),
    ("So the best option is D.", "D"),
    ("The answer is (B), not (A)", "B"),  # the explicit marker beats a later parenthesised letter
    ("A cat sat on the mat", None),
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_answer(text, "choice") == expected


@pytest.mark.parametrize("text, expected", [
    ("Here it is:\n```python\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x"),
    ("```\na = 1\n```\nthen\n```py\nb = 2\n```", "b = 2"),
    ("```python\na = 1\n```\nfixed:\n```python\ndef f(x):\n    return x", "def f(x):\n    return x"),
    ("\n    return x + 1\n\n", "    return x + 1"),  # no fence: the body keeps its indentation
    ("", None),
    ("```python\n```", None),
])
def test_extract_code(text, expected):
    assert extract_answer(text, "code") == expected


@pytest.mark.parametrize("text, expected", [
    ("Let me think.\nParis\n\n", "Paris"),
    ("It is \\boxed{Paris}, the capital.", "Paris"),
    ("  \n ", None),
])
def test_extract_text(text, expected):
    assert extract_answer(text, "text") == expected


def test_extract_unknown_kind_and_garbage_do_not_raise():
    assert extract_answer("42", "bogus") is None  # type: ignore[arg-type]
    assert extract_answer(None, "number") is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- numbers_equal


@pytest.mark.parametrize("a, b, expected", [
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "0.5", True),
    ("1,234", "1234", True),
    ("$12.50", "12.5", True),
    ("50%", "50", True),
    ("50%", "0.5", True),
    ("-3", "3", False),
    ("1,2", "12", False),  # not a thousands separator
    ("1/0", "1", False),
    ("12", "abc", False),
    ("", "", False),
    ("0.3333333", "1/3", True),
    ("0.33", "1/3", False),
])
def test_numbers_equal(a, b, expected):
    assert numbers_equal(a, b) is expected


# ---------------------------------------------------------------- score


def test_score_number_fraction_vs_decimal():
    assert score("so \\boxed{0.5}", "\\frac{1}{2}", "number").correct is True


@pytest.mark.parametrize("reference", ["#### 42", "42", "$42", "She has 6 + 36 = <<6+36=42>>42 apples.\n#### 42"])
def test_score_number_gsm8k_references(reference):
    assert score("Adding up, the answer is 42.", reference, "number") == Score(True, "42", "")


def test_score_number_wrong_names_both():
    result = score("The answer is 13.", "12", "number")
    assert result.correct is False and result.extracted == "13"
    assert "12" in result.detail and "13" in result.detail


def test_score_number_symbolic_reference_compares_strings():
    assert score("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", "number").correct is True
    assert score("\\boxed{2}", "\\frac{\\sqrt{3}}{2}", "number").correct is False


@pytest.mark.parametrize("text", ["", "I do not know.", "\\boxed{}", "\\boxed{ unbalanced"])
def test_score_number_no_answer(text):
    assert score(text, "12", "number") == Score(False, None, "no answer found")


def test_score_number_unbalanced_box_falls_back():
    assert score("so it is \\boxed{12", "12", "number") == Score(True, "12", "")


@pytest.mark.parametrize("text, reference, correct", [
    ("The answer is (B).", "B", True),
    ("The answer is (B).", "(B)", True),
    ("The answer is (B).", "C", False),
    ("\\boxed{c}", "C", False),  # lower-case is not a choice letter
])
def test_score_choice(text, reference, correct):
    assert score(text, reference, "choice").correct is correct


def test_score_choice_bad_reference():
    result = score("Answer: B", "Paris", "choice")
    assert result.correct is False and "reference" in result.detail


@pytest.mark.parametrize("text, reference, correct", [
    ("Thinking...\n  The   Eiffel Tower. ", "the eiffel tower", True),
    ("\\boxed{$Paris$}", "paris", True),
    ("so it is\n12.0", "12", True),
    ("London", "Paris", False),
])
def test_score_text(text, reference, correct):
    assert score(text, reference, "text").correct is correct


def test_score_never_raises_on_garbage():
    assert score(None, None, "number").correct is False  # type: ignore[arg-type]
    assert score("x", "y", "nonsense").correct is False  # type: ignore[arg-type]
    assert score("```python\nx = 1\n```", "", "code").detail == "code scoring needs tests and entry_point"


# ---------------------------------------------------------------- sandboxed code checks

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum the numbers."""\n'
TESTS = "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"


@pytest.mark.parametrize("completion, status", [
    ("    return sum(xs)\n", "passed"),
    ("def total(xs: List[int]) -> int:\n    return sum(xs)\n", "passed"),  # whole function, prompt's import kept
    ("return sum(xs)", "passed"),  # a body written flush left
    ("    return 0\n", "failed"),
    ("    import sys\n    sys.exit(0)\n", "failed"),  # exiting before the asserts is not passing
    ("    return sum(xs\n", "error"),
    ("    x = bytearray(10**10)\n    return 0\n", "memory"),
])
def test_check_completion_status(completion, status):
    result = check_completion(PROMPT, completion, TESTS, "total", timeout_s=5, memory_mb=256)
    assert result.status == status, result.output
    assert result.passed is (status == "passed")


def test_check_completion_timeout():
    result = check_completion(PROMPT, "    while True:\n        pass\n", TESTS, "total", timeout_s=1, memory_mb=256)
    assert (result.passed, result.status) == (False, "timeout")


def test_check_completion_bad_entry_point_is_error():
    assert check_completion(PROMPT, "    return 1\n", TESTS, "not an identifier").status == "error"


def test_build_program_order():
    program = build_program(PROMPT, "    return sum(xs)\n", TESTS, "total")
    assert program.index("def total") < program.index("def check") < program.index("check(total)")


def test_run_program_growing_list_is_memory():
    result = run_program("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", timeout_s=5, memory_mb=256)
    assert (result.passed, result.status) == (False, "memory")


def test_run_program_passes_and_fails():
    assert run_program("print('hi')", timeout_s=5).status == "passed"
    failed = run_program("raise ValueError('boom')", timeout_s=5)
    assert failed.status == "failed" and "ValueError: boom" in failed.output


def test_score_code_end_to_end():
    text = "Sure:\n```python\ndef total(xs):\n    return sum(xs)\n```"
    assert score(text, "", "code", prompt=PROMPT, tests=TESTS, entry_point="total", timeout_s=5) == Score(
        True, "def total(xs):\n    return sum(xs)", "passed")
    wrong = score("```python\ndef total(xs):\n    return 1\n```", "", "code", prompt=PROMPT, tests=TESTS,
                  entry_point="total", timeout_s=5)
    assert (wrong.correct, wrong.detail) == (False, "failed")


@pytest.mark.parametrize(("text", "correct", "extracted"), [
    ("1 + 1 = 2\nThe answer is \\boxed{answer}.", True, "2"),  # a copied placeholder: read on, from the text
    ("\\boxed{2} so the final answer is \\boxed{Answer}", True, "2"),  # an earlier real box wins
    ("\\boxed{\\text{your answer}}", False, None),
    ("\\boxed{ }", False, None),
    ("\\boxed{x = 2}", True, "2"),  # "x" only as a whole box is a placeholder
])
def test_placeholder_boxes_are_no_answer(text, correct, extracted):
    verdict = score(text, "2", "number")
    assert verdict.correct is correct and verdict.extracted == extracted, verdict
