"""Worked solutions for the decoding agent's training target.

A decoder trained on bare answers learns to skip its reasoning: it guesses a number where, alone, it would have
worked the sum out in text, and gets worse (issue 12). The latent hand-offs are meant to add to the decoder's own
reasoning, so its target is a worked solution that ends in the answer. Two sources:

- ``procedural``: the steps of a generated expression, evaluated as a person would write them out
  (``9 - 10 = -1``, ``-1 + 3 = 2``), for ``basic_arithmetic``-style questions.
- ``sampled``: the solver's own solutions, sampled alone on the training question, kept when the scorer accepts
  them: the model's own style of reasoning, so training changes what it knows, not how it writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from recursivemas.answers import score

SOURCES: tuple[str, ...] = ("procedural", "sampled")
_EXPRESSION = re.compile(r"-?\d+(?:\s*[-+*/]\s*-?\d+)+")
_TOKEN = re.compile(r"(?<![\d)])-?\d+|[-+*/]")
_PRECEDENCE = ({"*", "/"}, {"+", "-"})


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "/":
        return None if b == 0 else a / b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def procedural_solution(question: str, answer: str) -> str | None:
    """Step-by-step working of the arithmetic expression in ``question``, ending in ``\\boxed{answer}``; None when
    the question holds no plain expression (parentheses are not worked out) or the working does not reach ``answer``.
    """
    found = _EXPRESSION.search(question)
    if found is None or "(" in question:
        return None
    tokens = _TOKEN.findall(found.group(0))
    values = [Fraction(int(t)) for t in tokens[::2]]
    ops = tokens[1::2]
    steps = []
    for level in _PRECEDENCE:
        i = 0
        while i < len(ops):
            if ops[i] not in level:
                i += 1
                continue
            result = _apply(values[i], ops[i], values[i + 1])
            if result is None:
                return None
            steps.append(f"{_fmt(values[i])} {ops[i]} {_fmt(values[i + 1])} = {_fmt(result)}")
            values[i : i + 2], ops[i : i + 1] = [result], []
    final = _fmt(values[0])
    if not score(final, answer, "number").correct:
        return None
    return "\n".join(steps) + f"\nThe final answer is \\boxed{{{final}}}."


def sampled_solutions(questions: Sequence[str], answers: Sequence[str],
                      sample: Callable[[list[str], int], list[str]], tries: int) -> list[str | None]:
    """For each question, the first of up to ``tries`` samples (``sample(questions, attempt)``, attempt 0 greedy)
    that the scorer accepts for its answer; None where none does."""
    found: list[str | None] = [None] * len(questions)
    for attempt in range(tries):
        todo = [i for i, f in enumerate(found) if f is None]
        if not todo:
            break
        for i, text in zip(todo, sample([questions[i] for i in todo], attempt)):
            if score(text, answers[i], "number").correct:
                found[i] = text.strip()
    return found
