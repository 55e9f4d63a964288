"""A served topology as a runner, for Python callers on the Ray cluster that serves it.

``ServedSystem("sequential-demo").run_batch(questions, mode="latent")`` offers the executor's
``run_batch(questions, *, mode, rounds, latent_steps, generation, on_turn)`` over the running Serve application, so
``eval`` and the benchmarks can measure a deployment as they measure an in-process system or a cluster. The runs
happen in the router replica: ``on_turn`` hears every turn after the run, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recursivemas.config import Mode, Topology
from recursivemas.runtime import AgentUsage, GenerationOverrides, RunOptions, RunResult
from recursivemas.runtime.accounting import report_turns
from recursivemas.serve.deployments import ROUTER


class ServedSystem:
    def __init__(self, model: str, app_name: str = "recursivemas", router=None) -> None:
        if router is None:
            from ray import serve

            router = serve.get_deployment_handle(ROUTER, app_name=app_name)
        self.model, self.router = model, router
        self.topology = Topology.model_validate(router.topology.remote(model).result())

    def run_batch(self, questions: Sequence[str], *, mode: Mode = "latent", rounds: int | None = None,
                  latent_steps: int | None = None, generation: GenerationOverrides | Mapping[str, Any] | None = None,
                  on_turn: Callable[[AgentUsage], None] | None = None) -> list[RunResult]:
        options = RunOptions.of(mode, rounds, latent_steps, generation)
        return report_turns(self.router.run_batch.remote(self.model, list(questions), options).result(), on_turn)

    def run(self, question: str, **options) -> RunResult:
        return self.run_batch([question], **options)[0]
