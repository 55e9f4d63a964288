"""What a run cost, per agent and round: the numbers behind "faster, with fewer decoded tokens"."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from recursivemas.config import Mode
from recursivemas.engine.sampling import FinishReason

Kind = Literal["latent", "text", "answer"]
OpenAIFinish = Literal["stop", "length"]  # OpenAI's finish_reason: ``length`` when the answer was cut off


def openai_finish(reason: FinishReason | None) -> OpenAIFinish:
    """The engine's reason as OpenAI reports it: ``eos`` and ``stop`` are ``stop``; ``length`` (``max_tokens``, the
    topology's budget or the context window ran out) is ``length``."""
    return "length" if reason == "length" else "stop"


class AgentUsage(BaseModel):
    """One agent's turn in one round.

    ``kind`` is ``latent`` (rolled out latent thoughts), ``text`` (decoded a message for the next agent, text mode)
    or ``answer`` (decoded the final answer). ``wall_s`` is the wall time of the batched backbone call this turn was
    part of, so turns that ran together share it.
    """

    agent: str
    round: int
    backbone: str
    kind: Kind
    prompt_tokens: int = 0
    latent_in: int = 0
    latent_steps: int = 0
    decoded_tokens: int = 0
    tool_calls: int = 0
    wall_s: float = 0.0
    message: str | None = None  # the decoded text, for text-mode messages and answers
    finish_reason: FinishReason | None = None  # decoding turns: why the (last) generation stopped
    nudged: bool = False  # the answer lacked generation.answer_nudge's pattern and was continued once


def report_turns(results: list[RunResult], on_turn: Callable[[AgentUsage], None] | None) -> list[RunResult]:
    """Hand every turn of finished runs to ``on_turn``, in order: how runners whose rounds ran elsewhere (a
    coordinator actor, a Serve replica) keep the ``on_turn`` contract."""
    if on_turn is not None:
        for result in results:
            for usage in result.usage:
                on_turn(usage)
    return results


class Totals(BaseModel):
    prompt_tokens: int
    latent_steps: int
    decoded_tokens: int
    tool_calls: int


class RunResult(BaseModel):
    question: str
    text: str
    mode: Mode
    rounds: int
    latent_steps: int
    wall_s: float
    usage: list[AgentUsage] = Field(default_factory=list)
    finish_reason: OpenAIFinish = "stop"  # the answer's, as OpenAI reports it (:func:`openai_finish`)
    stopped: Literal["cancelled", "deadline"] | None = None  # the run ended early: its caller left, or past due

    @property
    def totals(self) -> Totals:
        return Totals(
            prompt_tokens=sum(u.prompt_tokens for u in self.usage),
            latent_steps=sum(u.latent_steps for u in self.usage),
            decoded_tokens=sum(u.decoded_tokens for u in self.usage),
            tool_calls=sum(u.tool_calls for u in self.usage),
        )

    def to_dict(self) -> dict:
        return {**self.model_dump(mode="json"), "totals": self.totals.model_dump()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def usage_table(self) -> str:
        """A fixed-width table of the usage, one row per agent turn and a total row."""
        head = ("round", "agent", "backbone", "kind", "prompt", "latent in", "latent steps", "decoded", "tools",
                "wall s")
        rows = [
            (str(u.round), u.agent, u.backbone, u.kind, str(u.prompt_tokens), str(u.latent_in), str(u.latent_steps),
             str(u.decoded_tokens), str(u.tool_calls), f"{u.wall_s:.2f}")
            for u in self.usage
        ]
        t = self.totals
        rows.append(("", "total", "", self.mode, str(t.prompt_tokens), "", str(t.latent_steps),
                     str(t.decoded_tokens), str(t.tool_calls), f"{self.wall_s:.2f}"))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])
