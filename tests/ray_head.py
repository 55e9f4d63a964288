"""A Ray head of the test's own: ``ray start --head --block`` on free loopback ports with a short temp dir, stopped
by its process group (never ``ray stop``, which would stop other people's Ray instances on the machine)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin/: ray, recursivemas
# Ray 2.60 turns token auth on when ~/.ray/auth_token exists; the head and every client must agree, so say it.
AUTH = {"RAY_AUTH_MODE": "disabled"}


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no inherited address or auth mode
    env.update({**AUTH, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra})  # PATH as in an activated venv
    return env


def http_json(url: str, timeout: float = 5.0, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read().decode())


def our_processes(marker: str) -> list[int]:
    """Pids whose command line or environment names this head's temp dir (every process the head started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(entry.name))
    return found


class Head:
    """``ray start --head --block`` in its own session; ``stop()`` ends it and everything it started."""

    def __init__(self, root: Path, **env: str) -> None:
        self.temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Unix socket paths must stay under ~107 chars
        gcs, dash, client, node, obj, agent_http, agent_grpc, metrics, runtime_env = free_ports(9)
        worker_base = random.randrange(20000, 29000, 100)  # below the kernel's ephemeral range, above Ray's default
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.log = root / "ray-start.log"
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(gcs), "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
               "--node-manager-port", str(node), "--object-manager-port", str(obj),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
               "--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 99),
               "--num-cpus", "2", "--object-store-memory", str(200 * 1024**2), "--temp-dir", self.temp,
               "--disable-usage-stats"]
        # RJ_HEAD marks every descendant's environment, so teardown finds job drivers too (they get new sessions)
        # No 30 s node drain on SIGTERM (it is for Serve replicas behind a load balancer; there are none here)
        env = base_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
                       RJ_HEAD=self.temp, **env)
        self.gcs = f"127.0.0.1:{gcs}"
        self.token = env.get("RAY_AUTH_TOKEN")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                         start_new_session=True)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_for_job_api(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                http_json(f"{self.dashboard}/api/jobs/", timeout=2.0, token=self.token)
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(1.0)
        raise AssertionError(f"the job API at {self.dashboard} did not answer in {timeout_s:.0f} s:\n{self.logs()}")

    def stop(self) -> list[int]:
        """SIGTERM ``ray start`` (it stops its raylet, GCS, dashboard, ... in order), then SIGKILL what is left of
        its process group and anything marked with our temp dir. Returns the pids still alive (should be none).

        Only the leader gets SIGTERM: signalling the whole group kills the GCS first, and ``ray start`` then waits
        for it to answer a drain request."""
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10  # job drivers and their watchers notice the head is gone within seconds
        while our_processes(self.temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in our_processes(self.temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
        left = our_processes(self.temp)
        if not left:
            shutil.rmtree(self.temp, ignore_errors=True)
        return left

