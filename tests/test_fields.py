"""Fields beside the question (``{context}``): only the agents whose templates name them see them, in every mode, in
training and in evaluation; a field a template names but the question lacks is an error naming agent and field."""

from __future__ import annotations

import json

import pytest
import torch

from recursivemas.config import Topology
from recursivemas.engine import Generation
from recursivemas.eval.datasets import load_eval_dataset
from recursivemas.eval.harness import evaluate
from recursivemas.prompts import render
from recursivemas.runtime import Executor, MissingFieldError, Query, RunOptions, build_links
from recursivemas.train.data import Row, generate_rows
from recursivemas.train.outer import unroll_loss

READER = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."
SOLVER = "Question: {question}\nFrom the reader: {inputs}\nAnswer."


def pair(solver_prompt: str = SOLVER, rounds: int = 1) -> Topology:
    return Topology.model_validate({
        "name": "pair", "backbones": {"a": {"model": "tiny-llama"}}, "pattern": "sequential", "rounds": rounds,
        "latent_steps": 2, "generation": {"max_new_tokens": 3},
        "agents": [{"name": "reader", "backbone": "a", "prompt": READER},
                   {"name": "solver", "backbone": "a", "prompt": solver_prompt}]})


def system(engine, topology: Topology | None = None) -> Executor:
    topology = topology or pair()
    return Executor(topology, {"a": engine}, build_links(topology, {"a": engine}))


class Recorder:
    """Wraps an engine and keeps the text of every prompt it was given (latent segments left out)."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _note(self, prompts):
        self.seen.extend("".join(s for s in p.segments if isinstance(s, str)) for p in prompts)

    def rollout(self, prompts, steps, inner):
        self._note(prompts)
        return self.engine.rollout(prompts, steps, inner)

    def generate(self, prompts, sampling, alive=None) -> list[Generation]:
        self._note(prompts)
        return self.engine.generate(prompts, sampling, alive)


def test_a_placeholder_that_names_no_agent_is_a_field():
    topology = pair()
    assert topology.fields_of("reader") == ["context"]
    assert topology.fields_of("solver") == []
    assert topology.fields() == {"context": ["reader"]}
    assert topology.fields("single") == {}  # the decoder alone reads no context here
    pieces = render(READER, "q?", {}, fields={"context": "x = 7"})
    assert pieces == ["Context: x = 7\nQuestion: q?\nPass it on."]


def test_a_slot_naming_an_agent_without_an_edge_is_still_an_error():
    with pytest.raises(ValueError, match=r"slot \{solver\} has no edge solver->reader"):
        pair().model_validate({**pair().to_dict(), "agents": [
            {"name": "reader", "backbone": "a", "prompt": "{question} {solver} {feedback} {context}"},
            {"name": "solver", "backbone": "a", "prompt": "{question} {inputs} {reader}"}],
            "pattern": None, "edges": ["reader->solver"], "feedback": [], "decoder": "solver"})


@pytest.mark.parametrize("mode", ["latent", "text"])
def test_only_the_agents_that_name_a_field_see_it(engines, mode):
    engine = Recorder(engines("llama"))
    executor = system(engine)
    result = executor.run("What is the code?", RunOptions(mode=mode), context="The code is 4711.")
    assert result.text is not None
    reader, solver = engine.seen
    assert "The code is 4711." in reader and "The code is 4711." not in solver
    assert "What is the code?" in reader and "What is the code?" in solver


def test_a_missing_field_names_the_agent_and_the_field(engines):
    executor = system(engines("llama"))
    with pytest.raises(MissingFieldError, match=r"fields\.context: the template of agent 'reader' names \{context\}"):
        executor.run("What is the code?")
    with pytest.raises(MissingFieldError, match="question 1"):
        executor.run_batch([Query("q", {"context": "c"}), Query("q")])
    # single mode runs the solver alone, whose template names no field
    assert executor.run("What is the code?", RunOptions(mode="single")).text is not None


def test_a_field_changes_the_answer_only_through_the_agents_that_read_it(engines):
    """Another context changes the reader's rollout, so the solver's latent answer; the solver alone never sees it."""
    executor = system(engines("llama"))
    gen = {"max_new_tokens": 8}
    a = executor.run("q", RunOptions(generation=gen), context="aaaa aaaa")
    b = executor.run("q", RunOptions(generation=gen), context="zzzz 9999 !!")
    assert [u.prompt_tokens for u in a.usage][0] != [u.prompt_tokens for u in b.usage][0]
    single = [executor.run("q", RunOptions(mode="single", generation=gen), context=c).text for c in ("aaaa", "zzzz")]
    assert single[0] == single[1]


def test_training_reads_the_row_fields(engines):
    engine = engines("llama")
    topology = pair()
    links = build_links(topology, {"a": engine})
    row = Row(question="What is the code?", answer="4711", context="The code is 4711.")
    loss = unroll_loss(topology, {"a": engine}, links, row.question, "4711", fields=row.fields())
    other = unroll_loss(topology, {"a": engine}, links, row.question, "4711", fields={"context": "nothing here"})
    assert torch.isfinite(loss) and loss.item() != pytest.approx(other.item(), abs=1e-7)
    with pytest.raises(ValueError, match=r"agents\.reader: the template names \{context\}, but the row has no"):
        unroll_loss(topology, {"a": engine}, links, row.question, "4711", fields={})


def test_channel_generators_split_by_question_and_context():
    for task in ("channel_recall", "channel_operands"):
        train = generate_rows(task, 200, 0, split="train")
        held = generate_rows(task, 100, 0, split="heldout")
        keys = lambda rows: {(r.question, r.target("context")) for r in rows}  # noqa: E731
        assert len(keys(train)) == 200 and len(keys(held)) == 100 and not keys(train) & keys(held)
        for row in held:
            assert row.answer in row.target("solution") and row.target("context")
        assert generate_rows(task, 10, 0, split="heldout") == held[:10]  # a prefix, whatever n
    row = generate_rows("channel_operands", 1, 3)[0]
    a, op, b = row.question.removeprefix("What is ").rstrip("?").split()
    values = dict(part.split(" = ") for part in row.target("context").split(", "))
    assert int(row.answer) == (int(values[a]) + int(values[b]) if op == "+" else int(values[a]) - int(values[b]))


def test_eval_items_carry_fields_from_generators_and_jsonl(tmp_path, engines):
    items = load_eval_dataset("channel_recall", limit=3)
    assert all(set(i.fields) == {"context"} and i.reference in i.fields["context"] for i in items)
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i), "context": f"c{i}"}) + "\n"
                            for i in range(2)))
    mine = load_eval_dataset(str(path))
    assert [i.fields for i in mine] == [{"context": "c0"}, {"context": "c1"}]
    executor = system(engines("llama"))
    evaluation = evaluate(executor, mine, modes=("latent", "single"), rounds=(1,), batch_size=2)
    assert [c.n for c in evaluation.cells] == [2, 2]


def test_a_missing_field_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(MissingFieldError("fields.context: missing", "context")))
    assert isinstance(error, MissingFieldError) and error.field == "context" and "fields.context" in str(error)
