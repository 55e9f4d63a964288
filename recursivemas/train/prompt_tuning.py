"""The parameter-matched single-agent baseline: the decoder alone, with a trained soft prompt.

Trained links make a system better than its decoder alone only if they carry something a constant could not. So the
baseline gets the same budget: a soft prompt of ``m`` vectors (the links' hand-off length) in the decoder's hand-off
slot, produced from learned seeds by an MLP sized so the trainable parameters match the links' (prefix-tuning's
reparameterisation; a raw soft prompt of that many parameters would not fit the context). It is trained on the same
rows, targets, step budget, batch and schedule as stage 2, with the same answer loss; only the source of the
vectors differs: a constant here, the teammates' rollouts there.

A row may bring fields (``{context}``, ...) for a decoder template that names them, in training and in the runner
(a :class:`~recursivemas.runtime.Query`): the channel benchmark's oracle is the decoder reading the context itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recursivemas.runtime.accounting import AgentUsage, RunResult, openai_finish, report_turns
from recursivemas.runtime.calls import RunOptions
from recursivemas.runtime.executor import fill_prompt, framing_of
from recursivemas.runtime.query import Query, as_queries, check_fields
from recursivemas.runtime.runner import OnTurn, SingleRun
from recursivemas.train.outer import answer_loss
from recursivemas.train.updaters import cosine

MANIFEST = "soft_prompt.json"
WEIGHTS = "soft_prompt.safetensors"
SLOT_SOURCE = "prompt"  # fills the decoder template's collective {inputs} slot, where a teammate's hand-off goes


class SoftPrompt(nn.Module):
    """``m`` input vectors: ``ln(seeds + proj2(gelu(proj1(seeds))))``, the MLP's output projection starting at zero."""

    def __init__(self, dim: int, length: int, hidden: int, out_scale: float = 1.0) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(length, dim) * out_scale)
        self.proj1 = nn.Linear(dim, hidden)
        self.proj2 = nn.Linear(hidden, dim)
        self.ln = nn.LayerNorm(dim)
        with torch.no_grad():
            nn.init.zeros_(self.proj2.weight)
            nn.init.zeros_(self.proj2.bias)
            self.ln.weight.fill_(out_scale)
        self.config = {"dim": dim, "length": length, "hidden": hidden, "out_scale": out_scale}

    @classmethod
    def matching(cls, dim: int, length: int, parameters: int, out_scale: float = 1.0) -> SoftPrompt:
        """A soft prompt whose trainable parameter count is as close to ``parameters`` as its MLP width allows."""
        hidden = max(1, round((parameters - length * dim - 3 * dim) / (2 * dim + 1)))
        return cls(dim, length, hidden, out_scale)

    def forward(self) -> torch.Tensor:
        return self.ln(self.seeds + self.proj2(nn.functional.gelu(self.proj1(self.seeds))))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS)
        (directory / MANIFEST).write_text(json.dumps({**self.config, **(extra or {})}, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SoftPrompt:
        directory = Path(directory)
        config = json.loads((directory / MANIFEST).read_text())
        prompt = cls(config["dim"], config["length"], config["hidden"], config["out_scale"])
        prompt.load_state_dict(load_file(directory / WEIGHTS))
        return prompt.eval()


def _prompt(template: str, question: str, vectors: torch.Tensor, framing=None,
            fields: Mapping[str, str] | None = None):
    return fill_prompt(template, question, {SLOT_SOURCE: vectors}, {}, framing=framing, fields=fields)


TrainRow = tuple[str, str] | tuple[str, str, Mapping[str, str]]
"""``(question, target)``, or ``(question, target, fields)`` for a template that names fields (``{context}``)."""


def train_soft_prompt(engine, template: str, soft: SoftPrompt, rows: Sequence[TrainRow], steps: int,
                      batch_size: int, lr: float, warmup_steps: int,
                      on_step: Callable[[int, float], None] | None = None, framing=None) -> list[float]:
    """AdamW with stage 2's warm-up + cosine schedule and clipping over ``(question, target[, fields])`` rows, batch
    ``k`` being rows ``k*B .. k*B+B-1`` as in stage 2; returns each step's batch-mean loss. ``fields`` fill the
    template's field placeholders (``{context}``), as :func:`fill_prompt` does in inference."""
    if not rows:
        raise ValueError("train_soft_prompt: no training rows; give the config's data at least one row")
    optimizer = torch.optim.AdamW(soft.parameters(), lr=lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine(s, warmup_steps, steps))
    losses = []
    soft.train()
    for step in range(steps):
        batch = [rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)]
        loss = sum(answer_loss(engine, _prompt(template, row[0], soft(), framing, row[2] if len(row) > 2 else None),
                               row[1]) for row in batch) / batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(soft.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    soft.eval()
    return losses


class SoftPromptRunner(SingleRun):
    """The decoder alone with its soft prompt, behind the runner interface (single mode only); a question may be
    a :class:`Query` whose fields the decoder's template names."""

    def __init__(self, engine, topology, soft: SoftPrompt) -> None:
        self.engine, self.topology, self.soft = engine, topology, soft
        self.agent = topology.decoder
        self.backbone = topology.agent(self.agent).backbone
        self.template = topology.template(self.agent)

    @torch.inference_mode()
    def run_batch(self, questions: Sequence[str | Query], options: RunOptions | None = None, *,
                  on_turn: OnTurn | None = None) -> list[RunResult]:
        options = RunOptions.of(options or RunOptions(mode="single"))
        if options.mode != "single":
            raise ValueError(f"mode: the prompt-tuned baseline is one agent; use 'single', got {options.mode!r}")
        queries = as_queries(questions)
        check_fields(self.topology, queries, "single")
        names = self.topology.fields_of(self.agent, later=False)
        began = time.perf_counter()
        vectors = self.soft()
        sampling, _ = options.generation.over(self.topology.generation)
        framing = framing_of(self.topology, self.agent)
        gens = self.engine.generate([_prompt(self.template, q.question, vectors, framing,
                                             {n: q.fields[n] for n in names}) for q in queries],
                                    sampling)
        wall = time.perf_counter() - began
        results = [RunResult(question=q.question, text=gen.text, mode="single", rounds=1, latent_steps=0, wall_s=wall,
                             finish_reason=openai_finish(gen.finish_reason),
                             usage=[AgentUsage(agent=self.agent, round=1, backbone=self.backbone, kind="answer",
                                               prompt_tokens=gen.prompt_tokens, latent_in=gen.latent_tokens,
                                               decoded_tokens=len(gen.token_ids), wall_s=wall, message=gen.text,
                                               finish_reason=gen.finish_reason)])
                   for q, gen in zip(queries, gens)]
        return report_turns(results, on_turn)
