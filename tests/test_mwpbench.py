"""MWPBench evaluation settings and metrics (no data folder or model needed)."""

from __future__ import annotations

import pytest

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.student_config import EvalConfig
from mathscale_utils.core.templates import STOP_STRINGS
from mathscale_utils.evaluation.mwpbench import cap_per_task, compute_metrics

# ---------------------------------------------------------------------------------------------------------------
# stop strings and the evaluate: defaults


def test_stop_strings_and_defaults():
    assert STOP_STRINGS == (
        "Question:",
        "Question",
        "USER:",
        "USER",
        "ASSISTANT:",
        "ASSISTANT",
        "Instruction:",
        "Instruction",
        "Response:",
        "Response",
        "</s>",
    )
    cfg = EvalConfig()
    assert cfg.template == "alpaca" and cfg.max_tokens == 2048 and cfg.cap_per_task == 2000
    assert cfg.stop == list(STOP_STRINGS) and cfg.use_adapter is True and cfg.include_fresh_gaokao is False
    with pytest.raises(ValueError):
        EvalConfig(templat="alpaca")
    with pytest.raises(ValueError):
        EvalConfig(template="vicuna")


# ---------------------------------------------------------------------------------------------------------------
# metrics


def _row(i, dataset, topic, paper, strict=None, **kw):
    return {
        "id": f"{topic}.{i}",
        "dataset": dataset,
        "data_topic": topic,
        "paper_correct": paper,
        "strict_correct": paper if strict is None else strict,
        **kw,
    }


def _rows():
    rows = []
    rows += [_row(i, "MATH", "MATH.Algebra", i < 2) for i in range(3)]  # 2/3
    rows += [_row(0, "MATH", "MATH.Geometry", False)]  # 0/1
    rows += [_row(i, "college_math", "college_math.algebra", True) for i in range(2)]  # 2/2
    rows += [_row(i, "college_math", "college_math.calculus", False) for i in range(6)]  # 0/6
    rows += [_row(i, "gsm8k", "gsm8k", i == 0, strict=False) for i in range(2)]  # 1/2, strict 0/2
    return rows


def test_metrics_weighted_subjects_micro_macro():
    m = compute_metrics(_rows())
    p = m["paper"]
    assert p["tasks"]["MATH.Algebra"]["accuracy"] == pytest.approx(200 / 3)
    assert p["datasets"]["MATH"]["accuracy"] == pytest.approx(50.0)  # size-weighted, not (66.7 + 0) / 2
    assert p["datasets"]["college_math"]["accuracy"] == pytest.approx(25.0)
    assert set(p["datasets"]["MATH"]["subsets"]) == {"MATH.Algebra", "MATH.Geometry"}
    assert p["micro"] == pytest.approx(100 * 5 / 14)
    assert p["macro"] == pytest.approx((50 + 25 + 50) / 3)
    assert p["macro_upstream"] == pytest.approx(p["macro"])  # MATH and college_math present: no quirk
    assert m["strict"]["datasets"]["gsm8k"]["accuracy"] == 0.0
    assert m["n_items"] == 14 and m["n_disagreements"] == 1
    assert m["datasets_evaluated"] == ["gsm8k", "MATH", "college_math"]


def test_macro_upstream_quirk_adds_zero_entries():
    rows = [_row(0, "gsm8k", "gsm8k", True), _row(0, "tal", "tal", False)]
    p = compute_metrics(rows)["paper"]
    assert p["macro"] == pytest.approx(50.0)
    assert p["macro_upstream"] == pytest.approx(25.0)  # (100 + 0 + 0 + 0) / 4
    assert p["micro"] == pytest.approx(50.0)


def test_metrics_cap_dedup_errors_and_fresh():
    rows = [_row(i, "gsm8k", "gsm8k", i >= 3) for i in range(5)]
    rows.append(_row(4, "gsm8k", "gsm8k", False, error="boom"))  # a later row of the same id wins
    rows.append(_row(0, "fresh_gaokao_math_2023", "FreshGaokaoMath2023", True))
    rows.append(_row(0, "tal", "tal", False, reference_error="NormalisationError: x"))
    m = compute_metrics(rows)
    assert m["paper"]["datasets"]["gsm8k"] == {"n": 5, "correct": 1, "accuracy": pytest.approx(20.0)}
    assert m["n_errors"] == 1 and m["n_reference_errors"] == 1 and m["reference_error_ids"] == ["tal.0"]
    assert m["paper"]["fresh_gaokao_math_2023"]["accuracy"] == 100.0
    assert "fresh_gaokao_math_2023" not in m["paper"]["datasets"]  # scored apart, not in micro/macro
    capped = compute_metrics(rows, cap=3)
    assert (
        capped["paper"]["datasets"]["gsm8k"]["n"] == 3
        and capped["paper"]["datasets"]["gsm8k"]["correct"] == 0
    )


def test_metrics_availability_status():
    avail = [{"dataset": "gsm8k", "status": "approximate"}, {"dataset": "math23k_en", "status": "missing"}]
    m = compute_metrics([_row(0, "gsm8k", "gsm8k", True)], availability_rows=avail)
    assert m["datasets_missing"] == ["math23k_en"] and m["datasets_approximate"] == ["gsm8k"]


def test_cap_per_task_keeps_file_order():
    recs = [Record(f"a{i}", "ape210k_en", "ape210k_en", "q", "1") for i in range(5)]
    recs += [Record(f"g{i}", "gsm8k", "gsm8k", "q", "1") for i in range(2)]
    out = cap_per_task(recs, 3)
    assert [r.id for r in out] == ["a0", "a1", "a2", "g0", "g1"]
    assert len(cap_per_task(recs, None)) == len(cap_per_task(recs, -1)) == 7


# ---------------------------------------------------------------------------------------------------------------
# where the judges disagree, by kind


def _judged(i, completion, gold, dataset="gsm8k"):
    from mathscale_utils.grading.judges import judge

    return {
        "id": f"{dataset}.{i}",
        "dataset": dataset,
        "gold": gold,
        "completion": completion,
        **judge(completion, gold),
    }


def test_disagreement_kinds_and_summary():
    from mathscale_utils.evaluation.answer_review import disagreement_kinds, disagreement_summary

    rows = [
        _judged(0, "The answer is 90. Check: 90 + 55 = 145.", "90"),  # strict only: declared, then more
        _judged(1, "The answer is 90.\nTo check: 2 * 45 = 90, minus 55 is 35.", "90"),  # the same kind
        _judged(2, "The answer is 85. Check: 5 + 85 = 90", "90"),  # paper only: the last number
        _judged(3, "The answer is nine.", "9"),  # strict only: words
        _judged(4, "\\boxed{\\frac{1}{2}}", "$2$", "MATH"),  # paper only: substring
        _judged(5, "Answer: B", "\\text{(B)}", "MATH"),  # strict only: choice letter
        _judged(6, "The answer is 7.", "7"),  # both right: not listed
        _judged(7, "The answer is 8.", "7"),  # both wrong: not listed
    ]
    kinds = {d["id"]: d["kind"] for d in disagreement_kinds(rows)}
    assert kinds == {
        "gsm8k.0": "strict only: declared answer, then more text",
        "gsm8k.1": "strict only: declared answer, then more text",
        "gsm8k.2": "paper only: last number, not the declared answer",
        "gsm8k.3": "strict only: number in words",
        "MATH.4": "paper only: substring match",
        "MATH.5": "strict only: choice letter in another form",
    }
    summary = disagreement_summary(rows)
    assert summary[0] == {
        "kind": "strict only: declared answer, then more text",
        "n": 2,
        "correct_by": "strict",
        "datasets": {"gsm8k": 2},
        "examples": ["gsm8k.0", "gsm8k.1"],
    }
    assert sum(g["n"] for g in summary) == 6 and len(summary) == 5
