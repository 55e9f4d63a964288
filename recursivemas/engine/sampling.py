"""How a generate call decodes, and why a generation stopped: the settings every layer above the engine passes down.

Plain Python (no torch), so the topology config reads its defaults from here: each sampling setting has one
default, this one. The engine takes one frozen :class:`Sampling` per call; the coalescer batches calls whose
settings are equal, and the settings cross threads, Ray actors and Serve replicas as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

FinishReason = Literal["eos", "stop", "length", "cancelled"]
"""Why one row's decoding ended: end of turn, a stop string, its token budget, or its run ended (cancel/deadline)."""
StopTokens = Literal["generation_config", "tokenizer"]
"""Which end tokens end a row: every end token the model's ``generation_config`` and its tokenizer name (Qwen's
``<|im_end|>`` and ``<|endoftext|>``, say), or only the tokenizer's own ``eos_token_id``, as the authors'
``generate(eos_token_id=tokenizer.eos_token_id)`` does."""


@dataclass(frozen=True)
class Sampling:
    """One generate call's decoding: token budget, temperature (0: greedy), nucleus ``top_p``, ``seed``, ``stop``
    strings and the end tokens that stop it (``stop_tokens``, :data:`StopTokens`). ``from_model`` names the fields
    a host takes from its backbone's own ``generation_config`` instead (``generation.from_model`` in a topology);
    the engine itself ignores it."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    from_model: tuple[str, ...] = ()
    stop_tokens: StopTokens = "generation_config"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))  # a list given here still hashes and compares equal
        object.__setattr__(self, "from_model", tuple(self.from_model))

    def for_model(self, generation_config: Any) -> Sampling:
        """These settings with the ``from_model`` fields read from a model's ``generation_config``: its temperature
        and top_p when it samples, greedy when it does not."""
        if not self.from_model or generation_config is None:
            return self
        samples = bool(getattr(generation_config, "do_sample", False))
        own = {"temperature": float(generation_config.temperature or 1.0) if samples else 0.0,
               "top_p": float(generation_config.top_p or 1.0) if samples else 1.0}
        return replace(self, **{name: own[name] for name in self.from_model if name in own}, from_model=())


DEFAULT_SAMPLING = Sampling()  # greedy, up to 256 new tokens
