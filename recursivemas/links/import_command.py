"""``recursivemas links import``: link weights from elsewhere into this project's checkpoint format.

Two sources: the authors' released repositories of one system (``--release DIR... --topology T``), read through
their manifests onto the topology's agents and edges, or single ``.pt`` files named on the command line
(``--inner AGENT=FILE``, ``--outer SRC->DST=FILE``). Either way the files are read weights-only and written as
safetensors in the dtype they store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def import_links(args: argparse.Namespace) -> int:
    from recursivemas.links import import_released, parse_edge_key, save_links

    if args.release:
        return _import_release(args)
    if args.topology or args.task:
        raise ValueError("--topology/--task: go with --release DIR...; --inner/--outer take the files themselves")
    if not args.inner and not args.outer:
        raise ValueError("links import: pass --release DIR... --topology T (the authors' downloaded repos), or "
                         "--inner AGENT=FILE / --outer SRC->DST=FILE")

    def pairs(items: list[str], flag: str) -> list[tuple[str, Path]]:
        out = []
        for item in items:
            key, sep, path = item.partition("=")
            if not sep or not key or not path:
                raise ValueError(f"{flag} {item!r}: expected KEY=PATH (e.g. {flag} planner=adapter.pt)")
            out.append((key, Path(path)))
        return out

    inner = dict(pairs(args.inner, "--inner"))
    outer = {parse_edge_key(k): p for k, p in pairs(args.outer, "--outer")}
    links = import_released(inner, outer)
    path = save_links(links, args.out)
    print(f"saved {len(inner)} inner and {len(outer)} outer links ({links.num_parameters():,} parameters) to {path}")
    return 0


def _import_release(args: argparse.Namespace) -> int:
    from recursivemas.config import load_topology
    from recursivemas.links import edge_key, import_released, resolve_release, save_links

    if args.inner or args.outer:
        raise ValueError("--release: the manifests name every file; drop --inner/--outer")
    if not args.topology:
        raise ValueError("--release: pass --topology (a built-in such as sequential-light, or a YAML) to map the "
                         "release's roles onto agents")
    topology = load_topology(args.topology)
    files = resolve_release(args.release, topology, args.task)
    links = import_released(files.inner, files.outer, dims=files.agent_dims, edge_dims=files.edge_dims)
    for agent, file in files.inner.items():
        print(f"  inner {agent:<14} <- {file}")
    for edge, file in files.outer.items():
        print(f"  outer {edge_key(*edge):<14} <- {file}")
    path = save_links(links, args.out)
    dtype = str(next(links.parameters()).dtype).removeprefix("torch.")
    print(f"saved {len(files.inner)} inner and {len(files.outer)} outer links ({links.num_parameters():,} "
          f"parameters, {dtype}) for {topology.name}{f' (task {args.task})' if args.task else ''} to {path}")
    if links.norm != topology.link_norm:
        print(f"note: these links {'have' if links.norm else 'have no'} LayerNorms; set `link_norm: "
              f"{str(links.norm).lower()}` in the topology to load them", file=sys.stderr)
    return 0
