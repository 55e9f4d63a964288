"""An OS-level sandbox for model-written Python: bubblewrap namespaces around the system interpreter.

Anyone who can write a prompt to a deliberation topology can steer its tool-caller into writing code, and a code
benchmark runs whatever the model wrote; so that code must not reach the server's files, network, processes or
privileges. bubblewrap (``bwrap``, a Debian package) gives that without a daemon or root: user, PID, network, IPC,
UTS and cgroup namespaces, a filesystem assembled from named read-only binds, ``no_new_privs`` and no capabilities.
It works unprivileged where the kernel allows user namespaces, and as root.

What the code sees:

- read-only: the system interpreter (``/usr/bin/python3``, run ``-I``: no site-packages, no environment, no user
  dirs) with its standard library, and the shared-library directories it and its extension modules link against;
  ``/usr/bin`` tools are not bound, nor ``/etc``, ``/home``, the repository, the virtualenv or the model cache;
- writable: only its own ``/tmp`` (a size-capped tmpfs, also its cwd and ``HOME``);
- its own ``/proc`` (only its own processes), a minimal ``/dev``, no network but its own loopback, no environment
  but ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``.

The kernel it shares with the server is fenced too: a seccomp filter (:mod:`recursivemas.runtime.seccomp`) refuses
the keyring calls, ``memfd_create``, new namespaces, ``io_uring``, ``ptrace``, ``bpf``, perf events and the mount
API, and ``/dev`` is read-only (no unbounded ``/dev/shm``). The code reaches the sandbox as a copy (``--file``), so
no host path shows in its ``/proc/self/mountinfo``.

Limits: one memory budget over everything the run holds, processes, tmpfs files and shared memory together, from a
control group made for the run where the host allows one (:mod:`recursivemas.runtime.memory_budget`), with
per-process limits that sum to the budget where it does not; and, set inside the sandbox by a launcher (so they
count only the sandbox's own processes: a fresh user namespace has its own process count), processes, open files,
file size, address space, CPU time, no core dumps. As root the sandbox first drops to an unprivileged uid, because
root ignores ``RLIMIT_NPROC``. The PID namespace dies with its first process, so everything the code started is
killed when it returns or times out; output is capped while it is read, so a program cannot flood the server's
memory.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal
from recursivemas.errors import SandboxUnavailable
from recursivemas.runtime import memory_budget, seccomp

SandboxMode = Literal["bwrap", "bwrap_cgroup", "none"]  # bwrap_cgroup: refused where no group can be made
SYSTEM_PYTHON = "/usr/bin/python3"
SANDBOX_UID = 65534  # "nobody": an unprivileged uid for the sandbox when the server runs as root
CODE_PATH = "/sandbox/main.py"
_BWRAP_ENV = {"PATH": "/usr/bin:/bin"}
_LAUNCHER = (  # `launcher CODE NAME VALUE ...`: set the limits, then run CODE in a fresh isolated interpreter
    "import os, resource, sys\n"
    "for name, value in zip(sys.argv[2::2], sys.argv[3::2]):\n"
    "    resource.setrlimit(getattr(resource, name), (int(value), int(value)))\n"
    "os.execv(sys.executable, [sys.executable, '-I', sys.argv[1]])\n"
)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    processes: int = 16
    open_files: int = 64
    file_size_mb: int = 16
    tmp_mb: int = 16
    output_bytes: int = 1 << 20

    def rlimits(self, processes: int | None = None, memory_mb: int | None = None) -> dict[str, int]:
        """The launcher's limits; ``processes`` and ``memory_mb`` (per process) replace the run's own where the
        budget is split over processes (no control group)."""
        return {"RLIMIT_AS": (memory_mb or self.memory_mb) << 20, "RLIMIT_CPU": int(self.timeout_s) + 1,
                "RLIMIT_NPROC": processes or self.processes, "RLIMIT_NOFILE": self.open_files,
                "RLIMIT_FSIZE": self.file_size_mb << 20, "RLIMIT_CORE": 0, "RLIMIT_MSGQUEUE": 0}


@dataclass
class Finished:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    truncated: bool = False
    over_budget: bool = False  # the run hit its memory budget (processes, files and shared memory together)


def _shared_libraries(python: str) -> set[str]:
    """Every shared library the interpreter and its extension modules load, as the loader names them (``ldd``)."""
    probe = subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['platstdlib'])"],
                           capture_output=True, text=True, timeout=30)
    dynload = Path(probe.stdout.strip()) / "lib-dynload"
    objects = [python, *map(str, sorted(dynload.glob("*.so")))]
    found = set()
    for chunk in range(0, len(objects), 64):
        listing = subprocess.run(["ldd", *objects[chunk:chunk + 64]], capture_output=True, text=True, timeout=60)
        for line in listing.stdout.splitlines():
            path = next((p for p in line.split() if p.startswith("/")), None)
            if path and os.path.exists(path):
                found.add(path)
    return found


@cache
def read_only_binds(python: str = SYSTEM_PYTHON) -> tuple[tuple[str, str], ...]:
    """``(source, destination)`` pairs bound read-only into the sandbox: the interpreter, its standard library, the
    directories of its shared libraries, and any library the loader names through a directory not bound (e.g.
    ``/lib64/ld-linux-x86-64.so.2``, which is ``/usr/lib64/...`` behind the host's ``/lib64`` link)."""
    python = os.path.realpath(python)
    probe = subprocess.run([python, "-I", "-c", "import sysconfig; p = sysconfig.get_paths(); "
                            "print(p['stdlib']); print(p['platstdlib'])"], capture_output=True, text=True, timeout=30)
    libraries = _shared_libraries(python)
    dirs = {os.path.realpath(line) for line in probe.stdout.split()}
    dirs |= {os.path.dirname(os.path.realpath(lib)) for lib in libraries}
    binds = {(python, python), *((d, d) for d in dirs)}
    for lib in libraries:
        where = os.path.realpath(os.path.dirname(lib))
        if where not in dirs:
            binds.add((os.path.realpath(lib), os.path.join(where, os.path.basename(lib))))
    return tuple(sorted(binds))


def _top_level_links() -> list[str]:
    """The host's ``/lib -> usr/lib``-style links, so loader paths such as ``/lib64/ld-linux-x86-64.so.2`` resolve."""
    args = []
    for name in ("/bin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
    return args


def bwrap_argv(code_fd: int, rlimits: dict[str, int], limits: Limits, seccomp_fd: int | None = None,
               python: str = SYSTEM_PYTHON) -> list[str]:
    """bubblewrap's command line: the code copied in from ``code_fd``, the filter read from ``seccomp_fd``."""
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv",
            "--setenv", "PATH",
            "/usr/bin", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    if os.geteuid() == 0:
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    for source, destination in read_only_binds(python):
        argv += ["--ro-bind", source, destination]
    argv += _top_level_links()
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--size", str(limits.tmp_mb << 20),
             "--tmpfs", "/tmp", "--perms", "0444", "--file", str(code_fd), CODE_PATH, "--remount-ro", "/",
             "--chdir", "/tmp"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", os.path.realpath(python), "-I", "-c", _LAUNCHER, CODE_PATH,
            *[str(x) for item in rlimits.items() for x in item]]


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Both pipes until they close or the deadline passes, keeping at most ``cap`` bytes of each."""
    selector = selectors.DefaultSelector()
    chunks = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    for pipe in chunks:
        selector.register(pipe, selectors.EVENT_READ)
    truncated = timed_out = False
    while selector.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in selector.select(timeout=min(left, 0.5)):
            data = os.read(key.fd, 65536)
            if not data:
                selector.unregister(key.fileobj)
                continue
            kept = chunks[key.fileobj]
            room = cap - len(kept)
            kept += data[:max(room, 0)]
            truncated |= len(data) > room
    selector.close()
    return bytes(chunks[proc.stdout]), bytes(chunks[proc.stderr]), timed_out, truncated


def run_python(code: str, limits: Limits, mode: SandboxMode = "bwrap") -> Finished:
    """Run ``code`` to completion or its timeout; ``mode="none"`` runs it unisolated (rlimits only)."""
    if mode != "none" and (reason := unavailable_reason(mode)) is not None:
        raise SandboxUnavailable(reason)
    with tempfile.TemporaryDirectory(prefix="rmas_code_") as folder:
        code_file = Path(folder) / "main.py"
        code_file.write_text(code, encoding="utf-8", errors="surrogatepass")
        if mode != "none":
            return _run_sandboxed(code_file, limits)
        # no isolation: limits only (not RLIMIT_NPROC, which would count every process of this user)
        python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else shutil.which("python3") or "python3"
        rlimits = {k: v for k, v in limits.rlimits().items() if k != "RLIMIT_NPROC"}
        argv = [python, "-I", "-c", _LAUNCHER, str(code_file), *[str(x) for item in rlimits.items() for x in item]]
        return _communicate(argv, limits, cwd=folder, env={"PATH": os.defpath, "HOME": folder, "TMPDIR": folder})


def _run_sandboxed(code_file: Path, limits: Limits) -> Finished:
    """One bubblewrap run inside its own memory budget: a control group where the host gives one, else per-process
    limits that sum to the budget."""
    group = memory_budget.open_group(limits.memory_mb, limits.processes + 2)  # + bwrap and its init
    try:
        if group is None:
            processes, each_mb = memory_budget.split_for_rlimits(limits.memory_mb, limits.tmp_mb, limits.processes)
            rlimits = limits.rlimits(processes + 1, each_mb)  # + bwrap's init, which runs as the sandbox's uid
        else:
            rlimits = limits.rlimits()
        root = os.geteuid() == 0
        with open(code_file, "rb") as code, tempfile.TemporaryFile() as program:
            fds = [code.fileno()]
            if seccomp.supported():
                program.write(seccomp.filter_program())
                program.seek(0)
                fds.append(program.fileno())
            argv = bwrap_argv(code.fileno(), rlimits, limits, fds[1] if len(fds) > 1 else None)
            kwargs: dict = {"env": _BWRAP_ENV, "pass_fds": tuple(fds)}
            if group is not None:  # join the group first, then drop root (the launcher does both) and run bwrap
                argv = group.launcher(SYSTEM_PYTHON, argv, SANDBOX_UID if root else None)
            elif root:  # root ignores RLIMIT_NPROC: run bwrap itself as the unprivileged sandbox uid
                kwargs |= {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
            done = _communicate(argv, limits, **kwargs)
        done.over_budget = group is not None and group.exceeded()
        return done
    finally:
        if group is not None:
            group.remove()


def _communicate(argv: list[str], limits: Limits, **kwargs) -> Finished:
    # bwrap's own init (PID 1 inside) keeps the environment bwrap started with, readable in /proc/1/environ
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kwargs)
    try:
        out, err, timed_out, truncated = _read_capped(proc, time.monotonic() + limits.timeout_s, limits.output_bytes)
    finally:
        _kill(proc)
    return Finished(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                    None if timed_out else proc.returncode, timed_out, truncated)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox's process group (bwrap's PID namespace dies with it) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def unavailable_reason(mode: SandboxMode = "bwrap") -> str | None:
    """None when the sandbox ``mode`` names runs here; else why not, with the fix."""
    if mode == "bwrap_cgroup" and memory_budget.mechanism() == "rlimits":
        return ("tools.python_sandbox: bwrap_cgroup needs a control group per run, and none can be made here "
                "(run as root or delegate a cgroup subtree), or accept the fallback's per-process limits with "
                "`python_sandbox: bwrap`")
    return _bwrap_unavailable_reason()


@cache
def _bwrap_unavailable_reason() -> str | None:
    """None when the bubblewrap sandbox runs here; else why not, with the fix (probed once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"the sandbox runs the system interpreter {SYSTEM_PYTHON}, which does not exist here"
    try:
        with tempfile.TemporaryDirectory(prefix="rmas_probe_") as folder:
            (Path(folder) / "main.py").write_text("print('ok')\n")
            probe = _run_sandboxed(Path(folder) / "main.py", Limits(timeout_s=30))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not start: {exc}"
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        return (f"the bubblewrap sandbox fails here ({probe.stderr.strip()[-300:] or probe.returncode}); if it "
                "cannot create namespaces, allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0)")
    return None


def require(mode: SandboxMode, what: str, setting: str = "tools.python_sandbox") -> None:
    """Refuse to run model-written code without isolation unless ``setting`` opts out explicitly."""
    if mode == "none":
        return
    reason = unavailable_reason(mode)
    if reason is not None:
        raise SandboxUnavailable(f"{what} runs model-written code in a sandbox, and none is available: {reason}. "
                                 f"To run the code without isolation (never on a server others can reach), set "
                                 f"`{setting}: none`")
