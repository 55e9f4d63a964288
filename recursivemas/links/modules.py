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


class _ResidualLink(nn.Module):
    """What both links share: ``out_norm(proj2(gelu(proj1(in_norm(h)))) + residual(h))``, the MLP's output
    projection zero at init and the output LayerNorm's gain at ``out_scale``. Subclasses name their norms (the
    released checkpoints' names) and their residual path."""

    in_norm_name: str
    out_norm_name: str

    def __init__(self, in_dim: int, out_dim: int, hidden: int, norm: bool, out_scale: float) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"{type(self).__name__} dims must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        self.norm = bool(norm)
        self._in_dim, self._out_dim = int(in_dim), int(out_dim)
        setattr(self, self.in_norm_name, nn.LayerNorm(in_dim) if self.norm else None)
        self.proj1 = nn.Linear(in_dim, hidden)
        self.proj2 = nn.Linear(hidden, out_dim)
        self._build_residual()
        setattr(self, self.out_norm_name, nn.LayerNorm(out_dim) if self.norm else None)
        self.act = nn.GELU()  # exact (erf) GELU, as in the released weights
        self.reset_link_parameters(out_scale)

    def _build_residual(self) -> None:
        """Register the residual path's parameters (none: the identity)."""

    def _reset_residual(self) -> None:
        """Initialise the residual path (nothing to do for the identity)."""

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return h

    @torch.no_grad()
    def reset_link_parameters(self, out_scale: float = 1.0) -> None:
        """Zero the MLP's output projection, initialise the residual path, set the output LayerNorm gain."""
        nn.init.zeros_(self.proj2.weight)
        nn.init.zeros_(self.proj2.bias)
        self._reset_residual()
        out_norm = getattr(self, self.out_norm_name)
        if out_norm is not None:
            out_norm.weight.fill_(float(out_scale))
            out_norm.bias.zero_()

    @property
    def in_dim(self) -> int:
        return self._in_dim

    @property
    def out_dim(self) -> int:
        return self._out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        in_norm, out_norm = getattr(self, self.in_norm_name), getattr(self, self.out_norm_name)
        x = in_norm(h) if in_norm is not None else h
        out = self.proj2(self.act(self.proj1(x))) + self.residual(h)
        return out_norm(out) if out_norm is not None else out


class InnerLink(_ResidualLink):
    """Per-agent link ``d -> d``: ``post_ln(h + proj2(gelu(proj1(pre_ln(h)))))``.

    With ``norm=False`` both LayerNorms are dropped (the paper's Eq. 3): ``h + proj2(gelu(proj1(h)))``, and
    ``out_scale`` has nothing to scale, so it is unused. Works on any leading shape ``[..., dim]``.
    With ``norm=True`` the parameter count is ``2 d^2 + 6 d``.
    """

    in_norm_name, out_norm_name = "pre_ln", "post_ln"

    def __init__(self, dim: int, norm: bool = True, out_scale: float = 1.0) -> None:
        super().__init__(dim, dim, dim, norm, out_scale)

    def extra_repr(self) -> str:
        return f"dim={self._in_dim}, norm={self.norm}"


class OuterLink(_ResidualLink):
    """Per-edge link ``d_src -> d_dst``: ``ln_target(proj2(gelu(proj1(ln_source(h)))) + residual_proj(h))``.

    The MLP branch is widened to ``2 * out_dim``; the residual path is a linear map because the two backbones'
    spaces generally differ in size. With ``norm=False`` both LayerNorms are dropped and ``out_scale`` is unused.
    At init the MLP branch is zero and ``residual_proj`` is the identity (equal dims) or a random orthogonal map,
    so the link starts as ``ln_target(residual_proj(h))``.
    """

    in_norm_name, out_norm_name = "ln_source", "ln_target"

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True, out_scale: float = 1.0) -> None:
        super().__init__(in_dim, out_dim, 2 * out_dim, norm, out_scale)

    def _build_residual(self) -> None:
        self.residual_proj = nn.Linear(self._in_dim, self._out_dim)

    @torch.no_grad()
    def _reset_residual(self) -> None:
        if self._in_dim == self._out_dim:
            self.residual_proj.weight.copy_(torch.eye(self._out_dim, dtype=self.residual_proj.weight.dtype))
        else:
            nn.init.orthogonal_(self.residual_proj.weight)
        nn.init.zeros_(self.residual_proj.bias)

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return self.residual_proj(h)

    def extra_repr(self) -> str:
        return f"in_dim={self._in_dim}, out_dim={self._out_dim}, norm={self.norm}"
