"""Find the link files of the authors' released RecursiveMAS systems through their own manifests.

A release is a set of downloaded repositories: one per agent (its backbone's weights beside ``adapter(<task>).pt``
files and an ``innerlink_config.json`` naming them) and one ``*-Outerlinks`` repository whose
``outerlink_config.json`` lists the outer links, per task or for the one task, by ``legacy_key`` (``outer_12``,
``outer_1s``, ``outer_el``, ``outer_rt``...) or by ``source_role``/``target_role``, with their ``in_dim``/``out_dim``.

:func:`resolve_release` maps all of it onto a topology's agents and edges and refuses anything it cannot place, so
a user who mixes up a download gets one message naming the file, the role and the shapes, never a system that runs
but hands garbage between agents. The weights themselves are read by :mod:`.release_weights` (weights only, no pickle).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .linkset import edge_key
from .release_weights import ReleasedLinkError

__all__ = ["ReleaseFiles", "resolve_release", "INNER_MANIFEST", "OUTER_MANIFEST"]

INNER_MANIFEST = "innerlink_config.json"
OUTER_MANIFEST = "outerlink_config.json"
_LEGACY = re.compile(r"^outer_([0-9a-z])([0-9a-z])$")
# Letters in legacy keys: s = the summarizer (the decoder, last); e, r = expert, reflector (first); l, t = learner,
# tool-caller (second). Digits are 1-based agent positions.
_LEGACY_LETTERS = {"s": -1, "e": 0, "r": 0, "l": 1, "t": 1}
_PARADIGMS = {"sequential": "sequential", "chain": "sequential", "mixture": "mixture", "hie": "mixture",
              "distillation": "distillation", "distill": "distillation", "deliberation": "deliberation"}


@dataclass
class ReleaseFiles:
    """Where every link of a topology lives in a release, and the dims the release itself states."""

    inner: dict[str, Path] = field(default_factory=dict)
    outer: dict[tuple[str, str], Path] = field(default_factory=dict)
    agent_dims: dict[str, tuple[int, str]] = field(default_factory=dict)  # agent -> (hidden size, which config)
    edge_dims: dict[tuple[str, str], tuple[int, int, str]] = field(default_factory=dict)  # (in, out, where)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleasedLinkError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReleasedLinkError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _repo_name(path: Path) -> str:
    """The repository's name: the directory's own, or ``Name`` of a hub cache's ``models--Org--Name/snapshots/x``."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _agent_for(label: str, agents: dict[str, str], by_model: bool) -> list[str]:
    """Agents a repo name or a role names: by their backbone's repo name, else by the agent's name as a word."""
    if by_model:
        hits = [a for a, model in agents.items() if _squash(model.rstrip("/").split("/")[-1]) == _squash(label)]
        if hits:
            return hits
    words = {_squash(w) for w in re.split(r"[-_\s./]+", label)} | {_squash(label)}
    return [a for a in agents if _squash(a) in words]


def _pick_task(tasks: dict, task: str | None, where: Path) -> str:
    if task is not None:
        if task not in tasks:
            raise ReleasedLinkError(f"{where}: no task {task!r}; this release has tasks {sorted(tasks)} "
                                    "(pass one with --task)")
        return task
    if len(tasks) != 1:
        raise ReleasedLinkError(f"{where}: links for several tasks {sorted(tasks)}; pass one with --task")
    return next(iter(tasks))


def _inner_file(repo: Path, task: str | None) -> Path:
    """The agent's inner-link file: its manifest's choice for the task, else ``adapter(<task>).pt``/``adapter.pt``."""
    manifest = repo / INNER_MANIFEST
    if manifest.is_file():
        tasks = _read_json(manifest).get("tasks") or {}
        if not isinstance(tasks, dict):
            raise ReleasedLinkError(f"{manifest}: 'tasks' must map a task to its files")
        if tasks:
            chosen = tasks[_pick_task(tasks, task, manifest)]
            name = chosen.get("adapter.pt", "adapter.pt") if isinstance(chosen, dict) else chosen
            path = repo / str(name)
            if not path.is_file():
                raise ReleasedLinkError(f"{manifest}: names {name!r}, which is not in {repo}")
            return path
    suffixed = sorted(repo.glob("adapter(*).pt"))
    for candidate in ([repo / f"adapter({task}).pt"] if task else []) + [repo / "adapter.pt"]:
        if candidate.is_file():
            return candidate
    if task is None and len(suffixed) == 1:
        return suffixed[0]
    if suffixed:
        found = [p.name[len("adapter("):-len(").pt")] for p in suffixed]
        raise ReleasedLinkError(f"{repo}: inner links for tasks {found}, none for task {task!r}; pass one with --task")
    raise ReleasedLinkError(f"{repo}: no inner-link file ({INNER_MANIFEST}, adapter(<task>).pt or adapter.pt)")


def _hidden_size(repo: Path) -> tuple[int, str] | None:
    """The backbone's hidden size from the repo's ``config.json`` (the text model's, for a multimodal wrapper)."""
    path = repo / "config.json"
    if not path.is_file():
        return None
    config = _read_json(path)
    size = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    return (int(size), f"model config {path}") if isinstance(size, int) else None


def _edge_of(entry: dict, index: int, names: list[str], agents: dict[str, str], where: Path) -> tuple[str, str]:
    label = f"{where} adapters[{index}] ({entry.get('filename')})"
    roles = entry.get("source_role"), entry.get("target_role")
    if all(isinstance(r, str) for r in roles):
        ends = []
        for role in roles:
            hits = _agent_for(role, agents, by_model=False)
            if len(hits) != 1:
                raise ReleasedLinkError(f"{label}: role {role!r} is not one agent of the topology "
                                        f"(agents: {names}); rename the agent or pass a matching topology")
            ends.extend(hits)
        return ends[0], ends[1]
    key = str(entry.get("legacy_key", ""))
    match = _LEGACY.match(key)
    if not match:
        raise ReleasedLinkError(f"{label}: legacy_key {key!r} is not one the releases use (outer_12, outer_1s, "
                                "outer_s1, outer_el, outer_rt, ...) and there is no source_role/target_role")
    ends = []
    for code in match.groups():
        position = int(code) - 1 if code.isdigit() else _LEGACY_LETTERS.get(code)
        if position is None or not -len(names) <= position < len(names):
            raise ReleasedLinkError(f"{label}: legacy_key {key!r} names agent {code!r}, but the topology has "
                                    f"{len(names)} agents ({names})")
        ends.append(names[position])
    return ends[0], ends[1]


def _outer_files(repo: Path, task: str | None, topology, found: ReleaseFiles) -> None:
    manifest = repo / OUTER_MANIFEST
    data = _read_json(manifest)
    paradigm = _PARADIGMS.get(str(data.get("paradigm", "")).lower())
    if paradigm and topology.pattern and paradigm != topology.pattern:
        raise ReleasedLinkError(f"{manifest}: links of a {paradigm} system, but topology {topology.name!r} is "
                                f"{topology.pattern}; pass the topology they were trained for")
    if "tasks" in data:
        tasks = data["tasks"] if isinstance(data["tasks"], dict) else {}
        chosen = tasks.get(_pick_task(tasks, task, manifest))
        adapters = chosen.get("adapters") if isinstance(chosen, dict) else None
    else:
        adapters = data.get("adapters")
    if not isinstance(adapters, list) or not adapters or not all(isinstance(a, dict) for a in adapters):
        raise ReleasedLinkError(f"{manifest}: expected 'adapters' (or 'tasks' -> task -> 'adapters'), a list of "
                                "{legacy_key, filename, in_dim, out_dim}")
    names = [a.name for a in topology.agents]
    agents = {a.name: topology.backbones[a.backbone].model for a in topology.agents}
    wanted = {*topology.edges, *topology.feedback}
    for index, entry in enumerate(adapters):
        edge = _edge_of(entry, index, names, agents, manifest)
        path = repo / str(entry.get("filename", ""))
        if edge not in wanted:
            raise ReleasedLinkError(f"{path}: the link for {edge_key(*edge)}, an edge topology {topology.name!r} "
                                    f"does not have (edges: {[edge_key(*e) for e in sorted(wanted)]})")
        if edge in found.outer:
            raise ReleasedLinkError(f"{manifest}: two links for edge {edge_key(*edge)}: {found.outer[edge].name} "
                                    f"and {path.name}")
        if not path.is_file():
            raise ReleasedLinkError(f"{manifest}: lists {path.name!r} for edge {edge_key(*edge)}, which is not in "
                                    f"{repo}; download the whole repository")
        found.outer[edge] = path
        if isinstance(entry.get("in_dim"), int) and isinstance(entry.get("out_dim"), int):
            found.edge_dims[edge] = (entry["in_dim"], entry["out_dim"], str(manifest))


def resolve_release(dirs: Sequence[str | Path], topology, task: str | None = None) -> ReleaseFiles:
    """Every inner and outer link file of ``topology`` in the release directories ``dirs``.

    A directory is an agent repo or the outer-link repo (it has ``outerlink_config.json``). An agent repo belongs
    to the agent whose backbone is that repository, else to the agent named in the repo's name
    (``...-Planner-Qwen3-1.7B``); ``AGENT=DIR`` says so explicitly.
    """
    agents = {a.name: topology.backbones[a.backbone].model for a in topology.agents}
    found, outer_repos = ReleaseFiles(), []
    for item in dirs:
        text = str(item)
        agent, sep, rest = text.partition("=")
        explicit = agent if sep and agent in agents else None
        repo = Path(rest if explicit else text)
        if not repo.is_dir():
            if sep and explicit is None:
                raise ReleasedLinkError(f"--release {text}: {agent!r} is not an agent of topology "
                                        f"{topology.name!r} (agents: {list(agents)})")
            raise ReleasedLinkError(f"--release {text}: no such directory")
        if (repo / OUTER_MANIFEST).is_file() and explicit is None:
            outer_repos.append(repo)
            continue
        hits = [explicit] if explicit else _agent_for(_repo_name(repo), agents, by_model=True)
        if len(hits) != 1:
            raise ReleasedLinkError(
                f"--release {text}: cannot tell which agent {_repo_name(repo)!r} belongs to "
                f"({'candidates ' + str(hits) if hits else 'no agent matches'}; agents: {list(agents)}); "
                "pass it as AGENT=DIR")
        (agent,) = hits
        if agent in found.inner:
            raise ReleasedLinkError(f"--release: two repos for agent {agent!r}: {found.inner[agent].parent} and "
                                    f"{repo}; pass one")
        found.inner[agent] = _inner_file(repo, task)
        if (size := _hidden_size(repo)) is not None:
            found.agent_dims[agent] = size
    if len(outer_repos) != 1:
        listed = [str(r) for r in outer_repos]
        raise ReleasedLinkError(f"--release: expected one outer-link repo (with {OUTER_MANIFEST}), found "
                                f"{len(outer_repos)} {listed}")
    _outer_files(outer_repos[0], task, topology, found)
    missing = [a for a in agents if a not in found.inner]
    missing_edges = [edge_key(*e) for e in [*topology.edges, *topology.feedback] if e not in found.outer]
    gaps = ([f"no repo for agent(s) {missing}"] if missing else []) + (
        [f"no outer link for edge(s) {missing_edges}"] if missing_edges else [])
    if gaps:
        raise ReleasedLinkError(f"the release lacks links of topology {topology.name!r}: " + "; ".join(gaps))
    return found
