"""``recursivemas train`` end to end on tiny models: a checkpoint with exactly the topology's link keys, used by run."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors import safe_open

from recursivemas.cli import main
from recursivemas.config import ConfigError
from recursivemas.runtime.executor import framing_of
from recursivemas.train.data import DataError
from recursivemas.train.inner import agent_prompt
from recursivemas.train.local import cosine as _cosine, load_train_config
from recursivemas.train.setup import prepare
from recursivemas.engine import Sampling
from tiny import save_tiny_pair


@pytest.fixture()
def files(tmp_path):
    topology = {
        "name": "train-seq",
        "backbones": {name: {"model": path} for name, path in save_tiny_pair(tmp_path).items()},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 2, "latent_steps": 2, "generation": {"max_new_tokens": 4},
    }
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology))
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i), "plan": f"add {i} to itself"} for i in range(4)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = {"topology": "topology.yaml", "data": {"path": "rows.jsonl"}, "targets": {"planner": "plan"},
              "inner": {"steps": 2, "batch_size": 2}, "outer": {"steps": 2, "batch_size": 2, "warmup_steps": 1},
              "output": "out/links"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_train_writes_links_that_run_uses(files, capsys):
    assert main(["train", "--config", str(files / "train.yaml")]) == 0
    ckpt = files / "out" / "links"
    with safe_open(str(ckpt / "links.safetensors"), "pt") as f:
        keys = set(f.keys())
    parts = ["pre_ln", "proj1", "proj2", "post_ln"]
    outer_parts = ["ln_source", "proj1", "proj2", "residual_proj", "ln_target"]
    expected = {f"inner.{a}.{p}.{w}" for a in ("planner", "solver") for p in parts for w in ("weight", "bias")}
    expected |= {f"outer.{e}.{p}.{w}" for e in ("planner->solver", "solver->planner") for p in outer_parts
                 for w in ("weight", "bias")}
    assert keys == expected  # link weights only, nothing of the backbones
    topology = yaml.safe_load((files / "topology.yaml").read_text())
    (files / "trained.yaml").write_text(yaml.safe_dump({**topology, "links": str(ckpt)}))
    capsys.readouterr()
    assert main(["run", "--topology", str(files / "trained.yaml"), "--prompt", "What is 3+3?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "latent"


def test_bad_train_config_names_the_field(files):
    (files / "bad.yaml").write_text(yaml.safe_dump({"topology": "topology.yaml", "data": {}, "inner": {"stpes": 1}}))
    with pytest.raises(ConfigError) as info:
        load_train_config(files / "bad.yaml")
    msg = str(info.value)
    assert "exactly one of `path`" in msg and "inner.stpes: unknown key; did you mean 'steps'?" in msg


def test_data_options_need_a_generator(files):
    (files / "opts.yaml").write_text(yaml.safe_dump({"topology": "topology.yaml",
                                                     "data": {"path": "rows.jsonl", "options": {"max_terms": 2}}}))
    with pytest.raises(ConfigError, match="data.options: generator settings need `generator`"):
        load_train_config(files / "opts.yaml")


def test_unknown_agent_in_targets_fails_before_loading_models(files, capsys):
    config = yaml.safe_load((files / "train.yaml").read_text())
    (files / "t2.yaml").write_text(yaml.safe_dump({**config, "targets": {"critic": "plan"}}))
    assert main(["train", "--config", str(files / "t2.yaml")]) == 2
    assert "critic" in capsys.readouterr().err


def test_schedule_warms_up_then_decays():
    values = [_cosine(s, 2, 10) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[2] == 1.0 and values[-1] < 0.1
    assert all(a >= b for a, b in zip(values[2:], values[3:]))


def test_target_longer_than_max_length_names_row_and_field(files, capsys):
    rows = [{"question": "What is 1+1?", "answer": "2", "plan": "add " * 40}, {"question": "q", "answer": "1", "plan": "ok"}]
    (files / "long.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = yaml.safe_load((files / "train.yaml").read_text())
    (files / "long.yaml").write_text(yaml.safe_dump({**config, "data": {"path": "long.jsonl", "max_length": 64}}))
    assert main(["train", "--config", str(files / "long.yaml")]) == 2
    err = capsys.readouterr().err
    assert "row 1, field 'plan' (agent 'planner'): 160 tokens > data.max_length 64" in err
    assert "row 2" not in err


def test_checkpoint_from_another_topology_is_refused_with_the_difference(files, capsys):
    """Links trained for a planner->solver pair cannot seed a topology whose solver is another backbone."""
    assert main(["train", "--config", str(files / "train.yaml"), "--stage", "inner"]) == 0
    topology = yaml.safe_load((files / "topology.yaml").read_text())
    topology["agents"][1]["backbone"] = "a"  # the solver is now 64 wide, not 48
    (files / "other.yaml").write_text(yaml.safe_dump({**topology, "links": str(files / "out" / "links")}))
    config = yaml.safe_load((files / "train.yaml").read_text())
    (files / "t3.yaml").write_text(yaml.safe_dump({**config, "topology": "other.yaml", "output": "out/other"}))
    capsys.readouterr()
    assert main(["train", "--config", str(files / "t3.yaml")]) == 2
    err = capsys.readouterr().err
    assert "solver" in err and "48" in err and "64" in err
    assert not (files / "out" / "other").exists()


def test_forcing_settings_name_the_field(files):
    config = yaml.safe_load((files / "train.yaml").read_text())
    (files / "f.yaml").write_text(yaml.safe_dump({**config, "outer": {"forcing": "teacher", "gradient": "some"}}))
    with pytest.raises(ConfigError) as info:
        load_train_config(files / "f.yaml")
    assert "outer.forcing" in str(info.value) and "outer.gradient" in str(info.value)


def test_validation_writes_a_learning_curve_and_keeps_the_best_step(files):
    config = yaml.safe_load((files / "train.yaml").read_text())
    config["validation"] = {"path": "rows.jsonl", "n": 2, "every": 1, "max_new_tokens": 2}
    (files / "v.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(files / "v.yaml")]) == 0
    summary = json.loads((files / "out" / "links" / "train_summary.json").read_text())
    curve = summary["validation_curve"]
    assert [c["step"] for c in curve] == [0, 1, 2]  # before the first step, then every step
    assert all(0 <= c["val_accuracy"] <= 1 and c["val_loss"] > 0 for c in curve)
    best = max(curve, key=lambda c: (c["val_accuracy"], -c["val_loss"]))
    assert (summary["best_step"], summary["best_val_loss"], summary["kept"]) == (best["step"], best["val_loss"], "best")
    assert 0 <= summary["val_accuracy_single"] <= 1  # the decoder alone on the same rows: the line to clear
    assert (files / "out" / "links" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_role_text_forcing_on_the_answer_is_warned_about(files, caplog):
    config = load_train_config(files / "train.yaml")
    config = config.model_copy(update={"targets": {}, "outer": config.outer.model_copy(update={"forcing": "role_text"})})
    from recursivemas.train.setup import prepare

    with caplog.at_level("WARNING", logger="recursivemas"):
        prepare(config)
    assert "teacher-forces planner on the decoder's own target" in caplog.text



def test_reply_targets_are_the_agents_own_greedy_first_round_replies(files):
    raw = yaml.safe_load((files / "train.yaml").read_text())
    (files / "reply.yaml").write_text(yaml.safe_dump({**raw, "targets": {"planner": "reply"}}))
    setup = prepare(load_train_config(files / "reply.yaml"))
    assert setup.targets == {"planner": "reply_planner", "solver": "answer"}
    engine = setup.engines["a"]
    prompts = [agent_prompt(setup.topology.template("planner"), row.question, framing_of(setup.topology, "planner"))
               for row in setup.rows]
    greedy = [g.text.strip() or "." for g in engine.generate(prompts, Sampling(max_new_tokens=256))]
    assert [row.target("reply_planner") for row in setup.rows] == greedy
    assert setup.role_texts(setup.rows[0])["planner"] == greedy[0]


def test_the_decoder_cannot_be_taught_its_own_reply(files):
    raw = yaml.safe_load((files / "train.yaml").read_text())
    (files / "bad_reply.yaml").write_text(yaml.safe_dump({**raw, "targets": {"solver": "reply"}}))
    with pytest.raises(DataError, match="targets.solver: 'reply' is for upstream agents"):
        prepare(load_train_config(files / "bad_reply.yaml"))


@pytest.mark.parametrize("rounds, rolled", [(1, {"planner": 1, "solver": 0}), (2, {"planner": 1, "solver": 1})])
def test_rollout_rounds_go_to_the_agents_whose_thoughts_are_handed_on(files, monkeypatch, rounds, rolled):
    from recursivemas.train import loop

    topology = yaml.safe_load((files / "topology.yaml").read_text())
    (files / "topology.yaml").write_text(yaml.safe_dump({**topology, "rounds": rounds}))
    raw = yaml.safe_load((files / "train.yaml").read_text())
    (files / "rolled.yaml").write_text(yaml.safe_dump({**raw, "inner": {**raw["inner"], "rollout_rounds": 1}}))
    config = load_train_config(files / "rolled.yaml")
    seen, real = {}, loop.train_inner

    def spy(engine, link, examples, steps, **kwargs):
        seen[next(n for n, inner in setup.links.inner.items() if inner is link)] = kwargs["rollout_rounds"]
        return real(engine, link, examples, steps, **kwargs)

    setup = prepare(config)
    monkeypatch.setattr(loop, "train_inner", spy)
    loop.train_inner_links(setup, config, loop.World(), progress=False)
    assert seen == rolled


def test_upstream_text_inputs_put_each_sources_target_in_its_slot(files):
    """inner.inputs: upstream_text fills the solver's slot with what the planner would hand on (its target, the
    row's plan); with none the solver's stage-1 prompt is its first-round prompt, slots empty."""
    from recursivemas.train import loop

    setup = prepare(load_train_config(files / "train.yaml"))
    plain = loop.inner_examples(setup, "solver")
    relayed = loop.inner_examples(setup, "solver", "upstream_text")
    for row, a, b in zip(setup.rows, plain, relayed):
        plan = row.target("plan")
        assert a.target == b.target == row.target("answer")
        assert plan not in "".join(s for s in a.prompt.segments if isinstance(s, str))
        assert plan in "".join(s for s in b.prompt.segments if isinstance(s, str))
    assert loop.inner_examples(setup, "planner", "upstream_text")[0].prompt == loop.inner_examples(setup, "planner")[0].prompt
