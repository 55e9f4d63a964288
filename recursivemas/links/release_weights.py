"""Import the RecursiveMAS authors' released link weights into a :class:`LinkSet`.

The release ships one torch file per inner link (``adapter(math).pt``, ...) and one per edge
(``<A>-<B>-Outerlink.pt``), each a plain state dict whose keys already match our modules (``pre_ln, proj1, proj2,
post_ln`` / ``ln_source, proj1, proj2, residual_proj, ln_target``). Nothing in the files says which dims or which
variant (with or without LayerNorms) they are, so both are inferred from the tensors and cross-checked across files
before anything is built: a mixed-up file list fails here, naming the file, rather than producing a system that runs
but hands garbage between agents.

Files are read with ``torch.load(..., weights_only=True)`` only, so a malicious pickle cannot run code.
:mod:`.release_manifests` finds the files through the release's manifests; the CLI converts the result to our own
checkpoint format with :func:`recursivemas.links.io.save_links`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .linkset import LinkSet, edge_key
from recursivemas.errors import ReleasedLinkError

__all__ = ["import_released", "ReleasedLinkError"]

_PARAMS = ("weight", "bias")
_INNER_CORE = ("proj1", "proj2")
_INNER_NORM = ("pre_ln", "post_ln")
_OUTER_CORE = ("proj1", "proj2", "residual_proj")
_OUTER_NORM = ("ln_source", "ln_target")
_WRAPPERS = ("state_dict", "model")


def _keys(modules) -> set[str]:
    return {f"{m}.{p}" for m in modules for p in _PARAMS}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load one file, unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and strip a common key prefix."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ReleasedLinkError(f"{path}: file not found") from exc
    except Exception as exc:  # unpickling refused or corrupt file
        raise ReleasedLinkError(f"{path}: cannot read as a weights-only torch file: {exc}") from exc
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = next((obj[w] for w in _WRAPPERS if isinstance(obj.get(w), dict)), None)
        if wrapped is None:
            break
        obj = wrapped
    if not isinstance(obj, dict) or not obj:
        raise ReleasedLinkError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise ReleasedLinkError(f"{path}: expected a state dict of tensors; non-tensor entries: {bad}")
    # Keys are "<module>.<param>"; anything before that (module., adapter., ...) must be one shared prefix.
    prefixes = {k.rsplit(".", 2)[0] + "." if k.count(".") >= 2 else "" for k in obj}
    if len(prefixes) != 1:
        raise ReleasedLinkError(f"{path}: keys do not share one prefix; found keys {sorted(obj)}")
    prefix = prefixes.pop()
    return {k[len(prefix):]: v for k, v in obj.items()}


def _detect_norm(path: Path, sd: dict, core, norm_mods, what: str) -> bool:
    found = set(sd)
    if found == _keys(core) | _keys(norm_mods):
        return True
    if found == _keys(core):
        return False
    raise ReleasedLinkError(
        f"{path}: not a released {what} state dict; expected keys {sorted(_keys(core) | _keys(norm_mods))} "
        f"(LayerNorm keys optional), found keys {sorted(found)}"
    )


def _inner_shapes(d: int, norm: bool) -> dict[str, tuple]:
    shapes = {"proj1.weight": (d, d), "proj1.bias": (d,), "proj2.weight": (d, d), "proj2.bias": (d,)}
    if norm:
        shapes.update({f"{m}.{p}": (d,) for m in _INNER_NORM for p in _PARAMS})
    return shapes


def _outer_shapes(i: int, o: int, norm: bool) -> dict[str, tuple]:
    shapes = {
        "proj1.weight": (2 * o, i), "proj1.bias": (2 * o,), "proj2.weight": (o, 2 * o), "proj2.bias": (o,),
        "residual_proj.weight": (o, i), "residual_proj.bias": (o,),
    }
    if norm:
        shapes.update({"ln_source.weight": (i,), "ln_source.bias": (i,),
                       "ln_target.weight": (o,), "ln_target.bias": (o,)})
    return shapes


def _check_shapes(path: Path, sd: dict, want: dict[str, tuple]) -> None:
    """Every tensor must have the shape the inferred dims imply (as the modules in ``modules.py`` define them)."""
    bad = [f"{k}: file has {tuple(sd[k].shape)}, expected {want[k]}" for k in want if tuple(sd[k].shape) != want[k]]
    if bad:
        raise ReleasedLinkError(f"{path}: inconsistent tensor shapes:\n  " + "\n  ".join(bad))
    nonfloat = sorted(k for k, v in sd.items() if not v.is_floating_point())
    if nonfloat:
        raise ReleasedLinkError(f"{path}: tensors are not floating point: {nonfloat}")


def import_released(inner: dict[str, Path], outer: dict[tuple[str, str], Path],
                    dims: Mapping[str, tuple[int, str]] | None = None,
                    edge_dims: Mapping[tuple[str, str], tuple[int, int, str]] | None = None) -> LinkSet:
    """Build a :class:`LinkSet` from released files, in the dtype they store (float32 when they mix dtypes).

    ``inner`` maps agent name -> inner-link file; ``outer`` maps ``(src, dst)`` -> outer-link file. Dims come from
    the weights (inner ``d`` from ``proj1.weight``; outer ``out_dim, in_dim = residual_proj.weight.shape``), the
    ``norm`` variant from the presence of LayerNorm keys; all files must agree, with each other and with what the
    release states: ``dims`` (agent -> (hidden size, where it is stated)) and ``edge_dims`` (edge -> (in_dim,
    out_dim, where)). An agent that appears only in edges gets an untrained (init) inner link, with a warning.
    """
    if not inner and not outer:
        raise ReleasedLinkError("import_released: no files given")
    loaded_inner: dict[str, tuple[Path, dict]] = {}
    loaded_outer: dict[tuple[str, str], tuple[Path, dict]] = {}
    norms: dict[Path, bool] = {}
    agent_dims: dict[str, tuple[int, str]] = {}  # agent -> (dim, where it came from)
    problems: list[str] = []

    def claim(agent: str, dim: int, source: str) -> None:
        if agent in agent_dims and agent_dims[agent][0] != dim:
            other_dim, other_source = agent_dims[agent]
            problems.append(f"agent {agent!r}: {source} implies dim {dim}, but {other_source} implies {other_dim}")
        agent_dims.setdefault(agent, (dim, source))

    for agent, (dim, source) in (dims or {}).items():  # what the release states is checked first
        claim(agent, dim, source)

    for agent, p in inner.items():
        path = Path(p)
        sd = _read_state_dict(path)
        norms[path] = _detect_norm(path, sd, _INNER_CORE, _INNER_NORM, "inner-link")
        w = sd["proj1.weight"]
        if w.dim() != 2 or w.shape[0] != w.shape[1]:
            raise ReleasedLinkError(f"{path}: proj1.weight must be square (d, d), found {tuple(w.shape)}")
        _check_shapes(path, sd, _inner_shapes(int(w.shape[1]), norms[path]))
        claim(agent, int(w.shape[1]), f"inner file {path}")
        loaded_inner[agent] = (path, sd)

    for (src, dst), p in outer.items():
        path = Path(p)
        sd = _read_state_dict(path)
        norms[path] = _detect_norm(path, sd, _OUTER_CORE, _OUTER_NORM, "outer-link")
        w = sd["residual_proj.weight"]
        if w.dim() != 2:
            raise ReleasedLinkError(f"{path}: residual_proj.weight must be 2-D, found {tuple(w.shape)}")
        out_dim, in_dim = int(w.shape[0]), int(w.shape[1])
        _check_shapes(path, sd, _outer_shapes(in_dim, out_dim, norms[path]))
        stated = (edge_dims or {}).get((src, dst))
        if stated is not None and stated[:2] != (in_dim, out_dim):
            problems.append(f"edge {edge_key(src, dst)}: {stated[2]} says in_dim {stated[0]}, out_dim {stated[1]}, "
                            f"but {path} maps {in_dim} -> {out_dim}")
        loaded_outer[(src, dst)] = (path, sd)

    # Inner files are authoritative for an agent's dim; edges are checked against them (then against each other).
    for (src, dst), (path, sd) in loaded_outer.items():
        out_dim, in_dim = (int(s) for s in sd["residual_proj.weight"].shape)
        claim(src, in_dim, f"outer file {path} (edge {edge_key(src, dst)} in_dim)")
        claim(dst, out_dim, f"outer file {path} (edge {edge_key(src, dst)} out_dim)")

    if len(set(norms.values())) > 1:
        with_ln = sorted(str(p) for p, n in norms.items() if n)
        without = sorted(str(p) for p, n in norms.items() if not n)
        problems.append(f"files disagree on LayerNorms: with LN {with_ln}; without LN {without}")
    if problems:
        raise ReleasedLinkError("released link files are inconsistent:\n  " + "\n  ".join(problems))

    edge_only = [a for a in agent_dims if a not in loaded_inner]
    if edge_only:
        warnings.warn(f"no inner-link file for agent(s) {edge_only}; their inner links stay untrained", stacklevel=2)
    linkset = LinkSet({a: d for a, (d, _) in agent_dims.items()}, list(loaded_outer),
                      norm=next(iter(norms.values())))
    with torch.no_grad():
        for agent, (_, sd) in loaded_inner.items():
            linkset.inner[agent].load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        for (src, dst), (_, sd) in loaded_outer.items():
            linkset.outer[edge_key(src, dst)].load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    stored = {v.dtype for _, sd in [*loaded_inner.values(), *loaded_outer.values()] for v in sd.values()}
    return linkset.to(stored.pop() if len(stored) == 1 else torch.float32)  # float32 round trips 16-bit exactly
