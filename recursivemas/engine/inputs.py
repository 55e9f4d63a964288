"""From prompts made of text and latent segments to a left-padded batch of input embeddings.

Agents read prompts where latent hand-offs sit between pieces of text ("Plan: <32 latent vectors>\\nSolve ...").
We render the chat template once around sentinel markers, split the result at the markers, tokenize the text pieces
and splice the latent tensors in between, so a latent block lands exactly where a message would in text mode.
Models without a chat template (base models) get a plain "prompt, then Response:" frame instead, unless the
prompt's :class:`Framing` refuses them. The framing also carries a system turn and the chat template's own options
(``enable_thinking=False`` for a Qwen3 planner), which change every hand-off, so they travel with the prompt. A
``raw`` framing sends the text as it is, with no frame at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

Segment = str | torch.Tensor
_SENTINEL = "\x00LATENT{}\x00"
_PLAIN_FRAME = "{content}\n\nResponse:"


@dataclass(frozen=True)
class Framing:
    """How a prompt becomes a conversation: an optional system turn before the user turn, keyword arguments for
    the chat template, and, for a model without a template, the plain frame (``plain``) or an error (``refuse``).

    ``raw`` skips all of that: the prompt's text (and ``response_prefix``) is the model's whole input, tokenized as
    the tokenizer tokenizes a plain string (its BOS where it adds one), with no chat template, no system turn and no
    plain frame; the other fields are ignored. The authors' answer retry is sent so (``answer_nudge.style:
    authors``)."""

    system: str | None = None
    template_kwargs: tuple[tuple[str, Any], ...] = ()
    without_template: Literal["plain", "refuse"] = "plain"
    raw: bool = False


@dataclass
class Prompt:
    """One request to a backbone: the user message as segments, plus text already in the model's reply.

    ``response_prefix`` lets a caller continue a reply (the tool loop appends tool results and generates on).
    """

    segments: list[Segment]
    response_prefix: str = ""
    framing: Framing = Framing()

    def with_segments(self, segments: list[Segment]) -> Prompt:
        """The same prompt (prefix and framing) over other segments."""
        return replace(self, segments=list(segments))


@dataclass
class Embedded:
    """A prompt turned into input embeddings, with counts for accounting."""

    embeds: torch.Tensor  # [length, embed_dim]
    text_tokens: int
    latent_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


@dataclass
class Batch:
    embeds: torch.Tensor  # [batch, max_len, embed_dim], left-padded with zeros
    attention_mask: torch.Tensor  # [batch, max_len] long
    position_ids: torch.Tensor  # [batch, max_len] long, counting real tokens only
    lengths: list[int]


def render_pieces(tokenizer, prompt: Prompt) -> list[Segment]:
    """The full model input as text pieces and latent tensors, in order, with the chat frame applied."""
    latents = [s for s in prompt.segments if isinstance(s, torch.Tensor)]
    content, index = [], 0
    for segment in prompt.segments:
        if isinstance(segment, torch.Tensor):
            content.append(_SENTINEL.format(index))
            index += 1
        else:
            content.append(segment)
    message = "".join(content)
    framing = prompt.framing
    if framing.raw:
        framed = message
    elif getattr(tokenizer, "chat_template", None):
        turns = [{"role": "system", "content": framing.system}] if framing.system else []
        framed = tokenizer.apply_chat_template(turns + [{"role": "user", "content": message}], tokenize=False,
                                               add_generation_prompt=True, **dict(framing.template_kwargs))
    elif framing.without_template == "refuse":
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat template and the "
                         "agent's framing refuses the plain frame (no_chat_template: refuse); use a chat model or "
                         "set no_chat_template: plain")
    else:
        body = f"{framing.system}\n\n{message}" if framing.system else message
        framed = (tokenizer.bos_token or "") + _PLAIN_FRAME.format(content=body)
    framed += prompt.response_prefix
    pieces: list[Segment] = []
    for index, latent in enumerate(latents):
        before, framed = framed.split(_SENTINEL.format(index), 1)
        pieces.extend([before, latent])
    pieces.append(framed)
    return [p for p in pieces if not (isinstance(p, str) and p == "")]


def embed(tokenizer, embedding: torch.nn.Module, prompt: Prompt) -> Embedded:
    """Embed a prompt with the model's own input embedding (which includes any scaling, e.g. Gemma's sqrt(d)).

    A ``raw`` prompt's leading text gets the special tokens the tokenizer adds to a plain string (its BOS, if any);
    every other piece is tokenized without them (a chat template or the plain frame writes its own)."""
    weight = embedding.weight
    parts, ids, latent_tokens = [], [], 0
    for index, piece in enumerate(render_pieces(tokenizer, prompt)):
        if isinstance(piece, str):
            specials = prompt.framing.raw and index == 0
            piece_ids = tokenizer(piece, add_special_tokens=specials)["input_ids"]
            ids.extend(piece_ids)
            parts.append(embedding(torch.tensor(piece_ids, dtype=torch.long, device=weight.device)))
        else:
            if piece.dim() != 2 or piece.shape[-1] != weight.shape[-1]:
                raise ValueError(
                    f"a latent segment must be [steps, {weight.shape[-1]}] for this backbone, got {tuple(piece.shape)}"
                )
            latent_tokens += piece.shape[0]
            parts.append(piece.to(device=weight.device, dtype=weight.dtype))
    return Embedded(torch.cat(parts, dim=0), text_tokens=len(ids), latent_tokens=latent_tokens, token_ids=ids)


def left_pad(items: list[torch.Tensor]) -> Batch:
    """Stack [len_i, dim] sequences, padding on the left; positions start at 0 at each sequence's first real token."""
    lengths = [t.shape[0] for t in items]
    longest = max(lengths)
    first = items[0]
    embeds = first.new_zeros((len(items), longest, first.shape[-1]))
    mask = torch.zeros((len(items), longest), dtype=torch.long, device=first.device)
    for row, (item, length) in enumerate(zip(items, lengths)):
        embeds[row, longest - length :] = item
        mask[row, longest - length :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(embeds, mask, positions, lengths)


def extend(batch_mask: torch.Tensor, positions: torch.Tensor, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and position ids for ``steps`` new positions appended to every row."""
    ones = batch_mask.new_ones((batch_mask.shape[0], steps))
    last = positions[:, -1:]
    new_positions = last + torch.arange(1, steps + 1, device=positions.device)
    return torch.cat([batch_mask, ones], dim=1), new_positions
