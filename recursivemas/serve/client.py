"""A served topology as a runner, for Python callers on the Ray cluster that serves it.

``ServedSystem("sequential-demo").run_batch(questions, mode="latent")`` offers the executor's
``run_batch(questions, *, mode, rounds, latent_steps, generation, on_turn)`` over the running Serve application, so
``eval`` and the benchmarks can measure a deployment as they measure an in-process system or a cluster. A question
is a string or a :class:`~recursivemas.runtime.Query` with the fields its agents read (``run(question,
context=...)``); a missing field is a :class:`~recursivemas.runtime.MissingFieldError` here, before anything is
sent. The runs happen in the router replica: ``on_turn`` hears every turn after the run, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recursivemas.config import Mode, Topology
from recursivemas.runtime import AgentUsage, GenerationOverrides, RunOptions, RunResult
from recursivemas.runtime.accounting import report_turns
from recursivemas.runtime.query import Query, as_queries, check_fields
from recursivemas.serve.deployments import ROUTER


class ServedSystem:
    def __init__(self, model: str, app_name: str = "recursivemas", router=None) -> None:
        if router is None:
            from ray import serve

            router = serve.get_deployment_handle(ROUTER, app_name=app_name)
        self.model, self.router = model, router
        self.topology = Topology.model_validate(router.topology.remote(model).result())

    def run_batch(self, questions: Sequence[str | Query], *, mode: Mode = "latent", rounds: int | None = None,
                  latent_steps: int | None = None, generation: GenerationOverrides | Mapping[str, Any] | None = None,
                  on_turn: Callable[[AgentUsage], None] | None = None) -> list[RunResult]:
        options = RunOptions.of(mode, rounds, latent_steps, generation)
        queries = as_queries(questions)
        check_fields(self.topology, queries, mode)
        return report_turns(self.router.run_batch.remote(self.model, queries, options).result(), on_turn)

    def run(self, question: str | Query, *, context: str | None = None, fields: Mapping[str, str] | None = None,
            **options) -> RunResult:
        """One question, with the ``context`` (and other ``fields``) its agents' templates name."""
        return self.run_batch([Query.of(question, context, fields)], **options)[0]
