"""The strict judge, as a black box, on the blind held-out set tests/data/judge_heldout.jsonl; math-verify alone
beside it for comparison. Writes bench/results/judge_heldout.json.

    python bench/bench_judge_heldout.py [--set tests/data/judge_heldout.jsonl] [--out bench/results/judge_heldout.json]

The set (built by bench/build_judge_heldout.py, whose docstring tells how) holds real completions of the embedded
models to MWPBench test items, each labelled by hand: is the completion's final declared answer the gold? It was
built blind: its author read nothing under mathscale_utils/grading/, none of the judge's tests, earlier labelled
sets, builders, benches or results, and never ran the judge; nor was this script run by its author. The set is
FROZEN after this script's first run: a miss found here is a finding, not a row to relabel or drop, and a judge
tuned on these rows no longer has a held-out score (build a new set instead). The result file records the set's
sha256, so that a later score on a changed set shows.

For each row: ``strict_judge(completion, gold)`` -> ``.correct`` (bool) and ``.extracted`` (str or None), nothing
else; math-verify: ``verify(parse(gold), parse(completion))`` with the gold wrapped in ``$...$`` unless it already
carries math delimiters. Reported overall and per kind, model, dataset and style: recall (true rows judged
correct), precision, specificity (false rows judged incorrect) and accuracy; then every miss (a true row judged
incorrect) and every false positive, with the completion's tail, the gold and what was extracted. An exception
from a checker counts as "incorrect" and is listed.

Make-up of the set (counts "rows/true"; the same text is in bench/build_judge_heldout.py, and
tests/test_judge_heldout.py checks both against the set):

    212 rows: 85 true, 127 false (rows/true below).
    model: qwen2.5-coder-0.5b-instruct 92/41, qwen2.5-coder-1.5b-instruct 65/43, smollm2-135m-instruct 55/1.
    dataset: MATH 81/37, agieval.math 10/0, agieval.sat-math 12/2, college_math 11/1, fresh_gaokao_math_2023
    9/0, gaokao_bench_math_en 9/1, gsm8k 67/40, tal 13/4.
    style: alpaca 22/12, alpaca_force 23/6, answer_is_t07 22/6, answer_only 16/2, boxed 30/17, hash 25/15,
    plain_t07 23/12, sentence 25/4, units_t07 26/11.
    kind: echo_or_degenerate 8/0, equivalent_form 2/2, expression_equation 9/1, gold_in_working_not_final 8/0,
    hedged_multiple 1/0, interval_set_tuple 10/3, latex_value 19/4, money_units_percent 28/12, no_final_answer
    7/0, number_cot 73/53, number_short 24/10, text_answer 3/0, truncated 20/0.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import read_jsonl, write_json  # noqa: E402

SET_PATH = ROOT / "tests" / "data" / "judge_heldout.jsonl"
OUT_PATH = ROOT / "bench" / "results" / "judge_heldout.json"
TAIL_CHARS = 300
FROZEN_NOTE = (
    "The held-out set is frozen after this first run: do not relabel, drop or add rows, and do not tune the judge "
    "on its misses (a judge tuned on it has no held-out score any more); build a new blind set instead. "
    "set_sha256 identifies the rows scored here."
)

# (correct, extracted, error) for one completion and gold
Predict = Callable[[str, str], tuple[bool, str | None, str | None]]


def judge_predict() -> Predict:
    """The project's strict judge, read through .correct and .extracted only."""
    from mathscale_utils.grading.judges import strict_judge

    def predict(completion: str, gold: str) -> tuple[bool, str | None, str | None]:
        try:
            v = strict_judge(completion, gold)
        except Exception as e:  # a crash is a wrong answer of the checker, listed with its message
            return False, None, f"{type(e).__name__}: {e}"
        return bool(v.correct), (None if v.extracted is None else str(v.extracted)), None

    return predict


def wrap_gold(gold: str) -> str:
    """The gold as math-verify reads LaTeX: inside $...$, unless it already has math delimiters."""
    g = gold.strip()
    return g if ("$" in g or "\\(" in g or "\\[" in g) else f"${g}$"


def math_verify_predict() -> Predict:
    """math-verify alone: parse both sides with its default extraction, then verify(gold, prediction)."""
    from math_verify import parse, verify

    def predict(completion: str, gold: str) -> tuple[bool, str | None, str | None]:
        try:
            pred = parse(completion)
            ok = bool(verify(parse(wrap_gold(gold)), pred))
        except Exception as e:
            return False, None, f"{type(e).__name__}: {e}"
        return ok, (str(pred[-1]) if pred else None), None

    return predict


def rates(pairs: list[tuple[bool, bool]]) -> dict:
    """Confusion counts and rates for (label, predicted) pairs; a rate with an empty denominator is None."""
    tp = sum(1 for y, p in pairs if y and p)
    fn = sum(1 for y, p in pairs if y and not p)
    fp = sum(1 for y, p in pairs if not y and p)
    tn = sum(1 for y, p in pairs if not y and not p)

    def div(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "n": len(pairs),
        "true": tp + fn,
        "false": fp + tn,
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "recall": div(tp, tp + fn),
        "precision": div(tp, tp + fp),
        "specificity": div(tn, tn + fp),
        "accuracy": div(tp + tn, len(pairs)),
    }


def score(rows: list[dict], predict: Predict) -> dict:
    """One checker on the set: rates overall and per kind / model / dataset / style, every miss and false
    positive, every error, and the time per row."""
    preds = []
    t0 = time.perf_counter()
    for r in rows:
        preds.append(predict(r["completion"], r["gold"]))
    wall = time.perf_counter() - t0
    out: dict = {"overall": rates([(r["label"], p[0]) for r, p in zip(rows, preds, strict=True)])}
    for key in ("kind", "model", "dataset", "style"):
        groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        for r, p in zip(rows, preds, strict=True):
            groups[r[key]].append((r["label"], p[0]))
        out[f"by_{key}"] = {k: rates(v) for k, v in sorted(groups.items())}
    misses, false_pos, errors = [], [], []
    for r, (correct, extracted, error) in zip(rows, preds, strict=True):
        entry = {
            "id": r["id"],
            "kind": r["kind"],
            "gold": r["gold"],
            "extracted": extracted,
            "completion_tail": r["completion"][-TAIL_CHARS:],
            "note": r["note"],
        }
        if error is not None:
            errors.append({**entry, "error": error})
        if r["label"] and not correct:
            misses.append(entry)
        elif not r["label"] and correct:
            false_pos.append(entry)
    out["misses"] = misses
    out["false_positives"] = false_pos
    out["errors"] = errors
    out["ms_per_row"] = round(1000 * wall / max(1, len(rows)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", type=Path, default=SET_PATH)
    ap.add_argument("--out", type=Path, default=OUT_PATH)
    args = ap.parse_args()
    rows = read_jsonl(args.set)
    strict = score(rows, judge_predict())
    mv = score(rows, math_verify_predict())
    result = {
        "note": FROZEN_NOTE,
        "set": str(args.set.relative_to(ROOT) if args.set.is_relative_to(ROOT) else args.set),
        "set_sha256": hashlib.sha256(args.set.read_bytes()).hexdigest(),
        "rows": len(rows),
        "true_rows": sum(1 for r in rows if r["label"]),
        "python": platform.python_version(),
        "strict_judge": strict,
        "math_verify": mv,
    }
    write_json(args.out, result)
    print("| checker | n | recall | precision | specificity | accuracy | misses | false positives |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in (("strict_judge", strict), ("math_verify", mv)):
        o = s["overall"]
        print(
            f"| {name} | {o['n']} | {o['recall']} | {o['precision']} | {o['specificity']} | {o['accuracy']} "
            f"| {o['fn']} | {o['fp']} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
