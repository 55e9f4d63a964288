"""Tools for the deliberation pattern's tool-caller agent: a sandboxed Python tool, a pluggable
web-search tool, and an engine-agnostic loop that interleaves generation with tool calls.

Standard library only. The model calls a tool by writing ``<python>CODE</python>``, a fenced
```` ```python ```` block, or ``<search>QUERY</search>``; the result is fed back inside
``<result>...</result>`` and the model continues.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from recursivemas.runtime.sandbox import Limits, SandboxMode, SandboxUnavailable, run_python

STOP_STRINGS: tuple[str, ...] = ("</python>", "</search>")
SEARCH_UNAVAILABLE = "search is unavailable in this deployment; answer from your own knowledge or use python"

_CALL_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("python", re.compile(r"<python>(.*?)</python>", re.DOTALL)),
    ("python", re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)),
    ("search", re.compile(r"<search>(.*?)</search>", re.DOTALL)),
)


@dataclass
class ToolCall:
    name: str  # "python" | "search"
    argument: str
    end: int  # index in the parsed text just after the call's closing tag/fence


@dataclass
class ToolResult:
    name: str
    ok: bool
    output: str


def parse_tool_call(text: str) -> ToolCall | None:
    """Return the first complete tool call in ``text`` (earliest opening), or None."""
    best: tuple[int, str, re.Match[str]] | None = None
    for name, pattern in _CALL_PATTERNS:
        m = pattern.search(text)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), name, m)
    if best is None:
        return None
    _, name, m = best
    return ToolCall(name=name, argument=m.group(1).strip(), end=m.end())


def _truncate(text: str, limit: int) -> str:
    """Keep the head and the tail (where a traceback's useful end lies) of an over-long output."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    marker = f"\n...[truncated {len(text) - limit} chars]...\n"
    return text[:head] + marker + (text[-tail:] if tail else "")


class PythonTool:
    """Run model-written code in the OS sandbox (:mod:`recursivemas.runtime.sandbox`): a fresh system interpreter
    in its own namespaces, with no network, no view of the server and hard limits; killed, with all it started,
    when it returns or times out. ``sandbox="none"`` runs it unisolated, with rlimits only (an explicit opt-out)."""

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512, max_output_chars: int = 4000,
                 sandbox: SandboxMode = "bwrap"):
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.sandbox = sandbox

    def __call__(self, code: str) -> ToolResult:
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                        output_bytes=max(4 * self.max_output_chars, 1 << 16))
        try:
            done = run_python(code, limits, self.sandbox)
        except SandboxUnavailable as exc:
            return ToolResult("python", False, f"refused: no sandbox for model-written code ({exc}); set "
                                               "tools.python_sandbox: none to opt out")
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return ToolResult("python", False, f"could not run the code: {type(exc).__name__}: {exc}")
        rc, err = done.returncode, done.stderr
        parts = [done.stdout.rstrip("\n")]
        if err.strip():
            parts.append(err.rstrip("\n"))
        if done.truncated:
            parts.append("[output over the limit was dropped]")
        if done.over_budget:
            parts.append(f"stopped: the run went over its memory budget of {self.memory_mb} MB (its processes, "
                         "files and shared memory together)")
        elif done.timed_out:
            parts.append(f"timed out after {self.timeout_s:g} s")
        elif rc is not None and rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
            parts.append(f"killed by signal {sig} (memory or CPU limit exceeded?)")
        elif rc and not err.strip():
            parts.append(f"exit code {rc}")
        output = _truncate("\n".join(p for p in parts if p), self.max_output_chars)
        return ToolResult("python", not done.timed_out and not done.over_budget and rc == 0, output)


SearchFn = Callable[[str], str]


class SearchTool:
    """Web search through a pluggable function; without one, every call says search is unavailable."""

    def __init__(self, fn: SearchFn | None = None):
        self.fn = fn

    @property
    def available(self) -> bool:
        return self.fn is not None

    def __call__(self, query: str) -> ToolResult:
        if self.fn is None:
            return ToolResult("search", False, SEARCH_UNAVAILABLE)
        try:
            return ToolResult("search", True, str(self.fn(query)))
        except Exception as exc:  # noqa: BLE001 - a failing backend must not break the agent
            return ToolResult("search", False, f"search failed: {type(exc).__name__}: {exc}")


@dataclass
class Toolbox:
    python: PythonTool = field(default_factory=PythonTool)
    search: SearchTool = field(default_factory=SearchTool)
    max_rounds: int = 5

    def instructions(self) -> str:
        lines = [
            "You may use tools before answering.",
            "To run Python, write code between <python> and </python>; use print() to show "
            f"output (the code runs in a fresh process with a {self.python.timeout_s:g} s limit).",
        ]
        if self.search.available:
            lines.append("To search the web, write a query between <search> and </search>.")
        else:
            lines.append("Web search is unavailable; do not try to search.")
        lines.append("Each tool result comes back inside <result>...</result>. "
                     f"You may call tools up to {self.max_rounds} times; after the last result, "
                     "give your final answer.")
        return "\n".join(lines)

    def execute(self, call: ToolCall) -> ToolResult:
        if call.name == "python":
            return self.python(call.argument)
        if call.name == "search":
            return self.search(call.argument)
        return ToolResult(call.name, False, f"unknown tool: {call.name!r}")

    def format_result(self, result: ToolResult) -> str:
        return f"\n<result>\n{result.output}\n</result>\n"


def run_tool_loop(generate: Callable[[str], tuple[str, int]],
                  toolbox: Toolbox) -> tuple[str, int, list[ToolResult]]:
    """Interleave generation and tool calls.

    ``generate(prefix)`` continues the response given the response text so far and returns
    ``(new_text, n_new_tokens)``; it should stop at :data:`STOP_STRINGS`. Each complete call in the
    new text (up to ``toolbox.max_rounds`` calls) is executed, the text is cut right after the call
    and its formatted result appended, and generation resumes. Once no call is made (or the round
    budget is spent) the loop stops.

    Returns ``(text, total_tokens, results)`` where ``text`` is the full response including calls
    and results; the final answer is the text after the last result (see :func:`final_answer`).
    """
    text, total, results = "", 0, []
    while True:
        new, n = generate(text)
        total += int(n)
        call = parse_tool_call(new)
        if call is None or len(results) >= toolbox.max_rounds:
            return text + new, total, results
        result = toolbox.execute(call)
        results.append(result)
        text += new[:call.end] + toolbox.format_result(result)


def final_answer(text: str) -> str:
    """The text after the last ``</result>`` (the whole text if there is none), stripped."""
    return text.rsplit("</result>", 1)[-1].strip()
