"""Tests for the backbone engine (recursivemas.engine): latent rollout, generation, teacher forcing, inputs.

Everything runs on tiny random-weight models of four families (tests/tiny.py), so it is fast and needs no weights.
The KV-cached rollout is checked against ``benchmarks._reference.recompute_rollout``, the paper's no-cache algorithm.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks._reference import recompute_rollout
from recursivemas.engine import BackboneEngine, ContextLengthError, Prompt, Sampling
from recursivemas.engine.inputs import render_pieces
from recursivemas.links import InnerLink
from tiny import FAMILIES, tiny_engine

ATOL = 1e-5
REASONS = {"eos", "stop", "length"}


# --- helpers -------------------------------------------------------------------------------------------------------
def random_link(engine, seed: int) -> InnerLink:
    """A real inner link with a random MLP output projection, so it is far from a (normalised) identity."""
    gen = torch.Generator().manual_seed(seed)
    link = InnerLink(engine.hidden_size, out_scale=engine.embedding_scale)
    with torch.no_grad():
        link.proj2.weight.copy_(torch.randn(link.proj2.weight.shape, generator=gen) * 0.5)
        link.proj2.bias.copy_(torch.randn(link.proj2.bias.shape, generator=gen) * 0.5)
        probe = torch.randn(4, engine.hidden_size, generator=gen)
        plain = link.post_ln(probe)  # what the link would give with proj2 = 0
        assert (link(probe) - plain).abs().max() > 0.1 * plain.abs().max(), "the random link is near its init"
    return link.requires_grad_(False)


def latent(engine, rows: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, engine.hidden_size, generator=gen) * engine.embedding_scale


def ids_of(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def hand_states(engine, embeds: torch.Tensor) -> torch.Tensor:
    """Decoder last-layer states of one unpadded sequence, no cache: [length, hidden]."""
    n = embeds.shape[0]
    return engine.decoder(
        inputs_embeds=embeds.unsqueeze(0), attention_mask=torch.ones(1, n, dtype=torch.long),
        position_ids=torch.arange(n).unsqueeze(0), use_cache=False,
    ).last_hidden_state[0]


class ScriptedLM(nn.Module):
    """Stands in for ``engine.model`` in the decode loop: emits a fixed token script whatever the input.

    Lets the stop / EOS / streaming logic be tested on exact, chosen text (multi-byte characters included).
    The step counter restarts at each prefill (the call with ``inputs_embeds``).
    """

    def __init__(self, script: list[int], vocab: int, filler: int):
        super().__init__()
        self.script, self.vocab, self.filler, self.step = list(script), vocab, filler, 0

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is not None:
            self.step, batch = 0, inputs_embeds.shape[0]
        else:
            batch = input_ids.shape[0]
        token = self.script[self.step] if self.step < len(self.script) else self.filler
        self.step += 1
        logits = torch.full((batch, 1, self.vocab), -1e4)
        logits[..., token] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def scripted_engine(text: str, eos: bool = False, chat: bool = True):
    engine = tiny_engine("llama", chat=chat)
    script = ids_of(engine, text) + ([min(engine.eos_ids)] if eos else [])
    vocab = engine.embedding.num_embeddings
    engine.model = ScriptedLM(script, vocab, filler=ids_of(engine, ".")[0])
    return engine


def rollout_prompt(engine) -> Prompt:
    """Text, a [3, hidden] latent segment, text: longer than gemma3's sliding window of 16."""
    return Prompt(["Question: what is two plus two? Plan: ", latent(engine, 3, seed=7), "\nThink it over."])


# --- latent rollout ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_link", [True, False], ids=["inner_link", "no_link"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_matches_recompute_reference(engines, family, with_link):
    engine = engines(family)
    inner = random_link(engine, seed=1) if with_link else None
    prompt = rollout_prompt(engine)
    item = engine.embed(prompt)
    assert item.length > 16 and item.latent_tokens == 3
    longest = 24  # prompt + 24 latent positions crosses gemma3's sliding window of 16 several times over
    reference = recompute_rollout(engine, prompt, longest, inner)
    assert reference.shape == (longest, engine.hidden_size)

    for steps in (1, 5, longest):  # the reference is causal: its first `steps` rows are the `steps`-step rollout
        (result,) = engine.rollout([prompt], steps, inner)
        assert result.states.shape == (steps, engine.hidden_size)
        assert torch.allclose(result.states, reference[:steps], atol=ATOL, rtol=0), (
            f"{family}, {steps} steps: KV-cached rollout departs from the recompute reference by "
            f"{(result.states - reference[:steps]).abs().max().item():.3g}"
        )
        assert (result.prompt_tokens, result.latent_tokens) == (item.text_tokens, 3)
    # the latent inputs matter: later states are not the first one repeated
    assert (result.states[1:] - result.states[0]).abs().max() > 1e-3


def test_reference_is_causal_in_steps(engines):
    engine = engines("qwen2")
    prompt, link = rollout_prompt(engine), random_link(engine, seed=1)
    assert torch.equal(recompute_rollout(engine, prompt, 3, link), recompute_rollout(engine, prompt, 6, link)[:3])


def test_rollout_link_changes_states(engines):
    engine = engines("llama")
    prompt = rollout_prompt(engine)
    a = engine.rollout([prompt], 4, random_link(engine, seed=1))[0].states
    b = engine.rollout([prompt], 4, random_link(engine, seed=2))[0].states
    assert torch.allclose(a[0], b[0], atol=ATOL)  # h_1 comes from the prompt alone
    assert (a[1:] - b[1:]).abs().max() > 1e-3  # later states see the link's output


def test_rollout_zero_steps(engines):
    engine = engines("llama")
    (result,) = engine.rollout([Prompt(["hi"])], 0, None)
    assert result.states.shape == (0, engine.hidden_size)


def batch_prompts(engine) -> list[Prompt]:
    return [
        Prompt(["hi"]),
        Prompt(["Here is a much longer request that pads the short ones a lot: " + "abc " * 6]),
        Prompt(["mid ", latent(engine, 2, seed=3), " end"]),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rollout_equals_single(engines, family):
    engine = engines(family)
    prompts = batch_prompts(engine)
    lengths = [engine.count_tokens(p) for p in prompts]
    assert max(lengths) - min(lengths) > 40, lengths  # left padding well past gemma3's window of 16
    shared = random_link(engine, seed=1)
    a, b = random_link(engine, seed=2), random_link(engine, seed=3)
    per_row = [a, None, b]

    for inner in (shared, per_row, [b, a, b]):  # the last shares one link between two of three rows
        batched = engine.rollout(prompts, 6, inner)
        links = inner if isinstance(inner, list) else [inner] * len(prompts)
        for row, (prompt, link) in enumerate(zip(prompts, links)):
            single = engine.rollout([prompt], 6, link)[0].states
            assert torch.allclose(batched[row].states, single, atol=ATOL, rtol=0), (
                f"{family} row {row} (length {lengths[row]}): batched rollout departs from single by "
                f"{(batched[row].states - single).abs().max().item():.3g}"
            )
    # per-row links are really applied per row: row 0 with its own link differs from row 0 with the shared one
    assert (engine.rollout(prompts, 3, per_row)[0].states[1:] - engine.rollout(prompts, 3, shared)[0].states[1:]).abs().max() > 1e-3


# --- generation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_generate_equals_single(engines, family):
    engine = engines(family)
    prompts = batch_prompts(engine)
    batched = engine.generate(prompts, Sampling(max_new_tokens=12))
    for row, prompt in enumerate(prompts):
        (single,) = engine.generate([prompt], Sampling(max_new_tokens=12))
        got = batched[row]
        assert got.token_ids == single.token_ids, f"{family} row {row}: batched and single greedy tokens differ"
        assert got.text == single.text
        assert got.finish_reason == single.finish_reason
        assert got.finish_reason in REASONS
        assert len(got.token_ids) <= 12
        if got.finish_reason == "length":
            assert len(got.token_ids) == 12
        assert got.text == engine.tokenizer.decode(got.token_ids, skip_special_tokens=True)
        assert got.prompt_tokens == engine.embed(prompt).text_tokens


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_generate_near_the_context_equals_single(engines, family):
    """Each row's token budget is its own room in the context, not the longest row's."""
    engine = engines(family, chat=False, context=64)
    short, long = Prompt(["hi"]), Prompt(["y" * 44])
    assert 64 - engine.count_tokens(long) < 10 < 64 - engine.count_tokens(short)
    batched = engine.generate([short, long], Sampling(max_new_tokens=10))
    for row, prompt in enumerate((short, long)):
        (single,) = engine.generate([prompt], Sampling(max_new_tokens=10))
        assert (batched[row].token_ids, batched[row].finish_reason) == (single.token_ids, single.finish_reason), (
            f"ENGINE BUG: row {row} gets {len(batched[row].token_ids)} tokens in a batch but "
            f"{len(single.token_ids)} alone: _decode caps every row's budget at max_context - max(lengths)"
        )


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_stream_joins_to_generate(engines, chat):
    engine = engines("qwen2", chat=chat)
    prompt = Prompt(["Tell me a story about ", latent(engine, 2, seed=5), " and a cat."])
    (gen,) = engine.generate([prompt], Sampling(max_new_tokens=40))
    deltas = list(engine.stream(prompt, Sampling(max_new_tokens=40)))
    assert "".join(deltas) == gen.text
    assert all(deltas), "stream yielded an empty delta"
    assert len(gen.text) > 0


def test_stream_never_splits_a_character():
    text = "naïve ☃ café 🙂 done"
    engine = scripted_engine(text, eos=True)
    (gen,) = engine.generate([Prompt(["x"])], Sampling(max_new_tokens=64))
    assert (gen.text, gen.finish_reason) == (text, "eos")
    deltas = list(engine.stream(Prompt(["x"]), Sampling(max_new_tokens=64)))
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas), deltas
    assert len(deltas) > 5  # it really streams


def test_sampling_seeds(engines):
    engine = engines("llama", chat=False)
    prompt = Prompt(["Once upon a time"])
    n = 40
    a = engine.generate([prompt], Sampling(max_new_tokens=n, temperature=1.0, seed=123))[0]
    b = engine.generate([prompt], Sampling(max_new_tokens=n, temperature=1.0, seed=123))[0]
    c = engine.generate([prompt], Sampling(max_new_tokens=n, temperature=1.0, seed=456))[0]
    assert (a.token_ids, a.text) == (b.token_ids, b.text)
    # a random model is near uniform over 261 tokens: two seeds agreeing on a whole run is vanishingly unlikely
    assert len(a.token_ids) > 3 and a.token_ids != c.token_ids
    greedy = engine.generate([prompt], Sampling(max_new_tokens=n))[0]
    assert a.token_ids != greedy.token_ids
    nucleus = engine.generate([prompt], Sampling(max_new_tokens=n, temperature=1.0, top_p=1e-6, seed=9))[0]
    assert nucleus.token_ids == greedy.token_ids


def test_sampling_batched_rows_are_independent(engines):
    engine = engines("llama", chat=False)
    prompt = Prompt(["Once upon a time"])
    rows = engine.generate([prompt, prompt], Sampling(max_new_tokens=30, temperature=1.0, seed=5))
    assert rows[0].token_ids != rows[1].token_ids  # same prompt, but each row draws its own tokens


def _ascii_window(engine, runs: list[list[int]]) -> tuple[int, int, int]:
    """(row, j, k): ids[j:k] of run ``row`` decode to printable ASCII (3 characters if possible, else 2)."""
    for width in (3, 2):
        for row, ids in enumerate(runs):
            for k in range(width + 1, len(ids) + 1):
                s = engine.tokenizer.decode(ids[k - width : k])
                if len(s) == width and s.isascii() and s.isprintable() and s.strip():
                    return row, k - width, k
    raise AssertionError(f"no printable ASCII window in {runs}")


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_string(engines, family):
    engine = engines(family, chat=False)
    prompts = [Prompt(["Once upon a time"]), Prompt(["The quick brown fox jumps over the lazy dog, again and again"])]
    free = engine.generate(prompts, Sampling(max_new_tokens=30))
    row, j, k = _ascii_window(engine, [g.token_ids for g in free])
    ids, prompt = free[row].token_ids, prompts[row]
    stop = engine.tokenizer.decode(ids[j:k])
    # byte-level tokens: the run stops at the first token whose text completes the stop string
    first = next(m for m in range(1, len(ids) + 1) if stop in engine.tokenizer.decode(ids[:m]))

    (stopped,) = engine.generate([prompt], Sampling(max_new_tokens=30, stop=[stop, "never-there"]))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == ids[:first]
    assert stopped.text.endswith(stop) and stop not in stopped.text[:-1]
    assert free[row].text.startswith(stopped.text) and len(stopped.text) <= len(free[row].text)
    assert "".join(engine.stream(prompt, Sampling(max_new_tokens=30, stop=[stop]))) == stopped.text

    # in a batch, a stopped row does not disturb the others
    batched = engine.generate(prompts, Sampling(max_new_tokens=30, stop=[stop]))
    assert batched[row].finish_reason == "stop"
    for r, p in enumerate(prompts):
        (single,) = engine.generate([p], Sampling(max_new_tokens=30, stop=[stop]))
        assert (batched[r].token_ids, batched[r].finish_reason) == (single.token_ids, single.finish_reason)


def test_stop_string_spanning_tokens_ascii():
    engine = scripted_engine("The answer is 42. Then more text", chat=False)
    (gen,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=64, stop=["is 42."]))
    assert (gen.finish_reason, gen.text) == ("stop", "The answer is 42.")


def test_stop_string_with_multibyte_characters():
    engine = scripted_engine("Prix: 5 € puis la suite", chat=False)
    (gen,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=64, stop=["5 €"]))
    assert (gen.finish_reason, gen.text) == ("stop", "Prix: 5 €"), (
        "a stop string holding a multi-byte character must match: stop strings are to be checked against a decoded "
        "tail of tokens, not per-token decodes ('€' is 3 byte tokens, each decoding to U+FFFD alone); "
        f"got finish_reason={gen.finish_reason!r}, text={gen.text!r}"
    )


def test_eos_forced_by_lm_head():
    for eos in sorted(tiny_engine("llama").eos_ids):
        engine = tiny_engine("llama")
        assert eos in engine.eos_ids
        head = nn.Linear(engine.hidden_size, engine.embedding.num_embeddings, bias=True)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[eos] = 10.0
        engine.model.lm_head = head.requires_grad_(False)
        gens = engine.generate([Prompt(["hi"]), Prompt(["a longer prompt " * 4])], Sampling(max_new_tokens=10))
        for gen in gens:
            assert (gen.finish_reason, gen.text, gen.token_ids) == ("eos", "", [])
        assert list(engine.stream(Prompt(["hi"]), Sampling(max_new_tokens=10))) == []


def test_eos_after_some_tokens():
    engine = scripted_engine("ab c", eos=True)
    (gen,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=20))
    assert (gen.finish_reason, gen.text, gen.token_ids) == ("eos", "ab c", ids_of(engine, "ab c"))
    assert "".join(engine.stream(Prompt(["q"]), Sampling(max_new_tokens=20))) == "ab c"
    (short,) = engine.generate([Prompt(["q"])], Sampling(max_new_tokens=2))
    assert (short.finish_reason, short.text) == ("length", "ab")


# --- teacher forcing -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_states_match_hand_computation(engines, family):
    engine = engines(family)
    prompts = [Prompt(["Solve: ", latent(engine, 3, seed=11), " now."]), Prompt(["A far longer prompt. " * 3])]
    targets = ["The answer is 4.", "ok"]
    batched = engine.forward_states(prompts, targets)
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        ids = ids_of(engine, target)
        with torch.no_grad():
            embeds = engine.embed(prompt).embeds
            full = torch.cat([embeds, engine.embedding(torch.tensor(ids))], dim=0)
            expected = hand_states(engine, full)[embeds.shape[0] - 1 : embeds.shape[0] - 1 + len(ids)]
        (single,) = engine.forward_states([prompt], [target])
        assert single.target_ids.tolist() == ids and batched[row].target_ids.tolist() == ids
        assert single.states.shape == (len(ids), engine.hidden_size)
        assert torch.allclose(single.states, expected, atol=ATOL, rtol=0)
        assert torch.allclose(batched[row].states, expected, atol=ATOL, rtol=0), (
            f"{family} row {row}: batched forward_states departs by {(batched[row].states - expected).abs().max():.3g}"
        )


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_forward_states_gradient_reaches_latent(engines, family):
    engine = engines(family)
    with torch.enable_grad():
        (plain,) = engine.forward_states([Prompt(["Solve it."])], ["42"])
        assert not plain.states.requires_grad  # frozen backbone, no grad-carrying input

        z = latent(engine, 3, seed=2).requires_grad_(True)
        (row,) = engine.forward_states([Prompt(["Solve: ", z, " now."])], ["The answer is 4."])
        assert row.states.requires_grad
        row.states.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in engine.model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_states_end_appends_the_stop_token(engines, family):
    """An answer target ends with the token that stops generation, so a decoder trained on it learns to stop."""
    engine = engines(family)
    assert engine.end_id in engine.eos_ids
    prompt = Prompt(["Solve: ", latent(engine, 2, seed=5), " now."])
    (open_,) = engine.forward_states([prompt], ["42"])
    (closed,) = engine.forward_states([prompt], ["42"], end=True)
    assert closed.target_ids.tolist() == [*ids_of(engine, "42"), engine.end_id]
    # the answer's own states are unchanged (causal attention); the extra state is the one that predicts the stop
    assert torch.allclose(closed.states[:-1], open_.states, atol=ATOL, rtol=0)


def test_forward_states_empty_target_raises(engines):
    with pytest.raises(ValueError, match="empty target"):
        engines("llama").forward_states([Prompt(["hi"])], [""])


# --- context, prompts and inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_context_length_errors(engines, family):
    engine = engines(family, context=64)
    long_prompt = Prompt(["x" * 100])
    length = engine.count_tokens(long_prompt)
    assert length > 64
    for call in (lambda: engine.rollout([long_prompt], 1, None), lambda: engine.generate([long_prompt], Sampling(4)),
                 lambda: engine.forward_states([long_prompt], ["ok"])):
        with pytest.raises(ContextLengthError) as info:
            call()
        message = str(info.value)
        assert engine.name in message and str(length) in message and "64" in message, message

    short = Prompt(["hi"])
    room = 64 - engine.count_tokens(short)
    with pytest.raises(ContextLengthError, match="latent steps"):
        engine.rollout([short], room + 5, None)
    with pytest.raises(ContextLengthError):  # a batch fails as a whole if any row overflows
        engine.rollout([short, long_prompt], 1, None)
    # right at the edge still works (absolute-position models like gpt2 would index out of range otherwise)
    (edge,) = engine.rollout([short], room, None)
    assert edge.states.shape == (room, engine.hidden_size)
    (gen,) = engine.generate([short], Sampling(max_new_tokens=room + 20))
    assert len(gen.token_ids) <= room


def test_response_prefix_continues_the_reply(engines):
    for chat in (True, False):
        engine = engines("llama", chat=chat)
        prompt = Prompt(["What is 2+2?"], response_prefix="The answer is")
        pieces = render_pieces(engine.tokenizer, prompt)
        assert pieces[-1].endswith("The answer is")
        frame = "<|im_start|>assistant\nThe answer is" if chat else "Response:The answer is"
        assert pieces[-1].endswith(frame), pieces[-1]
        assert engine.embed(prompt).token_ids[-len(ids_of(engine, "The answer is")) :] == ids_of(engine, "The answer is")


def test_latent_segment_of_wrong_width_raises(engines):
    engine = engines("qwen2")
    bad = Prompt(["a ", torch.randn(2, engine.hidden_size + 1), " b"])
    for call in (lambda: engine.rollout([bad], 2, None), lambda: engine.generate([bad], Sampling(2)),
                 lambda: engine.count_tokens(bad)):
        with pytest.raises(ValueError, match=str(engine.hidden_size)):
            call()
    with pytest.raises(ValueError, match=str(engine.hidden_size)):
        engine.count_tokens(Prompt(["a", torch.randn(engine.hidden_size)]))  # 1-D


def test_render_pieces_chat_template(engines):
    engine = engines("llama", chat=True)
    a, b, c = (latent(engine, n, seed=n) for n in (2, 1, 3))
    prompt = Prompt(["First ", a, " middle ", b, c, " last"])
    pieces = render_pieces(engine.tokenizer, prompt)
    tensors = [p for p in pieces if isinstance(p, torch.Tensor)]
    assert len(tensors) == 3 and all(x is y for x, y in zip(tensors, (a, b, c)))
    texts = [p for p in pieces if isinstance(p, str)]
    assert not any("\x00" in t or "LATENT" in t for t in texts)
    assert pieces[0] == "<|im_start|>user\nFirst "
    assert pieces[1] is a and pieces[2] == " middle " and pieces[3] is b and pieces[4] is c
    assert pieces[5] == " last<|im_end|>\n<|im_start|>assistant\n"
    assert len(pieces) == 6

    plain = Prompt(["Just text"])
    expected = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Just text"}], tokenize=False, add_generation_prompt=True
    )
    assert render_pieces(engine.tokenizer, plain) == [expected]
    item = engine.embed(prompt)
    assert item.latent_tokens == 6 and item.length == item.text_tokens + 6


def test_render_pieces_plain_frame(engines):
    engine = engines("gpt2", chat=False)
    z = latent(engine, 2, seed=1)
    pieces = render_pieces(engine.tokenizer, Prompt(["Q: ", z, " done"]))
    assert pieces[0] == "<bos>Q: " and pieces[1] is z and pieces[2] == " done\n\nResponse:"
    assert render_pieces(engine.tokenizer, Prompt(["hello"])) == ["<bos>hello\n\nResponse:"]
    # a latent at the very start still keeps the frame's bos before it
    first = render_pieces(engine.tokenizer, Prompt([z, "tail"]))
    assert first[0] == "<bos>" and first[1] is z and first[2] == "tail\n\nResponse:"


def test_a_multimodal_wrapper_loads_through_its_text_path(tmp_path, caplog):
    """Gemma-3-4B (the released scaled planner) is a Gemma3ForConditionalGeneration: its config has no top-level
    hidden_size. The engine loads only its language model from the wrapper's files (the vision tower stays on disk),
    with the same numbers as the whole wrapper."""
    import logging

    from transformers import AutoModelForCausalLM

    from tiny import save_tiny

    path = save_tiny(tmp_path / "gemma3-mm", "gemma3_mm")
    with caplog.at_level(logging.INFO, logger="recursivemas"):
        engine = BackboneEngine.load(path, name="planner")
    assert type(engine.model).__name__ == "Gemma3ForCausalLM"
    assert "vision tower) is not loaded" in caplog.text and "planner" in caplog.text
    whole = BackboneEngine(AutoModelForCausalLM.from_pretrained(path), engine.tokenizer)
    assert type(whole.model).__name__ == "Gemma3ForConditionalGeneration" and whole.hidden_size == 40
    assert sum(p.numel() for p in engine.model.parameters()) < sum(p.numel() for p in whole.model.parameters())
    prompt = [Prompt(["What is 2+2?"])]
    (out,), (ref,) = engine.rollout(prompt, 3, None), whole.rollout(prompt, 3, None)
    assert out.states.shape == (3, 40)
    torch.testing.assert_close(out.states, ref.states, rtol=0, atol=0)
    assert engine.generate(prompt, Sampling(max_new_tokens=5))[0].text == whole.generate(prompt, Sampling(max_new_tokens=5))[0].text


def test_a_tiny_or_huge_temperature_samples_a_valid_token():
    """Found by fuzzing the server: logits / 1e-300 overflowed in float32 and torch.multinomial raised."""
    from recursivemas.engine.sampler import Sampler

    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -2.0, 4.9]])
    assert Sampler(Sampling(temperature=1e-300, seed=0))(logits).tolist() == [1, 0]  # greedy in effect
    for temperature in (1e-6, 1e-3, 2.0, 1e30):
        picks = Sampler(Sampling(temperature=temperature, seed=0))(logits)
        assert picks.shape == (2,) and ((0 <= picks) & (picks < 3)).all()
