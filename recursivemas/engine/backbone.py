"""The backbone engine: one frozen causal LM and the three things RecursiveMAS asks of it.

- ``rollout``: latent thoughts. Each step feeds the inner link's image of the last hidden state back as the next input
  embedding, one cached single-position pass through the decoder stack, never the LM head (the vocabulary projection
  is exactly the cost a latent step exists to skip).
- ``generate`` / ``stream``: text from a prompt that may hold latent segments.
- ``forward_states`` / ``latent_states``: teacher-forced states and rollout states with gradients, for training
  links.

Pure torch over transformers; it knows nothing of Ray or topologies, so the runtime can drive it in-process, from a
training worker or inside an actor. All three take batches: prompts of different lengths are left-padded with
position ids that follow the attention mask, so a batch gives the same numbers as its rows one by one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import torch
import torch.utils.checkpoint
from torch import nn

from recursivemas.engine.inputs import Embedded, Prompt, embed, extend, left_pad
from recursivemas.engine.loading import load_causal_lm
from recursivemas.engine.sampler import Sampler
from recursivemas.engine.sampling import DEFAULT_SAMPLING, FinishReason, Sampling, StopTokens
from recursivemas.errors import ContextLengthError

log = logging.getLogger("recursivemas")
Alive = Callable[[], bool]  # asked between decode steps: False ends a row (its run was cancelled or is past due)
_STOP_WINDOW = 32  # tokens decoded to look for a stop string; longer stop strings are not supported
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Rollout:
    states: torch.Tensor  # [steps, hidden]
    prompt_tokens: int
    latent_tokens: int


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    latent_tokens: int


@dataclass
class TeacherForced:
    states: torch.Tensor  # [target_len, hidden]: state t is the one that predicts target token t
    target_ids: torch.Tensor  # [target_len]


class BackboneEngine:
    def __init__(self, model: nn.Module, tokenizer, name: str = "backbone"):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        # The text path of any causal LM, multimodal wrappers included (Gemma-3-4B loads as
        # Gemma3ForConditionalGeneration): its language model's decoder and embeddings, its text config's sizes.
        self.decoder = model.get_decoder()
        self.embedding = model.get_input_embeddings()
        config = model.config.get_text_config()
        self.hidden_size: int = config.hidden_size
        self.max_context: int = getattr(config, "max_position_embeddings", None) or 2**31
        self.eos_ids = _eos_ids(model, tokenizer)  # every end token, generation_config's and tokenizer's
        self.end_id = _end_id(tokenizer, self.eos_ids)
        # Training through the frozen backbone (stage 2): keep only each call's inputs and recompute the decoder in
        # backward, so an unrolled system holds one call's activations at a time instead of every round's.
        self.gradient_checkpointing = False

    @classmethod
    def load(cls, path: str, dtype: str = "float32", device: str = "cpu", name: str | None = None) -> BackboneEngine:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = load_causal_lm(path, DTYPES[dtype], name or path).to(device)
        except (OSError, ValueError) as exc:
            raise OSError(f"backbone {name or path!r}: cannot load model from {path!r}: {exc}") from exc
        return cls(model, tokenizer, name=name or str(path))

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def embedding_scale(self) -> float:
        """Typical magnitude of one input-embedding coordinate: the scale untrained links should hit."""
        probe = self.embedding(torch.arange(min(4096, self.embedding.num_embeddings), device=self.device))
        return float(probe.float().std())

    # --- inputs --------------------------------------------------------------------------------------------------
    def embed(self, prompt: Prompt, extra_positions: int = 0, what: str = "latent steps") -> Embedded:
        item = embed(self.tokenizer, self.embedding, prompt)
        if item.length + extra_positions > self.max_context:
            extra = f" plus {extra_positions} {what}" if extra_positions else ""
            raise ContextLengthError(
                f"backbone {self.name!r}: the prompt is {item.length} positions ({item.text_tokens} text tokens, "
                f"{item.latent_tokens} latent){extra}, over the model's context of {self.max_context}; "
                f"shorten the prompt{' or lower ' + what if extra_positions else ''}"
            )
        return item

    def count_tokens(self, prompt: Prompt) -> int:
        return embed(self.tokenizer, self.embedding, prompt).length

    # --- latent rollout ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def rollout(
        self, prompts: Sequence[Prompt], steps: int, inner: Sequence[nn.Module | None] | nn.Module | None,
    ) -> list[Rollout]:
        """``steps`` latent thoughts per prompt: h_1 from the prompt, then h_{t+1} from [prompt; R(h_1) .. R(h_t)].

        ``inner`` is one link for all prompts or one per prompt (agents sharing a backbone batch together).
        """
        items = [self.embed(p, steps) for p in prompts]
        links = _links_per_prompt(inner, len(items), "rollout")
        if steps == 0:
            empty = torch.empty((0, self.hidden_size), dtype=self.dtype, device=self.device)
            return [Rollout(empty, i.text_tokens, i.latent_tokens) for i in items]
        stacked = self._roll(items, steps, links)
        return [Rollout(stacked[row], i.text_tokens, i.latent_tokens) for row, i in enumerate(items)]

    def _roll(self, items: list[Embedded], steps: int, links: list[nn.Module | None]) -> torch.Tensor:
        """The cached rollout loop, ``[batch, steps, hidden]``: under inference mode for ``rollout``, under autograd
        for ``latent_states(gradient="full")``, so both run the very same steps."""
        batch = left_pad([i.embeds for i in items])
        out, kv = _cached(self.decoder, None, inputs_embeds=batch.embeds, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids)
        mask, positions = batch.attention_mask, batch.position_ids
        hidden = out.last_hidden_state[:, -1]
        states = [hidden]
        for _ in range(steps - 1):
            mask, positions = extend(mask, positions)
            out, kv = _cached(self.decoder, kv, inputs_embeds=_apply_links(links, hidden).unsqueeze(1),
                              attention_mask=mask, position_ids=positions)
            hidden = out.last_hidden_state[:, -1]
            states.append(hidden)
        return torch.stack(states, dim=1)

    # --- text generation -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling = DEFAULT_SAMPLING,
                 alive: Sequence[Alive | None] | None = None) -> list[Generation]:
        """Decode every prompt with ``sampling``, batched. ``alive`` (one check per prompt, or None) is asked between
        decode steps: a row whose check says no ends with finish reason ``cancelled``, and the other rows decode on
        undisturbed."""
        items = [self.embed(p) for p in prompts]
        tokens: list[list[int]] = [[] for _ in items]
        reasons: list[FinishReason] = ["length"] * len(items)
        for step_tokens, finished in self._decode(items, sampling, alive):
            for row, token in step_tokens.items():
                tokens[row].append(token)
            for row, reason in finished.items():
                reasons[row] = reason
        return [
            Generation(self._text(ids, reasons[r]), ids if reasons[r] != "eos" else ids[:-1], reasons[r],
                       items[r].text_tokens, items[r].latent_tokens)
            for r, ids in enumerate(tokens)
        ]

    def stream(self, prompt: Prompt, sampling: Sampling = DEFAULT_SAMPLING) -> Iterator[str]:
        """Yield text deltas as tokens are decoded; the deltas join to ``generate``'s text."""
        for piece in self.stream_generation(prompt, sampling):
            if isinstance(piece, str):
                yield piece

    @torch.inference_mode()
    def stream_generation(self, prompt: Prompt, sampling: Sampling = DEFAULT_SAMPLING, alive: Alive | None = None
                          ) -> Iterator[str | Generation]:
        """``stream``'s deltas, then the finished :class:`Generation` (its token counts are the run's usage)."""
        item = self.embed(prompt)
        ids: list[int] = []
        sent, reason = "", "length"
        for step_tokens, finished in self._decode([item], sampling, [alive]):
            ids.extend(step_tokens.values())
            reason = finished.get(0, reason)
            if reason == "eos":
                break
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            if len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
        final = self._text(ids, reason)
        if len(final) > len(sent):
            yield final[len(sent) :]
        yield Generation(final, ids if reason != "eos" else ids[:-1], reason, item.text_tokens, item.latent_tokens)

    def stop_ids(self, stop_tokens: StopTokens = "generation_config") -> frozenset[int]:
        """The token ids that end a row under ``stop_tokens``: every end token (``generation_config``), or only the
        tokenizer's ``eos_token_id`` (``tokenizer``; a tokenizer without one falls back to every end token)."""
        if stop_tokens not in ("generation_config", "tokenizer"):
            raise ValueError(f"stop_tokens: {stop_tokens!r} is not one of 'generation_config', 'tokenizer'")
        own = getattr(self.tokenizer, "eos_token_id", None)
        if stop_tokens == "tokenizer" and isinstance(own, int):
            return frozenset((own,))
        return frozenset(self.eos_ids)

    def _text(self, ids: list[int], reason: str) -> str:
        return self.tokenizer.decode(ids[:-1] if reason == "eos" else ids, skip_special_tokens=True)

    def _decode(self, items: list[Embedded], sampling: Sampling, alive: Sequence[Alive | None] | None = None):
        """Yield ({row: token}, {row: finish reason}) per step for the rows still running."""
        sampler, stop, eos_ids = Sampler(sampling), sampling.stop, self.stop_ids(sampling.stop_tokens)
        batch = left_pad([i.embeds for i in items])
        budgets = [min(sampling.max_new_tokens, self.max_context - n) for n in batch.lengths]  # each row's own room
        budget = max(budgets)
        out, kv = _cached(self.model, None, inputs_embeds=batch.embeds, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, logits_to_keep=1)
        mask, positions = batch.attention_mask, batch.position_ids
        running = torch.tensor([b > 0 for b in budgets], dtype=torch.bool, device=self.device)
        generated: list[list[int]] = [[] for _ in items]
        for step in range(budget):
            next_tokens = sampler(out.logits[:, -1])
            emitted, finished = {}, {}
            for row in running.nonzero().flatten().tolist():
                if alive is not None and alive[row] is not None and not alive[row]():
                    finished[row] = "cancelled"  # it rides along with the finished rows from here
                    continue
                token = int(next_tokens[row])
                emitted[row] = token
                if token in eos_ids:
                    finished[row] = "eos"
                elif stop:  # decode a tail of tokens, not one token: a character may span several byte tokens
                    generated[row].append(token)
                    tail = self.tokenizer.decode(generated[row][-_STOP_WINDOW:], skip_special_tokens=True)
                    if any(s in tail for s in stop):
                        finished[row] = "stop"
                if row not in finished and step + 1 >= budgets[row]:
                    finished[row] = "length"
            for row in finished:
                running[row] = False
            yield emitted, finished
            if not running.any() or step == budget - 1:
                return
            mask, positions = extend(mask, positions)
            positions = positions.clamp(max=self.max_context - 1)  # finished rows ride along; keep them in range
            out, kv = _cached(self.model, kv, input_ids=next_tokens.unsqueeze(1), attention_mask=mask,
                              position_ids=positions)

    # --- teacher forcing (training) ------------------------------------------------------------------------------
    def forward_states(self, prompts: Sequence[Prompt], targets: Sequence[str], end: bool = False
                       ) -> list[TeacherForced]:
        """Last-layer states over each target text, teacher-forced after its prompt.

        ``end`` appends the end-of-turn token to every target, so a decoder trained on answers also learns to stop
        after one instead of running on to ``max_new_tokens``. Not under inference mode: outer-link training needs
        gradients through the frozen backbone into latent inputs.
        """
        rows, target_ids = [], []
        for prompt, target in zip(prompts, targets):
            ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"backbone {self.name!r}: an empty target text cannot be teacher-forced")
            if end and self.end_id is not None:
                ids = [*ids, self.end_id]
            item = self.embed(prompt, len(ids), what="target tokens")
            ids_t = torch.tensor(ids, device=self.device)
            rows.append(torch.cat([item.embeds, self.embedding(ids_t)], dim=0))
            target_ids.append(ids_t)
        batch = left_pad(rows)

        def run(embeds: torch.Tensor) -> torch.Tensor:
            return self.decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False).last_hidden_state

        hidden = self._checkpointed(run, batch.embeds)
        out = []
        for row, ids in enumerate(target_ids):
            span = hidden[row, -len(ids) - 1 : -1]  # the state before each target token predicts it
            out.append(TeacherForced(span, ids))
        return out

    def latent_states(self, prompts: Sequence[Prompt], steps: int,
                      inner: Sequence[nn.Module | None] | nn.Module | None, gradient: str = "truncated"
                      ) -> list[torch.Tensor]:
        """``rollout``'s states ``[steps, hidden]`` per prompt, differentiable in the prompts' latent segments.

        Stage 2 trains on what inference computes, so these are the states a real rollout produces:
        - ``truncated``: the rollout runs without gradients, then one parallel pass over
          ``[prompt; R(h_1) .. R(h_{steps-1})]`` with the fed-back inputs detached reproduces its states with
          gradients. Every state still attends to the prompt's latent slots directly; the paths through the
          fed-back ``R(h)`` are cut. One extra forward, activations of one pass.
        - ``full``: the cached rollout itself under autograd, every step's path kept (``steps`` passes held).

        A batch of prompts (left-padded, as ``rollout`` pads them) costs far less than its rows one by one, and
        gives the same states: a training step's rows make one call per agent turn.
        """
        if steps < 1:
            raise ValueError(f"latent_states: steps must be >= 1, got {steps}")
        if gradient not in ("truncated", "full"):
            raise ValueError(f"gradient: {gradient!r} is not one of 'truncated', 'full'")
        links = _links_per_prompt(inner, len(prompts), "latent_states")
        if gradient == "full":
            return list(self._roll([self.embed(p, steps) for p in prompts], steps, links).unbind(0))
        detached = [p.with_segments([s.detach() if isinstance(s, torch.Tensor) else s for s in p.segments])
                    for p in prompts]
        done = self.rollout(detached, steps, links)
        items = [self.embed(p, steps) for p in prompts]
        with torch.no_grad():  # stacking copies the states out of inference mode
            fed = _apply_links(links, torch.stack([d.states[: steps - 1] for d in done]))
        batch = left_pad([torch.cat([i.embeds, f.to(self.dtype)], dim=0) for i, f in zip(items, fed)])

        def run(embeds: torch.Tensor) -> torch.Tensor:
            return self.decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False).last_hidden_state

        return list(self._checkpointed(run, batch.embeds)[:, -steps:].unbind(0))

    def _checkpointed(self, run, embeds: torch.Tensor) -> torch.Tensor:
        """``run(embeds)``, recomputed in backward when gradient checkpointing is on and a gradient will flow."""
        if self.gradient_checkpointing and torch.is_grad_enabled() and embeds.requires_grad:
            return torch.utils.checkpoint.checkpoint(run, embeds, use_reentrant=False)
        return run(embeds)


def _cached(module: nn.Module, kv, **inputs):
    """One forward that extends the KV cache ``kv`` (None: start one); returns the output and the cache."""
    name = _cache_name(type(module))
    out = module(**inputs, use_cache=True, **({name: kv} if kv is not None else {}))
    return out, getattr(out, name)


@cache
def _cache_name(module_type: type) -> str:
    """The forward's name for the KV cache: ``cache`` since transformers 5.24 (``past_key_values`` warns there and
    goes in 5.40), ``past_key_values`` before (the GPU machines run 5.17)."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


def _links_per_prompt(inner: Sequence[nn.Module | None] | nn.Module | None, prompts: int, caller: str
                      ) -> list[nn.Module | None]:
    links = [inner] * prompts if inner is None or isinstance(inner, nn.Module) else list(inner)
    if len(links) != prompts:
        raise ValueError(f"{caller}: {len(links)} inner links for {prompts} prompts; pass one or one per prompt")
    return links


def _apply_links(links: list[nn.Module | None], hidden: torch.Tensor) -> torch.Tensor:
    """Map each row's hidden state through its agent's inner link (rows sharing a link go in one call)."""
    if all(link is links[0] for link in links):
        return _run_link(links[0], hidden)
    out = torch.empty_like(hidden)
    for link in {id(each): each for each in links}.values():
        rows = [r for r, each in enumerate(links) if each is link]
        out[rows] = _run_link(link, hidden[rows])
    return out


def _run_link(link: nn.Module | None, hidden: torch.Tensor) -> torch.Tensor:
    if link is None:
        return hidden
    param = next(link.parameters())
    return link(hidden.to(param.dtype)).to(hidden.dtype)


def _end_id(tokenizer, eos_ids: set[int]) -> int | None:
    """The token that ends an answer: the tokenizer's own end-of-turn (``<|im_end|>``, ``<eos>``), else any stop id."""
    own = getattr(tokenizer, "eos_token_id", None)
    if isinstance(own, int):
        return own
    return min(eos_ids) if eos_ids else None


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids
