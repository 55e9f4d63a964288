"""What a system is asked: a question, and the named text fields some agents read beside it.

A retriever reads documents, a tool agent reads tool output, an expert reads a long context, and the solver does not.
A :class:`Query` carries that text as *fields* (``{"context": ...}``); an agent sees a field only where its template
names it (``{context}``), so the hand-offs are the only way the others learn of it. A bare string is a query with no
fields, so every runner still takes plain questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

from recursivemas.config import Mode, Topology
from recursivemas.errors import MissingFieldError, RequestError

CONTEXT = "context"


@dataclass(frozen=True)
class Query:
    question: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, question: str | Query, context: str | None = None, fields: Mapping[str, str] | None = None
           ) -> Query:
        """A query from a question (or a query) plus ``context`` (the ``context`` field) and other ``fields``."""
        base = question if isinstance(question, Query) else cls(question)
        merged = {**base.fields, **(fields or {})}
        if context is not None:
            merged[CONTEXT] = context
        for name, value in merged.items():
            if not isinstance(value, str):
                raise RequestError(f"fields.{name}: must be text, got {type(value).__name__}; pass a string",
                                   f"fields.{name}")
        return cls(base.question, merged) if merged != dict(base.fields) else base


def as_queries(questions: Sequence[str | Query]) -> list[Query]:
    return [q if isinstance(q, Query) else Query(q) for q in questions]


def question_text(question: str | Query) -> str:
    return question.question if isinstance(question, Query) else question


FieldNeeds = Mapping[str, Mapping[str, Sequence[str]]]
"""What a topology's runs need, per mode: mode -> {field: the agents whose templates name it}."""


def field_needs(topology: Topology) -> dict[str, dict[str, list[str]]]:
    """``Topology.fields`` for every mode: what a front door (the ingress, the CLI) checks a request's fields
    against, computed once where the topology is."""
    return {mode: topology.fields(mode) for mode in get_args(Mode)}


def named_fields(needs: FieldNeeds) -> list[str]:
    """Every field a topology's templates name, in any mode, in order: a field outside it is a typo to refuse."""
    return list(dict.fromkeys(name for by_mode in needs.values() for name in by_mode))


def check_fields(topology: Topology, queries: Sequence[Query], mode: Mode) -> None:
    """Every field the agents of a run in ``mode`` read is given by every query (a :class:`MissingFieldError`
    naming the first that is not)."""
    needed = topology.fields(mode)
    for index, query in enumerate(queries):
        for name, agents in needed.items():
            if name not in query.fields:
                which = f"question {index}" if len(queries) > 1 else "the question"
                given = sorted(query.fields) or "none"
                raise MissingFieldError(
                    f"fields.{name}: the template of agent {agents[0]!r} names {{{name}}}, but {which} brings no "
                    f"{name!r} field (fields given: {given}); pass it ({name}=... in Python, "
                    f'"recursivemas": {{"fields": {{"{name}": ...}}}} over HTTP), or remove {{{name}}} from the '
                    "template", name)
