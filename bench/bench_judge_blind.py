"""Benchmark: the strict judge on the BLIND labelled set (tests/data/judge_blind.jsonl), with math-verify alone for
comparison.

The set is built by bench/build_judge_blind.py by someone who had not seen the judge; see that file's docstring for
how the rows were written and how their labels were checked. This script treats ``strict_judge`` as a black box: it
calls ``strict_judge(completion, gold)`` and reads ``.correct`` and ``.extracted`` (and ``.method`` / ``.source`` /
``.error`` where present, for the report only).

math-verify alone: ``verify(parse(gold_as_latex), parse(completion))``, where a gold without ``$`` is wrapped as
``$gold$``.

    cd /work/main && MATHSCALE_DATA_DIR=/work/shared/data .venv/bin/python bench/bench_judge_blind.py [--quiet]

Reports recall (share of label=true rows the judge accepts), precision (share of the judge's accepts that are
label=true), specificity (share of label=false rows it rejects) and accuracy, overall and per kind, and lists EVERY
miss (label true, judge false) and false positive (label false, judge true) with the completion's last lines, the gold
and what the judge extracted. Writes bench/results/judge_blind.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SET = ROOT / "tests" / "data" / "judge_blind.jsonl"
OUT = ROOT / "bench" / "results" / "judge_blind.json"


def last_lines(text: str, n: int = 3) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-n:]


def metrics(pairs: list[tuple[bool, bool]]) -> dict:
    """pairs: (label, verdict)."""
    tp = sum(1 for lab, v in pairs if lab and v)
    fn = sum(1 for lab, v in pairs if lab and not v)
    fp = sum(1 for lab, v in pairs if not lab and v)
    tn = sum(1 for lab, v in pairs if not lab and not v)

    def ratio(a, b):
        return round(a / b, 4) if b else None

    return {
        "n": len(pairs),
        "n_true": tp + fn,
        "n_false": fp + tn,
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, len(pairs)),
    }


def run_strict(rows: list[dict]) -> list[dict]:
    from mathscale_utils.grading.judges import strict_judge

    out = []
    for r in rows:
        t = time.perf_counter()
        try:
            v = strict_judge(r["completion"], r["gold"])
            res = {
                "correct": bool(v.correct),
                "extracted": None if v.extracted is None else str(v.extracted),
                "method": str(getattr(v, "method", "")),
                "source": str(getattr(v, "source", "")),
                "error": None if getattr(v, "error", None) is None else str(v.error),
            }
        except Exception as e:  # a crash counts as "not accepted" and is reported
            res = {"correct": False, "extracted": None, "method": "", "source": "", "error": f"raised {e!r}"}
        res["seconds"] = round(time.perf_counter() - t, 4)
        out.append(res)
    return out


def run_math_verify(rows: list[dict]) -> list[dict]:
    from math_verify import parse, verify

    out = []
    for r in rows:
        gold = r["gold"] if "$" in r["gold"] else f"${r['gold']}$"
        t = time.perf_counter()
        try:
            g = parse(gold)
            p = parse(r["completion"])
            ok = bool(verify(g, p))
            res = {
                "correct": ok,
                "extracted": str(p[-1]) if p else None,
                "gold_parsed": str(g[-1]) if g else None,
                "error": None,
            }
        except Exception as e:
            res = {"correct": False, "extracted": None, "gold_parsed": None, "error": f"raised {e!r}"}
        res["seconds"] = round(time.perf_counter() - t, 4)
        out.append(res)
    return out


def summarise(rows: list[dict], verdicts: list[dict]) -> dict:
    kinds = sorted({r["kind"] for r in rows})
    overall = metrics([(r["label"], v["correct"]) for r, v in zip(rows, verdicts, strict=True)])
    per_kind = {
        k: metrics(
            [(r["label"], v["correct"]) for r, v in zip(rows, verdicts, strict=True) if r["kind"] == k]
        )
        for k in kinds
    }
    per_dataset = {
        d: metrics(
            [(r["label"], v["correct"]) for r, v in zip(rows, verdicts, strict=True) if r["dataset"] == d]
        )
        for d in sorted({r["dataset"] for r in rows})
    }
    errors = []
    for r, v in zip(rows, verdicts, strict=True):
        if r["label"] != v["correct"]:
            errors.append(
                {
                    "id": r["id"],
                    "type": "miss" if r["label"] else "false_positive",
                    "kind": r["kind"],
                    "dataset": r["dataset"],
                    "source": r.get("source"),
                    "gold": r["gold"],
                    "last_lines": last_lines(r["completion"]),
                    "extracted": v.get("extracted"),
                    "method": v.get("method"),
                    "verdict_source": v.get("source"),
                    "error": v.get("error"),
                    "note": r["note"],
                }
            )
    return {
        "overall": overall,
        "per_kind": per_kind,
        "per_dataset": per_dataset,
        "errors": errors,
        "seconds_total": round(sum(v["seconds"] for v in verdicts), 3),
    }


def fmt(x):
    return "  -  " if x is None else f"{100 * x:5.1f}"


def print_table(name: str, s: dict) -> None:
    o = s["overall"]
    print(
        f"\n== {name}: recall {fmt(o['recall'])}  precision {fmt(o['precision'])}  specificity "
        f"{fmt(o['specificity'])}  accuracy {fmt(o['accuracy'])}  (n={o['n']}, {o['n_true']} true / "
        f"{o['n_false']} false; {o['fn']} misses, {o['fp']} false positives; {s['seconds_total']} s)"
    )
    print(
        f"   {'kind':20s} {'n':>3s} {'T':>3s} {'F':>3s} {'miss':>4s} {'FP':>3s} {'recall':>6s} {'prec':>6s} "
        f"{'spec':>6s}"
    )
    for k, m in s["per_kind"].items():
        print(
            f"   {k:20s} {m['n']:3d} {m['n_true']:3d} {m['n_false']:3d} {m['fn']:4d} {m['fp']:3d} "
            f"{fmt(m['recall']):>6s} {fmt(m['precision']):>6s} {fmt(m['specificity']):>6s}"
        )
    for d, m in s["per_dataset"].items():
        print(f"   dataset {d:12s} n={m['n']:3d} recall {fmt(m['recall'])} precision {fmt(m['precision'])}")


def print_errors(name: str, s: dict) -> None:
    errs = s["errors"]
    print(
        f"\n-- {name}: {sum(e['type'] == 'miss' for e in errs)} misses, "
        f"{sum(e['type'] == 'false_positive' for e in errs)} false positives"
    )
    for e in errs:
        print(
            f"[{e['type']}] {e['id']} ({e['kind']}, {e['source']}) gold={e['gold']!r} extracted={e['extracted']!r}"
            + (f" method={e['method']}/{e['verdict_source']}" if e.get("method") else "")
            + (f" error={e['error']}" if e.get("error") else "")
        )
        for ln in e["last_lines"]:
            print(f"      | {ln[-200:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quiet", action="store_true", help="tables only, no per-row error listing")
    ap.add_argument("--no-math-verify", action="store_true", help="skip the math-verify comparison")
    args = ap.parse_args()
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]

    strict_v = run_strict(rows)
    strict = summarise(rows, strict_v)
    result = {
        "set": str(SET.relative_to(ROOT)),
        "rows": len(rows),
        "label_true": sum(r["label"] for r in rows),
        "label_false": sum(not r["label"] for r in rows),
        "python": platform.python_version(),
        "strict_judge": strict,
    }
    print_table("strict_judge", strict)
    if not args.no_math_verify:
        mv_v = run_math_verify(rows)
        mv = summarise(rows, mv_v)
        result["math_verify_alone"] = mv
        try:
            from importlib.metadata import version

            result["math_verify_version"] = version("math-verify")
        except Exception:
            pass
        print_table("math-verify alone", mv)
    result["per_row"] = [
        {
            "id": r["id"],
            "kind": r["kind"],
            "label": r["label"],
            "strict": v["correct"],
            "strict_extracted": v["extracted"],
        }
        | (
            {"math_verify": mv_v[k]["correct"], "math_verify_extracted": mv_v[k]["extracted"]}
            if not args.no_math_verify
            else {}
        )
        for k, (r, v) in enumerate(zip(rows, strict_v, strict=True))
    ]
    if not args.quiet:
        print_errors("strict_judge", strict)
        if "math_verify_alone" in result:
            print_errors("math-verify alone", result["math_verify_alone"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
