"""Latent references in and out of typed calls, so Ray moves them actor to actor.

A call's prompts may hold latent handles (object references to hand-offs made by another actor). They travel as
top-level arguments of the remote call, so Ray fetches them all, in parallel, before the method runs (references
nested inside a prompt would be fetched one by one, by hand). :func:`lift` swaps each for a :class:`LatentArg`;
the receiving host puts the fetched tensors back with :func:`lower`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import ray
import torch

from recursivemas.runtime.calls import GenerateCall, ThinkCall

Call = TypeVar("Call", ThinkCall, GenerateCall)


@dataclass(frozen=True)
class LatentArg:
    """Stands in a prompt for the latent passed as the call's ``index``-th extra argument."""

    index: int


def lift(call: Call) -> tuple[Call, list[ray.ObjectRef]]:
    """The call with each latent reference in its prompts swapped for a :class:`LatentArg`, and the references."""
    refs: list[ray.ObjectRef] = []
    prompts = []
    for prompt in call.prompts:
        segments = []
        for segment in prompt.segments:
            if isinstance(segment, ray.ObjectRef):
                segments.append(LatentArg(len(refs)))
                refs.append(segment)
            else:
                segments.append(segment)
        prompts.append(prompt.with_segments(segments))
    return call.with_prompts(prompts), refs


def lower(call: Call, latents: Sequence[torch.Tensor]) -> Call:
    """The call with each :class:`LatentArg` replaced by its fetched tensor."""
    return call.with_prompts([p.with_segments([latents[s.index] if isinstance(s, LatentArg) else s for s in p.segments])
                              for p in call.prompts])


def fetched(latents: Sequence) -> list:
    """Latent arguments as tensors; any still a reference (Serve passes them through unresolved) is fetched here,
    from the replica that made it."""
    refs = [i for i, x in enumerate(latents) if isinstance(x, ray.ObjectRef)]
    out = list(latents)
    for i, value in zip(refs, ray.get([latents[i] for i in refs])):
        out[i] = value
    return out
