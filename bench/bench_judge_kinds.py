"""Benchmark: the strict judge on its per-kind unit cases (tests/judge_kind_cases.py): recall and precision for each
kind it once missed on unseen material (issue 22), right and wrong variants alike, and the same cases judged without
the question (what a caller that passes none gets).

    .venv/bin/python bench/bench_judge_kinds.py

The cases were written by hand from the kinds' descriptions; they show that each kind is handled, not how often it
occurs. Writes bench/results/judge_kinds.json and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from judge_kind_cases import CASES, Case  # noqa: E402

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.grading.judges import strict_judge  # noqa: E402


def scores(pairs: list[tuple[bool, bool]]) -> dict:
    """Recall, precision and the confusion counts of ``(label, verdict)`` pairs."""
    tp = sum(lab and v for lab, v in pairs)
    fp = sum(v and not lab for lab, v in pairs)
    fn = sum(lab and not v for lab, v in pairs)
    return {
        "n": len(pairs),
        "n_true": tp + fn,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "fn": fn,
        "fp": fp,
    }


def judge_cases(cases: list[Case], with_question: bool) -> dict:
    """Every case judged, per-kind and overall scores, and the cases judged wrongly."""
    verdicts = [strict_judge(c.completion, c.gold, c.question if with_question else None) for c in cases]
    kinds = sorted({c.kind for c in cases})
    return {
        "overall": scores([(c.label, v.correct) for c, v in zip(cases, verdicts, strict=True)]),
        "per_kind": {
            k: scores([(c.label, v.correct) for c, v in zip(cases, verdicts, strict=True) if c.kind == k])
            for k in kinds
        },
        "errors": [
            {
                "kind": c.kind,
                "label": c.label,
                "gold": c.gold,
                "completion_end": c.completion[-120:],
                "question": c.question if with_question else None,
                "method": v.method,
                "extracted": v.extracted,
            }
            for c, v in zip(cases, verdicts, strict=True)
            if v.correct != c.label
        ],
    }


def fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge_kinds.json"))
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    res = {
        "cases": len(CASES),
        "python": platform.python_version(),
        "with_question": judge_cases(CASES, with_question=True),
        "without_question": judge_cases(CASES, with_question=False),
    }
    res["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(args.out, res)
    for part in ("with_question", "without_question"):
        r = res[part]
        o = r["overall"]
        print(f"\n{part}: recall {fmt(o['recall'])}  precision {fmt(o['precision'])}  (n={o['n']})")
        print(f"  {'kind':20s} {'n':>4s} {'true':>5s} {'recall':>7s} {'prec':>7s} {'fn':>3s} {'fp':>3s}")
        for k, s in r["per_kind"].items():
            print(
                f"  {k:20s} {s['n']:4d} {s['n_true']:5d} {fmt(s['recall']):>7s} {fmt(s['precision']):>7s} "
                f"{s['fn']:3d} {s['fp']:3d}"
            )
        for e in r["errors"]:
            print(
                f"  [{'miss' if e['label'] else 'false positive'}] {e['kind']} gold={e['gold']!r} {e['method']}"
            )
    print(f"\nwrote {args.out} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
