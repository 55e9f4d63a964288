"""Answer extraction and scoring, shared by the evaluation harness and training's validation.

Models state their answers in many shapes (``\\boxed{}``, "#### 42", "The answer is (C).", a fenced code block, a
number buried in the last sentence), and datasets write references in their own shapes too. Scoring has to read both
the same way, or accuracy measures formatting rather than reasoning. Everything here is pure string logic and never
raises on malformed input: a garbled response is a wrong answer, not a crashed evaluation run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from recursivemas.runtime.code_exec import check_completion

Kind = Literal["number", "choice", "code", "text"]

NO_ANSWER = "no answer found"

BOXED_INSTRUCTION = "Put your final answer in \\boxed{}."
"""Appended (after a blank line) to math questions, in evaluation and, by default, in training: the scorer reads
the box, and a system trained on bare questions would be evaluated on a prompt it never saw."""

PLACEHOLDERS = frozenset({"answer", "your answer", "final answer", "the answer", "final_answer", "answer here",
                          "result", "...", "n", "x"})
"""Words small models copy into the box from an instruction ("\\boxed{answer}"); a box holding only one is no
answer, so the scorer reads on (an earlier box, "The answer is 7", the last number)."""


def with_boxed(question: str, instruction: str = BOXED_INSTRUCTION) -> str:
    """``question`` followed, after a blank line, by ``instruction`` (:data:`BOXED_INSTRUCTION` unless told)."""
    return f"{question.rstrip()}\n\n{instruction}"

# A number as models write it: optional sign (only where it cannot be a binary minus), optional "$", thousands
# commas, decimals, an optional "/denominator" and an optional trailing percent sign.
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)\]}])[-\u2212])?(?P<dollar>\\?\$\s?)?(?P<sign2>-)?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:/(?P<den>\d+(?:\.\d+)?))?(?P<pct>\s?\\?%)?"
)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}|\\[dt]?frac(\d)(\d)")
_MARKER_RE = re.compile(r"####|\banswer\b\s*(?:is|:|=)?", re.IGNORECASE)
_FILL = r"[\s:=*_(\[{\\]*"  # what may stand between an answer marker and its number
_MARKER_FILLER_RE = re.compile(_FILL + r"(?:approximately|about|roughly|exactly|equal\s+to)?" + _FILL, re.IGNORECASE)
_PARSE_RE = re.compile(r"([-+]?)(\d+(?:\.\d*)?|\.\d+)(?:/([-+]?)(\d+(?:\.\d*)?|\.\d+))?(%?)")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP_RE = re.compile(r"\\!|\\left|\\right|\^\{?\\circ\}?")
_LATEX_SPACE_RE = re.compile(r"\\[,; ]")

_CHOICE_BOXED_RE = re.compile(r"^\s*(?:\\text\s*\{\s*)?\(?\s*([A-J])\s*\)?(?![A-Za-z])")
_CHOICE_MARKER_RE = re.compile(r"(?i:\banswer\s*(?:is|:))\s*:?\s*[*_(\[{$\\]*\s*([A-J])(?![A-Za-z])")
_CHOICE_PAREN_RE = re.compile(r"\(([A-J])\)")
_CHOICE_BARE_RE = re.compile(r"(?<![A-Za-z])([A-J])(?=\s*[.,;:!?)\]*]|\s*$)", re.MULTILINE)

_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"```[^\n`]*(?:\n|$)")


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str | None
    detail: str = ""


# ------------------------------------------------------------------ extraction helpers

def _boxed_contents(text: str) -> list[str]:
    """Contents of every balanced ``\\boxed{...}`` / ``\\fbox{...}`` in order; empty boxes and boxes holding only a
    placeholder word (:data:`PLACEHOLDERS`) are skipped."""
    found = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                if not _is_placeholder(text[start:i]):
                    found.append(text[start:i])
                break
    return found


def _is_placeholder(content: str) -> bool:
    word = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", content).strip().strip("$").strip().lower()
    return not word or word in PLACEHOLDERS


def _format_number(m: re.Match[str]) -> str:
    sign = "-" if bool(m.group("sign")) != bool(m.group("sign2")) else ""
    den = "/" + m.group("den") if m.group("den") else ""
    return sign + m.group("num").replace(",", "") + den + ("%" if m.group("pct") else "")


def _clean_latex(content: str) -> str:
    """\\text{} unwrapped, numeric \\frac{a}{b} as a/b, spacing and degree marks gone ("10,\\!000" is "10,000")."""
    s = _TEXT_CMD_RE.sub(r" \1 ", content.replace("{,}", ","))
    s = _FRAC_RE.sub(lambda m: f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}", s)
    return _LATEX_SPACE_RE.sub(" ", _LATEX_DROP_RE.sub("", s)).strip()


def _number_in_box(content: str) -> str:
    """A boxed answer as a normalised number when it is one (units and "x =" allowed), else the raw content."""
    s = _clean_latex(content)
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s)
    s = re.sub(r"(?:\s+[A-Za-z]+\.?)+$", "", s).strip()
    m = _NUMBER_RE.fullmatch(s)
    return _format_number(m) if m else content.strip()


def _extract_number(text: str) -> tuple[str | None, str]:
    """(answer, where it came from: "boxed", "marker", "last" or "none")."""
    boxes = _boxed_contents(text)
    if boxes:
        return _number_in_box(boxes[-1]), "boxed"
    flat = _clean_latex(text)
    for marker in reversed(list(_MARKER_RE.finditer(flat))):
        m = _NUMBER_RE.search(flat, marker.end())
        if m is not None and _MARKER_FILLER_RE.fullmatch(flat, marker.end(), m.start()):
            return _format_number(m), "marker"
    numbers = list(_NUMBER_RE.finditer(flat))
    return (_format_number(numbers[-1]), "last") if numbers else (None, "none")


def _extract_choice(text: str) -> str | None:
    for content in reversed(_boxed_contents(text)):
        m = _CHOICE_BOXED_RE.match(content)
        if m:
            return m.group(1)
    for pattern in (_CHOICE_MARKER_RE, _CHOICE_PAREN_RE, _CHOICE_BARE_RE):
        matches = pattern.findall(text)
        if matches:
            return matches[-1]
    return None


def _trim_code(code: str) -> str | None:
    """Drop leading blank lines and trailing whitespace, keeping the first line's indentation (a function body)."""
    return re.sub(r"^(?:[ \t\r]*\n)+", "", code.rstrip()) or None


def _extract_code(text: str) -> str | None:
    blocks = list(_FENCE_RE.finditer(text))
    tail_start = blocks[-1].end() if blocks else 0
    opening = _OPEN_FENCE_RE.search(text, tail_start)
    # an unterminated final fence counts: the model was cut off by its token limit mid-block
    unterminated = _trim_code(text[opening.end():]) if opening is not None else None
    return unterminated or _trim_code(blocks[-1].group(1) if blocks else text)


def _extract_text(text: str) -> str | None:
    boxes = _boxed_contents(text)
    if boxes:
        return boxes[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "number": lambda text: _extract_number(text)[0],
    "choice": _extract_choice,
    "code": _extract_code,
    "text": _extract_text,
}


def extract_answer(text: str, kind: Kind) -> str | None:
    """The final answer of the given kind in a model's response, normalised; None when there is none."""
    extract = _EXTRACTORS.get(kind)
    if extract is None or not isinstance(text, str) or not text.strip():
        return None
    return extract(text)


# ------------------------------------------------------------------ comparison

def _parse_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, had a percent sign) for a whole string that is one number, else None."""
    if not isinstance(s, str):
        return None
    t = _clean_latex(s).replace("\\%", "%").replace("\\$", "").replace("$", "").replace("\u2212", "-")
    t = _THOUSANDS_RE.sub("", re.sub(r"\s+", "", t))
    m = _PARSE_RE.fullmatch(t)
    if m is None:
        return None
    sign, num, den_sign, den, pct = m.groups()
    try:
        value = Fraction(num) / (Fraction(den) if den is not None else 1)
    except (ValueError, ZeroDivisionError):
        return None
    if (sign == "-") != (den_sign == "-"):
        value = -value
    return value, bool(pct)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a string that is one number (int, decimal, ``a/b``, ``\\frac{a}{b}``, ``$``, thousands
    commas; a percent sign is dropped), else None: what decides whether a reference is scored as a number."""
    parsed = _parse_number(text)
    return None if parsed is None else parsed[0]


def _close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-9)
    except OverflowError:
        return False


def numbers_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool:
    """True when both strings are numbers of (nearly) the same value.

    A percent on one side only matches either reading ("50%" equals both "50" and "0.5"), since references
    rarely agree with models on whether to keep the sign.
    """
    pa, pb = _parse_number(a), _parse_number(b)
    if pa is None or pb is None:
        return False
    (va, pct_a), (vb, pct_b) = pa, pb
    candidates_a = {va, va / 100} if pct_a and not pct_b else {va}
    candidates_b = {vb, vb / 100} if pct_b and not pct_a else {vb}
    return any(_close(x, y, rel_tol) for x in candidates_a for y in candidates_b)


def _normalise_text(s: str | None) -> str:
    t = re.sub(r"\s+", " ", (s or "").replace("$", "").strip().lower())
    return t[:-1].rstrip() if t.endswith(".") else t


# ------------------------------------------------------------------ scoring

def _verdict(ok: bool, extracted: str | None, expected: str) -> Score:
    return Score(ok, extracted, "" if ok else f"expected {expected}, got {extracted}")


def _reference_number(reference: str) -> str | None:
    """The reference as a number string when it is one (plain, boxed, or after GSM8K's "####"), else None."""
    if _parse_number(reference.strip()) is not None:
        return reference.strip()
    answer, source = _extract_number(reference)
    if source in ("boxed", "marker") and answer is not None and _parse_number(answer) is not None:
        return answer
    return None


def _score_number(text: str, reference: str) -> Score:
    extracted = extract_answer(text, "number")
    ref = _reference_number(reference)
    if ref is None:  # a symbolic reference ("\frac{\sqrt{3}}{2}", "x^2"): compare the strings
        boxes = _boxed_contents(reference)
        ref = (boxes[-1] if boxes else reference).strip()
        target = _normalise_text(ref)
        matching = [c for c in (extracted, extract_answer(text, "text")) if c and _normalise_text(c) == target]
        extracted, ok = (matching[0], True) if matching else (extracted, False)
    else:
        ok = extracted is not None and numbers_equal(extracted, ref)
    return Score(False, None, NO_ANSWER) if extracted is None else _verdict(ok, extracted, ref)


def _score_choice(text: str, reference: str) -> Score:
    extracted = extract_answer(text, "choice")
    m = re.fullmatch(r"\s*\(?\s*([A-Ja-j])\s*\)?\.?\s*", reference)
    ref = m.group(1).upper() if m else extract_answer(reference, "choice")
    if ref is None:
        return Score(False, extracted, f"reference is not a choice letter: {reference!r}")
    if extracted is None:
        return Score(False, None, NO_ANSWER)
    return _verdict(extracted == ref, extracted, ref)


def _score_text(text: str, reference: str) -> Score:
    extracted = extract_answer(text, "text")
    if extracted is None:
        return Score(False, None, NO_ANSWER)
    ref = extract_answer(reference, "text") or reference.strip()
    return _verdict(_normalise_text(extracted) == _normalise_text(ref) or numbers_equal(extracted, ref), extracted, ref)


def _score_code(text: str, prompt: str, tests: str | None, entry_point: str | None,
                timeout_s: float, memory_mb: int, sandbox: str) -> Score:
    extracted = extract_answer(text, "code")
    if not tests or not entry_point:
        return Score(False, extracted, "code scoring needs tests and entry_point")
    if extracted is None:
        return Score(False, None, NO_ANSWER)
    result = check_completion(prompt or "", extracted, tests, entry_point, timeout_s=timeout_s, memory_mb=memory_mb,
                              sandbox=sandbox)
    return Score(result.passed, extracted, result.status)


def score(text: str, reference: str, kind: Kind, *, prompt: str = "", tests: str | None = None,
          entry_point: str | None = None, timeout_s: float = 10.0, memory_mb: int = 512,
          sandbox: str = "bwrap") -> Score:
    """Whether ``text`` answers correctly, what answer was read from it, and why not when it does not; code runs in
    the ``sandbox`` (``tools.python_sandbox``)."""
    text = text if isinstance(text, str) else ""
    reference = reference if isinstance(reference, str) else ("" if reference is None else str(reference))
    try:
        if kind == "code":
            return _score_code(text, prompt, tests, entry_point, timeout_s, memory_mb, sandbox)
        scorer = {"number": _score_number, "choice": _score_choice, "text": _score_text}.get(kind)
        return scorer(text, reference) if scorer else Score(False, None, f"unknown answer kind: {kind!r}")
    except Exception as exc:  # noqa: BLE001 - a scorer bug on one odd response must not end the whole run
        return Score(False, None, f"scoring error: {type(exc).__name__}: {exc}")
