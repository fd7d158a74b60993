"""Judge benchmark: throughput of both judges, and their self-agreement on gold answers.

Every available MWPBench test item (and Fresh-GaokaoMath-2023) is judged against its own gold answer, rendered as a
completion in two ways: "The answer is <gold>" and "\\boxed{<gold>}". A perfect judge says "correct" every time;
each failure is listed with an explanation category (see ``categorise_paper`` / ``categorise_strict``).

    .venv/bin/python bench/bench_judge.py [--data-dir DIR] [--limit N] [--skip-strict]

Writes bench/results/judge.json and prints a table. The data folder comes from $MATHSCALE_DATA_DIR, else
../shared/data next to the repo.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.data.benchmarks import FRESH_GAOKAO, MWPBENCH_DATASETS, load_mwpbench  # noqa: E402
from mathscale_utils.grading.judges import strict_judge  # noqa: E402
from mathscale_utils.grading.paper_judge import _LAST_NUMBER, paper_judge  # noqa: E402
from mathscale_utils.grading.statements import is_textual  # noqa: E402
from mathscale_utils.grading.symbolic import parse_gold  # noqa: E402

RENDERINGS = {
    "answer_is": lambda g: f"The answer is {g}",
    "boxed": lambda g: "\\boxed{" + g + "}",
}


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return False
    return depth == 0


def categorise_paper(gold: str, rendering: str, v) -> str:
    """Why the paper judge rejects a gold answer as its own prediction (rule-based, first match)."""
    g = gold.lower()
    if v.method == "reference_error":
        return "reference normalisation raised (upstream would drop the whole task)"
    if v.method == "none":
        if not _balanced(g):
            return "box not extracted: unbalanced braces in the gold (escaped \\{ counted as a brace)"
        return "no candidate extracted"
    if re.fullmatch(r"\$*0\.5\$*", g.strip()):
        return "'0.5' -> '\\frac{1}{2}' only for the bare string, so the two sides normalise differently"
    if v.method == "last_number":
        nums = _LAST_NUMBER.findall(g)
        if g.startswith("-") and "\\$" in g:
            return "a sign separated from its number by '\\$' ('-\\$0.50' -> '0.50')"
        if re.search(r"\d ?\.$", g.strip()) or re.search(r"\d \.", g):
            return "numeric gold with ' .': the leading-zero fix turns '4 .' into '40.'"
        if re.search(r"\d,(\\!)?\d{3}(?!\d)", g) and not re.search(r",\s", g):
            return "thousands separator: the last-number pattern takes only the last group (',000' -> 0)"
        if "\\text{ " in g:
            return "unit text after the number: the gold loses it, the last number comes from the unit"
        if len(nums) > 1:
            return (
                "several numbers in the gold (a list, or spaces inside a number): only the last one is taken"
            )
        return "last-number rule picked a different number"
    if v.method == "answer_phrase":
        if g.strip().endswith(".") or g.strip().startswith("."):
            return "answer-phrase cleaning strips leading/trailing periods the gold keeps"
        if ".\n" in g:
            return "answer-phrase cleaning cuts at the first '.\\n'"
    if v.method == "boxed" and not _balanced(g):
        return "box extraction stops at the gold's first unbalanced '}'"
    if v.rule == "raw_fallback":
        return "prediction normalisation raised; raw strings differ"
    return f"normalisation asymmetry ({v.method}/{v.rule})"


def categorise_strict(gold: str, rendering: str, v) -> str:
    """Why the strict judge rejects a gold answer as its own prediction."""
    if v.method == "error":
        return f"math-verify error ({(v.error or '').split(':')[0]})"
    if v.method == "none":
        return "empty prediction"
    if v.method == "text":
        if is_textual(gold):
            return "textual gold: exact text match after normalisation failed"
        return "gold not parseable by math-verify: text match failed"
    if v.extracted is None:
        return "math-verify extracted nothing from the prediction"
    if re.search(r"\b(h|min|hr|p\.m|a\.m)\b|\\mathrm\{", gold):
        return "units or times inside the gold (h, min, a.m.), read as symbols"
    if gold.strip().endswith("."):
        return "sentence period kept in the gold: the box keeps it, the gold reading drops it"
    if re.search(r"\d\s*,\s*\.?\d", gold):
        return "several values in the gold (a comma list): math-verify reads only the first"
    if re.search(r";|\bor\b|\n|\\text\s*\{\s*if", gold):
        return "multi-part gold (';', 'or', cases, several lines): the two sides are read differently"
    return "math-verify parsed gold and prediction to expressions it does not find equal"


def run(data_dir: Path, limit: int | None, skip_strict: bool) -> dict:
    logging.getLogger("mathscale_utils.grading.judges").setLevel(logging.ERROR)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    recs = load_mwpbench("test", data_dir, datasets=list(MWPBENCH_DATASETS) + [FRESH_GAOKAO])
    if limit:
        by: dict[str, list] = defaultdict(list)
        for r in recs:
            if len(by[r.dataset]) < limit:
                by[r.dataset].append(r)
        recs = [r for rs in by.values() for r in rs]
    judges = {"paper": (paper_judge, categorise_paper)}
    if not skip_strict:
        judges["strict"] = (strict_judge, categorise_strict)
    out: dict = {
        "n_items": len(recs),
        "items_per_dataset": dict(Counter(r.dataset for r in recs)),
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "judges": {},
    }
    for jname, (fn, cat) in judges.items():
        jres: dict = {
            "throughput_items_per_s": {},
            "seconds": {},
            "agreement": {},
            "failures": [],
            "categories": {},
        }
        for rname, render in RENDERINGS.items():
            preds = [render(r.answer) for r in recs]
            ok_by: Counter[str] = Counter()
            parse_gold.cache_clear()  # each timing pays for parsing the golds
            t0 = time.perf_counter()
            verdicts = [fn(p, r.answer) for p, r in zip(preds, recs, strict=True)]
            dt = time.perf_counter() - t0
            jres["seconds"][rname] = round(dt, 3)
            jres["throughput_items_per_s"][rname] = round(len(recs) / dt, 1) if dt else None
            n_by = Counter(r.dataset for r in recs)
            for r, v in zip(recs, verdicts, strict=True):
                if v.correct:
                    ok_by[r.dataset] += 1
                else:
                    jres["failures"].append(
                        {
                            "dataset": r.dataset,
                            "id": r.id,
                            "rendering": rname,
                            "gold": r.answer,
                            "extracted": v.extracted,
                            "method": v.method,
                            "category": cat(r.answer, rname, v),
                        }
                    )
            jres["agreement"][rname] = {
                d: {"n": n_by[d], "agree": ok_by[d], "pct": round(100 * ok_by[d] / n_by[d], 2)} for d in n_by
            }
        jres["categories"] = dict(
            Counter((f["rendering"], f["category"]) for f in jres["failures"]).most_common()
        )
        jres["categories"] = {f"{k[0]}: {k[1]}": v for k, v in jres["categories"].items()}
        out["judges"][jname] = jres
    return out


def print_table(res: dict) -> None:
    datasets = list(res["items_per_dataset"])
    judges = list(res["judges"])
    cols = [(j, r) for j in judges for r in RENDERINGS]
    print(f"\nself-agreement (% of gold answers judged correct against themselves), {res['n_items']} items")
    print(f"{'dataset':24s}{'n':>7s}" + "".join(f"{j + '/' + r:>18s}" for j, r in cols))
    for d in datasets:
        line = f"{d:24s}{res['items_per_dataset'][d]:7d}"
        for j, r in cols:
            line += f"{res['judges'][j]['agreement'][r][d]['pct']:18.2f}"
        print(line)
    print("\nthroughput (items/s):")
    for j in judges:
        print(
            f"  {j:7s} "
            + ", ".join(f"{r}: {v}" for r, v in res["judges"][j]["throughput_items_per_s"].items())
        )
    for j in judges:
        print(f"\nfailure categories, {j} judge:")
        for k, v in res["judges"][j]["categories"].items():
            print(f"  {v:5d}  {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("MATHSCALE_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    ap.add_argument("--data-dir", default=default)
    ap.add_argument("--limit", type=int, default=None, help="at most N items per dataset (quick runs)")
    ap.add_argument("--skip-strict", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge.json"))
    args = ap.parse_args()
    data_dir = Path(args.data_dir)
    if not data_dir.exists():
        sys.exit(f"data folder not found: {data_dir} (set MATHSCALE_DATA_DIR)")
    res = run(data_dir, args.limit, args.skip_strict)
    write_json(args.out, res)
    print_table(res)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
