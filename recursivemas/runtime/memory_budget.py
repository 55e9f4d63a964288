"""One memory budget per sandboxed run, counting everything the run holds.

``RLIMIT_AS`` bounds one process's address space, and nothing else: tmpfs files and ``memfd`` pages are never
mapped, and each forked child gets a budget of its own. A run's total is bounded the way container runtimes bound
it, by a control group made for the run: ``memory.max`` (cgroup v2) or ``memory.limit_in_bytes`` (v1) counts the
pages of all its processes, its tmpfs files and its shared memory, and ``pids.max`` its processes. The run joins the
group before it executes anything (a small launcher writes its own pid to ``cgroup.procs``, drops root, then
executes bubblewrap), and the group is removed when the run ends.

Where no group can be made (not root and no delegated subtree), the fallback still bounds the total: the
sandbox's ``/dev`` is read-only, ``memfd_create`` is refused (:mod:`recursivemas.runtime.seccomp`), and the budget
is split over a smaller number of processes, so the per-process limits sum to it. The mechanism is logged once.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

log = logging.getLogger("recursivemas")

Mechanism = Literal["cgroup2", "cgroup1", "rlimits"]
__all__ = ["Mechanism", "RunGroup", "mechanism", "open_group", "split_for_rlimits"]

MIN_PROCESS_MB = 128  # the fallback's per-process share of the budget: a Python interpreter with room to work
_BASE = "recursivemas-sandbox"
_JOIN = (  # `join PROCS_FILE... -- UID ARGV...`: join the run's groups, drop root, execute the sandbox
    "import os, sys\n"
    "split = sys.argv.index('--')\n"
    "for procs in sys.argv[1:split]:\n"
    "    with open(procs, 'w') as f:\n"
    "        f.write(str(os.getpid()))\n"
    "uid, argv = int(sys.argv[split + 1]), sys.argv[split + 2:]\n"
    "if uid >= 0:\n"
    "    os.setgroups([]); os.setgid(uid); os.setuid(uid)\n"
    "os.execv(argv[0], argv)\n"
)


@dataclass
class RunGroup:
    """The control group(s) of one run: its memory group and, where separate (v1), its pids group."""

    mechanism: Mechanism
    memory: Path
    pids: Path

    def launcher(self, python: str, argv: list[str], uid: int | None) -> list[str]:
        """``argv`` run inside the group, as ``uid`` (None: unchanged)."""
        procs = sorted({str(self.memory / "cgroup.procs"), str(self.pids / "cgroup.procs")})
        return [python, "-I", "-c", _JOIN, *procs, "--", str(-1 if uid is None else uid), *argv]

    def exceeded(self) -> bool:
        """Whether the run hit its memory budget (the kernel's own count of it)."""
        try:
            if self.mechanism == "cgroup2":
                events = dict(line.split() for line in (self.memory / "memory.events").read_text().splitlines())
                return int(events.get("oom_kill", 0)) > 0 or int(events.get("oom", 0)) > 0
            control = dict(line.split() for line in (self.memory / "memory.oom_control").read_text().splitlines())
            return int(control.get("oom_kill", 0)) > 0 or int((self.memory / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """Kill what is left in the group and remove it (the run has ended)."""
        for group in {self.memory, self.pids}:
            if self.mechanism == "cgroup2" and (group / "cgroup.kill").exists():
                _write(group / "cgroup.kill", "1")
            else:
                for pid in _pids(group):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
            for _ in range(50):  # the kernel takes a moment to release a group whose last process just died
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _own_cgroup(controller: str | None) -> str | None:
    """This process's group path for ``controller`` (None: the v2 unified hierarchy) from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (controller is None and names == "") or (controller is not None and controller in names.split(",")):
            return path
    return None


def _v1_mount(controller: str) -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup" and controller in options.split(","):
            return Path(where)
    return None


@cache
def _bases() -> tuple[Mechanism, Path, Path] | tuple[Literal["rlimits"], str]:
    """Where runs' groups go: ``(mechanism, memory base, pids base)``, or ``("rlimits", why not)``."""
    reasons = []
    v2 = Path("/sys/fs/cgroup")
    own = _own_cgroup(None)
    if (v2 / "cgroup.controllers").exists() and own is not None:
        base = v2 / own.lstrip("/") / _BASE
        try:
            available = (base.parent / "cgroup.controllers").read_text().split()
            if not {"memory", "pids"} <= set(available):
                raise OSError(f"controllers {available} lack memory or pids")
            _write(base.parent / "cgroup.subtree_control", "+memory +pids")
            base.mkdir(exist_ok=True)
            _write(base / "cgroup.subtree_control", "+memory +pids")
            return "cgroup2", base, base
        except OSError as exc:
            reasons.append(f"cgroup v2 at {base.parent}: {exc}")
    memory_mount, pids_mount = _v1_mount("memory"), _v1_mount("pids")
    if memory_mount and pids_mount:
        memory_base = memory_mount / (_own_cgroup("memory") or "/").lstrip("/") / _BASE
        pids_base = pids_mount / (_own_cgroup("pids") or "/").lstrip("/") / _BASE
        try:
            memory_base.mkdir(exist_ok=True)
            pids_base.mkdir(exist_ok=True)
            return "cgroup1", memory_base, pids_base
        except OSError as exc:
            reasons.append(f"cgroup v1 at {memory_base.parent}: {exc}")
    else:
        reasons.append("no cgroup v1 memory and pids hierarchies")
    return "rlimits", "; ".join(reasons)


@cache
def mechanism() -> Mechanism:
    """What bounds a run's memory on this host; logged once."""
    found = _bases()
    if found[0] == "rlimits":
        log.warning("sandbox memory budget: no control group can be made here (%s); falling back to per-process "
                    "limits that sum to the budget, a read-only /dev and no memfd (run as root, or delegate a "
                    "cgroup subtree, for one budget over the whole run)", found[1])
    else:
        log.info("sandbox memory budget: %s control groups under %s", found[0], found[1])
    return found[0]


def open_group(memory_mb: int, processes: int) -> RunGroup | None:
    """A fresh group for one run with ``memory_mb`` over everything it holds and ``processes`` at once; None where
    this host has no control groups to make (the fallback applies)."""
    if mechanism() == "rlimits":
        return None
    kind, memory_base, pids_base = _bases()
    name = f"run-{secrets.token_hex(6)}"
    group = RunGroup(kind, memory_base / name, pids_base / name)
    budget = str(memory_mb << 20)
    try:
        group.memory.mkdir()
        group.pids.mkdir(exist_ok=True)
        if kind == "cgroup2":
            _write(group.memory / "memory.max", budget)
            if (group.memory / "memory.swap.max").exists():
                _write(group.memory / "memory.swap.max", "0")
        else:
            _write(group.memory / "memory.limit_in_bytes", budget)
            if (group.memory / "memory.memsw.limit_in_bytes").exists():
                _write(group.memory / "memory.memsw.limit_in_bytes", budget)
        _write(group.pids / "pids.max", str(processes))
    except OSError:
        group.remove()
        raise
    return group


def split_for_rlimits(memory_mb: int, tmp_mb: int, processes: int) -> tuple[int, int]:
    """The fallback's ``(processes, address space per process in MB)``: the processes' limits and the ``/tmp``
    tmpfs together stay within ``memory_mb``."""
    room = max(memory_mb - tmp_mb, MIN_PROCESS_MB)
    count = max(1, min(processes, room // MIN_PROCESS_MB))
    return count, room // count
