import os
import sys
import time

import pytest

from recursivemas.runtime.tools import (
    STOP_STRINGS,
    PythonTool,
    SearchTool,
    ToolCall,
    Toolbox,
    ToolResult,
    final_answer,
    parse_tool_call,
    run_tool_loop,
)

# ---------------------------------------------------------------- parse_tool_call

def test_parse_python_tag():
    text = "Let me compute.<python>\n  print(2+2)\n</python> trailing"
    call = parse_tool_call(text)
    assert call == ToolCall("python", "print(2+2)", text.index(" trailing"))
    assert text[: call.end].endswith("</python>")


def test_parse_fenced_block():
    text = "Code:\n```python\nx = 1\nprint(x)\n```\nand more"
    call = parse_tool_call(text)
    assert call is not None and call.name == "python"
    assert call.argument == "x = 1\nprint(x)"
    assert text[: call.end].endswith("```") and text[call.end:] == "\nand more"


def test_parse_search_tag():
    text = "<search>  capital of France \n</search>"
    call = parse_tool_call(text)
    assert call == ToolCall("search", "capital of France", len(text))


def test_parse_first_of_several():
    text = "<search>q1</search> then <python>print(1)</python> and ```python\nprint(2)\n```"
    call = parse_tool_call(text)
    assert (call.name, call.argument) == ("search", "q1")
    text2 = "```python\nprint(2)\n``` then <search>q</search>"
    assert parse_tool_call(text2).argument == "print(2)"
    text3 = "<python>a=1</python><python>b=2</python>"
    call3 = parse_tool_call(text3)
    assert call3.argument == "a=1" and call3.end == len("<python>a=1</python>")


def test_parse_incomplete_is_none():
    assert parse_tool_call("<python>print(1)") is None
    assert parse_tool_call("```python\nprint(1)\n") is None
    assert parse_tool_call("<search>foo") is None
    assert parse_tool_call("no calls here") is None


def test_stop_strings():
    assert set(STOP_STRINGS) == {"</python>", "</search>"}


# ---------------------------------------------------------------- PythonTool

def test_python_prints():
    res = PythonTool()("print(2+2)")
    assert res == ToolResult("python", True, "4")


def test_python_exception_traceback_tail():
    res = PythonTool()("print('before')\nraise ZeroDivisionError('boom')")
    assert not res.ok
    assert res.output.startswith("before")
    assert "ZeroDivisionError: boom" in res.output.splitlines()[-1]


def test_python_timeout_kills():
    t0 = time.monotonic()
    res = PythonTool(timeout_s=1)("while True: pass")
    assert time.monotonic() - t0 < 5
    assert not res.ok and "timed out after 1 s" in res.output


def test_python_nonzero_exit():
    res = PythonTool()("print('x')\nimport sys; sys.exit(3)")
    assert not res.ok and res.output == "x\nexit code 3"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_python_memory_limit():
    res = PythonTool(memory_mb=256)("x = bytearray(2*1024**3)\nprint('allocated')")
    assert not res.ok
    assert "MemoryError" in res.output and "allocated" not in res.output


def test_python_output_truncation():
    res = PythonTool(max_output_chars=100)("print('a' * 5000)\nprint('END')")
    assert res.ok
    assert "truncated" in res.output
    assert len(res.output) < 200
    assert res.output.startswith("a") and res.output.endswith("END")


def test_python_env_is_minimal(monkeypatch):
    monkeypatch.setenv("SECRET_X", "1")
    assert os.environ["SECRET_X"] == "1"
    res = PythonTool()("import os; print(os.environ.get('SECRET_X'))")
    assert res == ToolResult("python", True, "None")


def test_python_runs_in_its_own_temp_dir():
    res = PythonTool()("import os; print(os.getcwd(), os.listdir('.'))")
    assert res == ToolResult("python", True, "/tmp []")


def test_python_stdin_is_closed():
    res = PythonTool(timeout_s=5)("import sys; print(repr(sys.stdin.read()))")
    assert res == ToolResult("python", True, "''")


def test_python_bad_code_does_not_raise():
    res = PythonTool()("def (:")
    assert not res.ok and "SyntaxError" in res.output
    res = PythonTool()("print('a\x00b')")  # NUL bytes cannot go into argv
    assert not res.ok


# ---------------------------------------------------------------- SearchTool

def test_search_unavailable():
    tool = SearchTool()
    assert not tool.available
    res = tool("anything")
    assert not res.ok and "unavailable" in res.output


def test_search_with_fn():
    tool = SearchTool(lambda q: f"results for {q}")
    assert tool.available
    assert tool("cats") == ToolResult("search", True, "results for cats")


def test_search_fn_raising():
    def bad(q):
        raise RuntimeError("backend down")

    res = SearchTool(bad)("x")
    assert not res.ok and "backend down" in res.output


# ---------------------------------------------------------------- Toolbox

def test_instructions_mention_search_only_when_available():
    without = Toolbox().instructions()
    with_search = Toolbox(search=SearchTool(lambda q: "")).instructions()
    for text in (without, with_search):
        assert "<python>" in text and "print()" in text and "<result>" in text
    assert "<search>" not in without and "unavailable" in without.lower()
    assert "<search>" in with_search and "unavailable" not in with_search.lower()


def test_execute_and_format():
    box = Toolbox(search=SearchTool(lambda q: q.upper()))
    assert box.execute(ToolCall("search", "hi", 0)) == ToolResult("search", True, "HI")
    assert box.execute(ToolCall("python", "print(7)", 0)).output == "7"
    assert not box.execute(ToolCall("calculator", "1+1", 0)).ok
    assert box.format_result(ToolResult("python", True, "7")) == "\n<result>\n7\n</result>\n"


# ---------------------------------------------------------------- run_tool_loop

def test_run_tool_loop_scripted():
    prefixes = []
    script = [
        ("I will compute. <python>print(6*7)</python> hallucinated <result>99</result>", 10),
        ("The answer is 42.", 5),
    ]

    def generate(prefix):
        prefixes.append(prefix)
        return script[len(prefixes) - 1]

    text, tokens, results = run_tool_loop(generate, Toolbox())
    assert tokens == 15
    assert results == [ToolResult("python", True, "42")]
    assert prefixes[0] == ""
    assert prefixes[1] == "I will compute. <python>print(6*7)</python>\n<result>\n42\n</result>\n"
    assert "hallucinated" not in text and "99" not in text
    assert text == prefixes[1] + "The answer is 42."
    assert final_answer(text) == "The answer is 42."


def test_run_tool_loop_max_rounds():
    calls = []

    def generate(prefix):
        calls.append(prefix)
        return "<search>again</search>", 3

    box = Toolbox(search=SearchTool(lambda q: "nothing"), max_rounds=2)
    text, tokens, results = run_tool_loop(generate, box)
    assert len(results) == 2 and len(calls) == 3
    assert tokens == 9
    assert text.count("<result>") == 2
    assert text.endswith("<search>again</search>")


def test_run_tool_loop_no_tools():
    text, tokens, results = run_tool_loop(lambda p: ("Just 5.", 2), Toolbox())
    assert (text, tokens, results) == ("Just 5.", 2, [])
    assert final_answer(text) == "Just 5."


def test_final_answer():
    assert final_answer("a <result>\nx\n</result>\n b </result>  final \n") == "final"
    assert final_answer("  plain  ") == "plain"
