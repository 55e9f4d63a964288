"""The one interface every loaded system offers its callers, wherever its rounds run.

An in-process :class:`~recursivemas.runtime.Executor`, a cluster's ``RemoteSystem``, a served ``ServedSystem`` and
the soft-prompt baseline all answer ``run_batch(questions, options, *, on_turn=None)``, so the CLI, ``eval`` and the
benchmarks measure each of them with the same code. ``options`` is a :class:`~recursivemas.runtime.RunOptions`
(None: the topology's settings); a question is a string or a :class:`~recursivemas.runtime.Query`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from recursivemas.config import Topology
from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.runtime.calls import RunOptions
from recursivemas.runtime.query import Query

OnTurn = Callable[[AgentUsage], None]


@runtime_checkable
class Runner(Protocol):
    topology: Topology

    def run_batch(self, questions: Sequence[str | Query], options: RunOptions | None = None, *,
                  on_turn: OnTurn | None = None) -> list[RunResult]: ...


class SingleRun:
    """``run(question, options, *, context, fields, on_turn)`` for a runner that has ``run_batch``: one question,
    with the ``context`` (and other ``fields``) its agents' templates name."""

    def run(self, question: str | Query, options: RunOptions | None = None, *, context: str | None = None,
            fields: Mapping[str, str] | None = None, on_turn: OnTurn | None = None) -> RunResult:
        return self.run_batch([Query.of(question, context, fields)], options, on_turn=on_turn)[0]
