"""Tests for recursivemas.links: link math, LinkSet, checkpoint I/O and the released-weights import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from recursivemas.links import (
    InnerLink,
    LinkCheckpointError,
    LinkSet,
    OuterLink,
    ReleasedLinkError,
    edge_key,
    import_released,
    load_links,
    parse_edge_key,
    read_manifest,
    save_links,
)

EPS = 1e-5  # nn.LayerNorm default


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS)


def _inner_ref(h, t: dict, norm: bool):
    """R_in(h) = LN_post(h + W2 GELU(W1 LN_pre(h))), written out from raw tensors."""
    x = _ln(h, t["pre_ln.weight"], t["pre_ln.bias"]) if norm else h
    y = h + F.linear(F.gelu(F.linear(x, t["proj1.weight"], t["proj1.bias"])), t["proj2.weight"], t["proj2.bias"])
    return _ln(y, t["post_ln.weight"], t["post_ln.bias"]) if norm else y


def _outer_ref(h, t: dict, norm: bool):
    """R_out(h) = LN_tgt(W2 GELU(W1 LN_src(h)) + W3 h), written out from raw tensors."""
    x = _ln(h, t["ln_source.weight"], t["ln_source.bias"]) if norm else h
    y = F.linear(F.gelu(F.linear(x, t["proj1.weight"], t["proj1.bias"])), t["proj2.weight"], t["proj2.bias"])
    y = y + F.linear(h, t["residual_proj.weight"], t["residual_proj.bias"])
    return _ln(y, t["ln_target.weight"], t["ln_target.bias"]) if norm else y


def _sd(module):
    return {k: v.detach() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("norm", [True, False])
def test_inner_link_matches_formula(norm):
    link = InnerLink(16, norm=norm).double()
    _randomize(link)
    h = torch.randn(3, 5, 16, dtype=torch.float64)
    out = link(h)
    assert out.shape == (3, 5, 16)
    torch.testing.assert_close(out, _inner_ref(h, _sd(link), norm), atol=1e-6, rtol=0)
    assert not torch.allclose(out, h)  # the MLP branch is really active with random weights


@pytest.mark.parametrize("norm", [True, False])
def test_outer_link_matches_formula(norm):
    link = OuterLink(12, 20, norm=norm).double()
    _randomize(link, seed=1)
    h = torch.randn(2, 4, 7, 12, dtype=torch.float64)
    out = link(h)
    assert out.shape == (2, 4, 7, 20)
    torch.testing.assert_close(out, _outer_ref(h, _sd(link), norm), atol=1e-6, rtol=0)
    assert link.in_dim == 12 and link.out_dim == 20


def test_gelu_is_exact_not_tanh():
    link = InnerLink(4)
    assert isinstance(link.act, torch.nn.GELU) and link.act.approximate == "none"


@pytest.mark.parametrize("d", [8, 64])
def test_parameter_counts(d):
    assert sum(p.numel() for p in InnerLink(d).parameters()) == 2 * d * d + 6 * d
    assert sum(p.numel() for p in InnerLink(d, norm=False).parameters()) == 2 * d * d + 2 * d
    i, o = d, d + 8
    want = (i * 2 * o + 2 * o) + (2 * o * o + o) + (i * o + o) + 2 * i + 2 * o
    assert sum(p.numel() for p in OuterLink(i, o).parameters()) == want


def test_module_keys_match_release_names():
    assert set(InnerLink(4).state_dict()) == {
        "pre_ln.weight", "pre_ln.bias", "proj1.weight", "proj1.bias",
        "proj2.weight", "proj2.bias", "post_ln.weight", "post_ln.bias",
    }
    assert set(InnerLink(4, norm=False).state_dict()) == {"proj1.weight", "proj1.bias", "proj2.weight", "proj2.bias"}
    assert set(OuterLink(4, 6).state_dict()) == {
        "ln_source.weight", "ln_source.bias", "proj1.weight", "proj1.bias", "proj2.weight", "proj2.bias",
        "residual_proj.weight", "residual_proj.bias", "ln_target.weight", "ln_target.bias",
    }


def test_inner_init_is_scaled_layer_norm():
    torch.manual_seed(0)
    h = torch.randn(6, 32) * 7 + 3
    link = InnerLink(32, out_scale=0.02)
    torch.testing.assert_close(link(h), F.layer_norm(h, (32,)) * 0.02, atol=1e-6, rtol=0)
    assert torch.count_nonzero(link.proj1.weight) > 0  # proj1 keeps its default init
    torch.testing.assert_close(InnerLink(32, norm=False)(h), h)


def test_outer_init_equal_dims_is_scaled_layer_norm():
    torch.manual_seed(0)
    h = torch.randn(5, 24) * 4
    link = OuterLink(24, 24, out_scale=0.05)
    torch.testing.assert_close(link.residual_proj.weight, torch.eye(24))
    torch.testing.assert_close(link(h), F.layer_norm(h, (24,)) * 0.05, atol=1e-6, rtol=0)


@pytest.mark.parametrize("i,o", [(32, 48), (48, 32)])
def test_outer_init_different_dims_is_orthogonal(i, o):
    torch.manual_seed(0)
    link = OuterLink(i, o, out_scale=2.0)
    w = link.residual_proj.weight.detach()
    gram = w @ w.T if o <= i else w.T @ w
    torch.testing.assert_close(gram, torch.eye(min(i, o)), atol=1e-5, rtol=0)
    assert torch.count_nonzero(link.residual_proj.bias) == 0
    h = torch.randn(3, 9, i)
    out = link(h)
    assert out.shape == (3, 9, o)
    torch.testing.assert_close(out, F.layer_norm(h @ w.T, (o,)) * 2.0, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- LinkSet


def test_edge_key_round_trip_and_errors():
    assert edge_key("planner", "critic") == "planner->critic"
    assert parse_edge_key("planner->critic") == ("planner", "critic")
    for bad in ["planner", "a->", "->b", "a->b->c"]:
        with pytest.raises(ValueError, match="bad edge key"):
            parse_edge_key(bad)


def test_linkset_structure_and_scales():
    ls = LinkSet({"a": 8, "b": 12, "c": 8}, [("a", "b"), ("b", "c"), ("c", "a")], out_scales={"b": 0.3})
    assert list(ls.inner.keys()) == ["a", "b", "c"]
    assert list(ls.outer.keys()) == ["a->b", "b->c", "c->a"]
    assert (ls.outer_link("a", "b").in_dim, ls.outer_link("a", "b").out_dim) == (8, 12)
    assert ls.inner_link("b").in_dim == 12
    assert torch.all(ls.inner["b"].post_ln.weight == 0.3)
    assert torch.all(ls.outer["a->b"].ln_target.weight == 0.3)
    assert torch.all(ls.outer["b->c"].ln_target.weight == 1.0)
    assert ls.num_parameters() == sum(p.numel() for p in ls.parameters())
    assert ls.manifest() == {
        "format": "recursivemas-links", "version": 1, "norm": True,
        "agents": {"a": {"dim": 8}, "b": {"dim": 12}, "c": {"dim": 8}},
        "edges": ["a->b", "b->c", "c->a"],
    }
    with pytest.raises(KeyError, match="b->a"):
        ls.outer_link("b", "a")


def test_handoff_modes_and_shapes():
    ls = LinkSet({"a": 8, "b": 12}, [("a", "b")])
    _randomize(ls, seed=3)
    H = torch.randn(5, 8)
    both = ls.handoff(H, "a", "b")
    assert both.shape == (5, 12)
    torch.testing.assert_close(both, ls.outer["a->b"](ls.inner["a"](H)))
    outer_only = ls.handoff(H, "a", "b", mode="outer")
    torch.testing.assert_close(outer_only, ls.outer["a->b"](H))
    assert not torch.allclose(both, outer_only)
    with pytest.raises(ValueError, match="'inner_outer', 'outer'"):
        ls.handoff(H, "a", "b", mode="inner")


def test_handoff_gradients_reach_all_links_on_path():
    ls = LinkSet({"a": 8, "b": 12}, [("a", "b")])
    _randomize(ls, seed=4)
    ls.handoff(torch.randn(3, 8), "a", "b").square().sum().backward()
    for name, p in list(ls.inner["a"].named_parameters()) + list(ls.outer["a->b"].named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in ls.inner["b"].parameters())


@pytest.mark.parametrize(
    "dims,edges,match",
    [
        ({"a": 8}, [("a", "z")], r"'a->z'.*unknown agent.*\['z'\]"),
        ({"a": 8, "b": 8}, [("a", "b"), ("a", "b")], "duplicate edge 'a->b'"),
        ({"a.b": 8}, [], "bad agent name"),
        ({"a": 0}, [], "positive int"),
    ],
)
def test_linkset_validation(dims, edges, match):
    with pytest.raises(ValueError, match=match):
        LinkSet(dims, edges)


# ---------------------------------------------------------------- save / load

EXPECTED_KEYS = {
    "inner.a.pre_ln.weight", "inner.a.pre_ln.bias", "inner.a.proj1.weight", "inner.a.proj1.bias",
    "inner.a.proj2.weight", "inner.a.proj2.bias", "inner.a.post_ln.weight", "inner.a.post_ln.bias",
    "inner.b.pre_ln.weight", "inner.b.pre_ln.bias", "inner.b.proj1.weight", "inner.b.proj1.bias",
    "inner.b.proj2.weight", "inner.b.proj2.bias", "inner.b.post_ln.weight", "inner.b.post_ln.bias",
    "outer.a->b.ln_source.weight", "outer.a->b.ln_source.bias", "outer.a->b.proj1.weight", "outer.a->b.proj1.bias",
    "outer.a->b.proj2.weight", "outer.a->b.proj2.bias", "outer.a->b.residual_proj.weight",
    "outer.a->b.residual_proj.bias", "outer.a->b.ln_target.weight", "outer.a->b.ln_target.bias",
}


def _saved(tmp_path, dims=None, edges=None, norm=True, seed=5):
    ls = LinkSet(dims or {"a": 8, "b": 12}, edges if edges is not None else [("a", "b")], norm=norm)
    _randomize(ls, seed=seed)
    return ls, save_links(ls, tmp_path / "ckpt")


def test_save_load_round_trip(tmp_path):
    src, path = _saved(tmp_path)
    assert path == tmp_path / "ckpt"
    with safe_open(str(path / "links.safetensors"), framework="pt") as f:
        assert set(f.keys()) == EXPECTED_KEYS
    manifest = json.loads((path / "links.json").read_text())
    assert manifest == {"format": "recursivemas-links", "version": 1, "norm": True,
                        "agents": {"a": {"dim": 8}, "b": {"dim": 12}}, "edges": ["a->b"]}
    assert read_manifest(path) == manifest
    dst = LinkSet({"a": 8, "b": 12}, [("a", "b")])
    assert load_links(path, dst) is dst
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    H = torch.randn(4, 8)
    torch.testing.assert_close(dst.handoff(H, "a", "b"), src.handoff(H, "a", "b"), atol=0, rtol=0)
    load_links(path / "links.safetensors", LinkSet({"a": 8, "b": 12}, [("a", "b")]))  # the file path works too


def _message(path, into) -> str:
    with pytest.raises(LinkCheckpointError) as exc:
        load_links(path, into)
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert msg.startswith(str(path))
    return msg


def test_load_wrong_shapes_lists_every_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    into = LinkSet({"a": 10, "b": 12}, [("a", "b")])
    before = {k: v.clone() for k, v in into.state_dict().items()}
    msg = _message(path, into)
    assert "inner.a.proj1.weight: checkpoint has (8, 8), the model needs (10, 10)" in msg
    assert "inner.a.pre_ln.bias: checkpoint has (8,), the model needs (10,)" in msg
    assert "outer.a->b.proj1.weight: checkpoint has (24, 8), the model needs (24, 10)" in msg
    assert "agent 'a': checkpoint has dim 8, the model needs 10" in msg
    assert "retrain" in msg and "links:" in msg
    assert all(torch.equal(into.state_dict()[k], v) for k, v in before.items())  # nothing was loaded


def test_load_missing_and_unexpected_keys_reported_together(tmp_path):
    _, path = _saved(tmp_path)
    tensors = load_file(str(path / "links.safetensors"))
    del tensors["inner.b.proj2.bias"]
    del tensors["outer.a->b.residual_proj.weight"]
    tensors["inner.a.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(path / "links.safetensors"))
    msg = _message(path, LinkSet({"a": 8, "b": 12}, [("a", "b")]))
    lines = msg.splitlines()
    assert any("missing keys (2)" in ln and "inner.b.proj2.bias" in ln and "outer.a->b.residual_proj.weight" in ln
               for ln in lines)
    assert any("unexpected keys (1)" in ln and "inner.a.extra.weight" in ln for ln in lines)


def test_load_different_agents_and_edges(tmp_path):
    _, path = _saved(tmp_path)
    msg = _message(path, LinkSet({"a": 8, "c": 12}, [("a", "c"), ("c", "a")]))
    assert "agents missing from the checkpoint: ['c']" in msg
    assert "agents in the checkpoint but not in the model: ['b']" in msg
    assert "edges missing from the checkpoint: ['a->c', 'c->a']" in msg
    assert "edges in the checkpoint but not in the model: ['a->b']" in msg
    assert "inner.c.proj1.weight" in msg and "unexpected keys" in msg


def test_load_norm_mismatch(tmp_path):
    _, path = _saved(tmp_path, norm=True)
    msg = _message(path, LinkSet({"a": 8, "b": 12}, [("a", "b")], norm=False))
    assert "norm: checkpoint has norm=True, the model needs norm=False" in msg
    assert "inner.a.pre_ln.weight" in msg  # the extra LayerNorm tensors are listed as well
    assert len(msg.splitlines()) >= 4


def test_load_missing_dir_and_files(tmp_path):
    into = LinkSet({"a": 8, "b": 12}, [("a", "b")])
    msg = _message(tmp_path / "nowhere", into)
    assert "does not exist" in msg
    _, path = _saved(tmp_path)
    (path / "links.safetensors").unlink()
    assert "links.safetensors" in _message(path, into)
    (path / "links.json").unlink()
    assert "links.json" in _message(path, into)


def test_load_bad_manifest_format_and_version(tmp_path):
    _, path = _saved(tmp_path)
    (path / "links.json").write_text(json.dumps({"format": "other", "version": 9, "norm": True,
                                                 "agents": {}, "edges": []}))
    msg = _message(path, LinkSet({"a": 8, "b": 12}, [("a", "b")]))
    assert "'other'" in msg and "9" in msg
    with pytest.raises(LinkCheckpointError, match="not valid JSON"):
        (path / "links.json").write_text("{")
        read_manifest(path)


# ---------------------------------------------------------------- released import


def _inner_tensors(d, norm=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    t = {"proj1.weight": r(d, d), "proj1.bias": r(d), "proj2.weight": r(d, d), "proj2.bias": r(d)}
    if norm:
        t.update({"pre_ln.weight": 1 + r(d), "pre_ln.bias": r(d), "post_ln.weight": 1 + r(d), "post_ln.bias": r(d)})
    return t


def _outer_tensors(i, o, norm=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    t = {"proj1.weight": r(2 * o, i), "proj1.bias": r(2 * o), "proj2.weight": r(o, 2 * o), "proj2.bias": r(o),
         "residual_proj.weight": r(o, i), "residual_proj.bias": r(o)}
    if norm:
        t.update({"ln_source.weight": 1 + r(i), "ln_source.bias": r(i),
                  "ln_target.weight": 1 + r(o), "ln_target.bias": r(o)})
    return t


def _write(tmp_path, name, obj) -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("norm", [True, False])
def test_import_released_computes_paper_formula(tmp_path, norm):
    raw = {"math": _inner_tensors(32, norm, 1), "code": _inner_tensors(48, norm, 2),
           ("math", "code"): _outer_tensors(32, 48, norm, 3), ("code", "math"): _outer_tensors(48, 32, norm, 4)}
    inner = {"math": _write(tmp_path, "adapter(math).pt", raw["math"]),
             "code": _write(tmp_path, "adapter(code).pt", raw["code"])}
    outer = {("math", "code"): _write(tmp_path, "math-code-Outerlink.pt", raw[("math", "code")]),
             ("code", "math"): _write(tmp_path, "code-math-Outerlink.pt", raw[("code", "math")])}
    ls = import_released(inner, outer)
    assert ls.norm is norm and ls.agent_dims == {"math": 32, "code": 48}
    assert list(ls.outer.keys()) == ["math->code", "code->math"]
    assert all(p.dtype == torch.float32 for p in ls.parameters())
    h32, h48 = torch.randn(6, 32), torch.randn(6, 48)
    with torch.no_grad():
        torch.testing.assert_close(ls.inner["math"](h32), _inner_ref(h32, raw["math"], norm), atol=1e-6, rtol=0)
        torch.testing.assert_close(ls.inner["code"](h48), _inner_ref(h48, raw["code"], norm), atol=1e-6, rtol=0)
        want = _outer_ref(_inner_ref(h32, raw["math"], norm), raw[("math", "code")], norm)
        torch.testing.assert_close(ls.handoff(h32, "math", "code"), want, atol=1e-6, rtol=0)
        want = _outer_ref(h48, raw[("code", "math")], norm)
        torch.testing.assert_close(ls.handoff(h48, "code", "math", mode="outer"), want, atol=1e-6, rtol=0)
    # the CLI path: import, save in our format, load into a LinkSet built from the topology
    path = save_links(ls, tmp_path / "converted")
    back = load_links(path, LinkSet({"math": 32, "code": 48}, [("math", "code"), ("code", "math")], norm=norm))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ls.state_dict().items())


def test_import_released_prefix_wrapper_and_dtype(tmp_path):
    raw_i, raw_o = _inner_tensors(32, seed=1), _outer_tensors(32, 48, seed=2)
    wrapped_i = {"state_dict": {f"module.adapter.{k}": v.to(torch.bfloat16) for k, v in raw_i.items()}, "step": 7}
    wrapped_o = {"model": {f"adapter.{k}": v for k, v in raw_o.items()}}
    with pytest.warns(UserWarning, match="code"):  # 'code' has no inner file: its inner link stays untrained
        ls = import_released({"math": _write(tmp_path, "adapter(math).pt", wrapped_i)},
                             {("math", "code"): _write(tmp_path, "math-code-Outerlink.pt", wrapped_o)})
    assert ls.inner["math"].proj1.weight.dtype == torch.float32
    torch.testing.assert_close(ls.inner["math"].proj1.weight, raw_i["proj1.weight"].to(torch.bfloat16).float())
    assert torch.equal(ls.outer["math->code"].residual_proj.weight, raw_o["residual_proj.weight"])
    assert ls.agent_dims == {"math": 32, "code": 48}


def test_import_released_wrong_keys_names_file(tmp_path):
    bad = _inner_tensors(32)
    bad["proj3.weight"] = bad.pop("proj2.weight")
    p = _write(tmp_path, "adapter(math).pt", bad)
    with pytest.raises(ReleasedLinkError) as exc:
        import_released({"math": p}, {})
    assert str(p) in str(exc.value) and "proj3.weight" in str(exc.value)
    # an outer file passed as an inner file is rejected too
    q = _write(tmp_path, "a-b-Outerlink.pt", _outer_tensors(32, 32))
    with pytest.raises(ReleasedLinkError, match="residual_proj"):
        import_released({"math": q}, {})


def test_import_released_bad_shapes_and_pickles(tmp_path):
    t = _outer_tensors(32, 48)
    t["proj2.weight"] = torch.zeros(48, 90)
    p = _write(tmp_path, "a-b-Outerlink.pt", t)
    with pytest.raises(ReleasedLinkError, match=r"proj2.weight: file has \(48, 90\), expected \(48, 96\)"):
        import_released({}, {("a", "b"): p})
    evil = _write(tmp_path, "evil.pt", {"proj1.weight": torch.zeros(2, 2), "x": _NotAllowed()})
    with pytest.raises(ReleasedLinkError, match="evil.pt"):
        import_released({"a": evil}, {})
    with pytest.raises(ReleasedLinkError, match="not found"):
        import_released({"a": tmp_path / "missing.pt"}, {})


class _NotAllowed:
    """Arbitrary class: weights_only loading must refuse it."""


def test_import_released_inconsistent_dims(tmp_path):
    pi = _write(tmp_path, "adapter(math).pt", _inner_tensors(32))
    po = _write(tmp_path, "math-code-Outerlink.pt", _outer_tensors(40, 48))
    with pytest.raises(ReleasedLinkError) as exc:
        import_released({"math": pi}, {("math", "code"): po})
    msg = str(exc.value)
    assert str(po) in msg and str(pi) in msg and "40" in msg and "32" in msg
    # two edges disagreeing about an agent without an inner file
    p1 = _write(tmp_path, "x-y-Outerlink.pt", _outer_tensors(16, 24))
    p2 = _write(tmp_path, "y-z-Outerlink.pt", _outer_tensors(20, 16))
    with pytest.raises(ReleasedLinkError, match="agent 'y'"):
        import_released({}, {("x", "y"): p1, ("y", "z"): p2})


def test_import_released_norm_disagreement(tmp_path):
    pi = _write(tmp_path, "adapter(math).pt", _inner_tensors(32, norm=True))
    po = _write(tmp_path, "math-code-Outerlink.pt", _outer_tensors(32, 48, norm=False))
    with pytest.raises(ReleasedLinkError, match="LayerNorm") as exc:
        import_released({"math": pi}, {("math", "code"): po})
    assert str(po) in str(exc.value)
