"""Every file under examples/ runs: each topology (latent and text mode) and each training config (a step or two) on
tiny models in place of the zoo's, the Python quickstart in-process and on a local Ray, the serve config through
`--print-config`. The deliberation example runs its tool loop in the bubblewrap sandbox with a scripted tool-caller
(a 135M model seldom chooses to call the tool; tests/test_executor.py covers the loop itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recursivemas.cli import main
from recursivemas.config import BUILTIN_TOPOLOGIES, load_topology
from recursivemas.links import LinkSet, load_links
from recursivemas.runtime import Executor, build_links, load_system
from test_executor import FakeToolCaller
from tiny import save_tiny_pair

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The sequential pattern's example is the built-in demo (one copy of it, in the package).
TOPOLOGIES = [*sorted((EXAMPLES / "topologies").glob("*.yaml")), BUILTIN_TOPOLOGIES / "sequential-demo.yaml"]
TRAIN_CONFIGS = sorted([*EXAMPLES.glob("train-*.yaml"), *(EXAMPLES / "train").glob("*.yaml")])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("examples"))


def tiny_version(path: Path, models: dict[str, str], out: Path) -> Path:
    """The example topology with its backbones on tiny models (the first backbone a Llama, the rest a Qwen2)."""
    data = load_topology(path).to_dict()
    data.pop("links", None)  # shipped links fit the zoo models, not these
    for i, cfg in enumerate(data["backbones"].values()):
        cfg.update(model=models["a" if i == 0 else "b"], dtype="float32")
    data.update(rounds=1, latent_steps=2)
    data["generation"] = {**data.get("generation", {}), "max_new_tokens": 4, "message_max_new_tokens": 4}
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def test_there_is_an_example_of_every_pattern_and_a_training_config_for_each():
    patterns = {load_topology(p).pattern for p in TOPOLOGIES}
    assert patterns == {"sequential", "mixture", "distillation", "deliberation"}
    from recursivemas.train.config import load_train_config

    trained = {load_topology(load_train_config(c).topology).pattern for c in TRAIN_CONFIGS}
    assert trained == patterns


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_an_example_topology_runs_in_latent_and_text_mode(path, tiny_models, tmp_path, capsys):
    tiny = tiny_version(path, tiny_models, tmp_path / path.name)
    assert main(["run", "--topology", str(tiny), "--mode", "latent,text", "--prompt", "What is 2+3?", "--json"]) == 0
    latent, text = json.loads(capsys.readouterr().out)
    decoder = load_topology(path).decoder
    assert latent["usage"][-1]["agent"] == decoder and latent["totals"]["latent_steps"] > 0
    assert text["usage"][-1]["agent"] == decoder and text["totals"]["latent_steps"] == 0


def test_the_deliberation_example_runs_its_tool_loop_in_the_sandbox(tiny_models, tmp_path):
    topology = load_topology(tiny_version(EXAMPLES / "topologies" / "deliberation-demo.yaml", tiny_models,
                                          tmp_path / "delib.yaml"))
    assert topology.tools.python_sandbox == "bwrap"
    caller = FakeToolCaller(["<python>import os\nprint(6 * 7, os.getcwd())</python>", "So \\boxed{42}."])
    reflector = load_system(topology).backends["gemma"].engine
    engines = {"gemma": reflector, "smol": caller}
    result = Executor(topology, engines, build_links(topology, engines)).run("What is 6*7?")
    assert result.usage[-1].tool_calls == 1 and result.text == "So \\boxed{42}."
    (_, _), (second, _) = caller.generated
    assert "<result>\n42 /tmp\n</result>" in second.response_prefix  # ran, in the sandbox's own /tmp


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_an_example_training_config_trains_a_step(path, tiny_models, tmp_path, capsys):
    data = yaml.safe_load(path.read_text())
    topology_file = (path.parent / data["topology"]).resolve()
    data["topology"] = str(tiny_version(topology_file, tiny_models, tmp_path / "topology.yaml"))
    data["data"].update(n=8, max_length=512)  # a byte-level tokenizer: a token per character
    data["inner"].update(steps=1, batch_size=2, warmup_steps=0)
    data["outer"].update(steps=1, batch_size=2, warmup_steps=0, latent_steps=2, checkpoint_every=1)
    data["validation"] = {**data.get("validation", {}), "n": 2, "every": 1, "max_new_tokens": 4}
    data["eval"] = {**data.get("eval", {}), "n": 2, "max_new_tokens": 4}
    data["output"] = str(tmp_path / "links")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(config)]) == 0
    topology = load_topology(data["topology"])
    dims = {"a": 64, "b": 48}
    agent_dims = {a.name: dims["a" if a.backbone == next(iter(topology.backbones)) else "b"] for a in topology.agents}
    load_links(tmp_path / "links", into=LinkSet(agent_dims, [*topology.edges, *topology.feedback]))  # exact keys


def test_the_quickstart_runs_in_process(tiny_models, tmp_path, capsys):
    from examples.quickstart import main as quickstart

    tiny = tiny_version(BUILTIN_TOPOLOGIES / "sequential-demo.yaml", tiny_models, tmp_path / "seq.yaml")
    out = quickstart(["--topology", str(tiny), "--skip-cluster"])
    assert out["latent"].totals.latent_steps > 0 and len(out["batch"]) == 2
    assert "latent:" in capsys.readouterr().out


@pytest.mark.ray
def test_the_quickstart_runs_on_a_local_cluster(tiny_models, tmp_path):
    from examples.quickstart import main as quickstart

    tiny = tiny_version(BUILTIN_TOPOLOGIES / "sequential-demo.yaml", tiny_models, tmp_path / "seq.yaml")
    out = quickstart(["--topology", str(tiny)])
    assert out["cluster"].text == out["latent"].text  # the same runner, on Ray
    assert len(out["submitted"]) == 2


def test_the_serve_example_is_a_valid_serve_config(capsys, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)  # its topology paths are relative to the repository
    assert main(["serve", "--config", str(EXAMPLES / "serve.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    (app,) = printed["applications"]
    assert app["args"]["topologies"][0] == "sequential-demo" and app["args"]["limits"]["max_queued"] == 32
