"""`recursivemas plan`: sizes read from config.json alone, checked against the real things they predict (a tiny
model's parameters, a LinkSet's, a DynamicCache's tensors after a forward), then placement, advice and the CLI."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from recursivemas.cli import main
from recursivemas.config import BackboneConfig, load_topology
from recursivemas.links import LinkSet
from recursivemas.plan import (
    Actor, CacheShape, build_actors, cache_shape, count_parameters, find_config, in_process, link_parameters, links_of,
    place, turn_tokens,
)
from recursivemas.plan_report import advice, parse_size, report
from tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]

GB = 10**9


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may download; a stray download fails loudly


def _saved(tmp_path, family: str, **changes) -> tuple[str, object]:
    config = tiny_config(family)
    for key, value in changes.items():
        setattr(config, key, value)
    folder = tmp_path / family
    config.save_pretrained(folder)
    return str(folder / "config.json"), config


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2", "qwen3", "mistral", "qwen3_5", "gemma3_mm"])
def test_parameters_match_the_instantiated_model(tmp_path, family):
    path, config = _saved(tmp_path, family)
    model = AutoModelForCausalLM.from_config(config.get_text_config())  # the engine loads the text model alone
    assert count_parameters(path) == sum(p.numel() for p in model.parameters())


def test_tied_embeddings_are_counted_once(tmp_path):
    untied, config = _saved(tmp_path / "untied", "llama")
    tied, tied_config = _saved(tmp_path / "tied", "llama", tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(tied_config)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert count_parameters(tied) == sum(p.numel() for p in model.parameters())
    assert count_parameters(untied) - count_parameters(tied) == config.vocab_size * config.hidden_size


@pytest.mark.parametrize("norm", [True, False])
def test_link_parameters_match_a_real_linkset(norm):
    dims = {"planner": 64, "critic": 48, "solver": 40}
    edges = [("planner", "critic"), ("critic", "solver"), ("solver", "planner")]
    links = LinkSet(dims, edges, norm=norm)
    predicted = link_parameters(dims, edges, norm)
    assert sum(predicted.values()) == links.num_parameters()
    for key, n in predicted.items():
        kind, name = key.split(".", 1)
        assert n == sum(p.numel() for p in getattr(links, kind)[name].parameters()), key
    if norm:
        assert predicted["inner.planner"] == 2 * 64 * 64 + 6 * 64


def _cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        for name in ("conv_states", "recurrent_states"):
            for t in (getattr(layer, name, None) or {}).values():
                total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
    return total


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "mistral", "gpt2", "qwen3_5"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_bytes_match_a_real_dynamic_cache(family, dtype):
    config = tiny_config(family)
    if family == "mistral":
        config.sliding_window = 8  # a window the forward outgrows
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    shape = cache_shape(config.get_text_config())
    if family == "gemma3":
        assert shape.sliding_windows == [16] and len(shape.kv_per_token) == 3
    if family == "qwen3_5":
        assert len(shape.linear_state) == 3 and len(shape.kv_per_token) == 1
    prompt = 37
    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=torch.randint(5, 200, (1, prompt)), use_cache=True)
        cache = out.past_key_values
        assert _cache_bytes(cache) == shape.bytes(prompt, dtype)
        out = model(input_ids=torch.randint(5, 200, (1, 1)), use_cache=True, **{name: cache})  # one decode step
    assert _cache_bytes(out.past_key_values) == shape.bytes(prompt + 1, dtype)


def _topology(tmp_path, families=("llama", "qwen2"), num_gpus=(1, 1), dtype="float32", **extra):
    backbones = {}
    for i, (family, gpus) in enumerate(zip(families, num_gpus)):
        folder = tmp_path / f"model{i}"
        tiny_config(family).save_pretrained(folder)
        backbones[f"b{i}"] = {"model": str(folder), "dtype": dtype, "device": "cuda", "num_gpus": gpus}
    doc = {"name": "planned", "backbones": backbones, "pattern": "sequential", "rounds": 2, "latent_steps": 4,
           "generation": {"max_new_tokens": 10},
           "agents": [{"name": "planner", "backbone": "b0"}, {"name": "solver", "backbone": "b1"}], **extra}
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_turn_tokens_follow_the_plan(tmp_path):
    topology = load_topology(_topology(tmp_path))
    # planner: prompt + the solver's feedback + its own steps; solver: prompt + the planner's latents + the answer
    assert turn_tokens(topology, 100) == {"planner": 100 + 4 + 4, "solver": 100 + 4 + 10}
    one_round = topology.replace(rounds=1)
    assert turn_tokens(one_round, 100) == {"planner": 100 + 4, "solver": 100 + 4 + 10}


def test_actors_and_links_come_from_the_configs(tmp_path):
    topology = load_topology(_topology(tmp_path))
    actors = build_actors(topology, prompt_tokens=100)
    assert [a.names for a in actors] == [["b0"], ["b1"]]
    assert [a.source for a in actors] == ["local directory"] * 2
    assert actors[0].kv_bytes() == cache_shape(tiny_config("llama")).bytes(108, "float32")
    links = links_of(topology, actors)
    real = LinkSet({"planner": 64, "solver": 48}, [*topology.edges, *topology.feedback])
    assert links["parameters"] == real.num_parameters() and links["dtype"] == "float32"
    assert links["bytes"] == 4 * real.num_parameters()


def _actor(name, params, num_gpus=1.0, dtype="bfloat16", model=None):
    config = BackboneConfig(model=model or name, dtype=dtype, device="cuda", num_gpus=num_gpus)
    return Actor([name], config, [name], "test", params, 64, "Test", CacheShape(((128, None),), ()), {name: 1000},
                 [[name]])


def test_whole_gpu_backbones_need_as_many_gpus():
    actors = [_actor(n, 2 * GB) for n in ("planner", "critic", "solver")]
    one = place(actors, gpus=1, memory=80 * GB)
    assert not one.fits and one.assigned == {"planner": [0]} and one.unplaced == ["critic", "solver"]
    assert "reserve 3 GPUs, the cluster has 1" in one.problems[0]
    text = "\n".join(advice(actors, one, 80 * GB, 1, GB, in_process(actors, 80 * GB, 1, GB)))
    assert "num_gpus: 0.33 on each of planner, critic, solver (3 per GPU)" in text and ": fits" in text
    assert "--gpus 3" in text and "run in one process" in text
    three = place(actors, gpus=3, memory=80 * GB)
    assert three.fits and three.assigned == {"planner": [0], "critic": [1], "solver": [2]}


def test_fractions_pack_and_memory_is_checked():
    actors = [_actor("a", 15 * GB, 0.5), _actor("b", 15 * GB, 0.5)]  # 30 GB of bf16 weights each
    packed = place(actors, gpus=1, memory=80 * GB)
    assert packed.fits and packed.assigned == {"a": [0], "b": [0]}
    assert packed.used[0] == 2 * (2 * 15 * GB + 128 * 2 * 1000)  # weights and one request's cache each
    over = place(actors, gpus=1, memory=61 * GB, overhead=GB)
    assert not over.fits and over.problems == ["GPU 0: a, b need 62.0 GB, over its 61.0 GB"]


def test_float32_that_does_not_fit_is_told_to_use_bfloat16():
    actors = [_actor("expert", 20 * GB, dtype="float32")]
    placed = place(actors, gpus=1, memory=80 * GB, overhead=GB)
    assert not placed.fits
    text = "\n".join(advice(actors, placed, 80 * GB, 1, GB, in_process(actors, 80 * GB, 1, GB)))
    assert "dtype: bfloat16 on 'expert' halves its weights (80.00 GB -> 40.00 GB)" in text
    assert "with those in bfloat16 it fits" in text
    huge = [_actor("giant", 50 * GB)]
    placed = place(huge, gpus=1, memory=80 * GB, overhead=GB)
    assert "'giant' alone needs 101.00 GB even in bfloat16" in "\n".join(
        advice(huge, placed, 80 * GB, 1, GB, in_process(huge, 80 * GB, 1, GB)))


def test_advice_names_idle_gpus_and_backbones_to_share():
    actors = [_actor("a", 30 * GB, 2, model="same/model"), _actor("b", 30 * GB, 1, dtype="float32",
                                                                    model="same/model")]
    placed = place(actors, gpus=2, memory=80 * GB)
    assert placed.unplaced == ["b"]
    text = "\n".join(advice(actors, placed, 80 * GB, 1, GB, in_process(actors, 80 * GB, 1, GB)))
    assert "fewer GPUs per backbone: num_gpus: 1 on 'a'" in text
    assert "agents sharing a backbone: a, b load the same model 'same/model' as 2 actors" in text


def test_sizes_parse():
    assert parse_size("80GB") == 80 * GB and parse_size("80 GiB") == 80 * 2**30 and parse_size("512MB") == 512e6
    assert parse_size("24") == 24 * GB
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_offline_configs_for_zoo_and_released_models(tmp_path, monkeypatch):
    monkeypatch.setenv("RECURSIVEMAS_CACHE", str(tmp_path))  # nothing pulled: the shipped zoo config stands in
    path, source = find_config("gemma3-270m")
    assert source == "shipped with recursivemas" and path.parent.name == "gemma3-270m"
    path, source = find_config("RecursiveMAS/Sequential-Light-Planner-Qwen3-1.7B")
    assert path.parent.name == "RecursiveMAS--Sequential-Light-Planner-Qwen3-1.7B"
    with pytest.raises(FileNotFoundError, match="hf download nobody/no-such-model config.json"):
        find_config("nobody/no-such-model")


def test_cli_json_plans_a_topology(tmp_path, capsys):
    path = _topology(tmp_path, num_gpus=(1, 1))
    assert main(["plan", "--topology", str(path), "--gpus", "2", "--gpu-memory", "1GB", "--overhead", "0",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["topology"] == "planned" and plan["fits"] is True and plan["advice"] == []
    llama = AutoModelForCausalLM.from_config(tiny_config("llama"))
    b0 = plan["backbones"][0]
    assert b0["parameters"] == sum(p.numel() for p in llama.parameters())
    assert b0["weight_bytes"] == 4 * b0["parameters"] and b0["gpus"] == [0]
    assert plan["backbones"][1]["gpus"] == [1]
    assert [g["backbones"] for g in plan["placement"]["gpus"]] == [["b0"], ["b1"]]
    assert plan["links"]["dtype"] == "float32" and plan["in_process"]["fits"] is True

    assert main(["plan", "--topology", str(path), "--gpus", "1", "--json"]) == 1  # two whole-GPU actors, one GPU
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is False and plan["placement"]["unplaced"] == ["b1"]
    assert any("num_gpus: 0.5 on each of b0, b1" in a for a in plan["advice"])


def test_cli_plans_the_released_systems_offline(capsys):
    assert main(["plan", "--topology", "sequential-light", "--gpus", "3", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [b["parameters"] for b in plan["backbones"]] == [1720574976, 1235814400, 1543714304]
    assert plan["fits"] and [b["gpus"] for b in plan["backbones"]] == [[0], [1], [2]]
    assert main(["plan", "--topology", "sequential-light", "--gpus", "1"]) == 1
    text = capsys.readouterr().out
    assert "does NOT fit on Ray" in text and "num_gpus: 0.33" in text
    assert main(["plan", "--markdown", "--topology", "sequential-scaled", "deliberation"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| built-in |") and len(rows) == 4
    assert "planner 3.88B" in rows[2] and "reflector 4.21B, toolcaller 4.21B" in rows[3]


def test_report_is_json_and_sums_up(tmp_path):
    topology = load_topology(_topology(tmp_path, num_gpus=(0.5, 0.5)))
    plan = report(topology, gpus=1, memory=GB, overhead=0)
    json.dumps(plan)
    assert plan["fits"] and plan["placement"]["gpus"][0]["backbones"] == ["b0", "b1"]
    used = sum(b["need_bytes"] for b in plan["backbones"])
    assert plan["placement"]["gpus"][0]["used_bytes"] == used == plan["in_process"]["bytes"]


def test_the_docs_memory_table_is_the_generated_one(capsys):
    doc = (ROOT / "docs" / "released-systems.md").read_text()
    command = "recursivemas plan --markdown --topology sequential-light sequential-scaled mixture distillation deliberation"
    assert f"`{command}`" in doc
    assert main(command.split()[1:]) == 0
    table = capsys.readouterr().out.strip()
    assert table in doc, "docs/released-systems.md's memory table is stale: paste the command's output in"


def test_agents_sharing_a_backbone_add_up_only_when_they_run_at_once(tmp_path):
    folder = tmp_path / "llama"
    tiny_config("llama").save_pretrained(folder)
    doc = {"name": "shared", "backbones": {"a": {"model": str(folder)}}, "pattern": "mixture", "rounds": 1,
           "latent_steps": 4, "generation": {"max_new_tokens": 10},
           "agents": [{"name": n, "backbone": "a"} for n in ("e1", "e2", "summarizer")]}
    (path := tmp_path / "shared.yaml").write_text(yaml.safe_dump(doc))
    (actor,) = build_actors(load_topology(path), prompt_tokens=100)
    shape = cache_shape(tiny_config("llama"))
    experts = 2 * shape.bytes(100 + 4, "float32")  # both experts roll out at once, in one level
    summarizer = shape.bytes(100 + 2 * 4 + 10, "float32")  # reads both, then writes the answer
    assert actor.names == ["a"] and actor.agents == ["e1", "e2", "summarizer"]
    assert actor.kv_bytes() == max(experts, summarizer)
