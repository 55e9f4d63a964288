"""Run untrusted model-written code for HumanEval-style checks, and say how it ended.

Code benchmarks execute whatever the model wrote, so it runs in the project's OS sandbox (``runtime/sandbox.py``:
bubblewrap namespaces, no network, no view of the host, hard limits, killed with all it started) rather than in the
evaluating process.
This module adds what scoring needs on top of that sandbox: a verdict that tells a wrong answer from a hang, a memory
blow-up or code that does not even parse, and a sentinel printed after the checks so a completion that calls
``sys.exit(0)`` before the asserts run is not counted as passing.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from recursivemas.runtime.sandbox import SandboxMode
from recursivemas.runtime.tools import PythonTool, ToolResult

Status = Literal["passed", "failed", "timeout", "memory", "error"]

_MAX_OUTPUT_CHARS = 4000  # what an ExecResult keeps (the tail, where the traceback ends)
_CAPTURE_CHARS = 1_000_000  # what the sandbox hands back, so the sentinel line cannot be truncated away
_KILLED_RE = re.compile(r"killed by signal (\S+) \(memory or CPU limit exceeded\?\)\s*$")
_OVER_BUDGET_RE = re.compile(r"stopped: the run went over its memory budget of \d+ MB [^\n]*\s*$")
_EXCEPTION_LINE_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::|\s*$)", re.MULTILINE)
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: Status
    output: str


def _tail(text: str, limit: int = _MAX_OUTPUT_CHARS) -> str:
    return text if len(text) <= limit else "...[truncated]...\n" + text[-limit:]


def _last_exception(output: str) -> str | None:
    names = _EXCEPTION_LINE_RE.findall(output)
    return names[-1].rsplit(".", 1)[-1] if names else None


def _classify(result: ToolResult, timeout_s: float, sentinel: str | None) -> ExecResult:
    output = result.output
    if result.ok:
        if sentinel is None:
            return ExecResult(True, "passed", _tail(output))
        lines = output.split("\n")
        if sentinel in lines:
            lines.remove(sentinel)
            return ExecResult(True, "passed", _tail("\n".join(lines)))
        note = "the program exited before the checks finished"
        return ExecResult(False, "failed", _tail(f"{output}\n{note}" if output else note))
    if output.startswith(("could not run the code", "refused:")):
        return ExecResult(False, "error", _tail(output))
    if _OVER_BUDGET_RE.search(output):
        return ExecResult(False, "memory", _tail(output))
    if output.rstrip().endswith(f"timed out after {timeout_s:g} s"):
        return ExecResult(False, "timeout", _tail(output))
    killed = _KILLED_RE.search(output)
    if killed is not None:  # SIGXCPU is the CPU-time limit, i.e. a hang; any other kill is taken as memory
        return ExecResult(False, "timeout" if killed.group(1) == "SIGXCPU" else "memory", _tail(output))
    exception = _last_exception(output)
    if exception == "MemoryError":
        return ExecResult(False, "memory", _tail(output))
    if exception in _SYNTAX_ERRORS:
        return ExecResult(False, "error", _tail(output))
    return ExecResult(False, "failed", _tail(output))


def _run(source: str, timeout_s: float, memory_mb: int, sentinel: str | None, sandbox: SandboxMode) -> ExecResult:
    if not isinstance(source, str):
        return ExecResult(False, "error", f"source is not a string: {type(source).__name__}")
    try:
        tool = PythonTool(timeout_s=timeout_s, memory_mb=memory_mb, max_output_chars=_CAPTURE_CHARS, sandbox=sandbox)
        return _classify(tool(source), tool.timeout_s, sentinel)
    except Exception as exc:  # noqa: BLE001 - a sandbox failure is a verdict on this sample, not a crash of the run
        return ExecResult(False, "error", f"could not run the code: {type(exc).__name__}: {exc}")


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 512,
                sandbox: SandboxMode = "bwrap") -> ExecResult:
    """Run a whole program in the sandbox; it passes when it exits with status 0 within the limits."""
    return _run(source, timeout_s, memory_mb, sentinel=None, sandbox=sandbox)


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")
    except Exception:  # noqa: BLE001 - SyntaxError, but also ValueError (NUL bytes), RecursionError, ...
        return False
    return True


def build_program(prompt: str, completion: str, tests: str, entry_point: str) -> str:
    """The HumanEval program: the candidate function, the tests (which define ``check``), then ``check(entry)``.

    A completion that defines the entry point itself is a whole function; it still goes after the prompt when that
    compiles, so the prompt's imports and helper functions stay defined (the prompt's own stub is then redefined).
    Otherwise the completion is the body the model wrote as a continuation of the prompt (indented when the model
    wrote it flush left and only the indented version compiles).
    """
    if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", completion, re.MULTILINE):
        combined = f"{prompt.rstrip()}\n\n{completion}"
        candidate = combined if prompt.strip() and _compiles(combined) else completion
    else:
        candidate = prompt + completion
        if not _compiles(candidate) and not completion[:1].isspace():  # a body written flush left
            indented = prompt + "".join("    " + line if line.strip() else line
                                        for line in completion.splitlines(keepends=True))
            candidate = indented if _compiles(indented) else candidate
    return f"{candidate}\n\n{tests}\n\ncheck({entry_point})\n"


def check_completion(prompt: str, completion: str, tests: str, entry_point: str,
                     timeout_s: float = 10.0, memory_mb: int = 512, sandbox: SandboxMode = "bwrap") -> ExecResult:
    """Run a HumanEval-style check of ``completion`` (already extracted code); never raises."""
    try:
        if not entry_point or not str(entry_point).isidentifier():
            return ExecResult(False, "error", f"invalid entry point: {entry_point!r}")
        sentinel = f"__rmas_checks_done_{secrets.token_hex(8)}__"
        program = build_program(prompt or "", completion or "", tests or "", entry_point)
        return _run(f"{program}print({sentinel!r})\n", timeout_s, memory_mb, sentinel=sentinel, sandbox=sandbox)
    except Exception as exc:  # noqa: BLE001 - see _run
        return ExecResult(False, "error", f"could not build the program: {type(exc).__name__}: {exc}")
