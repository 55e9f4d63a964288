"""Prompt templates with named latent slots.

A template is plain text with ``{placeholders}``. ``{question}`` is the user's question; every other placeholder is a
*slot* that receives what another agent handed over: latent vectors in latent mode, a text message in text mode.
Keeping this a tiny parser of our own (not ``str.format``) lets a slot hold a tensor, and lets us drop a line whose
slots are all empty this round (e.g. "Feedback from the last round: {feedback}" in round 1) instead of showing the
model a dangling label.

``{round}`` is the round being run (1, 2, ...), for templates that tell an agent where it is in the recursion.

Any other name that is not an agent is a *field*: text the question brings along (``{context}``, ``{document}``,
``{note}``), filled from the dataset row or the request. Only the agents whose templates name a field see it, which
is how a system gives one agent context the others lack (a retriever's documents, a tool's output), and so gives
its hand-offs something worth carrying.

Slot names:
- ``{inputs}``: every in-round hand-off into this agent that no named slot takes, each labelled with its source;
- ``{feedback}``: every feedback hand-off from the previous round that no named slot takes;
- ``{<agent>}``: the hand-off from that agent (in-round or feedback).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_\-]*)\}(?!\})")  # {{x}} is a literal
QUESTION = "question"
ROUND = "round"
INPUTS = "inputs"
FEEDBACK = "feedback"
RESERVED = (QUESTION, ROUND, INPUTS, FEEDBACK)
TEXT_FIELDS = (QUESTION, ROUND)  # placeholders that are filled with text, never a slot


@dataclass(frozen=True)
class Slot:
    """Marks where a source agent's hand-off is spliced into a rendered prompt."""

    source: str


def placeholders(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


def slot_for(template: str, source: str, feedback: bool) -> str | None:
    """The placeholder that receives ``source``'s hand-off, or None when the template has no room for it."""
    names = set(placeholders(template))
    if source in names:
        return source
    collective = FEEDBACK if feedback else INPUTS
    return collective if collective in names else None


def render(template: str, question: str, sources: dict[str, list[str]], round: int = 1,
           fields: Mapping[str, str] | None = None) -> list[str | Slot]:
    """Render ``template`` into text pieces and :class:`Slot` markers.

    ``sources`` maps a placeholder name to the source agents whose hand-offs fill it this round (in order);
    ``fields`` gives the text of every field placeholder. A line whose slots all have no source is dropped; a
    collective slot with several sources becomes one labelled block per source.
    """
    fields = fields or {}
    pieces: list[str | Slot] = []
    for line in template.splitlines(keepends=True):
        names = [n for n in placeholders(line) if n not in TEXT_FIELDS and n not in fields]
        if names and not any(sources.get(n) for n in names):
            continue
        pieces.extend(_render_line(line, question, sources, round, fields))
    return _merge_text(pieces)


def field_names(template: str, agents: Iterable[str]) -> list[str]:
    """The field placeholders of ``template``: every name that is neither reserved nor one of ``agents``."""
    agents = set(agents)
    found = [n for n in placeholders(template) if n not in RESERVED and n not in agents]
    return list(dict.fromkeys(found))


def _render_line(line: str, question: str, sources: dict[str, list[str]], round: int,
                 fields: Mapping[str, str]) -> list[str | Slot]:
    out: list[str | Slot] = []
    cursor = 0
    for match in PLACEHOLDER.finditer(line):
        out.append(unescape(line[cursor : match.start()]))
        name = match.group(1)
        srcs = sources.get(name, [])
        if name == QUESTION:
            out.append(question)
        elif name == ROUND:
            out.append(str(round))
        elif name in fields:
            out.append(fields[name])
        elif name in (INPUTS, FEEDBACK) and len(srcs) > 1:
            for src in srcs:
                out.extend([f"\n[{src}] ", Slot(src)])
        else:
            out.extend(Slot(src) for src in srcs)
        cursor = match.end()
    out.append(unescape(line[cursor:]))
    return out


def _merge_text(pieces: list[str | Slot]) -> list[str | Slot]:
    merged: list[str | Slot] = []
    for piece in pieces:
        if isinstance(piece, str):
            if not piece:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += piece
                continue
        merged.append(piece)
    return merged


# Role presets. Wording follows the paper's roles; every preset has the collective slots, so it fits any topology
# position, and lines whose slots stay empty disappear.
ROLE_PROMPTS: dict[str, str] = {
    "planner": (
        "You are the Planner in a team that solves problems together.\n"
        "Question: {question}\n"
        "Input from teammates: {inputs}\n"
        "The team's previous attempt: {feedback}\n"
        "Think step by step and write a short plan for solving the question. Do not solve it yet."
    ),
    "critic": (
        "You are the Critic in a team that solves problems together.\n"
        "Question: {question}\n"
        "Plan to review: {inputs}\n"
        "The team's previous attempt: {feedback}\n"
        "Point out mistakes or gaps in the plan and write an improved plan."
    ),
    "solver": (
        "You are the Solver in a team that solves problems together.\n"
        "Question: {question}\n"
        "Refined plan: {inputs}\n"
        "The team's previous attempt: {feedback}\n"
        "Solve the question step by step and write the final answer in \\boxed{{}}."
    ),
    "expert": (
        "You are a domain expert in a team that solves problems together.\n"
        "Question: {question}\n"
        "Input from teammates: {inputs}\n"
        "Summary of the team's previous attempt: {feedback}\n"
        "Reason about the question from your expertise and write your solution."
    ),
    "summarizer": (
        "You combine the solutions of several experts into one answer.\n"
        "Question: {question}\n"
        "Experts' solutions: {inputs}\n"
        "Your previous answer: {feedback}\n"
        "Weigh the solutions and write the final answer in \\boxed{{}}."
    ),
    "learner": (
        "You are learning from an expert's reasoning.\n"
        "Question: {question}\n"
        "Expert's reasoning: {inputs}\n"
        "Your previous answer: {feedback}\n"
        "Solve the question step by step and write the final answer in \\boxed{{}}."
    ),
    "reflector": (
        "You are the Reflector: you think about how to solve the question and what went wrong before.\n"
        "Question: {question}\n"
        "Input from teammates: {inputs}\n"
        "The tool-caller's previous attempt: {feedback}\n"
        "Write what to compute or check next."
    ),
    "tool_caller": (
        "You are the Tool-caller: you solve the question, using tools when they help.\n"
        "Question: {question}\n"
        "Reflection: {inputs}\n"
        "Your previous attempt: {feedback}\n"
        "Write the final answer in \\boxed{{}}."
    ),
    "agent": (
        "Question: {question}\n"
        "Input from teammates: {inputs}\n"
        "The team's previous attempt: {feedback}\n"
        "Answer the question."
    ),
}


def resolve_template(prompt: str) -> str:
    """A preset name becomes its text; anything else is taken as a template already."""
    return ROLE_PROMPTS.get(prompt, prompt)


def unescape(text: str) -> str:
    """``{{`` and ``}}`` in a template are literal braces (as in str.format)."""
    return text.replace("{{", "{").replace("}}", "}")
