"""The command line as a user meets it: real subcommands in-process, tiny models on disk, clean errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from recursivemas.cli import main
from recursivemas.links import LinkSet, load_links
from tiny import save_tiny_pair


@pytest.fixture(scope="module")
def topology_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    doc = {
        "name": "cli-seq",
        "backbones": {name: {"model": path} for name, path in save_tiny_pair(root).items()},
        "agents": [{"name": "planner", "backbone": "a"}, {"name": "critic", "backbone": "b"},
                   {"name": "solver", "backbone": "b"}],
        "pattern": "sequential", "rounds": 2, "latent_steps": 3, "generation": {"max_new_tokens": 6},
    }
    path = root / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def reader_file(topology_file):
    """The CLI topology with a planner whose template names {context}: a field the run must be given."""
    doc = yaml.safe_load(topology_file.read_text())
    doc["name"] = "cli-reader"
    doc["agents"][0]["prompt"] = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."
    path = topology_file.parent / "reader.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_context_and_fields(reader_file, capsys):
    """--context and --field context=... give the answer Executor.run gives with that context; a missing or unknown
    field exits 2 naming it (before any model loads)."""
    from recursivemas.config import load_topology
    from recursivemas.runtime import load_system

    context = "The code is 4711."
    outputs = []
    for flags in (["--context", context], ["--field", f"context={context}"]):
        assert main(["run", "--topology", str(reader_file), "--prompt", "What is the code?", *flags, "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    expected = load_system(load_topology(reader_file)).run("What is the code?", context=context)
    assert outputs[0]["text"] == outputs[1]["text"] == expected.text
    assert outputs[0]["usage"][0]["prompt_tokens"] == expected.usage[0].prompt_tokens
    for flags, words in (([], ["fields.context", "agent 'planner'", "pass --context TEXT"]),
                         (["--context", context, "--field", "doc=x"], ["--field doc=...", "names {doc}", "context"]),
                         (["--field", "context"], ["--field 'context': expected NAME=TEXT"]),
                         (["--context", "a", "--field", "context=b"], ["disagree"])):
        assert main(["run", "--topology", str(reader_file), "--prompt", "q", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(w in err for w in words), (flags, err)


def test_run_prints_answers_tables_and_comparison(topology_file, capsys):
    assert main(["run", "--topology", str(topology_file), "--prompt", "2+2?", "--mode", "latent,text",
                 "--reference", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("the reference is '4'") == 2  # each mode's answer checked
    assert "=== latent mode: cli-seq, rounds 2, latent steps 3 ===" in out
    assert "answer (text):" in out
    assert out.count("round  agent") == 2  # one usage table per mode
    assert "comparison" in out and "x the speed of text" in out


def test_run_json_overrides(topology_file, capsys):
    assert main(["run", "--topology", str(topology_file), "--prompt", "2+2?", "--rounds", "1",
                 "--latent-steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "latent" and result["rounds"] == 1 and result["latent_steps"] == 2
    assert [u["kind"] for u in result["usage"]] == ["latent", "latent", "answer"]
    assert result["totals"]["latent_steps"] == 4


@pytest.mark.parametrize("argv, expected", [
    (["run", "--topology", "missing.yaml"], "does not exist"),
    (["run", "--topology", "{topology}", "--prompt", "   "], "prompt: question 0 is empty"),
    (["run", "--topology", "{topology}", "--rounds", "0"], "rounds"),
    (["run", "--topology", "{topology}", "--mode", "bogus"], "mode: 'bogus'"),
    (["models", "pull", "no-such-model"], "smollm2-135m-instruct"),
    (["links", "import", "--inner", "planner", "--out", "x"], "expected KEY=PATH"),
    (["run", "--topology", "{topology}", "--address", "127.0.0.1:9"], "cannot reach a Ray cluster at '127.0.0.1:9'"),
    (["run", "--topology", "{topology}", "--links", "no/such/dir"], "--links no/such/dir: no such directory"),
    (["serve", "a.yaml", "b.yaml", "--links", "."], "--links: changes one topology, but 2 are served"),
    (["serve", "a.yaml", "b.yaml", "--latent-steps", "16"], "--latent-steps: changes one topology, but 2 are served"),
    (["links", "import", "--release", ".", "--out", "x"], "--release: pass --topology"),
    (["links", "import", "--out", "x"], "links import: pass --release DIR... --topology T"),
])
def test_user_errors_exit_2_with_one_clear_line(topology_file, capsys, argv, expected):
    argv = [a.replace("{topology}", str(topology_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err


def test_bad_yaml_field_is_named(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("backbones: {a: {model: x}}\nagents: [{name: p, backbone: nope}]\ndecoder: p\n")
    assert main(["run", "--topology", str(path)]) == 2
    err = capsys.readouterr().err
    assert "agents.p.backbone: unknown backbone 'nope'" in err and "['a']" in err


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma3-270m" in out


def test_links_import_writes_a_loadable_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    d_a, d_b = 16, 24

    def lin(o, i):
        return {"weight": torch.randn(o, i), "bias": torch.randn(o)}

    def flat(prefix, params):
        return {f"{prefix}.{k}": v for k, v in params.items()}

    ln = lambda d: {"weight": torch.rand(d) + 0.5, "bias": torch.randn(d)}  # noqa: E731
    inner = {**flat("pre_ln", ln(d_a)), **flat("proj1", lin(d_a, d_a)), **flat("proj2", lin(d_a, d_a)),
             **flat("post_ln", ln(d_a))}
    outer = {**flat("ln_source", ln(d_a)), **flat("proj1", lin(2 * d_b, d_a)), **flat("proj2", lin(d_b, 2 * d_b)),
             **flat("residual_proj", lin(d_b, d_a)), **flat("ln_target", ln(d_b))}
    torch.save(inner, tmp_path / "adapter(math).pt")
    torch.save(outer, tmp_path / "A-B-Outerlink.pt")
    out_dir = tmp_path / "links"
    argv = ["links", "import", "--inner", f"a={tmp_path / 'adapter(math).pt'}",
            "--outer", f"a->b={tmp_path / 'A-B-Outerlink.pt'}", "--out", str(out_dir)]
    with pytest.warns(UserWarning):  # agent b has no inner file: it gets a fresh one
        assert main(argv) == 0
    assert "saved 1 inner and 1 outer links" in capsys.readouterr().out
    loaded = load_links(out_dir, into=LinkSet({"a": d_a, "b": d_b}, [("a", "b")]))
    torch.testing.assert_close(loaded.outer_link("a", "b").residual_proj.weight, outer["residual_proj.weight"])
    torch.testing.assert_close(loaded.inner_link("a").proj1.weight, inner["proj1.weight"])


def test_links_flag_points_run_and_eval_at_a_checkpoint(topology_file, tmp_path, capsys):
    """--links runs a topology with links from elsewhere: the same answer as a topology whose YAML names them."""
    from recursivemas.config import load_topology
    from recursivemas.links import save_links
    from recursivemas.runtime import build_links, load_system

    topology = load_topology(topology_file)
    engines = {name: backend.engine for name, backend in load_system(topology).backends.items()}
    trained = build_links(topology, engines, seed=7)  # not the seed-0 links a topology without `links:` gets
    save_links(trained, tmp_path / "links")
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump({**topology.to_dict(), "links": str(tmp_path / "links")}))
    outputs = []
    for argv in (["--topology", str(topology_file), "--links", str(tmp_path / "links")], ["--topology", str(named)]):
        assert main(["run", *argv, "--prompt", "2+2?", "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["text"])
    assert outputs[0] == outputs[1]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")  # the question run answered
    assert main(["eval", "--topology", str(topology_file), "--links", str(tmp_path / "links"), "--dataset",
                 str(rows), "--mode", "latent", "--rounds", "2", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["items"][0]["text"] == outputs[0]
