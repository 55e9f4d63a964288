"""Tests for recursivemas.config: topology presets, YAML round trips and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from recursivemas import prompts
from recursivemas.config import ConfigError, Topology, load_topology
from recursivemas.config.graph_checks import find_cycle

BACKBONES = {"smol": {"model": "some/model"}, "gem": {"model": "/models/gemma"}}


def agents(*names: str, backbone: str = "smol", **extra) -> list[dict]:
    return [{"name": n, "backbone": backbone, **extra} for n in names]


def topo(**fields) -> Topology:
    data = {"backbones": BACKBONES, **fields}
    return Topology.model_validate(data)


def invalid(**fields) -> str:
    """Validate and return the error text; fails the test if the topology is accepted."""
    with pytest.raises(ValidationError) as info:
        topo(**fields)
    return str(info.value)


def prompts_of(t: Topology) -> list[str | None]:
    return [a.prompt for a in t.agents]


# --- presets ------------------------------------------------------------------------------------------------------


def test_sequential_three_agents():
    t = topo(agents=agents("planner", "critic", "solver"), pattern="sequential")
    assert t.edges == [("planner", "critic"), ("critic", "solver")]
    assert t.feedback == [("solver", "planner")]
    assert t.decoder == "solver"
    assert prompts_of(t) == ["planner", "critic", "solver"]
    assert not any(a.tools for a in t.agents)


def test_sequential_roles_follow_position_not_name():
    t = topo(agents=agents("a", "b", "c"), pattern="sequential")
    assert t.edges == [("a", "b"), ("b", "c")]
    assert t.feedback == [("c", "a")]
    assert t.decoder == "c"
    assert prompts_of(t) == ["planner", "critic", "solver"]


def test_sequential_two_agents():
    t = topo(agents=agents("a", "b"), pattern="sequential")
    assert t.edges == [("a", "b")]
    assert t.feedback == [("b", "a")]
    assert t.decoder == "b"
    assert prompts_of(t) == ["planner", "solver"]


def test_sequential_four_agents():
    t = topo(agents=agents("a", "b", "c", "d"), pattern="sequential")
    assert t.edges == [("a", "b"), ("b", "c"), ("c", "d")]
    assert t.feedback == [("d", "a")]
    assert t.decoder == "d"
    assert prompts_of(t) == ["planner", "critic", "critic", "solver"]


def test_sequential_one_agent_rejected():
    msg = invalid(agents=agents("a"), pattern="sequential")
    assert "pattern" in msg and "at least 2 agents" in msg


def test_preset_keeps_explicit_prompts():
    custom = "Q: {question}\nIn: {inputs}"
    t = topo(agents=[*agents("a"), {"name": "b", "backbone": "smol", "prompt": custom}], pattern="sequential")
    assert prompts_of(t) == ["planner", custom]


def test_mixture():
    t = topo(agents=agents("math", "code", "sci", "summ"), pattern="mixture")
    assert t.edges == [("math", "summ"), ("code", "summ"), ("sci", "summ")]
    assert t.feedback == [("summ", "math"), ("summ", "code"), ("summ", "sci")]
    assert t.decoder == "summ"
    assert prompts_of(t) == ["expert", "expert", "expert", "summarizer"]


def test_distillation():
    t = topo(agents=agents("expert", "learner"), pattern="distillation")
    assert t.edges == [("expert", "learner")]
    assert t.feedback == [("learner", "expert")]
    assert t.decoder == "learner"
    assert prompts_of(t) == ["expert", "learner"]
    assert not any(a.tools for a in t.agents)


def test_deliberation():
    t = topo(agents=agents("reflector", "caller"), pattern="deliberation")
    assert t.edges == [("reflector", "caller")]
    assert t.feedback == [("caller", "reflector")]
    assert t.decoder == "caller"
    assert prompts_of(t) == ["reflector", "tool_caller"]
    assert t.agent("caller").tools is True
    assert t.agent("reflector").tools is False


@pytest.mark.parametrize("pattern", ["distillation", "deliberation"])
@pytest.mark.parametrize("count", [1, 3])
def test_two_agent_patterns_need_exactly_two(pattern, count):
    names = [f"a{i}" for i in range(count)]
    msg = invalid(agents=agents(*names), pattern=pattern)
    assert "pattern" in msg and pattern in msg
    assert "exactly 2 agents" in msg and f"got {count}" in msg


def test_distillation_with_three_agents_names_the_agents():
    msg = invalid(agents=agents("a", "b", "c"), pattern="distillation")
    assert "'distillation' needs exactly 2 agents, got 3" in msg
    assert "['a', 'b', 'c']" in msg


def test_unknown_pattern_rejected():
    msg = invalid(agents=agents("a", "b"), pattern="pipeline")
    assert "pattern" in msg and "pipeline" in msg


# --- explicit graphs ----------------------------------------------------------------------------------------------


def test_explicit_edges_as_strings():
    t = topo(agents=agents("a", "b", "c"), edges=["a->b", "b -> c"], feedback=["c->a"], decoder="c")
    assert t.pattern is None
    assert t.edges == [("a", "b"), ("b", "c")]
    assert t.feedback == [("c", "a")]
    assert t.decoder == "c"
    # agents outside the presets get the generic prompt
    assert prompts_of(t) == ["agent", "agent", "agent"]


def test_explicit_edges_as_lists():
    t = topo(agents=agents("a", "b", "c"), edges=[["a", "b"], ["b", "c"]], feedback=[["c", "a"]], decoder="c")
    assert t.edges == [("a", "b"), ("b", "c")]
    assert t.feedback == [("c", "a")]


def test_explicit_edges_mixed_forms_equal():
    one = topo(agents=agents("a", "b", "c"), edges=["a->b", ["b", "c"]], decoder="c")
    two = topo(agents=agents("a", "b", "c"), edges=[("a", "b"), "b->c"], decoder="c")
    assert one.model_dump() == two.model_dump()


def test_explicit_graph_without_feedback():
    t = topo(agents=agents("a", "b"), edges=["a->b"], decoder="b")
    assert t.feedback == []


def test_explicit_graph_named_after_presets_gets_role_prompts():
    t = topo(agents=agents("planner", "solver"), edges=["planner->solver"], decoder="solver")
    assert prompts_of(t) == ["planner", "solver"]


def test_single_agent_explicit():
    t = topo(agents=agents("solo"), decoder="solo")
    assert t.edges == [] and t.feedback == [] and t.decoder == "solo"


def test_bad_edge_syntax():
    msg = invalid(agents=agents("a", "b"), edges=["a=>b"], decoder="b")
    assert "edges" in msg and "'a=>b'" in msg and "source->target" in msg


def test_decoder_required_without_pattern():
    msg = invalid(agents=agents("a", "b"), edges=["a->b"])
    assert "decoder" in msg and "pattern" in msg


def test_agent_named_slot_for_explicit_prompt():
    t = topo(
        agents=[*agents("planner"), {"name": "solver", "backbone": "smol", "prompt": "Q: {question}\nPlan: {planner}"}],
        edges=["planner->solver"], decoder="solver",
    )
    assert prompts.slot_for(t.template("solver"), "planner", False) == "planner"


def test_find_cycle():
    assert find_cycle(["a", "b", "c"], [("a", "b"), ("b", "c")]) is None
    assert find_cycle(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")]) == ["a", "b", "c", "a"]


# --- YAML round trip and replace ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_round_trip_preset(tmp_path):
    t = topo(
        name="seq", agents=[*agents("planner", "critic"), *agents("solver", backbone="gem")], pattern="sequential",
        rounds=2, latent_steps=7, generation={"max_new_tokens": 12, "seed": 3},
    )
    loaded = load_topology(_write(tmp_path / "t.yaml", t.to_yaml()))
    assert loaded.model_dump() == t.model_dump()
    assert loaded == t
    # a preset stays a preset in the file
    data = yaml.safe_load(t.to_yaml())
    assert data["pattern"] == "sequential" and "edges" not in data and "decoder" not in data


@pytest.mark.parametrize("pattern", ["mixture", "distillation", "deliberation"])
def test_yaml_round_trip_other_presets(tmp_path, pattern):
    names = ["e1", "e2", "s"] if pattern == "mixture" else ["x", "y"]
    t = topo(agents=agents(*names), pattern=pattern)
    loaded = load_topology(_write(tmp_path / "t.yaml", t.to_yaml()))
    assert loaded.model_dump() == t.model_dump()


def test_yaml_round_trip_explicit_graph(tmp_path):
    t = topo(
        name="explicit",
        agents=[*agents("a", "b"), {"name": "c", "backbone": "gem", "prompt": "Q: {question}\nA: {a}\nB: {b}\n{feedback}"}],
        edges=[["a", "c"], "b->c"], feedback=["c->a", "c->b"], decoder="c", handoff="outer", link_norm=False,
    )
    text = t.to_yaml()
    data = yaml.safe_load(text)
    assert data["edges"] == ["a->c", "b->c"] and data["feedback"] == ["c->a", "c->b"]
    loaded = load_topology(_write(tmp_path / "t.yaml", text))
    assert loaded.model_dump() == t.model_dump()


def test_to_dict_validates_back():
    t = topo(agents=agents("a", "b", "c"), pattern="mixture")
    assert Topology.model_validate(t.to_dict()).model_dump() == t.model_dump()


def test_load_topology_resolves_relative_links(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    t = topo(agents=agents("a", "b"), pattern="sequential", links="ckpt/links")
    loaded = load_topology(_write(sub / "t.yaml", t.to_yaml()))
    assert Path(loaded.links).is_absolute()
    assert Path(loaded.links) == (sub / "ckpt" / "links").resolve()


def test_relative_links_follow_a_symlinked_topology_to_its_target(tmp_path):
    real = tmp_path / "package"
    real.mkdir()
    t = topo(agents=agents("a", "b"), pattern="sequential", links="ckpt/links")
    target = _write(real / "t.yaml", t.to_yaml())
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "t.yaml").symlink_to(target)
    assert Path(load_topology(tmp_path / "examples" / "t.yaml").links) == (real / "ckpt" / "links").resolve()


def test_load_topology_keeps_absolute_links(tmp_path):
    target = str((tmp_path / "elsewhere").resolve())
    t = topo(agents=agents("a", "b"), pattern="sequential", links=target)
    loaded = load_topology(_write(tmp_path / "t.yaml", t.to_yaml()))
    assert loaded.links == target


def test_load_topology_accepts_str_path(tmp_path):
    t = topo(agents=agents("a", "b"), pattern="sequential")
    path = _write(tmp_path / "t.yaml", t.to_yaml())
    assert load_topology(str(path)) == t


def test_replace_validates():
    t = topo(agents=agents("a", "b", "c"), pattern="sequential")
    r = t.replace(rounds=2)
    assert r.rounds == 2 and t.rounds == 3
    assert r.edges == t.edges and r.decoder == t.decoder
    assert t.replace(latent_steps=5).latent_steps == 5
    with pytest.raises(ValidationError) as info:
        t.replace(rounds=0)
    assert "rounds" in str(info.value)
    with pytest.raises(ValidationError):
        t.replace(latent_steps=-1)
    with pytest.raises(ValidationError):
        t.replace(decoder="a")  # a preset with an explicit decoder


# --- bad input: each error names the field and the bad value or the fix -------------------------------------------


def test_unknown_backbone():
    msg = invalid(agents=[{"name": "a", "backbone": "nope"}, *agents("b")], pattern="sequential")
    assert "agents.a.backbone" in msg and "'nope'" in msg and "smol" in msg and "gem" in msg


def test_duplicate_agent_name():
    msg = invalid(agents=agents("a", "b", "a"), pattern="sequential")
    assert "agents" in msg and "duplicate" in msg and "['a']" in msg


def test_cycle_inside_a_round():
    msg = invalid(agents=agents("a", "b", "c"), edges=["a->b", "b->c", "c->a"], decoder="c")
    assert "edges" in msg and "cycle" in msg
    assert "a -> b -> c -> a" in msg
    assert "feedback" in msg


def test_cycle_moved_to_feedback_is_fine():
    t = topo(agents=agents("a", "b", "c"), edges=["a->b", "b->c"], feedback=["c->a"], decoder="c")
    assert t.feedback == [("c", "a")]


def test_unreachable_decoder():
    msg = invalid(agents=agents("a", "b", "c"), edges=["a->b"], decoder="b")
    assert "decoder" in msg and "'b'" in msg and "not reachable" in msg and "'c'" in msg


def test_agent_reaching_decoder_only_through_feedback_is_fine():
    # c -> a is feedback, a -> b reaches the decoder: c's latents arrive next round
    t = topo(agents=agents("a", "b", "c"), edges=["a->b"], feedback=["c->a"], decoder="b")
    assert t.decoder == "b"


def test_decoder_unknown_agent():
    msg = invalid(agents=agents("a", "b"), edges=["a->b"], decoder="zed")
    assert "decoder" in msg and "'zed'" in msg and "['a', 'b']" in msg


def test_rounds_zero():
    msg = invalid(agents=agents("a", "b"), pattern="sequential", rounds=0)
    assert "rounds" in msg and "greater than or equal to 1" in msg and "input_value=0" in msg


def test_latent_steps_negative():
    msg = invalid(agents=agents("a", "b"), pattern="sequential", latent_steps=-1)
    assert "latent_steps" in msg and "greater than or equal to 0" in msg and "input_value=-1" in msg


def test_latent_steps_zero_allowed():
    assert topo(agents=agents("a", "b"), pattern="sequential", latent_steps=0).latent_steps == 0


@pytest.mark.parametrize("extra", [{"edges": ["a->b"]}, {"feedback": ["b->a"]}, {"decoder": "b"}])
def test_pattern_with_explicit_graph(extra):
    msg = invalid(agents=agents("a", "b"), pattern="sequential", **extra)
    assert "pattern" in msg and "not both" in msg


def test_template_without_question():
    msg = invalid(
        agents=[{"name": "a", "backbone": "smol", "prompt": "Hi {inputs} {feedback}"}, *agents("b")],
        pattern="sequential",
    )
    assert "agents.a.prompt" in msg and "{question}" in msg and "add one" in msg


def test_template_with_misspelled_slot():
    msg = invalid(
        agents=[*agents("planner"), {"name": "solver", "backbone": "smol", "prompt": "{question} {plannr}"}],
        edges=["planner->solver"], decoder="solver",
    )
    assert "agents.solver.prompt" in msg and "{plannr}" in msg
    assert "'planner'" in msg  # the agents that do hand over, so the typo is obvious


def test_template_without_slot_for_incoming_edge():
    msg = invalid(
        agents=[*agents("planner"), {"name": "solver", "backbone": "smol", "prompt": "{question} only"}],
        edges=["planner->solver"], decoder="solver",
    )
    assert "agents.solver.prompt" in msg and "'planner'" in msg
    assert "{planner}" in msg and "{inputs}" in msg


def test_template_without_slot_for_feedback_edge():
    msg = invalid(
        agents=[{"name": "a", "backbone": "smol", "prompt": "{question} {inputs}"}, *agents("b")],
        edges=["a->b"], feedback=["b->a"], decoder="b",
    )
    assert "agents.a.prompt" in msg and "'b'" in msg and "{feedback}" in msg


def test_unknown_extra_key():
    msg = invalid(agents=agents("a", "b"), pattern="sequential", round=3)
    assert "round" in msg and "Extra inputs are not permitted" in msg


def test_unknown_extra_key_in_agent():
    msg = invalid(agents=[{"name": "a", "backbone": "smol", "promt": "planner"}, *agents("b")], pattern="sequential")
    assert "promt" in msg and "Extra inputs" in msg


def test_edge_naming_unknown_agent():
    msg = invalid(agents=agents("a", "b"), edges=["a->b", "a->ghost"], decoder="b")
    assert "edges" in msg and "a->ghost" in msg and "'ghost'" in msg and "['a', 'b']" in msg


def test_feedback_naming_unknown_agent():
    msg = invalid(agents=agents("a", "b"), edges=["a->b"], feedback=["ghost->a"], decoder="b")
    assert "feedback" in msg and "'ghost'" in msg


def test_self_loop():
    msg = invalid(agents=agents("a", "b"), edges=["a->b", "b->b"], decoder="b")
    assert "edges" in msg and "b->b" in msg and "self-loop" in msg


def test_same_edge_in_edges_and_feedback():
    msg = invalid(agents=agents("a", "b"), edges=["a->b"], feedback=["a->b"], decoder="b")
    assert "feedback" in msg and "edges" in msg and "a->b" in msg


def test_duplicate_edge():
    msg = invalid(agents=agents("a", "b"), edges=["a->b", "a->b"], decoder="b")
    assert "edges" in msg and "twice" in msg


def test_bad_agent_name():
    msg = invalid(agents=agents("a.b", "c"), pattern="sequential")
    assert "name" in msg and "a.b" in msg


def test_agent_named_question_is_rejected():
    """BUG: an agent called ``question`` validates, but ``slot_for(template, "question", ...)`` returns the
    ``{question}`` placeholder, and ``render`` fills that with the question text: the agent's hand-off is silently
    dropped (see test_executor.py::test_agent_named_question_hand_off_is_not_lost). The schema should refuse agent
    names that collide with the reserved placeholders (question, inputs, feedback)."""
    try:
        topo(agents=agents("question", "b"), edges=["question->b"], decoder="b")
    except ValidationError as exc:
        assert "question" in str(exc)
    else:
        pytest.fail("an agent named 'question' was accepted; its hand-off would land in the {question} placeholder "
                    "and be replaced by the question text (reserved names must be rejected with a clear error)")


def test_missing_required_fields():
    with pytest.raises(ValidationError) as info:
        Topology.model_validate({"agents": agents("a")})
    assert "backbones" in str(info.value)


# --- load_topology errors -----------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


def test_load_invalid_yaml(tmp_path):
    path = _write(tmp_path / "bad.yaml", "backbones: {smol: [unclosed\nagents: :\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)


def test_load_yaml_list(tmp_path):
    path = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert str(path) in str(info.value) and "mapping" in str(info.value) and "list" in str(info.value)


def test_load_empty_file(tmp_path):
    path = _write(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert str(path) in str(info.value)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_load_invalid_topology_one_line_per_problem(tmp_path):
    data = {
        "backbones": BACKBONES,
        "agents": agents("a", "b"),
        "pattern": "sequential",
        "rounds": 0,
        "latent_steps": -1,
        "round": 3,
    }
    path = _write(tmp_path / "multi.yaml", yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    msg = str(info.value)
    assert str(path) in msg
    problem_lines = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(problem_lines) == 3, msg
    fields = sorted(line[4:].split(":", 1)[0] for line in problem_lines)
    assert fields == ["latent_steps", "round", "rounds"], msg
    assert "errors.pydantic.dev" not in msg
    assert "input_value" not in msg and "Value error," not in msg


@pytest.mark.parametrize(
    "change, field, needle",
    [
        ({"agents": [{"name": "a", "backbone": "nope"}, {"name": "b", "backbone": "smol"}]}, "agents.a.backbone",
         "'nope'"),
        ({"edges": ["a->b", "b->c", "c->a"], "decoder": "c", "pattern": None}, "edges", "a -> b -> c -> a"),
        ({"pattern": "distillation"}, "pattern", "exactly 2 agents"),
        ({"rounds": 0}, "rounds", "greater than or equal to 1"),
    ],
)
def test_load_invalid_topology_formats_message(tmp_path, change, field, needle):
    data = {"backbones": BACKBONES, "agents": agents("a", "b", "c"), "pattern": "sequential", **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = _write(tmp_path / "bad.yaml", yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: invalid topology\n"), msg
    lines = msg.splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith(f"  - {field}: "), msg
    assert needle in lines[0], msg
    assert "errors.pydantic.dev" not in msg and "Value error," not in msg


def test_a_relative_model_directory_is_resolved_next_to_the_file(tmp_path, monkeypatch):
    """Ray Train workers run in a trial directory of their own: a relative model path must not depend on the cwd."""
    from recursivemas.config import load_topology

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "t.yaml").write_text(
        "backbones: {a: {model: models/tiny}, b: {model: smollm2-135m-instruct}}\n"
        "agents: [{name: planner, backbone: a}, {name: solver, backbone: b}]\npattern: sequential\n")
    monkeypatch.chdir("/")
    topology = load_topology(tmp_path / "t.yaml")
    assert topology.backbones["a"].model == str(tmp_path / "models" / "tiny")
    assert topology.backbones["b"].model == "smollm2-135m-instruct"  # a zoo name stays a name
