"""A served topology as a runner, for Python callers on the Ray cluster that serves it.

``ServedSystem("sequential-demo").run_batch(questions, RunOptions(mode="latent"))`` offers the executor's
``run_batch(questions, options, *, on_turn)`` over the running Serve application, so
``eval`` and the benchmarks can measure a deployment as they measure an in-process system or a cluster. A question
is a string or a :class:`~recursivemas.runtime.Query` with the fields its agents read (``run(question,
context=...)``); a missing field is a :class:`~recursivemas.runtime.MissingFieldError` here, before anything is
sent. The runs happen in the router replica: ``on_turn`` hears every turn after the run, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from recursivemas.config import Topology
from recursivemas.runtime import RunOptions, RunResult
from recursivemas.runtime.accounting import report_turns
from recursivemas.runtime.query import Query, as_queries, check_fields
from recursivemas.runtime.runner import OnTurn, SingleRun
from recursivemas.serve.deployments import ROUTER


class ServedSystem(SingleRun):
    def __init__(self, model: str, app_name: str = "recursivemas", router=None) -> None:
        if router is None:
            from ray import serve

            router = serve.get_deployment_handle(ROUTER, app_name=app_name)
        self.model, self.router = model, router
        self.topology = Topology.model_validate(router.topology.remote(model).result())

    def run_batch(self, questions: Sequence[str | Query], options: RunOptions | None = None, *,
                  on_turn: OnTurn | None = None) -> list[RunResult]:
        options = RunOptions.of(options)
        queries = as_queries(questions)
        check_fields(self.topology, queries, options.mode)
        return report_turns(self.router.run_batch.remote(self.model, queries, options).result(), on_turn)
