"""Channel tasks: the facts needed to answer sit in a context that only the first agent reads.

When every agent reads the same question, a learned constant can do the upstream agents' job, and trained links
find that constant (the demo's soft-prompt and swap results). These two offline generators make the hand-off the
only way to the answer, so a system scores above chance only if its links carry what the first agent read:

- ``channel_recall``: the context states a one- or two-digit number (``Mira's locker code is 47.``) and the
  question asks for it (``What is Mira's locker code?``). A pure channel test, no arithmetic.
- ``channel_operands``: the context gives two values (``k = 7, q = 3``) and the question asks for ``k - q``: the
  channel and the solver's arithmetic together.

Rows carry ``context`` (the field a reader's ``{context}`` template reads), ``answer`` and a worked ``solution``
that restates the facts before the answer, so the decoder's target says what it must have received. Items are
drawn deterministically from a seed, and split by a hash of question and context, as the other generators are.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

TASKS = ("channel_recall", "channel_operands")
_NAMES = ("Mira", "Tomas", "Aiko", "Lena", "Omar", "Priya", "Jonas", "Sofia", "Kenji", "Nadia", "Felix", "Zara",
          "Ivan", "Elena", "Hugo", "Maya", "Arjun", "Clara", "Diego", "Yusuf")
_THINGS = ("locker code", "room number", "lucky number", "team number", "bus number", "seat number", "house number",
           "favourite number", "badge number", "gate number")
_LETTERS = "abcdefghjkmnpqrstuvwxyz"  # no i, l, o: they read as digits


def channel_items(task: str, seed: int) -> Iterator[dict[str, str]]:
    """An endless, seeded stream of ``{"question", "context", "answer", "solution"}`` for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown channel task {task!r}; use one of {', '.join(TASKS)}")
    rng = random.Random(f"{task}:{seed}")
    while True:
        yield _recall(rng) if task == "channel_recall" else _operands(rng)


def _recall(rng: random.Random) -> dict[str, str]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    number = rng.randrange(100)
    return {"question": f"What is {name}'s {thing}?", "context": f"{name}'s {thing} is {number}.",
            "answer": str(number),
            "solution": f"{name}'s {thing} is {number}. The final answer is \\boxed{{{number}}}."}


def _operands(rng: random.Random) -> dict[str, str]:
    a, b = rng.sample(_LETTERS, 2)
    x, y = rng.randrange(10), rng.randrange(10)
    op = rng.choice("+-")
    value = x + y if op == "+" else x - y
    return {"question": f"What is {a} {op} {b}?", "context": f"{a} = {x}, {b} = {y}",
            "answer": str(value),
            "solution": f"{a} = {x} and {b} = {y}, so {a} {op} {b} = {x} {op} {y} = {value}. "
                        f"The final answer is \\boxed{{{value}}}."}
