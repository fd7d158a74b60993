"""The paired comparison of the fine-tuned student with its untrained base (evaluation/baseline.py): Newcombe's
interval behaves as an interval for a paired difference must, and the per-dataset and micro blocks pair items by id."""

from __future__ import annotations

import random

import pytest

from mathscale_utils.evaluation import baseline


def test_wilson_interval():
    assert baseline.wilson(0, 10) == pytest.approx(
        (0.0, 0.2775), abs=1e-4
    )  # never the Wald interval's [0, 0]
    assert baseline.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert baseline.wilson(0, 0) == (0.0, 1.0)


def test_paired_difference_counts_and_bounds():
    tuned = [True, True, False, True, False, False]
    base = [True, False, False, False, True, False]
    d = baseline.paired_difference(tuned, base)
    assert (d["both"], d["tuned_only"], d["base_only"], d["neither"]) == (1, 2, 1, 2)
    assert d["difference"] == pytest.approx(100 / 6) and d["low"] < d["difference"] < d["high"]
    assert -100 <= d["low"] and d["high"] <= 100
    swapped = baseline.paired_difference(base, tuned)
    assert swapped["difference"] == pytest.approx(-d["difference"])
    assert (swapped["low"], swapped["high"]) == pytest.approx((-d["high"], -d["low"]))


def test_no_item_changed_verdict_still_has_a_width():
    """The paired Wald interval collapses to [0, 0] here; with 14 items that would claim certainty."""
    same = [True] * 3 + [False] * 11
    d = baseline.paired_difference(same, same)
    assert d["difference"] == 0 and d["low"] < -5 and d["high"] > 5


def test_more_items_narrow_the_interval():
    small = baseline.paired_difference([True, False] * 5, [False, False] * 5)
    large = baseline.paired_difference([True, False] * 50, [False, False] * 50)
    assert small["difference"] == large["difference"] == 50
    assert large["high"] - large["low"] < small["high"] - small["low"]


@pytest.mark.parametrize("n", [14, 30, 100])
def test_coverage_is_near_nominal_for_correlated_pairs(n):
    """Simulated paired verdicts, correlated through the item (an easy item is easy for both students, +15 points
    for the fine-tuned one): the 95% interval covers the true difference in about 95% of samples."""
    rng = random.Random(n)
    truth, covered, trials = 15.0, 0, 2000
    for _ in range(trials):
        tuned, base = [], []
        for _ in range(n):
            easy = rng.random() < 0.5
            tuned.append(rng.random() < (0.85 if easy else 0.25))
            base.append(rng.random() < (0.7 if easy else 0.1))
        d = baseline.paired_difference(tuned, base)
        covered += d["low"] <= truth <= d["high"]
    assert 0.935 <= covered / trials <= 0.975


def test_compare_pairs_items_by_id_per_dataset_and_micro():
    def row(i, ds, ok):
        return {"id": i, "dataset": ds, "paper_correct": ok, "strict_correct": ok}

    tuned = [
        row("g1", "gsm8k", True),
        row("g2", "gsm8k", True),
        row("m1", "MATH", False),
        row("x", "tal", True),
    ]
    base = [
        row("m1", "MATH", True),
        row("g2", "gsm8k", False),
        row("g1", "gsm8k", True),
    ]  # another order, no x
    out = baseline.compare(tuned, base, ["gsm8k", "MATH"])
    assert out["n_paired"] == 3 and out["level"] == 0.95
    micro = out["paper"]["micro"]
    assert (micro["n"], micro["tuned_only"], micro["base_only"]) == (3, 1, 1) and micro["difference"] == 0
    assert out["strict"]["datasets"]["gsm8k"]["difference"] == 50.0
    rows = baseline.comparison_rows({"baseline": {"difference": out}}, "paper")
    assert [r["dataset"] for r in rows] == ["gsm8k", "MATH", "micro"]
    assert rows[0]["base"] == 50.0 and rows[0]["fine-tuned"] == 100.0 and rows[-1]["items"] == 3


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        baseline.paired_difference([True], [True, False])
