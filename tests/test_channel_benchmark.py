"""benchmarks/channel.py and accuracy.py's swapped_r3 on tiny random models: every cell answers every item, a rerun
resumes without answering again, and the swap control really hands the upstream agents another item's question and
context while the decoder reads its own."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from benchmarks import accuracy, channel
from recursivemas.config import load_topology
from recursivemas.eval.datasets import load_eval_dataset
from recursivemas.links import save_links
from recursivemas.runtime import RunOptions, build_links, local
from test_fields import Recorder
from tiny import save_tiny, tiny_engine

READER_ROLE = "You are the Reader in a team."
SOLVER_ROLE = "You are the Solver in a team."


@pytest.fixture
def recorded(monkeypatch):
    """Every engine InProcess loads, wrapped so the text of every prompt it is given is kept (in order)."""
    seen: list[str] = []
    real = local.load_engine

    def load(name, cfg):
        recorder = Recorder(real(name, cfg))
        recorder.seen = seen
        return recorder

    monkeypatch.setattr(local, "load_engine", load)
    return seen


def fake_trained_links(topology_path, directory, seed=1):
    """Links of the topology's shapes, initialised from another seed than the fresh ones: "trained" for the test."""
    topology = load_topology(topology_path)
    engines = {name: tiny_engine("llama") for name in topology.backbones}
    save_links(build_links(topology, engines, seed=seed), directory)
    return directory


@pytest.fixture
def recall_setup(tmp_path):
    """A tiny-model copy of examples/channel/recall-pair.yaml, its train config (8 rows, 2 steps) and links."""
    model = save_tiny(tmp_path / "model", "llama")
    topology = yaml.safe_load((channel.EXAMPLES / "recall-pair.yaml").read_text())
    topology["backbones"] = {"smol": {"model": model}}
    topology["latent_steps"] = 2
    topology["generation"] = {"max_new_tokens": 3, "message_max_new_tokens": 3, "temperature": 0.0}
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(topology))
    train = yaml.safe_load((channel.EXAMPLES / "train-recall.yaml").read_text())
    train.update(topology="pair.yaml", output="links", data={**train["data"], "n": 8},
                 outer={**train["outer"], "steps": 2, "batch_size": 2, "latent_steps": 2})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    fake_trained_links(tmp_path / "pair.yaml", tmp_path / "links")
    return tmp_path


def lines(path):
    return len(path.read_text().splitlines())


def test_channel_cells_resume_and_swap(recall_setup, recorded, capsys):
    root = recall_setup
    out = root / "out"
    argv = ["--task", "recall", "--recall-config", str(root / "train.yaml"), "--limit", "4", "--batch-size", "4",
            "--out", str(out)]
    line = channel.main(argv)
    cells = out / "recall" / "cells"
    for cell in channel.CELLS:
        assert lines(cells / f"{cell}.jsonl") == 4, cell
        assert f"recall_{cell}" in line and 0.0 <= line[f"recall_{cell}"] <= 1.0
    for cell in set(channel.CELLS) - {"latent_r1"}:  # the trained cell against every other
        assert 0.0 <= line[f"recall_p_vs_{cell}"] <= 1.0
        assert len(line[f"recall_discordant_vs_{cell}"]) == 2
    for key in ("recall_target_acc_ge_0.8", "recall_target_ge_0.8x_oracle", "recall_target_beats_swapped_p001",
                "recall_targets_met"):
        assert isinstance(line[key], bool), key
    assert line["n"] == 4 and line["recall_targets_undecided"] == []
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line  # the last stdout line
    for name in ("soft_prompt_oracle", "soft_prompt_blind"):
        assert (out / "recall" / name / "soft_prompt.safetensors").is_file()
    # the oracle's soft prompt was trained (and run) on prompts that hold the context, the blind one's never
    oracle_prompts = [p for p in recorded if p.startswith(SOLVER_ROLE) and "Context: " in p]
    assert oracle_prompts

    # a rerun resumes: no prompt reaches an engine, no line is added, no soft prompt is retrained
    recorded.clear()
    began = time.perf_counter()
    again = channel.main(argv)
    assert recorded == [] and time.perf_counter() - began < 10
    assert all(lines(cells / f"{cell}.jsonl") == 4 for cell in channel.CELLS)
    assert again == {**line, "machine": again["machine"]}

    # the swap control: the reader of item i reads item (i + 1) % n's context and question, the solver its own
    (cells / "swapped.jsonl").unlink()
    recorded.clear()
    channel.main([*argv, "--cells", "swapped"])
    items = load_eval_dataset("channel_recall", limit=4)
    contexts = [i.fields["context"] for i in items]
    assert len(set(contexts)) == 4
    readers = [p for p in recorded if p.startswith(READER_ROLE)]
    solvers = [p for p in recorded if p.startswith(SOLVER_ROLE)]
    assert len(readers) == 4 and len(solvers) == 4
    for i, (reader, solver) in enumerate(zip(readers, solvers)):
        other = items[(i + 1) % 4]
        assert other.fields["context"] in reader and contexts[i] not in reader
        assert other.question in reader
        assert items[i].question in solver and not any(c in solver for c in contexts)
    assert lines(cells / "swapped.jsonl") == 4


def test_channel_skips_the_trained_cells_without_links(recall_setup, capsys):
    root = recall_setup
    line = channel.main(["--task", "recall", "--recall-config", str(root / "train.yaml"), "--recall-links",
                         str(root / "not-yet"), "--limit", "3", "--cells", "blind,latent_r1,swapped",
                         "--out", str(root / "out")])
    err = capsys.readouterr().err
    assert "no trained links at" in err and "skipping latent_r1, swapped" in err and "--recall-links" in err
    assert "recall_blind" in line and "recall_latent_r1" not in line and "recall_swapped" not in line
    assert line["recall_targets_met"] is False and "acc_ge_0.8" in line["recall_targets_undecided"]


def test_channel_refuses_other_links_for_answered_trained_cells(recall_setup):
    root = recall_setup
    argv = ["--task", "recall", "--recall-config", str(root / "train.yaml"), "--limit", "2", "--cells",
            "latent_r1", "--out", str(root / "out")]
    channel.main(argv)
    fake_trained_links(root / "pair.yaml", root / "links", seed=2)
    with pytest.raises(SystemExit, match=r"--recall-links .*are not the ones the trained cells"):
        channel.main(argv)


def test_channel_rejects_unknown_cells():
    with pytest.raises(SystemExit):
        channel.parse(["--cells", "blind,nonsense"])


def test_accuracy_swapped_r3_swaps_the_question_of_the_upstream_agents_only(tmp_path, recorded):
    model = save_tiny(tmp_path / "model", "llama")
    doc = {"name": "tiny-seq", "backbones": {"a": {"model": model}}, "pattern": "sequential", "rounds": 3,
           "latent_steps": 2, "generation": {"max_new_tokens": 3},
           "agents": [{"name": "planner", "backbone": "a", "prompt": "PLANNER\nQ: {question}\nF: {feedback}"},
                      {"name": "solver", "backbone": "a", "prompt": "SOLVER\nQ: {question}\nI: {inputs}"}]}
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(doc))
    links = fake_trained_links(tmp_path / "seq.yaml", tmp_path / "links")
    argv = ["--topology", str(tmp_path / "seq.yaml"), "--links", str(links), "--limit", "4", "--batch-size", "4",
            "--max-new-tokens", "3", "--dataset-options", "{min_terms: 2, max_terms: 2}", "--out",
            str(tmp_path / "out")]
    accuracy.main([*argv, "--cells", "latent_r3"])
    recorded.clear()
    line = accuracy.main([*argv, "--cells", "latent_r3,swapped_r3"])  # latent_r3 resumes: only swapped runs
    assert 0.0 <= line["acc_swapped_r3"] <= 1.0 and 0.0 <= line["p_latent_vs_swapped"] <= 1.0
    assert "latent_r3_gt_swapped_r3" in line
    assert lines(tmp_path / "out" / "cells" / "swapped_r3.jsonl") == 4
    items = load_eval_dataset("basic_arithmetic", limit=4, options={"min_terms": 2, "max_terms": 2})
    questions = [i.question for i in items]
    assert len(set(questions)) == 4
    planners = [p for p in recorded if p.startswith("PLANNER")]
    solvers = [p for p in recorded if p.startswith("SOLVER")]
    assert len(planners) == 12 and len(solvers) == 12  # 3 rounds x 4 items each
    for k, (planner, solver) in enumerate(zip(planners, solvers)):
        i = k % 4
        assert questions[(i + 1) % 4] in planner and questions[i] not in planner
        assert questions[i] in solver and questions[(i + 1) % 4] not in solver


def test_the_soft_prompt_runner_reads_the_fields_its_template_names(engines):
    from recursivemas.runtime import MissingFieldError, Query
    from recursivemas.train.prompt_tuning import SoftPrompt, SoftPromptRunner

    engine = Recorder(engines("llama"))
    topology = channel.with_context(load_topology(channel.EXAMPLES / "recall-pair.yaml"))
    assert topology.fields("single") == {"context": ["solver"]}
    runner = SoftPromptRunner(engine, topology, SoftPrompt.matching(engine.hidden_size, 2, 5000).eval())
    with pytest.raises(MissingFieldError, match=r"fields\.context: the template of agent 'solver'"):
        runner.run_batch(["What is the code?"])
    runner.run_batch([Query("What is the code?", {"context": "The code is 4711."})],
                     RunOptions("single", generation={"max_new_tokens": 2}))
    assert "Context: The code is 4711.\nQuestion: What is the code?" in engine.seen[-1]
