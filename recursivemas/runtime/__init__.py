"""Runs a topology's rounds over any objects with the backbone interface (in-process engines or actors)."""

from recursivemas.runtime.accounting import AgentUsage, RunResult
from recursivemas.runtime.executor import Executor
from recursivemas.runtime.graph import Plan
from recursivemas.runtime.local import build_links, load_engines, load_system

__all__ = ["AgentUsage", "Executor", "Plan", "RunResult", "build_links", "load_engines", "load_system"]
