"""Hostile programs that go after the kernel state the sandbox shares with the server (issue 23), each measured
from the host's side: its session keyring, its memory (``MemAvailable`` and ``Shmem`` while the attack runs), and
what a run can leave for the next one. They run through ``PythonTool`` as a tool-caller's code would."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import time
import uuid

import pytest

from recursivemas.runtime import memory_budget, sandbox
from recursivemas.runtime.seccomp import _NUMBERS, filter_program
from recursivemas.runtime.tools import PythonTool

SECRET = f"rmas-key-{uuid.uuid4().hex}"
COLUMN = {"x86_64": 0, "aarch64": 1}[platform.machine()]
NR = {name: numbers[COLUMN] for name, numbers in _NUMBERS.items()}
KEY_SPEC_SESSION_KEYRING, KEYCTL_READ, KEYCTL_SEARCH = -3, 11, 10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def add_key(description: str, payload: bytes) -> int:
    key = _libc.syscall(NR["add_key"], b"user", description.encode(), payload, len(payload),
                        KEY_SPEC_SESSION_KEYRING)
    assert key > 0, os.strerror(ctypes.get_errno())
    return key


def read_key(key: int) -> bytes:
    buffer = ctypes.create_string_buffer(4096)
    size = _libc.syscall(NR["keyctl"], KEYCTL_READ, key, buffer, 4096)
    assert size >= 0, os.strerror(ctypes.get_errno())
    return buffer.raw[:size]


def search_key(description: str) -> int:
    return _libc.syscall(NR["keyctl"], KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, b"user", description.encode(), 0)


SYSCALL = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
           "def call(nr, *args):\n    r = libc.syscall(nr, *args)\n    return r if r >= 0 else -ctypes.get_errno()\n")


@pytest.fixture
def host_key():
    """A secret the host process holds in its session keyring, as a server's credential helper would."""
    name = f"rmas-host-{uuid.uuid4().hex[:8]}"
    key = add_key(name, SECRET.encode())
    yield name, key
    _libc.syscall(NR["keyctl"], 21, key)  # KEYCTL_INVALIDATE


def test_a_run_cannot_read_or_overwrite_the_hosts_keys(host_key):
    name, key = host_key
    code = SYSCALL + (
        f"found = call({NR['keyctl']}, {KEYCTL_SEARCH}, {KEY_SPEC_SESSION_KEYRING}, b'user', {name.encode()!r}, 0)\n"
        f"print('search', found)\nbuf = ctypes.create_string_buffer(4096)\n"
        f"print('read', call({NR['keyctl']}, {KEYCTL_READ}, {key}, buf, 4096), buf.value)\n"
        f"print('overwrite', call({NR['add_key']}, b'user', {name.encode()!r}, b'pwned', 5, "
        f"{KEY_SPEC_SESSION_KEYRING}))\nraise SystemExit(1)")
    result = PythonTool(timeout_s=5)(code)
    assert SECRET not in result.output, result.output
    assert f"search {-errno.EPERM}" in result.output and f"overwrite {-errno.EPERM}" in result.output
    assert read_key(key) == SECRET.encode()  # the host's key, unchanged


def test_a_run_cannot_leave_a_key_for_the_next():
    mark = f"rmas-plant-{uuid.uuid4().hex[:8]}"
    plant = SYSCALL + f"print('planted', call({NR['add_key']}, b'user', {mark.encode()!r}, b'x', 1, -3))"
    look = SYSCALL + f"print('found', call({NR['keyctl']}, {KEYCTL_SEARCH}, -3, b'user', {mark.encode()!r}, 0))"
    tool = PythonTool(timeout_s=5)
    assert f"planted {-errno.EPERM}" in tool(plant).output
    assert f"found {-errno.EPERM}" in tool(look).output
    assert search_key(mark) < 0  # nor in the host's keyring


REFUSED = {  # name -> arguments that would succeed without the filter (or at least reach the kernel)
    "unshare": (0x10000000,), "io_uring_setup": (8, "params"), "ptrace": (16, 1, 0, 0),
    "bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "mount": ("none", "/tmp", "tmpfs", 0, 0),
    "memfd_create": ("x", 0), "keyctl": (0, -3, 0), "userfaultfd": (0,),
}


def test_the_kernel_interfaces_an_attacker_wants_are_refused():
    lines = []
    for name, args in REFUSED.items():
        rendered = ", ".join("ctypes.create_string_buffer(120)" if a == "params" else repr(a.encode())
                             if isinstance(a, str) else str(a) for a in args)
        lines.append(f"print({name!r}, call({NR[name]}, {rendered}))")
    lines.append("import os\ntry:\n    os.fork() or os._exit(0)\n    print('fork ok')\nexcept OSError as e:\n"
                 "    print('fork', e)")  # plain clone still works: subprocesses are allowed
    lines.append(f"print('clone newuser', call({56 if COLUMN == 0 else 220}, 0x10000000 | 17, 0, 0, 0, 0))")
    result = PythonTool(timeout_s=5)(SYSCALL + "\n".join(lines))
    for name in REFUSED:
        assert f"{name} {-errno.EPERM}" in result.output, result.output
    assert "fork ok" in result.output and f"clone newuser {-errno.EPERM}" in result.output


def test_no_host_path_shows_in_the_sandbox():
    result = PythonTool()("print(open('/proc/self/mountinfo').read()); print(open('/proc/1/cmdline').read())")
    assert result.ok and "rmas_code_" not in result.output and "/tmp/" not in result.output.replace(" /tmp ", "")


def meminfo() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("MemAvailable", "Shmem")}  # MB


def host_memory_during(run) -> tuple[object, int, int]:
    """``run()``'s result, and the most the host's MemAvailable fell and its Shmem rose while it ran (MB)."""
    before, worst = meminfo(), {"drop": 0, "shmem": 0}
    result = []
    thread = threading.Thread(target=lambda: result.append(run()))
    thread.start()
    while thread.is_alive():
        now = meminfo()
        worst["drop"] = max(worst["drop"], before["MemAvailable"] - now["MemAvailable"])
        worst["shmem"] = max(worst["shmem"], now["Shmem"] - before["Shmem"])
        time.sleep(0.02)
    thread.join()
    return result[0], worst["drop"], worst["shmem"]


HOLD = "import time\ntime.sleep(1.5)\n"
FILL = (  # 15 MB a file (under the 16 MB file-size limit), up to 700 MB; `make` opens the next file
    "n = 0\ntry:\n    for i in range(47):\n        f = make(i)\n        for _ in range(15):\n"
    "            os.write(f, b'x' * (1 << 20)); n += 1\nexcept OSError as e:\n    print(e)\nprint('MB', n)\n")
MEMORY_ATTACKS = {  # each tries for about 700 MB that no address-space limit sees
    "fill /dev/shm and /dev": (
        "import os\ndef make(i):\n    for where in ('/dev/shm', '/dev'):\n        try:\n"
        "            return os.open(f'{where}/fill{i}', os.O_CREAT | os.O_WRONLY)\n        except OSError:\n"
        "            pass\n    raise OSError('no writable /dev')\n" + FILL + HOLD),
    "fill memfd files": ("import os\ndef make(i):\n    return os.memfd_create(f'fill{i}')\n" + FILL + HOLD),
    "fork children each under the limit": (
        "import os, time\nkids = []\nfor i in range(7):\n    try:\n        pid = os.fork()\n    except OSError as e:\n"
        "        print(e); break\n    if pid == 0:\n        x = bytearray(100 << 20)\n        time.sleep(1.5)\n"
        "        os._exit(0)\n    kids.append(pid)\nfor pid in kids:\n    os.waitpid(pid, 0)\nprint('children', len(kids))\n"),
}
BUDGET_MB = 256


@pytest.fixture(params=["cgroup", "rlimits"])
def budget(request, monkeypatch):
    """Each attack under the mechanism this host gives, and under the fallback a host without cgroups gets."""
    if request.param == "rlimits":
        monkeypatch.setattr(memory_budget, "open_group", lambda *_: None)
    else:
        assert memory_budget.mechanism() in ("cgroup1", "cgroup2")  # CI runs as root: a group per run
    return request.param


@pytest.mark.parametrize("attack", list(MEMORY_ATTACKS))
def test_a_run_holds_no_more_than_its_budget_from_the_hosts_side(attack, budget):
    tool = PythonTool(timeout_s=8, memory_mb=BUDGET_MB)
    result, drop, shmem = host_memory_during(lambda: tool(MEMORY_ATTACKS[attack]))
    slack = 96  # the interpreters themselves and the host's own noise
    assert drop < BUDGET_MB + slack and shmem < BUDGET_MB, (drop, shmem, result.output)
    assert tool("print(6 * 7)").output == "42"  # and the next run is served


def test_going_over_the_budget_ends_the_run_with_a_clear_tool_error():
    assert memory_budget.mechanism() in ("cgroup1", "cgroup2")
    tool = PythonTool(timeout_s=8, memory_mb=BUDGET_MB)
    result = tool(MEMORY_ATTACKS["fork children each under the limit"])
    assert not result.ok and f"over its memory budget of {BUDGET_MB} MB" in result.output, result.output
    assert tool("print(6 * 7)").output == "42"


def test_the_filter_is_a_valid_program_for_each_architecture():
    for machine in ("x86_64", "aarch64"):
        program = filter_program(machine)
        assert len(program) % 8 == 0 and len(program) // 8 < 4096  # BPF_MAXINSNS
    with pytest.raises(ValueError, match="no seccomp filter for 'riscv64'"):
        filter_program("riscv64")


def test_without_a_group_one_process_gets_the_budget_and_no_more(monkeypatch):
    monkeypatch.setattr(memory_budget, "open_group", lambda *_: None)
    tool = PythonTool(timeout_s=8, memory_mb=BUDGET_MB)
    result = tool("x = bytearray(300 << 20)\nprint('allocated')")
    assert not result.ok and "MemoryError" in result.output and "allocated" not in result.output
    assert tool("x = bytearray(150 << 20)\nprint('allocated')").output == "allocated"


def test_the_fallback_splits_the_budget_over_fewer_processes():
    count, each = memory_budget.split_for_rlimits(512, 16, 16)
    assert count * each + 16 <= 512 and count >= 2
    assert memory_budget.split_for_rlimits(256, 16, 16) == (1, 240)


def test_a_topology_can_require_a_control_group_and_is_refused_without_one(monkeypatch):
    from recursivemas.config import Topology
    from recursivemas.runtime import Executor
    from tiny import tiny_engine

    doc = {"name": "delib", "backbones": {"a": {"model": "tiny"}}, "pattern": "deliberation",
           "tools": {"python_sandbox": "bwrap_cgroup"},
           "agents": [{"name": "reflector", "backbone": "a"}, {"name": "caller", "backbone": "a"}]}
    topology, engine = Topology.model_validate(doc), tiny_engine("llama")
    assert Executor(topology, {"a": engine}).toolbox.python("print(6 * 7)").output == "42"  # this host has groups
    monkeypatch.setattr(memory_budget, "mechanism", lambda: "rlimits")
    with pytest.raises(sandbox.SandboxUnavailable, match="bwrap_cgroup needs a control group per run"):
        Executor(topology, {"a": engine})
    assert "refused" in PythonTool(sandbox="bwrap_cgroup")("print(1)").output


def test_a_server_refuses_to_start_below_the_sandbox_level_a_topology_names(monkeypatch):
    from recursivemas.config import Topology
    from recursivemas.serve.app import _refuse_unsandboxed_tools
    from recursivemas.serve.config import ServeConfig

    doc = {"name": "delib", "backbones": {"a": {"model": "tiny"}}, "pattern": "deliberation",
           "tools": {"python_sandbox": "bwrap_cgroup"},
           "agents": [{"name": "reflector", "backbone": "a"}, {"name": "caller", "backbone": "a"}]}
    topology = Topology.model_validate(doc)
    config = ServeConfig(topologies=[topology], api_keys=["a-long-enough-test-key-0123"], host="0.0.0.0")
    _refuse_unsandboxed_tools([topology], config)  # this host makes groups: it starts
    monkeypatch.setattr(memory_budget, "mechanism", lambda: "rlimits")
    with pytest.raises(ValueError, match="topology 'delib': tools.python_sandbox: bwrap_cgroup needs a control group"):
        _refuse_unsandboxed_tools([topology], config)
