"""Training rows: where they come from, which field each agent learns, and errors that point at the exact line.

Rows for inner and outer training (``docs/architecture.md``, Training) come from two places: a user's JSON Lines
file, or a procedural generator from ``reasoning_gym`` (deterministic from a seed, with a held-out split that never
shares a question with training). Every row has a ``question`` and an ``answer``; the paper rewrites each answer into
role targets, so a sequential row may also carry ``plan`` and ``refined_plan``. Any extra field is kept as-is.

Data files are written by hand or by scripts and break in boring ways (a stray comma, a missing key on line 4812).
A training job that dies hours later, or a traceback from deep inside pydantic, costs far more than a loader that
reads the whole file first and reports every bad line (up to 20) at once, naming file, 1-based line, field and fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from recursivemas.errors import DataError

__all__ = [
    "SUPPORTED_DATASETS",
    "DataError",
    "RoleTargets",
    "Row",
    "check_rows_have",
    "generate_rows",
    "generator_options",
    "load_jsonl",
    "resolve_targets",
    "save_jsonl",
    "summarise_problems",
    "jsonl_lines",
]

MAX_PROBLEMS = 20
"""At most this many problems are listed in one :class:`DataError`; the rest are counted."""

SUPPORTED_DATASETS = ("basic_arithmetic", "gsm_symbolic", "channel_recall", "channel_operands")
"""Names accepted by :func:`generate_rows`: ``reasoning_gym`` dataset names, and the channel tasks
(:mod:`recursivemas.train.channel`), whose facts sit in a ``context`` field only some agents read."""

RoleTargets = dict[str, str]
"""Agent name -> name of the row field that is that agent's teacher-forced target text."""


def summarise_problems(header: str, problems: Sequence[str], total: int | None = None) -> str:
    total = len(problems) if total is None else total
    shown = list(problems[:MAX_PROBLEMS])
    lines = [header, *(f"  - {p}" for p in shown)]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more problem(s) not shown")
    return "\n".join(lines)


class Row(BaseModel):
    """One training example: ``question`` and ``answer`` (non-empty strings) plus any extra role-target fields.

    Numbers given for ``question``/``answer`` (e.g. ``"answer": 42`` in a JSON file) are accepted as their text.
    """

    model_config = ConfigDict(extra="allow")

    question: str
    answer: str

    @field_validator("question", "answer", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("question", "answer")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v

    def fields(self) -> dict[str, str]:
        """Every text field of the row but the question: what a template's ``{context}`` (or ``{document}``, ...)
        is filled from, for the agents that name it."""
        return {k: v for k, v in (self.model_extra or {}).items() if isinstance(v, str)} | {"answer": self.answer}

    def query(self):
        """The row as a runner's question, with its fields."""
        from recursivemas.runtime.query import Query

        return Query(self.question, self.fields())

    def target(self, field: str) -> str | None:
        """The text in ``field`` (``question``, ``answer`` or an extra field), or None if absent, empty or not text."""
        if field in ("question", "answer"):
            return getattr(self, field)
        value = (self.model_extra or {}).get(field)
        if isinstance(value, str) and value.strip():
            return value
        return None


def _row_problems(obj: Any, where: str) -> tuple[Row | None, list[str]]:
    """Validate one decoded JSON value; return the row or a list of problems prefixed with ``where``."""
    if not isinstance(obj, dict):
        kind = type(obj).__name__ if obj is not None else "null"
        return None, [f'{where}: expected a JSON object like {{"question": ..., "answer": ...}}, got a {kind}']
    problems = []
    for field in ("question", "answer"):
        if field not in obj:
            problems.append(f"{where}, field '{field}': missing; add a non-empty \"{field}\" string")
        else:
            v = obj[field]
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                problems.append(f"{where}, field '{field}': must be a string, got {type(v).__name__}; quote it")
            elif isinstance(v, str) and not v.strip():
                problems.append(f"{where}, field '{field}': empty; give a non-empty \"{field}\" string")
    if problems:
        return None, problems
    try:
        return Row.model_validate(obj), []
    except ValidationError as e:  # defensive: anything the checks above did not anticipate
        return None, [f"{where}, field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in e.errors()]


def jsonl_lines(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    """Each non-blank line of a JSON Lines file as ``(line number, "FILE line N", object, None)``; a line that is not
    JSON comes as ``(line number, where, None, the problem and its fix)``, so callers can report every bad line."""
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                problem = f"{where}: invalid JSON ({e.msg} at column {e.colno}); fix the syntax on this line"
                yield lineno, where, None, problem
                continue
            yield lineno, where, obj, None


def load_jsonl(path: str | Path, max_rows: int | None = None) -> list[Row]:
    """Read rows from a JSON Lines file (one object per line; blank lines skipped).

    Reads at most ``max_rows`` non-blank lines. Every bad line is collected (up to 20 listed) and reported in a
    single :class:`DataError` naming the file, the 1-based line number and the field.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"training data file not found: {p} (check the path; expected a .jsonl file)")
    rows: list[Row] = []
    problems: list[str] = []
    for seen, (_, where, obj, bad) in enumerate(jsonl_lines(p)):
        if max_rows is not None and seen >= max_rows:
            break
        if bad:
            problems.append(bad)
            continue
        row, errs = _row_problems(obj, where)
        if errs:
            problems.extend(errs)
        else:
            rows.append(row)
    if problems:
        raise DataError(summarise_problems(f"{len(problems)} problem(s) in training data {p}:", problems))
    return rows


def save_jsonl(rows: Iterable[Row], path: str | Path) -> None:
    """Write rows as JSON Lines (UTF-8, one object per line, extra fields kept); parent folders are created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.model_dump(), ensure_ascii=False) + "\n")


def resolve_targets(agents: Sequence[str], decoder: str, mapping: Mapping[str, str] | None = None) -> RoleTargets:
    """Map every agent to the row field it is teacher-forced on.

    Agents named in ``mapping`` get that field; every other agent (the decoder included) defaults to ``"answer"``:
    the paper rewrites answers into role targets (e.g. ``plan``, ``refined_plan``), and without those the answer is
    the best target available. Unknown agent names or empty field names raise :class:`DataError`.
    """
    agents = list(agents)
    if decoder not in agents:
        raise DataError(f"decoder '{decoder}' is not an agent of this topology; agents are: {', '.join(agents)}")
    mapping = dict(mapping or {})
    problems = []
    for name, field in mapping.items():
        if name not in agents:
            problems.append(f"unknown agent '{name}' in role targets; the topology's agents are: {', '.join(agents)}")
        elif not isinstance(field, str) or not field.strip():
            problems.append(f"agent '{name}': target field must be a non-empty field name, got {field!r}")
    if problems:
        raise DataError(summarise_problems("bad role-target mapping:", problems))
    return {name: mapping.get(name, "answer") for name in agents}


def check_rows_have(rows: Sequence[Row], targets: Mapping[str, str]) -> None:
    """Raise :class:`DataError` if any row lacks (or has empty) a field that ``targets`` maps an agent to.

    Rows are numbered from 1 (``row 1`` is ``rows[0]``, the first row of the file); up to 20 problems are listed.
    """
    problems: list[str] = []
    total = 0
    fields = sorted(set(targets.values()))
    for i, row in enumerate(rows, start=1):
        for field in fields:
            if row.target(field) is None:
                total += 1
                if len(problems) < MAX_PROBLEMS:
                    users = ", ".join(a for a, f in targets.items() if f == field)
                    problems.append(
                        f"row {i}, field '{field}' (target of {users}): missing or empty; add it to the row "
                        f"or map the agent to another field (default: 'answer')"
                    )
    if total:
        raise DataError(summarise_problems(f"{total} missing target(s) in training rows:", problems, total))


SPLITS = ("train", "validation", "heldout")
VALIDATION_FRACTION = 0.1
"""The share of generated questions set aside for validation during training, carved from the train side."""


def split_of(question: str, heldout_fraction: float = 0.2, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """Stable split: depends only on the question text (sha256), not on seed, order or n. The held-out (test) split
    is the hash's first ``heldout_fraction``, as it always was; validation is the next ``validation_fraction``."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < heldout_fraction:
        return "heldout"
    return "validation" if h < heldout_fraction + validation_fraction else "train"


def generator_options(dataset: str) -> list[str]:
    """The settings ``generate_rows(dataset, ..., options=...)`` accepts (``size`` and ``seed`` are set by it)."""
    import reasoning_gym.factory

    config_class = reasoning_gym.factory.DATASETS[dataset][1]
    return [f.name for f in dataclasses.fields(config_class) if f.name not in ("size", "seed")]


def _create(reasoning_gym, dataset: str, size: int, seed: int, options: Mapping[str, Any]):
    accepted = generator_options(dataset)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"{dataset} options: unknown {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
    try:
        return reasoning_gym.create_dataset(dataset, size=size, seed=seed, **options)
    except (AssertionError, TypeError, ValueError) as e:
        raise DataError(f"{dataset} options {dict(options)}: rejected by reasoning_gym: {e or type(e).__name__}") from e


def _channel_rows(task: str, n: int, seed: int, split: str, heldout_fraction: float,
                  options: Mapping[str, Any] | None) -> list[Row]:
    """The channel generators' rows: split by the hash of question and context together (the question alone
    repeats across items; what differs is what only the reader sees)."""
    from recursivemas.train.channel import channel_items

    if options:
        raise DataError(f"{task} options: {sorted(options)}; the channel tasks take none")
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    for drawn, item in enumerate(channel_items(task, seed)):
        key = (item["question"], item["context"])
        if key not in seen and split_of(f"{key[0]}\n{key[1]}", heldout_fraction) == split:
            seen.add(key)
            rows.append(Row(**item))
        if len(rows) == n:
            return rows
        if drawn > 1000 * max(n, 1) + 10_000:  # pragma: no cover - the task has fewer distinct items
            raise DataError(f"dataset '{task}' produced only {len(rows)} distinct {split} rows; ask for fewer")
    return rows


def generate_rows(dataset: str, n: int, seed: int, split: str = "train", heldout_fraction: float = 0.2,
                  options: Mapping[str, Any] | None = None) -> list[Row]:
    """The first ``n`` rows of ``split`` ("train", "validation" or "heldout") from a ``reasoning_gym`` generator.

    ``options`` are the generator's own settings (for ``basic_arithmetic``: ``max_terms``, ``max_digits``,
    ``operators``, ...): the way to pick a difficulty the backbones can learn. Train and evaluate with the same ones.

    Items are generated in order, deterministically from ``seed`` (item i does not depend on the pool size), and
    each question goes to a split by a stable hash of its text (:func:`split_of`). So the same question never lands
    in two splits, and the first k rows are the same for any ``n >= k``. Duplicate questions within a split are
    dropped.
    """
    if dataset not in SUPPORTED_DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; supported: {', '.join(SUPPORTED_DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 < heldout_fraction < 1.0 - VALIDATION_FRACTION:
        raise DataError(f"heldout_fraction must be between 0 and {1 - VALIDATION_FRACTION}, got {heldout_fraction}")
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    if dataset.startswith("channel_"):
        return _channel_rows(dataset, n, seed, split, heldout_fraction, options)
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError("generate_rows needs reasoning_gym: pip install reasoning-gym") from e

    frac = {"heldout": heldout_fraction, "validation": VALIDATION_FRACTION}.get(
        split, 1.0 - heldout_fraction - VALIDATION_FRACTION)
    rows: list[Row] = []
    seen: set[str] = set()
    consumed = 0
    size = max(64, int(n / frac * 1.3) + 16)
    while len(rows) < n:
        ds = _create(reasoning_gym, dataset, size, seed, options or {})
        for idx in range(consumed, size):
            item = ds[idx]
            q, a = str(item["question"]), str(item["answer"])
            if split_of(q, heldout_fraction) != split or q in seen or not q.strip() or not a.strip():
                continue
            seen.add(q)
            rows.append(Row(question=q, answer=a))
            if len(rows) == n:
                break
        consumed = size
        if size > 1000 * max(n, 1) + 10_000:  # pragma: no cover - generator ran dry (only duplicates left)
            raise DataError(f"dataset '{dataset}' produced only {len(rows)} distinct {split} rows; ask for fewer")
        size *= 2
    return rows
