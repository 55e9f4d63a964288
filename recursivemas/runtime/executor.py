"""One graph executor for every pattern and every mode.

Modes share agents, prompts, rounds and budgets, so their costs compare like for like:
- ``latent`` (RecursiveMAS): agents roll out latent thoughts and hand them over through links; only the decoder
  decodes, in the final round.
- ``text`` (Recursive-TextMAS): every agent decodes a message, every round, that fills the next agent's slot.
- ``single``: the decoder agent alone, one turn, no slots.

The executor takes a batch of questions and, within each level of the plan, makes one batched call per backbone
(agents that share a backbone batch together, each with its own inner link), running different backbones at once.
Backbones are any objects with the engine's ``rollout`` / ``generate`` interface.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import get_args

import torch

from recursivemas import prompts
from recursivemas.config import Mode, Topology
from recursivemas.engine import Framing, Generation, Prompt
from recursivemas.links import LinkSet
from recursivemas.runtime.accounting import AgentUsage, RunResult, openai_finish
from recursivemas.runtime.backend import Backend, as_backend
from recursivemas.engine.sampling import FinishReason, Sampling
from recursivemas.errors import RequestError
from recursivemas.runtime.calls import GenerateCall, RunOptions, ThinkCall
from recursivemas.runtime.graph import Plan, PlannedTurn
from recursivemas.runtime.query import Query, as_queries, check_fields
from recursivemas.runtime import sandbox
from recursivemas.runtime.stopping import RunStop, Stopped
from recursivemas.runtime.tools import STOP_STRINGS, PythonTool, Toolbox, final_answer, run_tool_loop

log = logging.getLogger("recursivemas")

LatentHandle = object
"""A hand-off as the executor holds it, opaque: a tensor in-process, an object reference (or a direct-transport key)
on a cluster. The executor only moves it from one agent's turn into another agent's prompt."""
Content = LatentHandle | str  # what a slot receives: a latent handle in latent mode, a message in text mode


@dataclass
class _Turn:
    """One agent's turn on one question of the run: its prompt in, its result out."""

    question_index: int  # into the run's questions
    planned: PlannedTurn  # the plan's turn: agent, round, whether it decodes, whom it hands over to
    prompt: Prompt
    usage: AgentUsage
    handoffs: dict[str, LatentHandle] | None = None  # latent mode: target -> its hand-off
    message: str | None = None


@dataclass
class _QuestionState:
    question: str
    fields: Mapping[str, str] = field(default_factory=dict)  # the query's text fields ({context}, ...)
    inbox: dict[str, dict[str, Content]] = field(default_factory=lambda: defaultdict(dict))
    feedback: dict[str, dict[str, Content]] = field(default_factory=lambda: defaultdict(dict))
    next_feedback: dict[str, dict[str, Content]] = field(default_factory=lambda: defaultdict(dict))
    answer: str = ""
    finish: FinishReason | None = None  # why the answer's generation stopped
    usage: list[AgentUsage] = field(default_factory=list)
    stop: RunStop | None = None
    stopped: Stopped | None = None  # set once: the question takes no further turns

    def check_stop(self) -> bool:
        """Whether this question has stopped (its stop signal is read once per turn boundary)."""
        if self.stopped is None and self.stop is not None:
            self.stopped = self.stop.reason()
        return self.stopped is not None

    def new_round(self) -> None:
        """This round's inboxes start empty; what was fed back last round is read now."""
        self.inbox, self.feedback, self.next_feedback = defaultdict(dict), self.next_feedback, defaultdict(dict)


@dataclass
class _Run:
    """One ``run_batch`` call: its settings and the state of each question."""

    mode: Mode
    rounds: int
    latent_steps: int
    questions: list[_QuestionState]
    answer: Sampling
    message: Sampling  # text-mode messages: the answer's sampling with the message budget
    on_turn: Callable[[AgentUsage], None] | None = None
    on_delta: Callable[[str], None] | None = None

    def sampling_for(self, turn: _Turn) -> Sampling:
        return self.message if turn.usage.kind == "text" else self.answer

    def stops_for(self, turns: Sequence[_Turn]) -> tuple:
        """The rows' stop signals for a generate call (empty when no question has one)."""
        stops = [self.questions[t.question_index].stop for t in turns]
        return tuple(s.row() if s is not None else None for s in stops) if any(stops) else ()


class Executor:
    """Runs a topology over backends (see :mod:`recursivemas.runtime.backend`) keyed by backbone name.

    Bare engines are accepted too and paired with ``links`` in-process.
    """

    def __init__(
        self, topology: Topology, backbones: Mapping[str, object], links: LinkSet | None = None,
        toolbox: Toolbox | None = None, max_parallel_calls: int = 32,
    ):
        missing = sorted(set(topology.backbones) - set(backbones))
        if missing:
            raise ValueError(f"no backbone object for {missing}; the topology declares {sorted(topology.backbones)}")
        self.topology = topology
        self.plan = Plan.from_topology(topology)
        self.links = links  # the in-process link set (None when backends hold their own, as actors do)
        self.backends = {name: as_backend(obj, links) for name, obj in backbones.items()}
        tools = topology.tools
        callers = [a.name for a in topology.agents if a.tools]
        if callers and toolbox is None:
            sandbox.require(tools.python_sandbox, f"topology {topology.name!r} (tool agent {callers[0]!r})")
        self.toolbox = toolbox or Toolbox(
            python=PythonTool(timeout_s=tools.python_timeout_s, memory_mb=tools.python_memory_mb,
                              sandbox=tools.python_sandbox),
            max_rounds=tools.max_rounds,
        )
        # Calls to different backbones in a level run at once; concurrent runs (a coordinator serving many
        # requests) share the pool, so size it for several runs, not one.
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_calls, thread_name_prefix="backbone")

    def run(self, question: str | Query, options: RunOptions | None = None, *, context: str | None = None,
            fields: Mapping[str, str] | None = None, on_turn: Callable[[AgentUsage], None] | None = None,
            on_delta: Callable[[str], None] | None = None, stop: RunStop | None = None) -> RunResult:
        """One question, with the ``context`` (and other ``fields``) its agents' templates name. ``on_delta`` hears
        the answer's text as it is decoded; under greedy decoding the deltas join to the same text as without it."""
        return self.run_batch([Query.of(question, context, fields)], options, on_turn=on_turn, on_delta=on_delta,
                              stops=[stop])[0]

    @torch.inference_mode()
    def run_batch(self, questions: Sequence[str | Query], options: RunOptions | None = None, *,
                  on_turn: Callable[[AgentUsage], None] | None = None,
                  on_delta: Callable[[str], None] | None = None,
                  stops: Sequence[RunStop | None] | None = None) -> list[RunResult]:
        """Answer every question (a string, or a :class:`Query` with the fields its agents read): the
        :class:`~recursivemas.runtime.runner.Runner` interface that a cluster's and Serve's systems offer too.

        ``options`` (:class:`RunOptions`) set the mode, and change the topology's rounds, latent steps and sampling
        for this run only. ``on_turn`` hears of each agent turn as it finishes (progress, logging). ``stops`` (one
        per question, or None) end a question early, between turns and between its decode steps (:meth:`cancel`);
        its result then says ``stopped`` and holds what it had.
        """
        options = RunOptions.of(options)
        mode = options.mode
        rounds, latent_steps = options.rounds_for(self.topology), options.latent_steps_for(self.topology)
        queries = as_queries(questions)
        _check_request([q.question for q in queries], mode, rounds, latent_steps)
        check_fields(self.topology, queries, mode)
        start = time.perf_counter()
        if on_delta is not None and len(questions) != 1:
            raise ValueError("on_delta: streaming is for one question at a time; use run()")
        answer, message = options.generation.over(self.topology.generation)
        stops = list(stops) if stops is not None else [None] * len(questions)
        if len(stops) != len(questions):
            raise ValueError(f"stops: {len(stops)} for {len(questions)} questions; give one (or None) per question")
        states = [_QuestionState(q.question, q.fields, stop=s) for q, s in zip(queries, stops)]
        run = _Run(mode, rounds, latent_steps, states, answer, message, on_turn, on_delta)
        schedule = [self.plan.single()] if mode == "single" else self.plan.schedule(rounds)
        round_ = 0
        for level in schedule:
            if all([state.check_stop() for state in run.questions]):
                break
            if level[0].round != round_:  # a new round: this round's inboxes, last round's feedback
                round_ = level[0].round
                for state in run.questions:
                    state.new_round()
            for turn in self._run_level(run, level):
                self._hand_over(turn, run.questions[turn.question_index])
        wall = time.perf_counter() - start
        for state in run.questions:
            if state.finish == "cancelled" and not state.check_stop():
                state.stopped = "cancelled"
        return [
            RunResult(question=s.question, text=s.answer, mode=mode, rounds=1 if mode == "single" else rounds,
                      latent_steps=latent_steps if mode == "latent" else 0, wall_s=wall, usage=s.usage,
                      finish_reason=openai_finish(s.finish), stopped=s.stopped)
            for s in run.questions
        ]

    def cancel(self, stop: RunStop) -> None:
        """Stop a question of a run in flight now: at its next turn, and at the next decode step of any call of
        its that a backbone is running (the other rows of the batch decode on)."""
        stop.cancel()
        for name, backend in self.backends.items():
            try:
                if hasattr(backend, "cancel"):
                    backend.cancel([stop.tag])
            except Exception as exc:  # noqa: BLE001 - a backbone that is gone has nothing of this run to stop
                log.debug("cancel on backbone %s failed: %s", name, exc)

    # --- one level of a round ------------------------------------------------------------------------------------
    def _run_level(self, run: _Run, level: tuple[PlannedTurn, ...]) -> list[_Turn]:
        by_backbone: dict[str, list[_Turn]] = defaultdict(list)
        for planned in level:
            backbone = self.topology.agent(planned.agent).backbone
            kind = "answer" if planned.decodes else ("latent" if run.mode == "latent" else "text")
            for index, state in enumerate(run.questions):
                if state.stopped is not None:
                    continue
                prompt = self._prompt(planned.agent, state, run.mode != "single", planned.round)
                usage = AgentUsage(agent=planned.agent, round=planned.round, backbone=backbone, kind=kind)
                by_backbone[backbone].append(_Turn(index, planned, prompt, usage))
        futures = [self._pool.submit(self._call, name, turns, run) for name, turns in by_backbone.items() if turns]
        done = [turn for future in futures for turn in future.result()]
        for turn in done:
            state = run.questions[turn.question_index]
            state.usage.append(turn.usage)
            if turn.usage.kind == "answer":
                state.answer, state.finish = turn.message or "", turn.usage.finish_reason
            if run.on_turn is not None:
                run.on_turn(turn.usage)
        return done

    def _call(self, backbone_name: str, turns: list[_Turn], run: _Run) -> list[_Turn]:
        latent_steps, on_delta = run.latent_steps, run.on_delta
        backend = self.backends[backbone_name]
        start = time.perf_counter()
        latent = [t for t in turns if t.usage.kind == "latent"]
        if latent:
            t = self.topology
            thoughts = backend.think(ThinkCall(
                tuple(turn.planned.agent for turn in latent), tuple(turn.prompt for turn in latent), latent_steps,
                tuple(tuple(turn.planned.targets) for turn in latent), links=t.name, handoff=t.handoff,
                transport=t.transport))
            for turn, thought in zip(latent, thoughts):
                turn.handoffs = thought.handoffs
                turn.usage.prompt_tokens, turn.usage.latent_in = thought.prompt_tokens, thought.latent_tokens
                turn.usage.latent_steps = latent_steps
        decoding = [t for t in turns if t.usage.kind != "latent"]
        with_tools = [t for t in decoding if self.topology.agent(t.planned.agent).tools]
        plain = [t for t in decoding if not self.topology.agent(t.planned.agent).tools]
        streamed = [t for t in plain if on_delta is not None and t.usage.kind == "answer"]
        plain = [t for t in plain if t not in streamed]
        for turn in streamed:
            nudge = self.topology.generation.answer_nudge
            # The authors' retry drops the answer's trailing whitespace: hold it back until more text comes.
            deltas = _HeldSpace(on_delta) if nudge is not None and nudge.style == "authors" else on_delta
            self._record(turn, self._stream(backend, turn.prompt, deltas, run.sampling_for(turn),
                                            run.stops_for([turn])))
            self._nudge(backend, [turn], run, deltas)
        by_sampling: dict[Sampling, list[_Turn]] = defaultdict(list)  # a message budget of its own: a call of its own
        for turn in plain:
            by_sampling[run.sampling_for(turn)].append(turn)
        for sampling, group in by_sampling.items():
            call = GenerateCall(tuple(t.prompt for t in group), sampling, stops=run.stops_for(group))
            for turn, gen in zip(group, backend.generate(call)):
                self._record(turn, gen)
        self._nudge(backend, plain, run)
        for turn in with_tools:
            self._tool_turn(backend, turn, run.sampling_for(turn), run.stops_for([turn]))
        self._nudge(backend, with_tools, run)  # a tool loop's answer too (the authors retry their tool-caller's)
        wall = time.perf_counter() - start
        for turn in turns:
            turn.usage.wall_s = wall
        return turns

    @staticmethod
    def _stream(backend: Backend, prompt: Prompt, on_delta: Callable[[str], None], sampling: Sampling,
                stops: tuple = ()) -> Generation:
        for piece in backend.stream(GenerateCall((prompt,), sampling, stream=True, stops=stops)):
            if isinstance(piece, str):
                on_delta(piece)
            else:
                return piece
        raise RuntimeError("backend stream ended without its final Generation")

    def _nudge(self, backend: Backend, turns: list[_Turn], run: _Run,
               on_delta: Callable[[str], None] | None = None) -> None:
        """Answers without ``generation.answer_nudge``'s pattern are decoded once more after its suffix, all in one
        call, with the answer's sampling and the nudge's budget: ``continue`` goes on in the answer's own chat turn
        (its prompt, question and latents still read); ``authors`` sends the authors' retry, a fresh plain-text
        prompt ``answer.rstrip() + suffix`` with no chat template, no question and no latents."""
        nudge = self.topology.generation.answer_nudge
        held = on_delta if isinstance(on_delta, _HeldSpace) else None
        todo = [] if nudge is None else [
            t for t in turns if t.usage.kind == "answer" and t.usage.finish_reason != "cancelled"
            and not re.search(nudge.pattern, t.message or "")]
        if not todo:
            if held is not None:
                held.flush()
            return
        sampling = replace(run.answer, max_new_tokens=nudge.max_new_tokens)
        if nudge.style == "authors":
            heads = [(t.message or "").rstrip() + nudge.suffix for t in todo]
            prompts = [Prompt([head], framing=Framing(raw=True)) for head in heads]
        else:
            heads = [(t.message or "") + nudge.suffix for t in todo]
            prompts = [replace(t.prompt, response_prefix=t.prompt.response_prefix + head)
                       for t, head in zip(todo, heads)]
        if on_delta is not None:
            if held is not None:
                on_delta = held.drop()  # the held whitespace is not part of the retried answer
            on_delta(nudge.suffix)
            gens = [self._stream(backend, prompts[0], on_delta, sampling, run.stops_for(todo))]
        else:
            gens = backend.generate(GenerateCall(tuple(prompts), sampling, stops=run.stops_for(todo)))
        for turn, head, gen in zip(todo, heads, gens):
            turn.message = turn.usage.message = head + gen.text
            turn.usage.decoded_tokens += len(gen.token_ids)
            turn.usage.finish_reason, turn.usage.nudged = gen.finish_reason, True

    def _tool_turn(self, backend: Backend, turn: _Turn, sampling: Sampling, stops: tuple = ()) -> None:
        segments = [*turn.prompt.segments, "\n\n" + self.toolbox.instructions()]
        generations = []
        with_stops = replace(sampling, stop=tuple(STOP_STRINGS))

        def generate(prefix: str) -> tuple[str, int]:
            (gen,) = backend.generate(GenerateCall((Prompt(segments, prefix, turn.prompt.framing),), with_stops,
                                                   stops=stops))
            generations.append(gen)
            return gen.text, len(gen.token_ids)

        text, tokens, results = run_tool_loop(generate, self.toolbox)
        first, last = generations[0], generations[-1]  # the prompt as first read; the reason the loop ended
        self._record_text(turn, final_answer(text) if turn.usage.kind == "answer" else text, tokens,
                          first.prompt_tokens, first.latent_tokens, last.finish_reason)
        turn.usage.tool_calls = len(results)

    @classmethod
    def _record(cls, turn: _Turn, gen) -> None:
        cls._record_text(turn, gen.text, len(gen.token_ids), gen.prompt_tokens, gen.latent_tokens, gen.finish_reason)

    @staticmethod
    def _record_text(turn: _Turn, text: str, decoded: int, prompt_tokens: int, latent_in: int,
                     finish: FinishReason) -> None:
        turn.message = text
        turn.usage.message = text
        turn.usage.decoded_tokens = decoded
        turn.usage.prompt_tokens, turn.usage.latent_in = prompt_tokens, latent_in
        turn.usage.finish_reason = finish

    # --- prompts and hand-offs -----------------------------------------------------------------------------------
    def _prompt(self, agent: str, state: _QuestionState, with_slots: bool, round: int) -> Prompt:
        t = self.topology
        fields = {name: state.fields[name] for name in t.fields_of(agent) if name in state.fields}
        if not with_slots:
            return fill_prompt(t.template(agent), state.question, {}, {}, framing=framing_of(t, agent),
                               fields=fields)
        return fill_prompt(t.template(agent, round), state.question, state.inbox[agent], state.feedback.get(agent, {}),
                           round=round, framing=framing_of(t, agent), fields=fields)

    def _hand_over(self, turn: _Turn, state: _QuestionState) -> None:
        if turn.planned.decodes:
            return
        for dst, is_feedback in turn.planned.handoffs:
            box = state.next_feedback if is_feedback else state.inbox
            box[dst][turn.planned.agent] = turn.handoffs[dst] if turn.handoffs is not None else (turn.message or "")


class _HeldSpace:
    """Passes a stream's text deltas on, holding back trailing whitespace until more text comes: an answer that the
    authors' retry continues loses it (``answer.rstrip()``), so the deltas still join to the answer's text."""

    def __init__(self, on_delta: Callable[[str], None]):
        self.on_delta, self.held = on_delta, ""

    def __call__(self, piece: str) -> None:
        text = self.held + piece
        kept = text.rstrip()
        self.held = text[len(kept):]
        if kept:
            self.on_delta(kept)

    def flush(self) -> None:
        if self.held:
            self.on_delta(self.held)
        self.held = ""

    def drop(self) -> Callable[[str], None]:
        """Forget the held whitespace; the stream's own callback, for what comes next."""
        self.held = ""
        return self.on_delta


def framing_of(topology: Topology, agent: str) -> Framing:
    """The engine's framing for an agent's prompts (system turn, chat-template options, no-template policy)."""
    f = topology.framing_of(agent)
    return Framing(f.system_prompt, tuple(sorted((f.chat_template_kwargs or {}).items())), f.no_chat_template)


def fill_prompt(template: str, question: str, inbox: Mapping[str, Content], feedback: Mapping[str, Content], *,
                round: int = 1, framing: Framing | None = None, fields: Mapping[str, str] | None = None) -> Prompt:
    """An agent's prompt: its template with the question, the round and the ``fields`` it names, and each hand-off
    (latent or text) in its source's slot, framed as ``framing`` says."""
    contents: dict[str, Content] = {}
    sources: dict[str, list[str]] = defaultdict(list)
    for is_feedback, box in ((False, inbox), (True, feedback)):
        for src, content in box.items():
            sources[prompts.slot_for(template, src, is_feedback)].append(src)
            contents[src] = content
    pieces = prompts.render(template, question, sources, round, fields)
    return Prompt(_join_text([contents[p.source] if isinstance(p, prompts.Slot) else p for p in pieces]),
                  framing=framing or Framing())


def _join_text(segments: list[Content]) -> list[Content]:
    out: list[Content] = []
    for seg in segments:
        if isinstance(seg, str) and out and isinstance(out[-1], str):
            out[-1] += seg
        else:
            out.append(seg)
    return out


def _check_request(questions: Sequence[str], mode: str, rounds: int, latent_steps: int) -> None:
    if not questions:
        raise RequestError("questions: pass at least one question", "questions")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise RequestError(f"prompt: question {i} is empty; pass the text to solve", "prompt")
    if mode not in get_args(Mode):
        raise RequestError(f"mode: {mode!r} is not one of latent, text, single", "mode")
    if rounds < 1:
        raise RequestError(f"rounds: must be >= 1, got {rounds}", "rounds")
    if latent_steps < 0:
        raise RequestError(f"latent_steps: must be >= 0, got {latent_steps}", "latent_steps")
