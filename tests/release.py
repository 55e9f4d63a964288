"""Fake releases of the authors' five systems: tiny random models in repos named as the real ones, random 16-bit
links in the release's file names, and the release's manifests (``innerlink_config.json``, ``outerlink_config.json``
by task or for the one task, legacy edge keys), so `links import --release` is tested on the layout users download."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from recursivemas.config import load_topology
from tiny import save_tiny

# Per built-in: the agents' tiny families (the real systems' families, where the tiny zoo has them), the release's
# tasks (None: one set of links, unsuffixed names), and each edge's legacy key and file stem.
STYLES = {
    "sequential-light": (("qwen3", "llama", "qwen2"), ("math", "code"), {
        ("planner", "critic"): ("outer_12", "Planner-Critic"), ("critic", "solver"): ("outer_23", "Critic-Solver"),
        ("solver", "planner"): ("outer_31", "Solver-Planner")}),
    "sequential-scaled": (("gemma3_mm", "llama", "qwen3_5"), ("math", "code"), {
        ("planner", "critic"): ("outer_12", "Planner-Critic"), ("critic", "solver"): ("outer_23", "Critic-Solver"),
        ("solver", "planner"): ("outer_31", "Solver-Planner")}),
    "mixture": (("qwen2", "qwen2", "mistral", "qwen3_5"), None, {
        **{(e, "summarizer"): (f"outer_{i}s", f"{e.title()}-Summarizer")
           for i, e in enumerate(("math", "code", "science"), 1)},
        **{("summarizer", e): (f"outer_s{i}", f"Summarizer-{e.title()}")
           for i, e in enumerate(("math", "code", "science"), 1)}}),
    "distillation": (("qwen3_5", "qwen3"), ("math", "code"), {
        ("expert", "learner"): ("outer_el", "Expert-Learner"), ("learner", "expert"): ("outer_le", "Learner-Expert")}),
    "deliberation": (("qwen3_5", "qwen3_5"), None, {
        ("reflector", "toolcaller"): ("outer_rt", "Reflector-Toolcaller"),
        ("toolcaller", "reflector"): ("outer_tr", "Toolcaller-Reflector")}),
}
PARADIGM = {"sequential-light": "sequential", "sequential-scaled": "sequential", "mixture": "mixture",
            "distillation": "distillation", "deliberation": "deliberation"}


def _ln(d: int) -> dict:
    return {"weight": 1 + 0.1 * torch.randn(d), "bias": 0.1 * torch.randn(d)}


def _linear(o: int, i: int) -> dict:
    return {"weight": torch.randn(o, i) / i ** 0.5, "bias": 0.1 * torch.randn(o)}


def _flat(**modules) -> dict[str, torch.Tensor]:
    return {f"{m}.{p}": v.to(torch.bfloat16) for m, params in modules.items() for p, v in params.items()}


def inner_state(d: int) -> dict[str, torch.Tensor]:
    return _flat(pre_ln=_ln(d), proj1=_linear(d, d), proj2=_linear(d, d), post_ln=_ln(d))


def outer_state(i: int, o: int) -> dict[str, torch.Tensor]:
    return _flat(ln_source=_ln(i), proj1=_linear(2 * o, i), proj2=_linear(o, 2 * o), residual_proj=_linear(o, i),
                 ln_target=_ln(o))


def hidden_size(repo: Path) -> int:
    config = json.loads((repo / "config.json").read_text())
    return config.get("hidden_size") or config["text_config"]["hidden_size"]


def write_release(root: Path, style: str, seed: int = 0) -> dict[str, Path]:
    """The release of built-in ``style`` under ``root``: ``{agent: repo, "outer": repo}``."""
    torch.manual_seed(seed)
    families, tasks, edges = STYLES[style]
    topology = load_topology(style)
    repos: dict[str, Path] = {}
    for agent, family in zip(topology.agents, families):
        repo = root / topology.backbones[agent.backbone].model.split("/")[-1]
        save_tiny(repo, family)
        d = hidden_size(repo)
        if tasks is None:
            torch.save(inner_state(d), repo / "adapter.pt")
        else:
            for task in tasks:
                torch.save(inner_state(d), repo / f"adapter({task}).pt")
            (repo / "innerlink_config.json").write_text(json.dumps(
                {"tasks": {t: {"adapter.pt": f"adapter({t}).pt"} for t in tasks}}))
        repos[agent.name] = repo
    outer = root / f"{style.title()}-Outerlinks"
    outer.mkdir()

    def adapters(task: str | None) -> list[dict]:
        listed = []
        for (src, dst), (key, stem) in edges.items():
            name = f"{stem}-Outerlink{f'({task})' if task else ''}.pt"
            i, o = hidden_size(repos[src]), hidden_size(repos[dst])
            torch.save(outer_state(i, o), outer / name)
            listed.append({"legacy_key": key, "filename": name, "adapter_type": "outer_ln_res_adapter",
                           "in_dim": i, "out_dim": o})
        return listed

    manifest = {"format_version": 1, "paradigm": PARADIGM[style], "legacy_config_filename": "outer_adapter_config.json"}
    if tasks is None:
        manifest["adapters"] = adapters(None)
    else:
        manifest["tasks"] = {t: {"adapters": adapters(t)} for t in tasks}
    (outer / "outerlink_config.json").write_text(json.dumps(manifest, indent=2))
    repos["outer"] = outer
    return repos


def tiny_topology(style: str, repos: dict[str, Path], path: Path) -> Path:
    """The built-in with its backbones pointed at the fake release's tiny models, on the CPU."""
    data = load_topology(style).to_dict()
    for agent in data["agents"]:
        data["backbones"][agent["backbone"]].update(model=str(repos[agent["name"]]), dtype="float32", device="cpu",
                                                    num_gpus=0)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
