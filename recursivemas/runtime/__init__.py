"""Runs a topology's rounds over any objects with the backbone interface (in-process engines or actors)."""

from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.engine.sampling import Sampling
from recursivemas.runtime.calls import GenerateCall, GenerationOverrides, RunOptions, ThinkCall, Thought
from recursivemas.runtime.executor import Executor
from recursivemas.runtime.graph import Plan
from recursivemas.runtime.local import InProcess, build_links, load_engines, load_system
from recursivemas.runtime.query import MissingFieldError, Query
from recursivemas.runtime.runner import Runner

__all__ = ["AgentUsage", "Executor", "GenerateCall", "GenerationOverrides", "InProcess", "MissingFieldError", "Plan",
           "Query", "RunOptions", "RunResult", "Runner", "Sampling", "ThinkCall", "Thought", "build_links",
           "load_engines", "load_system"]
