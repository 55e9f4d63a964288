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


def test_paired_benchmark_compares_cell_files_item_by_item(tmp_path):
    from benchmarks.paired import answers, compare

    def cell(name, correct):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(f'{{"id": "q{i}", "correct": {str(c).lower()}}}\n' for i, c in enumerate(correct)))
        return answers(str(path))

    a, b = cell("a", [True] * 6 + [False] * 4), cell("b", [False] * 10)
    assert compare(a, b) == {"n": 10, "acc_a": 0.6, "acc_b": 0.0, "p": 0.0312, "discordant": [6, 0]}
    with pytest.raises(SystemExit, match="first difference at item 0"):
        compare(a, [{**r, "id": "other"} for r in b])
