"""The reference latent rollout, as the paper's released code computes it: no KV cache.

Every latent step re-runs the *whole* sequence (prompt plus every latent input so far) through the decoder stack and
keeps only the last state. That costs O(steps * length) positions per step instead of one, so it is the baseline the
engine's KV-cached ``BackboneEngine.rollout`` must equal (numerically, to float32 round-off) and beat (in time).
It is kept only for tests and benchmarks; nothing in ``recursivemas`` calls it.
"""

from __future__ import annotations

import torch
from torch import nn

from recursivemas.engine import BackboneEngine, Prompt


def _last_state(engine: BackboneEngine, embeds: torch.Tensor) -> torch.Tensor:
    """Last-layer state at the final position of one unpadded sequence ``[length, embed_dim]``."""
    length = embeds.shape[0]
    out = engine.decoder(
        inputs_embeds=embeds.unsqueeze(0),
        attention_mask=torch.ones((1, length), dtype=torch.long, device=embeds.device),
        position_ids=torch.arange(length, device=embeds.device).unsqueeze(0),
        use_cache=False,
    )
    return out.last_hidden_state[0, -1]


def recompute_rollout(engine: BackboneEngine, prompt: Prompt, steps: int, inner: nn.Module | None) -> torch.Tensor:
    """``[steps, hidden]`` latent states of one prompt: h_1 = f(E)[-1], h_{t+1} = f([E; R(h_1) .. R(h_t)])[-1].

    ``inner`` is the inner link R (``None``: the hidden state itself is fed back, for backbones whose hidden and
    embedding sizes agree).
    """
    with torch.inference_mode():
        embeds = engine.embed(prompt).embeds
        if steps <= 0:
            return embeds.new_empty((0, engine.hidden_size))
        states = [_last_state(engine, embeds)]
        for _ in range(steps - 1):
            h = states[-1]
            fed = h if inner is None else inner(h.to(next(inner.parameters()).dtype)).to(embeds.dtype)
            embeds = torch.cat([embeds, fed.unsqueeze(0)], dim=0)
            states.append(_last_state(engine, embeds))
        return torch.stack(states, dim=0)
