"""The two link modules of RecursiveMAS: the inner link and the outer link.

Both are tiny residual MLPs that map last-layer hidden states of a backbone into the input-embedding space of a
backbone (the same one for the inner link, the next agent's for the outer link). Submodule names match the paper
authors' released checkpoints (``pre_ln, proj1, proj2, post_ln`` and ``ln_source, proj1, proj2, residual_proj,
ln_target``) so their weights load without any key renaming.

Initialisation is chosen so that an *untrained* link is already a sensible map: the second projection of the MLP
branch starts at zero, so the link starts as (a LayerNorm of) its residual path, and the output LayerNorm gain is set
to ``out_scale`` -- callers pass the target model's typical embedding magnitude (e.g. the std of its embedding
matrix). An untrained system therefore still feeds its backbones inputs at the scale of real token embeddings
instead of unit-variance vectors that are orders of magnitude too large.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InnerLink", "OuterLink"]


class InnerLink(nn.Module):
    """Per-agent link ``d -> d``: ``post_ln(h + proj2(gelu(proj1(pre_ln(h)))))``.

    With ``norm=False`` both LayerNorms are dropped (the paper's Eq. 3): ``h + proj2(gelu(proj1(h)))``, and
    ``out_scale`` has nothing to scale, so it is unused. Works on any leading shape ``[..., dim]``.
    With ``norm=True`` the parameter count is ``2 d^2 + 6 d``.
    """

    def __init__(self, dim: int, norm: bool = True, out_scale: float = 1.0) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"InnerLink dim must be positive, got {dim}")
        self.norm = bool(norm)
        self._dim = int(dim)
        self.pre_ln = nn.LayerNorm(dim) if self.norm else None
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.post_ln = nn.LayerNorm(dim) if self.norm else None
        self.act = nn.GELU()  # exact (erf) GELU, as in the released weights
        self.reset_link_parameters(out_scale)

    @torch.no_grad()
    def reset_link_parameters(self, out_scale: float = 1.0) -> None:
        """Zero the MLP's output projection and set the output LayerNorm gain to ``out_scale``."""
        nn.init.zeros_(self.proj2.weight)
        nn.init.zeros_(self.proj2.bias)
        if self.post_ln is not None:
            self.post_ln.weight.fill_(float(out_scale))
            self.post_ln.bias.zero_()

    @property
    def in_dim(self) -> int:
        return self._dim

    @property
    def out_dim(self) -> int:
        return self._dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.pre_ln(h) if self.pre_ln is not None else h
        out = h + self.proj2(self.act(self.proj1(x)))
        return self.post_ln(out) if self.post_ln is not None else out

    def extra_repr(self) -> str:
        return f"dim={self._dim}, norm={self.norm}"


class OuterLink(nn.Module):
    """Per-edge link ``d_src -> d_dst``: ``ln_target(proj2(gelu(proj1(ln_source(h)))) + residual_proj(h))``.

    The MLP branch is widened to ``2 * out_dim``; the residual path is a linear map because the two backbones'
    spaces generally differ in size. With ``norm=False`` both LayerNorms are dropped and ``out_scale`` is unused.
    At init the MLP branch is zero and ``residual_proj`` is the identity (equal dims) or a random orthogonal map,
    so the link starts as ``ln_target(residual_proj(h))``.
    """

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True, out_scale: float = 1.0) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"OuterLink dims must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        self.norm = bool(norm)
        self._in_dim = int(in_dim)
        self._out_dim = int(out_dim)
        self.ln_source = nn.LayerNorm(in_dim) if self.norm else None
        self.proj1 = nn.Linear(in_dim, 2 * out_dim)
        self.proj2 = nn.Linear(2 * out_dim, out_dim)
        self.residual_proj = nn.Linear(in_dim, out_dim)
        self.ln_target = nn.LayerNorm(out_dim) if self.norm else None
        self.act = nn.GELU()
        self.reset_link_parameters(out_scale)

    @torch.no_grad()
    def reset_link_parameters(self, out_scale: float = 1.0) -> None:
        """Zero the MLP's output projection, make the residual an identity/orthogonal map, set the output gain."""
        nn.init.zeros_(self.proj2.weight)
        nn.init.zeros_(self.proj2.bias)
        if self._in_dim == self._out_dim:
            self.residual_proj.weight.copy_(torch.eye(self._out_dim, dtype=self.residual_proj.weight.dtype))
        else:
            nn.init.orthogonal_(self.residual_proj.weight)
        nn.init.zeros_(self.residual_proj.bias)
        if self.ln_target is not None:
            self.ln_target.weight.fill_(float(out_scale))
            self.ln_target.bias.zero_()

    @property
    def in_dim(self) -> int:
        return self._in_dim

    @property
    def out_dim(self) -> int:
        return self._out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.ln_source(h) if self.ln_source is not None else h
        out = self.proj2(self.act(self.proj1(x))) + self.residual_proj(h)
        return self.ln_target(out) if self.ln_target is not None else out

    def extra_repr(self) -> str:
        return f"in_dim={self._in_dim}, out_dim={self._out_dim}, norm={self.norm}"
