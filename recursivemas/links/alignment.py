"""Start an outer link between two different backbones as a map between their embedding spaces.

Between two agents of one backbone an untrained outer link is the identity: the hand-off ``R_out(R_in(H))`` is
already in the receiver's input-embedding space, so the receiver reads the sender's thoughts as soft tokens from
step 0. Between two backbones a random orthogonal map stands in for that identity, and the receiver starts by
reading noise; stage 2 then has to discover the map, through a frozen model, from a last-round loss whose gradient
hardly reaches the first hop (docs/results.md, "The operands chain").

Both vocabularies share most of their short strings ("7", " the", "=", ...). A least-squares fit of the
receiver's input embeddings on the sender's, over the tokens both spell alike, gives the map the identity gives
within one backbone: a soft token of the sender lands near the same soft token of the receiver. It goes in the
link's residual path; the MLP branch stays zero, so the link's function at step 0 is exactly that map.
"""

from __future__ import annotations

import logging
import unicodedata

import torch

from recursivemas.links.modules import OuterLink

log = logging.getLogger("recursivemas")

__all__ = ["EmbeddingMap", "embedding_map", "shared_tokens", "start_as_embedding_map"]

MIN_SHARED_TOKENS = 1024  # fewer and the fit is too loose to be a map between the spaces


class EmbeddingMap:
    """``y = x @ weight.T + bias`` from one backbone's input embeddings to another's, and how well it fits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, tokens: int, r2: float) -> None:
        self.weight, self.bias, self.tokens, self.r2 = weight, bias, tokens, r2


def _spelling(tokenizer, token_id: int) -> str | None:
    text = tokenizer.decode([token_id])
    if not text or "\ufffd" in text or any(unicodedata.category(c) in ("Cc", "Co", "Cn") for c in text.strip()):
        return None  # an incomplete byte sequence, a control or unassigned character: no spelling to match on
    return text


def shared_tokens(src_tokenizer, dst_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids ``(src_ids, dst_ids)`` of the tokens that decode to the same string in both vocabularies (special
    tokens left out), one pair per string."""
    def spellings(tokenizer) -> dict[str, int]:
        special = set(tokenizer.all_special_ids)
        found: dict[str, int] = {}
        for token_id in range(len(tokenizer)):
            if token_id not in special and (text := _spelling(tokenizer, token_id)) is not None:
                found.setdefault(text, token_id)
        return found

    src, dst = spellings(src_tokenizer), spellings(dst_tokenizer)
    common = sorted(set(src) & set(dst))
    return torch.tensor([src[s] for s in common]), torch.tensor([dst[s] for s in common])


@torch.no_grad()
def embedding_map(src_embeddings: torch.Tensor, dst_embeddings: torch.Tensor, ridge: float = 1e-3) -> EmbeddingMap:
    """Ridge least squares of ``dst_embeddings [n, d_dst]`` on ``src_embeddings [n, d_src]`` (rows paired by
    token), with an intercept. ``ridge`` is relative to the mean eigenvalue of the sources' covariance."""
    if src_embeddings.shape[0] != dst_embeddings.shape[0]:
        raise ValueError(f"embedding_map: {src_embeddings.shape[0]} source rows against "
                         f"{dst_embeddings.shape[0]} target rows; pair them by token")
    x, y = src_embeddings.double(), dst_embeddings.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    gram += torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal().mean()
    weight = torch.linalg.solve(gram, xc.T @ yc).T  # [d_dst, d_src]
    residual = yc - xc @ weight.T
    r2 = 1.0 - float(residual.pow(2).sum() / yc.pow(2).sum())
    return EmbeddingMap(weight.float(), (y_mean - x_mean @ weight.T).float(), int(x.shape[0]), r2)


def start_as_embedding_map(link: OuterLink, src_engine, dst_engine, name: str,
                           min_shared_tokens: int = MIN_SHARED_TOKENS) -> EmbeddingMap:
    """Set ``link``'s residual path to the embedding map from ``src_engine``'s backbone to ``dst_engine``'s (the
    MLP branch is left at zero). ``name`` is the edge, for the log and errors."""
    src_ids, dst_ids = shared_tokens(src_engine.tokenizer, dst_engine.tokenizer)
    if len(src_ids) < min_shared_tokens:
        raise ValueError(f"outer.init: embedding_map: the vocabularies of link {name} share {len(src_ids)} tokens, "
                         f"under {min_shared_tokens}: too few to fit a map between the spaces; set "
                         "`outer.init: orthogonal` for these backbones")
    with torch.no_grad():
        fit = embedding_map(src_engine.embedding(src_ids.to(src_engine.device)).float().cpu(),
                            dst_engine.embedding(dst_ids.to(dst_engine.device)).float().cpu())
        proj = link.residual_proj
        if tuple(proj.weight.shape) != tuple(fit.weight.shape):
            raise ValueError(f"outer link {name}: residual_proj is {tuple(proj.weight.shape)}, the embedding map "
                             f"{tuple(fit.weight.shape)}; the link was sized for other backbones")
        proj.weight.copy_(fit.weight.to(proj.weight.dtype))
        proj.bias.copy_(fit.bias.to(proj.bias.dtype))
    log.info("outer link %s starts as the embedding map: %d shared tokens, R^2 %.3f", name, fit.tokens, fit.r2)
    return fit
