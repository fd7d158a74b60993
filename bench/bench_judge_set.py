"""Judges on the labelled set: recall and precision of the strict judge, math-verify alone and the paper judge, on
the dev and held-out parts, with throughput (items/s) and the strict judge's misses.

    .venv/bin/python bench/bench_judge_set.py [--set tests/data/judge_set.jsonl] [--repeat 3]

"math-verify alone" is ``verify(parse(gold), parse(completion))`` on the whole completion, math-verify's defaults
(the gold read as ``\\boxed{gold}`` when it has no math delimiters, else as is), run in the main thread with its
own timeouts. Throughput is the best of ``--repeat`` passes over the set, the gold cache cleared before each.
Also lists where the paper and strict judges disagree on the set, by kind (``mwpbench.disagreement_summary``), and,
when the shared data is there, checks all judges on human-written text: the MATH and GSM8K test reference
solutions against their own gold, and against another item's gold (``--pairs``).
Writes bench/results/judge_set.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.evaluation.answer_review import disagreement_summary  # noqa: E402
from mathscale_utils.grading.answers import normalise  # noqa: E402
from mathscale_utils.grading.judges import judge, strict_judge  # noqa: E402
from mathscale_utils.grading.numbers import number_value  # noqa: E402
from mathscale_utils.grading.paper_judge import paper_judge  # noqa: E402
from mathscale_utils.grading.symbolic import parse_gold  # noqa: E402

SET = ROOT / "tests" / "data" / "judge_set.jsonl"


def math_verify_alone(completion: str, gold: str) -> bool:
    """math-verify used on its own: parse the gold and the whole completion, then verify."""
    from math_verify import parse, verify

    g = gold if any(d in gold for d in ("$", "\\(", "\\[", "\\boxed")) else "\\boxed{" + gold + "}"
    return bool(verify(parse(g), parse(completion)))


JUDGES: dict[str, Callable[[str, str], bool]] = {
    "strict": lambda c, g: strict_judge(c, g).correct,
    "math_verify_alone": math_verify_alone,
    "paper": lambda c, g: paper_judge(c, g).correct,
}


def scores(rows: list[dict], verdicts: list[bool]) -> dict:
    """Recall, precision, accuracy and the confusion counts of one judge on some rows."""
    tp = sum(1 for r, v in zip(rows, verdicts, strict=True) if v and r["label"])
    fp = sum(1 for r, v in zip(rows, verdicts, strict=True) if v and not r["label"])
    fn = sum(1 for r, v in zip(rows, verdicts, strict=True) if not v and r["label"])
    tn = len(rows) - tp - fp - fn
    return {
        "n": len(rows),
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "accuracy": round((tp + tn) / len(rows), 4) if rows else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def load_set(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(rows: list[dict], repeat: int) -> dict:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    out: dict = {
        "set": {
            "n": len(rows),
            "by_split_label": {
                f"{s}/{lab}": n
                for (s, lab), n in sorted(Counter((r["split"], r["label"]) for r in rows).items())
            },
            "kinds": len({r["kind"] for r in rows}),
        },
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "judges": {},
    }
    for name, fn in JUDGES.items():
        times = []
        for _ in range(repeat):
            parse_gold.cache_clear()  # every timing pays for reading the golds
            t0 = time.perf_counter()
            verdicts = [bool(fn(r["completion"], r["gold"])) for r in rows]
            times.append(time.perf_counter() - t0)
        best = min(times)
        res = {
            "throughput_items_per_s": round(len(rows) / best, 1),
            "throughput_first_pass_items_per_s": round(
                len(rows) / times[0], 1
            ),  # math-verify's own caches cold
            "seconds_best_of": round(best, 3),
        }
        for part in ("dev", "heldout", "all"):
            idx = [i for i, r in enumerate(rows) if part == "all" or r["split"] == part]
            res[part] = scores([rows[i] for i in idx], [verdicts[i] for i in idx])
        res["by_kind"] = {}
        for kind in sorted({r["kind"] for r in rows}):
            idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
            s = scores([rows[i] for i in idx], [verdicts[i] for i in idx])
            res["by_kind"][kind] = {k: s[k] for k in ("n", "recall", "precision", "fn", "fp")}
        res["errors"] = [
            {
                "id": r["id"],
                "split": r["split"],
                "label": r["label"],
                "gold": r["gold"],
                "declared": r["declared"],
            }
            for r, v in zip(rows, verdicts, strict=True)
            if v != r["label"]
        ]
        out["judges"][name] = res
    out["disagreements"] = disagreement_summary(
        [
            {
                "id": r["id"],
                "dataset": r["dataset"],
                "gold": r["gold"],
                "completion": r["completion"],
                **judge(r["completion"], r["gold"]),
            }
            for r in rows
        ]
    )
    return out


def reference_solutions(data_dir: Path, pairs: int, seed: int = 0) -> dict:
    """The judges on human-written text: every MATH and GSM8K test reference solution against its own gold (recall;
    MATH solutions often go on after the box), and ``pairs`` solutions against another item's different gold
    (false positives)."""
    from mathscale_utils.data.benchmarks import read_gsm8k, read_math

    items = [(r.solution, r.answer, "MATH") for r in read_math(data_dir, "test")]
    items += [(f"{r.solution}\n#### {r.answer}", r.answer, "gsm8k") for r in read_gsm8k(data_dir, "test")]
    out: dict = {"n": len(items), "judges": {}}
    rng = random.Random(seed)
    cross = []
    while len(cross) < pairs:
        (sol, gold, ds), (_, other, _) = rng.choice(items), rng.choice(items)
        if (
            normalise(gold) != normalise(other)
            and number_value(gold) != number_value(other)
            or (number_value(gold) is None and normalise(gold) != normalise(other))
        ):
            cross.append((sol, other, ds))
    for name, fn in JUDGES.items():
        misses = [(ds, gold) for sol, gold, ds in items if not fn(sol, gold)]
        fps = [(ds, other) for sol, other, ds in cross if fn(sol, other)]
        out["judges"][name] = {
            "recall_own_gold": {
                d: round(1 - sum(m[0] == d for m in misses) / sum(i[2] == d for i in items), 4)
                for d in ("MATH", "gsm8k")
            },
            "misses": len(misses),
            "false_positives_other_gold": len(fps),
            "n_other_gold": len(cross),
        }
    return out


def print_table(res: dict) -> None:
    print(
        f"\n{res['set']['n']} labelled completions, {res['set']['kinds']} kinds: {res['set']['by_split_label']}"
    )
    print(f"{'judge':20s}{'part':>9s}{'recall':>9s}{'precision':>11s}{'fn':>5s}{'fp':>5s}   items/s")
    for name, j in res["judges"].items():
        for part in ("dev", "heldout", "all"):
            s = j[part]
            ips = (
                f"{j['throughput_items_per_s']} ({j['throughput_first_pass_items_per_s']} first)"
                if part == "all"
                else ""
            )
            print(
                f"{name:20s}{part:>9s}{s['recall']:>9.4f}{s['precision']:>11.4f}{s['fn']:>5d}{s['fp']:>5d}   {ips}"
            )
    print("\nwhere the paper and strict judges disagree on the set, by kind:")
    for g in res["disagreements"]:
        print(f"  {g['n']:4d}  {g['kind']}")
    if "reference_solutions" in res:
        rs = res["reference_solutions"]
        print(
            f"\nreference solutions ({rs['n']}, human-written): recall against their own gold, false positives "
            f"against another item's gold ({next(iter(rs['judges'].values()))['n_other_gold']} pairs)"
        )
        for name, j in rs["judges"].items():
            print(f"  {name:20s} {j['recall_own_gold']}  false positives: {j['false_positives_other_gold']}")
    print("\nstrict judge errors:")
    for e in res["judges"]["strict"]["errors"]:
        print(
            f"  {e['id']:36s} {e['split']:8s} label={e['label']!s:5s} gold={e['gold']!r} declared={e['declared']!r}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default=str(SET))
    ap.add_argument("--repeat", type=int, default=2, help="timing runs per judge (the best is reported)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge_set.json"))
    ap.add_argument(
        "--data-dir", default=os.environ.get("MATHSCALE_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    )
    ap.add_argument(
        "--pairs", type=int, default=500, help="solutions judged against another item's gold (0: skip)"
    )
    args = ap.parse_args()
    res = run(load_set(Path(args.set)), args.repeat)
    data_dir = Path(args.data_dir)
    if (data_dir / "PROVENANCE.md").exists() and args.pairs:
        res["reference_solutions"] = reference_solutions(data_dir, args.pairs)
    write_json(args.out, res)
    print_table(res)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
