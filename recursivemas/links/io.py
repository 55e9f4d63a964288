"""Save and load a :class:`LinkSet` as a checkpoint directory.

A checkpoint is a directory with two files:

* ``links.safetensors`` -- the flat ``LinkSet.state_dict()`` (keys like ``inner.planner.proj1.weight``,
  ``outer.planner->critic.ln_target.bias``). safetensors, never pickle: loading a checkpoint runs no code.
* ``links.json`` -- the manifest ``{"format", "version", "norm", "agents": {name: {"dim": d}}, "edges": [...]}``.

Loading goes *into* a LinkSet the caller built from its topology and backbone dims, and everything is verified
before a single tensor is copied: a checkpoint trained for another topology or other backbones fails with one error
listing every difference, instead of a half-loaded model or a cryptic size-mismatch trace from deep inside torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .linkset import FORMAT_NAME, FORMAT_VERSION, LinkSet, edge_key
from recursivemas.errors import LinkCheckpointError

__all__ = ["LinkCheckpointError", "save_links", "load_links", "read_manifest", "WEIGHTS_FILE", "MANIFEST_FILE"]

WEIGHTS_FILE = "links.safetensors"
MANIFEST_FILE = "links.json"
_HINT = (
    "hint: these links were trained for another topology or other backbones; "
    "retrain them for this system or point `links:` at a matching checkpoint."
)


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _checkpoint_dir(path: str | Path) -> Path:
    """Accept the checkpoint directory or either of its two files."""
    p = Path(path)
    if p.name in (WEIGHTS_FILE, MANIFEST_FILE) and p.is_file():
        return p.parent
    return p


def _fail(path: Path, problems: list[str], hint: bool = True) -> LinkCheckpointError:
    lines = [f"{path}: cannot load link checkpoint ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems]
    if hint:
        lines.append(_HINT)
    return LinkCheckpointError("\n".join(lines))


def save_links(linkset: LinkSet, path: str | Path) -> Path:
    """Write ``links.safetensors`` and ``links.json`` into directory ``path`` (created if needed)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in linkset.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "links_format": FORMAT_NAME})
    (out / MANIFEST_FILE).write_text(json.dumps(linkset.manifest(), indent=2) + "\n", encoding="utf-8")
    return out


def read_manifest(path: str | Path) -> dict:
    """Read and sanity-check ``links.json`` of a checkpoint directory."""
    ckpt = _checkpoint_dir(path)
    if not ckpt.is_dir():
        raise _fail(ckpt, ["checkpoint directory does not exist"], hint=False)
    mpath = ckpt / MANIFEST_FILE
    if not mpath.is_file():
        raise _fail(ckpt, [f"manifest {mpath} is missing"], hint=False)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(ckpt, [f"manifest {mpath} is not valid JSON: {exc}"], hint=False) from exc
    problems = []
    if not isinstance(manifest, dict):
        problems.append(f"manifest {mpath} is not a JSON object")
    else:
        if manifest.get("format") != FORMAT_NAME:
            problems.append(f"manifest format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
        if manifest.get("version") != FORMAT_VERSION:
            problems.append(f"manifest version is {manifest.get('version')!r}, this code reads {FORMAT_VERSION}")
        if not isinstance(manifest.get("norm"), bool):
            problems.append("manifest 'norm' must be true or false")
        agents = manifest.get("agents")
        if not isinstance(agents, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("dim"), int) for v in agents.values()
        ):
            problems.append("manifest 'agents' must map agent name -> {\"dim\": int}")
        edges = manifest.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
            problems.append("manifest 'edges' must be a list of 'src->dst' strings")
    if problems:
        raise _fail(ckpt, problems, hint=False)
    return manifest


def _compare_manifest(manifest: dict, into: LinkSet) -> list[str]:
    problems = []
    if manifest["norm"] != into.norm:
        problems.append(f"norm: checkpoint has norm={manifest['norm']}, the model needs norm={into.norm}")
    ck_agents = {name: spec["dim"] for name, spec in manifest["agents"].items()}
    missing = [a for a in into.agent_dims if a not in ck_agents]
    extra = [a for a in ck_agents if a not in into.agent_dims]
    if missing:
        problems.append(f"agents missing from the checkpoint: {missing}")
    if extra:
        problems.append(f"agents in the checkpoint but not in the model: {extra}")
    for name, dim in into.agent_dims.items():
        if name in ck_agents and ck_agents[name] != dim:
            problems.append(f"agent {name!r}: checkpoint has dim {ck_agents[name]}, the model needs {dim}")
    want_edges = [edge_key(s, d) for s, d in into.edges]
    ck_edges = list(manifest["edges"])
    missing_e = [e for e in want_edges if e not in ck_edges]
    extra_e = [e for e in ck_edges if e not in want_edges]
    if missing_e:
        problems.append(f"edges missing from the checkpoint: {missing_e}")
    if extra_e:
        problems.append(f"edges in the checkpoint but not in the model: {extra_e}")
    return problems


def load_links(path: str | Path, into: LinkSet) -> LinkSet:
    """Verify the checkpoint at ``path`` against ``into`` and copy its weights in; returns ``into``.

    Every mismatch (manifest, key set, shapes) is collected into one :class:`LinkCheckpointError`.
    """
    ckpt = _checkpoint_dir(path)
    manifest = read_manifest(ckpt)
    wpath = ckpt / WEIGHTS_FILE
    if not wpath.is_file():
        raise _fail(ckpt, [f"weights file {wpath} is missing"], hint=False)

    problems = _compare_manifest(manifest, into)
    expected = {k: tuple(v.shape) for k, v in into.state_dict().items()}
    try:
        with safe_open(str(wpath), framework="pt", device="cpu") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise _fail(ckpt, [f"weights file {wpath} is not a readable safetensors file: {exc}"], hint=False) from exc

    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for key, want in expected.items():
        if key in found and found[key] != want:
            problems.append(f"{key}: checkpoint has {_shape(found[key])}, the model needs {_shape(want)}")
    if problems:
        raise _fail(ckpt, problems)

    into.load_state_dict(load_file(str(wpath), device="cpu"), strict=True)
    return into


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a link checkpoint's weights were stored in (float32 when they mix dtypes)."""
    wpath = _checkpoint_dir(path) / WEIGHTS_FILE
    with safe_open(str(wpath), framework="pt", device="cpu") as f:
        found = {f.get_slice(k).get_dtype() for k in f.keys()}
    return _SAFETENSORS_DTYPES.get(found.pop(), torch.float32) if len(found) == 1 else torch.float32
