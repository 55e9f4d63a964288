"""Paired statistics for comparing two systems on the same items.

Accuracies of two systems on the same n items are not independent samples: most items are right (or wrong) for
both. What tells them apart is the discordant pairs, items one system gets right and the other wrong. The exact
McNemar test asks how likely a split at least this lopsided is if either system were equally likely to win each
such item (a two-sided binomial test with p = 1/2 on the discordant pairs); no normal approximation, so it holds at
the small counts these benchmarks see.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(items only ``a`` gets right, items only ``b`` gets right)."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same items: {len(a)} against {len(b)}")
    return sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of ``a`` against ``b`` (1.0 when they never disagree)."""
    wins, losses = discordant(a, b)
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)
