"""Hostile model-written programs in the Python tool's sandbox, each shown from outside not to have done its harm.

Every program runs through ``PythonTool`` as a tool-caller's would; each must come back as a tool result (a failure,
never an exception), and the next call must be served. The sandbox is bubblewrap; these tests never skip: where it
cannot run they fail, naming why (``make setup`` installs it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import recursivemas
from recursivemas.runtime import sandbox
from recursivemas.runtime.tools import PythonTool

SECRET = f"rmas-secret-{uuid.uuid4().hex}"


def test_the_sandbox_runs_here():
    assert sandbox.unavailable_reason() is None  # else: install bubblewrap (make setup), allow user namespaces


def processes_with(text: str) -> list[int]:
    """Host processes whose command line holds ``text`` (the sandbox's PIDs mean nothing outside it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Things of the server's the programs go after: files, its home, its environment, a port, processes."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    home_file = Path.home() / f".rmas-test-{uuid.uuid4().hex}"
    home_file.write_text(SECRET)
    monkeypatch.setenv("RMAS_TEST_SECRET", SECRET)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    sibling = subprocess.Popen(["sleep", "60"])
    signalled = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: signalled.append(True))
    yield {"file": secret_file, "home": home_file, "port": listener.getsockname()[1], "listener": listener,
           "sibling": sibling, "signalled": signalled, "dir": tmp_path}
    signal.signal(signal.SIGUSR1, previous)
    sibling.kill()
    sibling.wait()
    listener.close()
    home_file.unlink(missing_ok=True)


def accepted(listener) -> bool:
    try:
        listener.accept()[0].close()
        return True
    except BlockingIOError:
        return False


MARK = f"rmas-left-behind-{uuid.uuid4().hex}"
HOSTILE = {
    "read a file outside its directory": ("print(open({file!r}).read())", lambda h, out: SECRET not in out),
    "read a file in the server's home": ("print(open({home!r}).read())", lambda h, out: SECRET not in out),
    "read the repository": ("print(open({source!r}).read()[:100])", lambda h, out: "RecursiveMAS" not in out),
    "write outside its directory": (
        "failed = 0\nfor p in ({dir!r} + '/pwned', {home!r} + '.pwned', '/usr/pwned', '/pwned'):\n"
        "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
        "    except OSError as e:\n        failed += 1\n        print(e)\nraise SystemExit(failed)",
        lambda h, out: "wrote" not in out and not (h["dir"] / "pwned").exists()
        and not Path(str(h["home"]) + ".pwned").exists()),
    "connect to a port on 127.0.0.1": (
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')",
        lambda h, out: not accepted(h["listener"]) and "connected" not in out.splitlines()),
    "read the server's environment": ("import os\nprint(dict(os.environ))\nassert 'RMAS_TEST_SECRET' in os.environ",
                                      lambda h, out: SECRET not in out),
    "read environments through /proc": (
        "import glob\nfor p in glob.glob('/proc/*/environ') + ['/proc/{hostpid}/environ']:\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(e)\n"
        "raise SystemExit(1)",
        lambda h, out: SECRET not in out),
    "signal a sibling process": ("import os\nos.kill({sibling}, 9)",
                                 lambda h, out: h["sibling"].poll() is None),
    "signal the host process": ("import os, signal\nfor pid in ({hostpid}, -1):\n"
                                "    try:\n        os.kill(pid, signal.SIGUSR1)\n    except OSError as e:\n"
                                "        print(e)\nraise SystemExit(1)",
                                lambda h, out: time.sleep(0.2) is None and not h["signalled"]),
    "leave a process running": (
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {mark!r}],"
        " start_new_session=True)\nprint('started')\nraise SystemExit(1)",
        lambda h, out: "started" in out and not processes_with(MARK)),
    "fork bomb (bounded here)": (  # at most 200 forks even if nothing contained it
        "import os, time\nn = 0\nfor i in range(200):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\nprint('forks', n)\nraise SystemExit(1)",
        lambda h, out: int(out.split("forks ")[1].split()[0]) < sandbox.Limits().processes
        and not processes_with("/sandbox/main.py")),
    "fill the disk": (
        "written = 0\ntry:\n    with open('fill', 'wb') as f:\n        for i in range(4096):\n"
        "            f.write(b'x' * (1 << 20))\n            f.flush()\n            written += 1\n"
        "except OSError as e:\n    print(e)\nprint('MB', written)\nraise SystemExit(1)",
        lambda h, out: int(out.split("MB ")[1].split()[0]) <= sandbox.Limits().tmp_mb),
    "exceed memory": ("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", lambda h, out: "allocated" not in out),
    "loop forever": ("while True:\n    pass", lambda h, out: "timed out" in out),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_program_fails_as_a_tool_result_and_the_next_call_is_served(name, host):
    template, harmless = HOSTILE[name]
    code = template.format(file=str(host["file"]), home=str(host["home"]), dir=str(host["dir"]), port=host["port"],
                           hostpid=os.getpid(), sibling=host["sibling"].pid, mark=MARK,
                           source=recursivemas.__file__)
    tool = PythonTool(timeout_s=3)
    began = time.monotonic()
    result = tool(code)
    assert time.monotonic() - began < 10
    assert not result.ok, result.output
    assert harmless(host, result.output), result.output
    assert tool("print(6 * 7)").output == "42"


def test_each_run_starts_from_an_empty_private_tmp():
    tool = PythonTool()
    assert tool("open('/tmp/left', 'w').write('x'); import os; print(os.listdir('/'))").ok
    assert tool("import os; print(os.listdir('/tmp'))").output == "[]"


def test_without_a_sandbox_the_tool_is_refused_unless_the_topology_opts_out(monkeypatch):
    from recursivemas.config import Topology
    from recursivemas.runtime import Executor
    from tiny import tiny_engine

    monkeypatch.setattr(sandbox, "unavailable_reason", lambda *_: "bubblewrap (bwrap) is not installed")
    doc = {"name": "delib", "backbones": {"a": {"model": "tiny"}}, "pattern": "deliberation",
           "agents": [{"name": "reflector", "backbone": "a"}, {"name": "caller", "backbone": "a"}]}
    engine = tiny_engine("llama")
    with pytest.raises(sandbox.SandboxUnavailable, match=r"bwrap\) is not installed.*`tools.python_sandbox: none`"):
        Executor(Topology.model_validate(doc), {"a": engine})
    assert "refused" in PythonTool()("print(1)").output
    opted_out = Topology.model_validate({**doc, "tools": {"python_sandbox": "none"}})
    executor = Executor(opted_out, {"a": engine})
    assert executor.toolbox.python("print(1)").output == "1"


def test_code_scoring_runs_in_the_sandbox_and_is_refused_without_one(host, monkeypatch):
    from types import SimpleNamespace

    from recursivemas.eval.datasets import EvalItem
    from recursivemas.eval.harness import evaluate
    from recursivemas.runtime.code_exec import check_completion

    stealing = f"def f():\n    return open({str(host['file'])!r}).read()\n"
    verdict = check_completion("", stealing, f"def check(g):\n    assert g() == {SECRET!r}\n", "f")
    assert not verdict.passed and "FileNotFoundError" in verdict.output
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda *_: "bubblewrap (bwrap) is not installed")
    item = EvalItem(id="c0", question="write f", reference="", kind="code", prompt="", tests="def check(g): pass",
                    entry_point="f")
    runner = SimpleNamespace(topology=SimpleNamespace(name="t", tools=SimpleNamespace(python_sandbox="bwrap")))
    with pytest.raises(sandbox.SandboxUnavailable, match="scoring the code answers"):
        evaluate(runner, [item], ["latent"], [1])


@pytest.mark.parametrize("where", [{"host": "0.0.0.0"}, {"grpc_port": 9123}])
def test_a_server_others_can_reach_refuses_tools_without_the_sandbox(where):
    from recursivemas.config import Topology
    from recursivemas.serve.app import build_app
    from recursivemas.serve.config import ServeConfig

    doc = {"name": "delib", "backbones": {"a": {"model": "tiny"}}, "pattern": "deliberation",
           "tools": {"python_sandbox": "none"},
           "agents": [{"name": "reflector", "backbone": "a"}, {"name": "caller", "backbone": "a"}]}
    config = ServeConfig(topologies=[Topology.model_validate(doc)], api_keys=["a-long-enough-test-key-0123"], **where)
    with pytest.raises(ValueError, match="python_sandbox: none runs model-written code unisolated"):
        build_app(config)
