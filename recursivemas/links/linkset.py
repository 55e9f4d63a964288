"""All links of one RecursiveMAS system in a single module.

One ``InnerLink`` per agent and one ``OuterLink`` per edge, kept in two ``ModuleDict``s so that
``LinkSet.state_dict()`` keys are stable and readable (``inner.planner.proj1.weight``,
``outer.planner->critic.ln_target.bias``). Those keys *are* the checkpoint format (see ``io.py``), so the same
topology and backbone dims always produce the same keys and shapes, and a checkpoint can be verified against them.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from .modules import InnerLink, OuterLink

from recursivemas.config import Handoff

__all__ = ["LinkSet", "edge_key", "parse_edge_key", "FORMAT_NAME", "FORMAT_VERSION", "HANDOFF_MODES"]

FORMAT_NAME = "recursivemas-links"
FORMAT_VERSION = 1
EDGE_SEP = "->"
HANDOFF_MODES = get_args(Handoff)


def edge_key(src: str, dst: str) -> str:
    """The name of edge ``src -> dst`` in the ``outer`` dict, the state dict and the manifest."""
    return f"{src}{EDGE_SEP}{dst}"


def parse_edge_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`edge_key`: ``"a->b"`` -> ``("a", "b")``."""
    parts = key.split(EDGE_SEP)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"bad edge key {key!r}: expected 'src{EDGE_SEP}dst' with two non-empty agent names")
    return parts[0], parts[1]


def _check_agent_name(name: str) -> None:
    # '.' would break state-dict key paths, '->' would make edge keys ambiguous.
    if not isinstance(name, str) or not name or "." in name or EDGE_SEP in name:
        raise ValueError(
            f"bad agent name {name!r}: names must be non-empty strings without '.' or '{EDGE_SEP}'; rename the agent"
        )


class LinkSet(nn.Module):
    """Inner links per agent and outer links per edge, built from agent hidden sizes and the edge list.

    ``agent_dims`` maps agent name -> hidden size ``d`` (the input-embedding size is assumed equal to it).
    ``out_scales`` optionally maps agent name -> typical embedding magnitude of that agent's backbone; it sets
    the output LayerNorm gain of the links that *produce inputs for* that agent (its inner link and its in-edges).
    """

    def __init__(
        self,
        agent_dims: dict[str, int],
        edges: list[tuple[str, str]],
        norm: bool = True,
        out_scales: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.norm = bool(norm)
        out_scales = dict(out_scales or {})
        for name, dim in agent_dims.items():
            _check_agent_name(name)
            if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
                raise ValueError(f"agent {name!r}: dim must be a positive int, got {dim!r}")
        unknown_scales = sorted(set(out_scales) - set(agent_dims))
        if unknown_scales:
            raise ValueError(f"out_scales names unknown agents {unknown_scales}; known agents: {sorted(agent_dims)}")

        seen: set[str] = set()
        for edge in edges:
            if len(edge) != 2:
                raise ValueError(f"bad edge {edge!r}: expected a (src, dst) pair")
            src, dst = edge
            key = edge_key(src, dst)
            missing = [a for a in (src, dst) if a not in agent_dims]
            if missing:
                raise ValueError(
                    f"edge {key!r} names unknown agent(s) {missing}; known agents: {sorted(agent_dims)}. "
                    "Add the agent to agent_dims or fix the edge."
                )
            if key in seen:
                raise ValueError(f"duplicate edge {key!r}; list each edge once")
            seen.add(key)

        self.inner = nn.ModuleDict(
            {name: InnerLink(dim, norm=self.norm, out_scale=out_scales.get(name, 1.0))
             for name, dim in agent_dims.items()}
        )
        self.outer = nn.ModuleDict(
            {
                edge_key(src, dst): OuterLink(
                    agent_dims[src], agent_dims[dst], norm=self.norm, out_scale=out_scales.get(dst, 1.0)
                )
                for src, dst in edges
            }
        )
        self.agent_dims: dict[str, int] = {name: int(dim) for name, dim in agent_dims.items()}
        self.edges: list[tuple[str, str]] = [(src, dst) for src, dst in edges]

    def inner_link(self, agent: str) -> InnerLink:
        if agent not in self.inner:
            raise KeyError(f"no inner link for agent {agent!r}; agents: {sorted(self.agent_dims)}")
        return self.inner[agent]

    def outer_link(self, src: str, dst: str) -> OuterLink:
        key = edge_key(src, dst)
        if key not in self.outer:
            raise KeyError(f"no outer link for edge {key!r}; edges: {list(self.outer.keys())}")
        return self.outer[key]

    def handoff(self, states: torch.Tensor, src: str, dst: str, mode: str = "inner_outer") -> torch.Tensor:
        """Map ``src``'s latent states ``[..., d_src]`` to ``dst``'s input embeddings ``[..., d_dst]``.

        ``inner_outer`` computes ``R_out(R_in(H))`` (matches the released weights); ``outer`` computes
        ``R_out(H)`` (the paper's formula).
        """
        if mode == "inner_outer":
            return self.outer_link(src, dst)(self.inner_link(src)(states))
        if mode == "outer":
            return self.outer_link(src, dst)(states)
        raise ValueError(f"unknown handoff mode {mode!r}; allowed: {', '.join(repr(m) for m in HANDOFF_MODES)}")

    def manifest(self) -> dict:
        """The JSON-able description stored next to the weights (``links.json``)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "norm": self.norm,
            "agents": {name: {"dim": dim} for name, dim in self.agent_dims.items()},
            "edges": [edge_key(src, dst) for src, dst in self.edges],
        }

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
