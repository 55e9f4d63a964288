"""``ray job submit`` end to end: train links as a Ray job, then answer with them as a second job, on a head we own.

The README tells users to run ``recursivemas train`` and ``recursivemas run --cluster`` under ``ray job submit``.
That path differs from every other test: the command runs in a job driver that the head's job server starts, in a
copy of ``--working-dir``, with the head's environment (its Python, its PATH), and it must join the job's cluster
instead of starting a Ray of its own. So this test starts its own ``ray start --head --block`` (free ports, a short
``--temp-dir``, 127.0.0.1 only, token auth explicitly off for the head and every client), submits both jobs through
the dashboard's job API, checks the link checkpoint the train job wrote outside the working dir and the JSON answer
in the run job's logs, and always stops that head by its process group; it never calls ``ray stop``, which would
stop other people's Ray instances on the machine.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from ray_head import BIN, Head as RayHead, base_env, http_json
from tiny import save_tiny_pair

pytestmark = [pytest.mark.slow, pytest.mark.ray]
AGENTS = ["planner", "solver"]

pytestmark = [pytest.mark.slow, pytest.mark.ray]



class Head(RayHead):
    """The shared ``ray start --head --block`` helper, with the job API this test drives."""

    # --- jobs ----------------------------------------------------------------------------------------------------
    def submit(self, name: str, working_dir: Path, *entrypoint: str, timeout_s: float) -> dict:
        """``ray job submit`` (waits for the end, tailing logs); returns the job's status and full logs."""
        job_id = f"rj-{name}-{uuid.uuid4().hex[:8]}"
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", job_id,
               "--working-dir", str(working_dir), "--", *entrypoint]
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=timeout_s)
            submit_out, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            submit_out, rc = f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {timeout_s:.0f} s]", None
        try:
            info = http_json(f"{self.dashboard}/api/jobs/{job_id}")
            logs = http_json(f"{self.dashboard}/api/jobs/{job_id}/logs")["logs"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            info, logs = {"status": f"unknown ({exc})"}, ""
        return {"id": job_id, "rc": rc, "wall_s": round(time.monotonic() - start, 1), "status": info.get("status"),
                "message": info.get("message"), "logs": logs, "submit_output": submit_out}


def describe(job: dict) -> str:
    return (f"job {job['id']}: status {job['status']} ({job['message']}), `ray job submit` exit {job['rc']} "
            f"after {job['wall_s']} s\n"
            f"--- job logs ---\n{job['logs'][-8000:]}\n--- submit output ---\n{job['submit_output'][-3000:]}")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-job")
    head = Head(root)
    try:
        head.wait_for_job_api()
        yield head
    finally:
        left = head.stop()
        assert not left, f"processes of our head (temp dir {head.temp}) survived SIGKILL: {left}"


@pytest.fixture(scope="module")
def files(head, tmp_path_factory):
    """The working dir the jobs get (topology, train config, rows); models and the output dir outside it."""
    root = tmp_path_factory.mktemp("ray-job-files")
    work = root / "work"
    work.mkdir()
    # Absolute model paths, outside the working dir: Ray Train moves its workers' cwd to a trial directory, so a
    # `model:` relative to the job's working dir is not found there (backbone paths are not made absolute).
    models = save_tiny_pair(root / "models")
    (work / "topology.yaml").write_text(yaml.safe_dump({
        "name": "job-seq", "backbones": {name: {"model": path} for name, path in models.items()},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 1, "latent_steps": 2, "generation": {"max_new_tokens": 4},
    }))
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "plan": f"add {i} to itself"} for i in range(4)]
    (work / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    output = root / "out" / "links"  # absolute: the job runs in a copy of `work`, which is gone afterwards
    (work / "train.yaml").write_text(yaml.safe_dump({
        "topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "targets": {"planner": "plan"},
        "inner": {"steps": 1, "batch_size": 2},
        "outer": {"steps": 2, "batch_size": 2, "warmup_steps": 0, "max_latent_tokens": 6},
        "eval": {"n": 0}, "validation": {"n": 0},
        "cluster": {"placement": "replicated", "workers": 1, "cpus_per_worker": 1},  # Ray Train on the job's Ray
        "output": str(output),
    }))
    return {"work": work, "output": output}


@pytest.fixture(scope="module")
def train_job(head, files):
    return head.submit("train", files["work"], "recursivemas", "train", "--config", "train.yaml", timeout_s=240)


def test_train_job_writes_the_link_checkpoint_outside_the_working_dir(train_job, files):
    assert train_job["status"] == "SUCCEEDED" and train_job["rc"] == 0, describe(train_job)
    output = files["output"]
    assert f"links saved to {output}" in train_job["logs"], describe(train_job)
    assert "Ray Train run:" in train_job["logs"], "the train job did not run on Ray Train\n" + describe(train_job)
    written = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    assert written == ["links.json", "links.safetensors", "train_summary.json"], (
        f"{output} holds {written}\n" + describe(train_job))
    manifest = json.loads((output / "links.json").read_text())
    assert sorted(manifest["agents"]) == AGENTS, f"links.json names {sorted(manifest['agents'])}: {manifest}"
    assert not (files["work"] / "out").exists(), "the job wrote into the submitted dir, not its copy"


def test_run_job_answers_with_the_trained_links_as_json(head, files, train_job):
    if train_job["status"] != "SUCCEEDED":
        pytest.fail("no links to run with: the train job failed\n" + describe(train_job))
    job = head.submit("run", files["work"], "recursivemas", "run", "--cluster", "--topology", "topology.yaml",
                      "--links", str(files["output"]), "--prompt", "What is 2+2?", "--json", timeout_s=150)
    assert job["status"] == "SUCCEEDED" and job["rc"] == 0, describe(job)
    result = first_json_object(job["logs"])
    assert result is not None, "no JSON answer in the run job's logs\n" + describe(job)
    assert result["question"] == "What is 2+2?" and result["mode"] == "latent", describe(job)
    assert isinstance(result["text"], str), describe(job)
    assert [u["agent"] for u in result["usage"]] == AGENTS, describe(job)  # one round: planner, then the answer
    actors = http_json(f"{head.dashboard}/api/v0/actors?limit=1000")
    names = {a.get("class_name") for a in actors["data"]["result"]["result"]}
    assert "BackboneActor" in names, f"the run job did not place backbones on our head: actors {names}"


def first_json_object(text: str) -> dict | None:
    """The first ``{...}`` object that starts a line (``--json`` prints one, indented, among Ray's log lines)."""
    decoder = json.JSONDecoder()
    for start in [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]:
        if text.startswith("{", start):
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None
