"""The GPU run kit's dry run, as CI can run it: through ``benchmarks/gpu/run.sh``, without Ray or pydantic.

GPU machines are lent rarely and for minutes, so the kit must not rot between leases: a broken import, a renamed
engine call or a missing measurement has to show up here, on the CPU, not on the GPU with the clock running. The GPU
image has no Ray and no pydantic, so ``python3`` is replaced (first on ``PATH``) by a ``python -c`` shim whose
meta-path finder refuses those imports; the kit must run to the end anyway and say it never loaded them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "pydantic", "pydantic_core", "gguf")
SHIM = f"""
import atexit, runpy, sys
BLOCKED, TRIED = {BLOCKED!r}, []
class Refuse:
    '''Import as on the GPU image: these packages are not installed there.'''
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            TRIED.append(name)
            raise ModuleNotFoundError(f'No module named {{name!r}} (blocked by the test shim)', name=name)
        return None
sys.meta_path.insert(0, Refuse())
print('shim: refusing', ', '.join(BLOCKED), file=sys.stderr)
atexit.register(lambda: print('shim: refused', sorted(set(TRIED)), file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""
SHAPES = ["tiny-qwen3", "tiny-llama", "tiny-qwen2"]


def _shim_bin(tmp_path: Path) -> Path:
    """A directory whose ``python3`` is this interpreter running the shim."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(SHIM)} \"$@\"\n")
    wrapper.chmod(0o755)
    return bin_dir


def test_dry_run_through_run_sh_without_ray_or_pydantic(tmp_path):
    out = tmp_path / "out"
    docs_report = ROOT / "docs" / "benchmarks-gpu.md"
    before = docs_report.stat().st_mtime_ns if docs_report.exists() else None
    env = {**os.environ, "OUT": str(out), "PATH": f"{_shim_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shim: refusing ray, pydantic" in proc.stdout + proc.stderr  # the kit really ran under the shim

    # The last line the kit prints is the summary, one JSON object (run.sh merges stderr into stdout for run.log,
    # and the shim's own exit note comes after it).
    printed = [row for row in proc.stdout.strip().splitlines() if not row.startswith("shim: ")]
    line = json.loads(printed[-1])
    assert line["device"] == "cpu" and line["dry_run"] is True and line["dtype"] == "float32"
    assert line["pydantic_loaded"] is False and line["ray_loaded"] is False
    for shape in SHAPES:
        assert f"{shape}/kv_speedup_m3" in line and f"{shape}/max_abs_diff_m6" in line
        assert f"{shape}/latent_over_decode_batch1" in line and f"{shape}/latent_over_decode_batch8" in line
    assert "chain/text_over_latent_wall" in line and line["chain/token_reduction"] > 0

    results = json.loads((out / "results.json").read_text())
    env_info = results["environment"]
    assert env_info["device"] == "cpu" and env_info["device_type"] == "cpu"
    assert {"torch", "transformers", "python", "tokenizer", "weights"} <= set(env_info)
    assert "random" in env_info["weights"] and "byte-level" in env_info["tokenizer"]
    assert results["skipped"] == []
    assert [b["role"] for b in results["backbones"].values()] == ["planner", "critic", "solver"]
    assert list(results["rollout"]) == SHAPES and list(results["steps"]) == SHAPES
    for shape in SHAPES:
        for m in ("m3", "m6"):
            case = results["rollout"][shape][m]
            assert case["max_abs_diff"] < 1e-4, (shape, m, case)  # float32: KV cache equals the recompute
            assert case["kv_s"] > 0 and case["recompute_s"] > 0
        for batch in ("batch1", "batch8"):
            assert {"latent_step_ms", "decode_step_ms", "latent_over_decode"} <= set(results["steps"][shape][batch])
    chain, tokens = results["chain"], results["settings"]["chain_tokens"]
    assert chain["latent"]["decoded_tokens"] == tokens  # only the solver decodes
    assert chain["text"]["decoded_tokens"] == 3 * tokens  # every message runs its full budget
    assert chain["latent"]["latent_steps"] == 2 * chain["latent_steps_per_agent"]
    # A text message reaches the next agent as exactly the tokens decoded (printable ASCII, one token a character).
    lat, txt = chain["latent"]["prompt_positions"], chain["text"]["prompt_positions"]
    assert [t - la for t, la in zip(txt[1:], lat[1:])] == [tokens - chain["latent_steps_per_agent"]] * 2
    assert chain["latent"]["wall_s"] > 0 and chain["text"]["wall_s"] > 0

    # The GPU run's configs still build here (on the meta device), at the real models' parameter counts.
    full = results["full_shapes"]
    assert {shape: round(f["parameters"] / 1e9, 2) for shape, f in full.items()} == {
        "Qwen3-1.7B": 1.72, "Llama-3.2-1B": 1.24, "Qwen2.5-Math-1.5B": 1.54}
    assert all(f["tied_embeddings"] for f in full.values())

    report = (out / "benchmarks-gpu.md").read_text()
    for needle in ("device: **cpu**", "random", "byte-level", "## Rollout", "## One latent step",
                   "## Latent against text", "tiny-qwen3", "tiny-llama", "tiny-qwen2", "transformers"):
        assert needle in report, needle
    assert (out / "run.log").exists()
    after = docs_report.stat().st_mtime_ns if docs_report.exists() else None
    assert after == before  # a dry run leaves docs/ alone


def test_the_shim_refuses_what_the_gpu_image_lacks(tmp_path):
    """The control: under the shim, importing the package the ordinary way fails (its ``__init__`` needs pydantic),
    so the dry run above passing means the kit really does without it."""
    script = tmp_path / "plain_import.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport recursivemas.engine\n")
    proc = subprocess.run([str(_shim_bin(tmp_path) / "python3"), str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "No module named 'pydantic' (blocked by the test shim)" in proc.stderr
