"""Next-token choice: greedy at temperature 0, otherwise temperature and nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from recursivemas.engine.sampling import Sampling

_GREEDY_BELOW = 1e-5


class Sampler:
    """One generate call's token chooser; it owns the call's random generator, so a seed replays the call."""

    def __init__(self, sampling: Sampling):
        self.temperature = sampling.temperature
        self.top_p = sampling.top_p
        self.generator: torch.Generator | None = None
        if sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(sampling.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, vocab] logits -> [batch] token ids."""
        if self.temperature < _GREEDY_BELOW:  # 0, or so close that sampling would pick the argmax anyway
            return logits.argmax(dim=-1)
        # float64 after subtracting the max: a small temperature must not overflow the scaled logits to inf
        shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
        probs = torch.softmax(shifted / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p  # keep the smallest set reaching top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        picks = torch.multinomial(probs.cpu(), 1, generator=self.generator)
        return picks.squeeze(-1).to(logits.device)
