"""``outer.init: embedding_map``: an outer link between two backbones starts as the least-squares map between their
input embeddings over the tokens both vocabularies spell alike."""

from __future__ import annotations

import pytest
import torch
import yaml

from recursivemas.links import OuterLink
from recursivemas.links.alignment import embedding_map, shared_tokens, start_as_embedding_map
from recursivemas.train.local import load_train_config
from recursivemas.train.setup import prepare
from tiny import byte_tokenizer, save_tiny_pair, tiny_engine


def test_the_fit_recovers_a_linear_map_between_embeddings():
    torch.manual_seed(0)
    x = torch.randn(500, 12)
    a, c = torch.randn(7, 12), torch.randn(7)
    fit = embedding_map(x, x @ a.T + c, ridge=1e-9)
    assert fit.r2 > 0.999999 and fit.tokens == 500
    assert torch.allclose(fit.weight, a, atol=1e-4) and torch.allclose(fit.bias, c, atol=1e-4)
    noise = embedding_map(x, torch.randn(500, 7))
    assert noise.r2 < 0.1  # unrelated spaces: nothing to fit


def test_rows_must_pair_by_token():
    with pytest.raises(ValueError, match="pair them by token"):
        embedding_map(torch.zeros(5, 3), torch.zeros(4, 3))


def test_shared_tokens_pair_equal_spellings_and_leave_out_specials():
    chat, plain = byte_tokenizer(chat=True), byte_tokenizer(chat=False)
    src, dst = shared_tokens(chat, plain)
    assert len(src) == len(dst) > 90  # the printable ASCII bytes at least
    for s, d in zip(src.tolist(), dst.tolist()):
        assert chat.decode([s]) == plain.decode([d])
    specials = set(chat.all_special_ids) | set(plain.all_special_ids)
    assert not specials & (set(src.tolist()) | set(dst.tolist()))
    assert chat.convert_tokens_to_ids("A") in src.tolist()


def test_a_link_started_as_the_map_sends_each_shared_token_to_its_counterpart():
    src, dst = tiny_engine("llama"), tiny_engine("qwen2", chat=False)  # private: dst's embeddings are rewritten
    ids, _ = shared_tokens(src.tokenizer, dst.tokenizer)  # one byte vocabulary: the same ids on both sides
    a, c = torch.randn(dst.hidden_size, src.hidden_size) * 0.05, torch.randn(dst.hidden_size) * 0.01
    with torch.no_grad():
        dst.model.get_input_embeddings().weight[ids] = src.embedding(ids) @ a.T + c
    link = OuterLink(src.hidden_size, dst.hidden_size, out_scale=dst.embedding_scale)
    fit = start_as_embedding_map(link, src, dst, "planner->solver", min_shared_tokens=32)
    assert fit.r2 > 0.99 and fit.tokens == len(ids)
    assert torch.count_nonzero(link.proj2.weight) == 0  # the MLP branch still starts at zero
    with torch.no_grad():
        sent = link(src.embedding(ids))
        real = dst.embedding(ids)
    cosine = torch.nn.functional.normalize(sent, dim=1) @ torch.nn.functional.normalize(real, dim=1).T
    assert (cosine.argmax(1) == torch.arange(len(ids))).float().mean() > 0.95
    orthogonal = OuterLink(src.hidden_size, dst.hidden_size, out_scale=dst.embedding_scale)
    with torch.no_grad():
        random = torch.nn.functional.normalize(orthogonal(src.embedding(ids)), dim=1)
    hits = ((random @ torch.nn.functional.normalize(real, dim=1).T).argmax(1) == torch.arange(len(ids)))
    assert hits.float().mean() < 0.2  # what it replaces reads noise


def test_too_few_shared_tokens_is_a_clear_error(tmp_path):
    paths = save_tiny_pair(tmp_path)  # byte vocabularies: about a hundred shared spellings
    topology = {"name": "pair", "backbones": {n: {"model": p} for n, p in paths.items()}, "pattern": "sequential",
                "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    (tmp_path / "rows.jsonl").write_text('{"question": "What is 1+1?", "answer": "2"}\n')
    config = {"topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "outer": {"init": "embedding_map"},
              "output": "out"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"link planner->solver share \d+ tokens.*outer.init: orthogonal"):
        prepare(load_train_config(tmp_path / "train.yaml"))
