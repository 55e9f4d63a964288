"""The exact McNemar test against hand-computed binomial tails."""

from __future__ import annotations

import pytest

from recursivemas.eval.stats import discordant, mcnemar_exact


def test_discordant_pairs_count_only_disagreements():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert discordant(a, b) == (2, 1)


def test_exact_p_values():
    # 6 wins, 0 losses: 2 * (1/2)^6
    assert mcnemar_exact([True] * 6 + [False] * 4, [False] * 6 + [False] * 4) == pytest.approx(2 / 64)
    # 7 against 3 discordant: 2 * P(X <= 3), X ~ Bin(10, 1/2) = 2 * 176/1024
    a = [True] * 7 + [False] * 3 + [True] * 20
    b = [False] * 7 + [True] * 3 + [True] * 20
    assert mcnemar_exact(a, b) == pytest.approx(2 * 176 / 1024)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)  # two-sided


def test_no_disagreement_and_even_splits_give_one():
    assert mcnemar_exact([True, False], [True, False]) == 1.0
    assert mcnemar_exact([True, False], [False, True]) == 1.0


def test_unpaired_results_are_refused():
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True], [True, False])
