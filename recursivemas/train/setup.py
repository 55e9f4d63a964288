"""Build what a trainer needs from a config, the same way in one process and on every Ray Train worker.

Data problems are found before any model loads (missing fields, unknown agents), or right after the tokenizers are
there (a target over ``data.max_length``): a job should fail in seconds with the row and field named, not hours in.
A pipelined worker loads only its own backbone; the link shapes it needs for the others come from their ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from recursivemas.answers import with_boxed
from recursivemas.config import Topology, load_topology
from recursivemas.links import LinkSet
from recursivemas.links.alignment import start_as_embedding_map
from recursivemas.runtime import Executor, RunOptions, build_links, load_engines
from recursivemas.runtime.calls import BackboneDims
from recursivemas.runtime.executor import framing_of
from recursivemas.train.config import DataConfig, TrainConfig
from recursivemas.train.data import (
    DataError, Row, check_rows_have, generate_rows, load_jsonl, resolve_targets, summarise_problems,
)
from recursivemas.train.inner import agent_prompt
from recursivemas.train.outer import agent_fields
from recursivemas.train.parallel import World, gather_objects
from recursivemas.train.solutions import procedural_solution, sampled_solutions
from recursivemas.engine import Sampling

log = logging.getLogger("recursivemas")
REPLY = "reply"  # a `targets` value: the agent's own greedy first-round reply, generated before training


@dataclass
class Setup:
    """Everything a trainer (this process or a Ray Train worker) builds from a config, built the same way."""

    topology: Topology
    rows: list[Row]
    targets: dict[str, str]  # agent -> row field it is teacher-forced on
    engines: dict  # backbone name -> engine; in a pipelined worker only its own backbone
    links: LinkSet

    def role_texts(self, row: Row) -> dict[str, str]:
        return {agent: row.target(field) for agent, field in self.targets.items()}

    def decoder_target(self, row: Row) -> str:
        """What the decoder is trained to write for ``row``: its target field (a worked solution, or the answer); the
        answer for a validation or test row that has no reference working (``solutions: sampled``)."""
        return row.target(self.targets[self.topology.decoder]) or row.answer


def load_rows(data: DataConfig, split: str = "train", n: int | None = None, path: str | None = None) -> list[Row]:
    """``n`` rows of a split, framed as the eval frames them (``data.instruction``), with procedural solutions.

    Under ``solutions: sampled`` the validation and test rows get the procedural working where there is one, as the
    reference for their loss: sampling them would keep only the rows the decoder already solves."""
    n = data.n if n is None else n
    if path or (data.path and split == "train"):
        return load_jsonl(path or data.path, max_rows=n)
    rows = generate_rows(data.generator, n, data.seed, split=split, options=data.options)
    if data.solutions == "procedural" or (data.solutions == "sampled" and split != "train"):
        rows = [row if row.target("solution") else  # a generator's own working (the channel tasks) is kept
                row.model_copy(update={"solution": procedural_solution(row.question, row.answer)}) for row in rows]
        bad = [f"row {i} ({row.question!r}): no step-by-step working found" for i, row in enumerate(rows, 1)
               if row.target("solution") is None]
        if bad and data.solutions == "procedural":
            raise DataError(summarise_problems(
                f"data.solutions: procedural solutions cover plain expressions only; {len(bad)} row(s) have none "
                "(use `solutions: sampled`):", bad))
    if data.instruction:
        rows = [row.model_copy(update={"question": with_boxed(row.question, data.instruction)}) for row in rows]
    return rows


def eval_rows(config: TrainConfig) -> list[Row]:
    """Held-out rows scored after training: ``eval.path``, else the generator's held-out (test) split."""
    return _split_rows(config, "heldout", "eval", "score the trained links after training")


def validation_rows(config: TrainConfig) -> list[Row]:
    """Rows scored during training: ``validation.path``, else the generator's validation split."""
    return _split_rows(config, "validation", "validation", "follow accuracy during training")


def _split_rows(config: TrainConfig, split: str, section: str, purpose: str) -> list[Row]:
    settings = getattr(config, section)
    if settings.n == 0:
        return []
    if settings.path or config.data.generator:
        return load_rows(config.data, split, settings.n, settings.path)
    log.warning("no %s rows: set `%s.path` to a JSONL file to %s", section, section, purpose)
    return []


def add_sampled_solutions(topology: Topology, engines: dict, rows: list[Row], tries: int, max_new_tokens: int
                          ) -> list[Row]:
    """Each row with the decoder's own first accepted solution (greedy, then sampled at temperature 0.7) in
    ``solution``; rows it never solves are dropped, since a wrong working is no target."""
    executor = Executor(topology, engines)

    def sample(questions: list[str], attempt: int) -> list[str]:
        generation = {"max_new_tokens": max_new_tokens, "temperature": 0.0 if attempt == 0 else 0.7,
                      "top_p": 0.95, "seed": attempt}
        return [r.text for r in executor.run_batch(questions, RunOptions(mode="single", generation=generation))]

    found = sampled_solutions([r.question for r in rows], [r.answer for r in rows], sample, tries)
    kept = [row.model_copy(update={"solution": text}) for row, text in zip(rows, found) if text is not None]
    log.info("sampled solutions: the decoder alone solved %d of %d training rows in %d tries", len(kept), len(rows),
             tries)
    if not kept:
        raise DataError(f"data.solutions: sampled: the decoder solved none of {len(rows)} rows in {tries} tries; "
                        "use `solutions: procedural`, easier data or more `solution_tries`")
    return kept


def reply_field(agent: str) -> str:
    return f"{REPLY}_{agent}"


def add_replies(topology: Topology, engines: dict, rows: list[Row], agents: list[str], max_new_tokens: int,
                batch_size: int = 16) -> list[Row]:
    """Each row with every named agent's greedy first-round reply in ``reply_<agent>``: the text it would hand on
    in text mode, as its inner link's target, so a latent rollout learns to think what the agent would say.

    Upstream agents have no reference text for what to pass on; their own reply is the one target that is right by
    construction, and for a reader of a context it holds the facts read."""
    replies: dict[str, list[str]] = {}
    for agent in agents:
        engine = engines.get(topology.agent(agent).backbone)
        if engine is None:
            raise DataError(f"targets.{agent}: {REPLY!r} needs the agent's backbone in this process; a pipelined "
                            "run cannot generate it, so write the replies into the data and name that field")
        framing = framing_of(topology, agent)
        prompts = [agent_prompt(topology.template(agent), row.question, framing,
                                agent_fields(topology, agent, row.fields())) for row in rows]
        texts: list[str] = []
        for start in tqdm(range(0, len(prompts), batch_size), desc=f"replies {agent}", leave=False):
            batch = engine.generate(prompts[start:start + batch_size], Sampling(max_new_tokens=max_new_tokens))
            texts += [g.text.strip() or "." for g in batch]
        replies[agent] = texts
    return [row.model_copy(update={reply_field(a): replies[a][i] for a in agents}) for i, row in enumerate(rows)]


def prepare(config: TrainConfig, world: World | None = None) -> Setup:
    """Check the data against the topology before any model loads, then load the backbones and seeded links."""
    world = world or World()
    torch.manual_seed(config.seed)
    topology = load_topology(config.topology)
    rows = load_rows(config.data)
    mapping = dict(config.targets)
    if config.data.solutions:
        mapping.setdefault(topology.decoder, "solution")
    targets = resolve_targets([a.name for a in topology.agents], topology.decoder, mapping)
    replying = [agent for agent, field in targets.items() if field == REPLY]
    if topology.decoder in replying:
        raise DataError(f"targets.{topology.decoder}: {REPLY!r} is for upstream agents; the decoder "
                        f"{topology.decoder!r} learns to write the row's target (`solution` or `answer`), not what "
                        "it already writes")
    given = {agent: field for agent, field in targets.items() if agent not in replying}
    if config.data.solutions != "sampled":
        check_rows_have(rows, given)
    if config.outer.forcing == "role_text":
        leaky = [a for a, field in targets.items() if a != topology.decoder and field in ("answer", targets[
            topology.decoder])]
        if leaky:
            log.warning("outer.forcing role_text teacher-forces %s on the decoder's own target: their hand-offs carry "
                        "the answer, which inference never gives them. Map them to role rewrites in `targets`, or "
                        "use `forcing: rollout`", ", ".join(leaky))
    mine = topology.model_copy(update={"backbones": {
        name: spec for name, spec in topology.backbones.items() if world.holds(name)}})
    engines = load_engines(mine)
    if config.data.solutions == "sampled":
        if world.pipelined:
            raise DataError("data.solutions: sampled needs every backbone in one process; sample the solutions "
                            "once (one process) into a JSONL file and train from its `path`")
        # one token short of data.max_length: a target is trained with its end-of-turn token after it
        rows = add_sampled_solutions(topology, engines, rows, config.data.solution_tries,
                                     max(1, config.data.max_length - 1))
        check_rows_have(rows, given)
    if replying:
        rows = add_replies(topology, engines, rows, replying, config.data.max_length)
        targets.update({agent: reply_field(agent) for agent in replying})
    for engine in engines.values():
        engine.gradient_checkpointing = config.outer.gradient_checkpointing
    check_lengths(topology, engines, rows, targets, config.data.max_length)
    shapes: dict[str, BackboneDims] = {}  # every rank sizes every link, also of backbones it does not hold
    for part in gather_objects(world, {name: BackboneDims.of(e) for name, e in engines.items()}):
        shapes.update(part)
    links = build_links(topology, shapes, dtype="float32")  # trained in fp32
    if config.outer.init == "embedding_map":
        start_cross_backbone_links(topology, engines, links)
    return Setup(topology, rows, targets, engines, links)


def start_cross_backbone_links(topology: Topology, engines: dict, links: LinkSet) -> None:
    """``outer.init: embedding_map``: each outer link between agents of different models starts as the map between
    their embedding spaces (a checkpoint resumed later overwrites it, as it overwrites any init)."""
    backbone_of = {agent.name: agent.backbone for agent in topology.agents}
    crossing = [(src, dst) for src, dst in links.edges
                if topology.backbones[backbone_of[src]].model != topology.backbones[backbone_of[dst]].model]
    missing = sorted({backbone_of[a] for edge in crossing for a in edge} - set(engines))
    if missing:
        raise DataError(f"outer.init: embedding_map needs both backbones of each link in one process; this worker "
                        f"lacks {missing} (pipelined placement). Use `outer.init: orthogonal` with `placement: "
                        "pipelined`, or `placement: replicated`")
    for src, dst in crossing:
        start_as_embedding_map(links.outer_link(src, dst), engines[backbone_of[src]], engines[backbone_of[dst]],
                               f"{src}->{dst}")


def check_lengths(topology: Topology, engines: dict, rows: list[Row], targets: dict[str, str],
                  max_length: int) -> None:
    """Every teacher-forced text fits ``max_length`` tokens of the backbone that reads it."""
    problems = []
    for agent in topology.agents:
        engine = engines.get(agent.backbone)
        if engine is None:
            continue  # checked on the worker that holds it
        field = targets[agent.name]
        for i, row in enumerate(rows, start=1):
            n = len(engine.tokenizer(row.target(field), add_special_tokens=False)["input_ids"])
            if n > max_length:
                problems.append(f"row {i}, field {field!r} (agent {agent.name!r}): {n} tokens > data.max_length "
                                f"{max_length}; shorten the text or raise data.max_length")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        raise DataError(f"{len(problems)} target(s) longer than data.max_length:\n{shown}")
