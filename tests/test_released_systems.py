"""The authors' five released systems (issue 14): a release laid out as downloaded imports through its manifests
onto the built-in topology, keeps its 16-bit dtype, and runs end to end in latent and text mode through the CLI;
a broken release is refused with a message naming the file, the role and the shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from recursivemas.cli import main
from recursivemas.config import load_topology
from recursivemas.links import LinkSet, edge_key, load_links, stored_dtype
from release import STYLES, hidden_size, outer_state, tiny_topology, write_release


def import_argv(repos, style, out, task="math"):
    tasks = STYLES[style][1]
    return ["links", "import", "--release", *map(str, repos.values()), "--topology", style,
            *(["--task", task] if tasks else []), "--out", str(out)]


@pytest.mark.parametrize("style", list(STYLES))
def test_a_release_imports_onto_its_built_in_and_runs_in_latent_and_text_mode(style, tmp_path, capsys):
    repos = write_release(tmp_path / "release", style)
    out = tmp_path / "links"
    task = "code" if STYLES[style][1] else None  # not the first task: the manifests must pick it
    assert main(import_argv(repos, style, out, task)) == 0
    assert f"saved {len(repos) - 1} inner and {len(STYLES[style][2])} outer links" in capsys.readouterr().out

    topology = load_topology(style)
    dims = {a.name: hidden_size(repos[a.name]) for a in topology.agents}
    links = load_links(out, into=LinkSet(dims, [*topology.edges, *topology.feedback]))  # exact keys and shapes
    assert stored_dtype(out) == torch.bfloat16
    suffix = f"({task})" if task else ""
    for (src, dst), (_, stem) in STYLES[style][2].items():  # each edge holds the file the manifest names for it
        released = torch.load(repos["outer"] / f"{stem}-Outerlink{suffix}.pt", weights_only=True)
        assert torch.equal(links.outer_link(src, dst).residual_proj.weight.bfloat16(), released["residual_proj.weight"])
    agent = topology.agents[0].name
    released = torch.load(repos[agent] / (f"adapter{suffix}.pt" if task else "adapter.pt"), weights_only=True)
    assert torch.equal(links.inner_link(agent).proj1.weight.bfloat16(), released["proj1.weight"])

    run_file = tiny_topology(style, repos, tmp_path / "tiny.yaml")
    assert main(["run", "--topology", str(run_file), "--links", str(out), "--prompt", "What is 2+3?", "--mode",
                 "latent,text", "--rounds", "2", "--latent-steps", "2", "--max-new-tokens", "3", "--json"]) == 0
    latent, text = json.loads(capsys.readouterr().out)
    decoder = topology.decoder
    assert [u["kind"] for u in latent["usage"] if u["agent"] != decoder].count("latent") == 2 * (len(dims) - 1)
    assert latent["usage"][-1]["agent"] == decoder and latent["usage"][-1]["kind"] == "answer"
    assert text["totals"]["latent_steps"] == 0 and text["usage"][-1]["agent"] == decoder


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("light"), "sequential-light")


def broken(light, tmp_path, edit):
    """A copy of the sequential-light release with one thing broken by ``edit(repos)``."""
    repos = {k: tmp_path / "release" / v.name for k, v in light.items()}
    for k, v in light.items():
        shutil.copytree(v, repos[k])
    edit(repos)
    return repos


def rewrite_manifest(repos, change):
    path = repos["outer"] / "outerlink_config.json"
    data = json.loads(path.read_text())
    change(data["tasks"]["math"]["adapters"])
    path.write_text(json.dumps(data))


class RunsCode:
    def __reduce__(self):
        import os

        return os.system, (f"touch {MARKER}",)


MARKER = "/tmp/recursivemas-pickle-ran"


def _poison(repos):
    torch.save({"proj1.weight": RunsCode()}, repos["critic"] / "adapter(math).pt")


def _swap_shapes(repos):  # critic->solver's file maps 64 -> 64, the solver is 48 wide
    torch.save(outer_state(64, 64), repos["outer"] / "Critic-Solver-Outerlink(math).pt")


BROKEN = {
    "missing file": (lambda r: (r["outer"] / "Critic-Solver-Outerlink(math).pt").unlink(),
                     ["Critic-Solver-Outerlink(math).pt", "critic->solver", "not in"]),
    "role not in the topology": (
        lambda r: rewrite_manifest(r, lambda a: a[0].update(source_role="verifier", target_role="critic")),
        ["adapters[0]", "Planner-Critic-Outerlink(math).pt", "role 'verifier'", "agents: ['planner'"]),
    "legacy key for no agent": (lambda r: rewrite_manifest(r, lambda a: a[2].update(legacy_key="outer_41")),
                                ["legacy_key 'outer_41'", "3 agents"]),
    "weights of other shapes": (_swap_shapes, ["edge critic->solver", "in_dim 64, out_dim 48",
                                               "Critic-Solver-Outerlink(math).pt maps 64 -> 64"]),
    "a pickle that would run code": (_poison, ["adapter(math).pt", "weights-only"]),
    "an unknown task": (None, ["no task 'physics'", "['code', 'math']"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_release_is_refused_with_a_clear_error(case, light, tmp_path, capsys):
    edit, expected = BROKEN[case]
    repos = broken(light, tmp_path, edit or (lambda r: None))
    Path(MARKER).unlink(missing_ok=True)
    argv = import_argv(repos, "sequential-light", tmp_path / "links", task="physics" if edit is None else "math")
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "links").exists()
    assert not Path(MARKER).exists()


def test_repos_match_agents_by_backbone_or_by_name(light, tmp_path, capsys):
    """A repo whose name matches no agent is refused, naming it; AGENT=DIR places it."""
    odd = tmp_path / "my-download"
    shutil.copytree(light["critic"], odd)
    dirs = [str(light["planner"]), str(odd), str(light["solver"]), str(light["outer"])]
    base = ["links", "import", "--topology", "sequential-light", "--task", "math", "--out", str(tmp_path / "l")]
    assert main([*base, "--release", *dirs]) == 2
    assert "cannot tell which agent 'my-download' belongs to" in capsys.readouterr().err
    dirs[1] = f"critic={odd}"
    assert main([*base, "--release", *dirs]) == 0
    assert f"inner critic         <- {odd / 'adapter(math).pt'}" in capsys.readouterr().out
    assert edge_key("critic", "solver") in json.loads((tmp_path / "l" / "links.json").read_text())["edges"]
