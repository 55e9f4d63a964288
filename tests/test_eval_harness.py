"""The evaluation grid and its report: the grid logic against a scripted runner (so correctness can be known), and
`recursivemas eval` end to end on tiny models over a local Ray, writing the JSON, the table and the plots."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from recursivemas.cli import main
from recursivemas.eval.datasets import EvalItem
from recursivemas.eval.harness import evaluate, grid
from recursivemas.eval.report import markdown_table, write_report
from recursivemas.runtime.accounting import AgentUsage, RunResult
from tiny import save_tiny_pair

PNG = b"\x89PNG\r\n\x1a\n"


class ScriptedRunner:
    """Answers right in latent mode from 2 rounds on, wrong otherwise; decodes more tokens in text mode."""

    topology = SimpleNamespace(name="toy")

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def run_batch(self, prompts, options, *, on_turn=None):
        mode, rounds = options.mode, options.rounds
        self.calls.append((mode, rounds, len(prompts)))
        out = []
        for prompt in prompts:
            answer = int(prompt.split("+")[0]) + int(prompt.split("+")[1].rstrip("?"))
            right = mode == "latent" and rounds >= 2
            decoded = 5 if mode != "text" else 5 + 20 * rounds
            out.append(RunResult(question=prompt, text=f"so \\boxed{{{answer if right else answer + 1}}}", mode=mode,
                                 rounds=rounds, latent_steps=0, wall_s=0.0,
                                 usage=[AgentUsage(agent="s", round=rounds, backbone="b", kind="answer",
                                                   decoded_tokens=decoded)]))
        return out


ITEMS = [EvalItem(f"t/{i}", f"{i}+{i + 1}?", str(2 * i + 1), "number") for i in range(5)]


def test_grid_runs_single_once_and_the_others_per_round():
    assert grid(["latent", "single", "text"], [1, 3]) == [("single", 1), ("text", 1), ("text", 3), ("latent", 1),
                                                          ("latent", 3)]
    with pytest.raises(ValueError, match="fast"):
        grid(["fast"], [1])
    with pytest.raises(ValueError, match="rounds"):
        grid(["latent"], [0])


def test_evaluate_scores_every_cell_and_counts_tokens():
    runner, ticks = ScriptedRunner(), []
    evaluation = evaluate(runner, ITEMS, rounds=[1, 2], batch_size=2, on_item=lambda: ticks.append(1))
    assert evaluation.cell("latent", 2).accuracy == 1.0 and evaluation.cell("latent", 1).accuracy == 0.0
    assert evaluation.cell("single", 3).accuracy == 0.0  # single stands for every round count
    assert evaluation.cell("text", 2).decoded_tokens_per_item == 45.0
    assert len(ticks) == len(evaluation.items) == 5 * 5  # single + text x2 + latent x2
    assert [c for c in runner.calls if c[0] == "latent" and c[1] == 2] == [("latent", 2, 2), ("latent", 2, 2),
                                                                           ("latent", 2, 1)]
    wrong = next(i for i in evaluation.items if i.mode == "text")
    assert not wrong.correct and "expected" in wrong.detail and wrong.extracted == "2"


def test_report_files(tmp_path):
    evaluation = evaluate(ScriptedRunner(), ITEMS, rounds=[1, 2, 3], dataset="basic_arithmetic",
                          dataset_options={"max_terms": 3})
    paths = write_report(evaluation, tmp_path, command="recursivemas eval ...")
    data = json.loads(paths["json"].read_text())
    assert data["command"] == "recursivemas eval ..." and data["machine"]
    assert data["dataset_options"] == {"max_terms": 3}  # the items can be generated again from the report alone
    assert paths["markdown"].read_text().startswith('# toy on basic_arithmetic {"max_terms": 3}')
    assert {(c["mode"], c["rounds"]) for c in data["cells"]} == {("single", 1), ("text", 1), ("text", 2),
                                                                  ("text", 3), ("latent", 1), ("latent", 2),
                                                                  ("latent", 3)}
    table = markdown_table(evaluation)
    assert "| RecursiveMAS (latent) | 3 | 5 | 1.000 |" in table and "| single agent | - | 5 | 0.000 |" in table
    for stem in ("accuracy", "wall_time", "decoded_tokens"):
        assert paths[stem].read_bytes()[:8] == PNG and paths[stem].stat().st_size > 5000


def test_eval_command_on_tiny_models_writes_json_table_and_plots(tmp_path, capsys):
    models = save_tiny_pair(tmp_path)
    topology = {"name": "tiny-seq", "backbones": {name: {"model": path} for name, path in models.items()},
                "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}],
                "pattern": "sequential", "rounds": 2, "latent_steps": 2, "generation": {"max_new_tokens": 4}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(topology))
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results"
    assert main(["eval", "--topology", str(tmp_path / "t.yaml"), "--dataset", str(tmp_path / "rows.jsonl"),
                 "--mode", "single,text,latent", "--rounds", "1,2", "--out", str(out)]) == 0
    assert "| RecursiveMAS (latent) | 2 | 5 |" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert len(data["items"]) == 5 * 5 and data["topology"] == "tiny-seq"
    latent = [i for i in data["items"] if i["mode"] == "latent"]
    assert all(i["decoded_tokens"] > 0 and i["wall_s"] > 0 for i in latent)
    assert "| mode | rounds |" in (out / "results.md").read_text()
    assert all((out / f"{stem}.png").read_bytes()[:8] == PNG for stem in ("accuracy", "wall_time", "decoded_tokens"))


@pytest.mark.parametrize(("dataset", "options", "error"), [
    ("champ", "{max_terms: 2}", "apply only to the generated datasets"),
    ("champ", "[1, 2]", "--dataset-options '[1, 2]': give a mapping"),
    ("champ", "{max_terms: [", "--dataset-options '{max_terms: [' is not YAML"),
    ("basic_arithmetic", "{max_term: 2}", "unknown 'max_term'; accepted: min_terms"),
])
def test_eval_command_reports_bad_dataset_options(dataset, options, error, capsys):
    assert main(["eval", "--dataset", dataset, "--dataset-options", options, "--limit", "2"]) == 2
    assert error in capsys.readouterr().err
