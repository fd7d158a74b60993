"""Benchmark: decontamination and near-duplicate removal of 200K generated questions (stage 03's filters).

Generated questions are synthetic but realistically sized (word counts log-normal around ~45 words, like GSM8K /
MATH questions; a Zipf-distributed vocabulary plus numbers). Planted among them:
  * contaminated questions: exact copies of MWPBench test questions (case and punctuation changed) and questions
    that embed a 15-word span of a test question inside new text;
  * near-duplicates: copies of earlier generated questions with one word changed.
The test side is every MWPBench test question available under the data folder ($MATHSCALE_DATA_DIR, else
../shared/data); without it, 15K synthetic test questions stand in.

    .venv/bin/python bench/bench_filters.py [--n 200000] [--contaminated 1000] [--dups 4000]

Reports, per phase (test index build, decontamination check, MinHash LSH dedup), wall time, throughput and peak
resident memory above the phase's start (Linux VmHWM, reset before each phase), plus recall on the planted items.
Writes bench/results/filters.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.method.filters import (  # noqa: E402
    Decontaminator,
    TestItem,
    load_test_questions,
    near_duplicates,
    normalize_text,
)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each phase's peak is its own; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phase:
    def __init__(self, name: str, items: int, results: dict):
        self.name, self.items, self.results = name, items, results

    def __enter__(self) -> Phase:
        self.reset = _reset_peak()
        self.rss0 = _status_kib("VmRSS") or 0
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self.t0
        hwm = _status_kib("VmHWM") if self.reset else None
        peak = (hwm - self.rss0) / 1024 if hwm is not None else None
        self.results[self.name] = {
            "seconds": round(dt, 2),
            "items": self.items,
            "items_per_s": round(self.items / dt) if dt else None,
            "peak_extra_rss_mib": round(peak, 1) if peak is not None else None,
        }


def synthetic_questions(n: int, rng: np.random.Generator, vocab_size: int = 6000) -> list[str]:
    vocab = np.array([f"w{i}" for i in range(vocab_size)])
    ranks = np.arange(1, vocab_size + 1)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    lengths = np.clip(rng.lognormal(mean=np.log(42), sigma=0.5, size=n), 8, 250).astype(int)
    words = vocab[rng.choice(vocab_size, size=int(lengths.sum()), p=p)]
    nums = rng.random(len(words)) < 0.08
    words[nums] = rng.integers(0, 1000, size=int(nums.sum())).astype(str)
    out, pos = [], 0
    for ln in lengths:
        out.append(" ".join(words[pos : pos + ln]) + "?")
        pos += ln
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="generated questions")
    ap.add_argument(
        "--contaminated", type=int, default=1_000, help="planted contaminated questions (half exact)"
    )
    ap.add_argument("--dups", type=int, default=4_000, help="planted near-duplicates")
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "filters.json"))
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    data_dir = Path(os.environ.get("MATHSCALE_DATA_DIR") or ROOT.parent / "shared" / "data")
    items, notes = load_test_questions(data_dir) if data_dir.exists() else ([], ["no data folder"])
    test_source = f"MWPBench test files under {data_dir}"
    if not items:
        test_source = "15,000 synthetic test questions (no MWPBench files found)"
        items = [
            TestItem(f"synthetic.{i}", "synthetic", q) for i, q in enumerate(synthetic_questions(15_000, rng))
        ]

    t0 = time.perf_counter()
    gen = synthetic_questions(a.n, rng)
    # near-duplicates: an earlier question with one word replaced
    dup_pos = rng.choice(np.arange(a.n // 2, a.n), size=a.dups, replace=False)
    planted_dups = set()
    for i in dup_pos:
        src = gen[int(rng.integers(0, a.n // 2))].split()
        src[int(rng.integers(0, len(src)))] = "changed"
        gen[i] = " ".join(src)
        planted_dups.add(int(i))
    # contamination: exact copies (case/punctuation changed) and a 15-word span inside new text
    free = np.setdiff1d(np.arange(a.n), dup_pos)
    cont_pos = rng.choice(free, size=a.contaminated, replace=False)
    long_items = [t for t in items if len(normalize_text(t.question).split()) >= 20]
    planted_exact, planted_span = set(), set()
    for k, i in enumerate(cont_pos):
        if k % 2 == 0:
            t = items[int(rng.integers(0, len(items)))]
            gen[i] = "  " + t.question.upper().replace(",", " ,").replace("?", " ?!") + " "
            planted_exact.add(int(i))
        else:
            t = long_items[int(rng.integers(0, len(long_items)))]
            w = normalize_text(t.question).split()  # 15 tokens as matching sees them
            s = int(rng.integers(0, len(w) - 15 + 1))
            gen[i] = (
                "In a new setting, " + " ".join(w[s : s + 15]) + " Then find the total number of w1 w2 w3."
            )
            planted_span.add(int(i))
    ids = [f"g{i}" for i in range(a.n)]
    t_data = time.perf_counter() - t0
    words = np.array([len(q.split()) for q in gen])

    res: dict = {}
    with Phase("decontam_index_build", len(items), res):
        dec = Decontaminator(items, a.ngram)
    with Phase("decontam_check", a.n, res):
        hits = dec.check(gen, ids)
    with Phase("dedup_minhash_lsh", a.n, res):
        dups = near_duplicates(gen, ids, a.threshold, a.num_perm, a.shingle)

    hit_ids = {int(h["id"][1:]): h["kind"] for h in hits}
    exact_found = sum(hit_ids.get(i) == "exact" for i in planted_exact)
    span_found = sum(i in hit_ids for i in planted_span)
    other_hits = sum(i not in planted_exact | planted_span for i in hit_ids)
    dup_ids = {int(d["id"][1:]) for d in dups}
    dups_found = len(dup_ids & planted_dups)
    long_dups = {i for i in planted_dups if len(gen[i].split()) >= 30}
    long_found = len(dup_ids & long_dups)
    other_dups = len(dup_ids - planted_dups)

    result = {
        "generated_questions": a.n,
        "words_per_question": {
            "mean": round(float(words.mean()), 1),
            "p50": int(np.median(words)),
            "p95": int(np.percentile(words, 95)),
        },
        "test_questions": len(items),
        "test_source": test_source,
        "test_notes": notes,
        "settings": {
            "ngram": a.ngram,
            "dedup_threshold": a.threshold,
            "num_perm": a.num_perm,
            "shingle": a.shingle,
        },
        "phases": res,
        "total_filter_seconds": round(sum(p["seconds"] for p in res.values()), 2),
        "synthetic_data_seconds": round(t_data, 2),
        "decontamination": {
            "planted_exact": len(planted_exact),
            "found_exact": exact_found,
            "planted_15gram_span": len(planted_span),
            "found_span": span_found,
            "other_hits": other_hits,
            "removed": len(hits),
        },
        "dedup": {
            "planted_one_word_edits": len(planted_dups),
            "found": dups_found,
            "planted_30_words_or_more": len(long_dups),
            "found_30_words_or_more": long_found,
            "other_removed": other_dups,
            "removed": len(dups),
        },
        "maxrss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_1m_at_end": round(
            os.getloadavg()[0], 2
        ),  # other processes share the cores: compare with care
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
    }
    write_json(a.out, result)

    def mem(p: dict) -> str:
        return f"{p['peak_extra_rss_mib']} MiB" if p["peak_extra_rss_mib"] is not None else "n/a"

    table = [
        (
            "generated questions",
            f"{a.n:,} (mean {result['words_per_question']['mean']} words, p95 {result['words_per_question']['p95']})",
        ),
        ("test questions", f"{len(items):,} ({test_source})"),
    ]
    for name, p in res.items():
        table.append((name, f"{p['seconds']:.2f} s, {p['items_per_s']:,} items/s, peak +{mem(p)}"))
    d = result["decontamination"]
    table += [
        (
            "decontam recall",
            f"exact {d['found_exact']}/{d['planted_exact']}, 15-gram span {d['found_span']}/{d['planted_15gram_span']}, "
            f"other hits {d['other_hits']}",
        ),
        (
            "dedup recall",
            f"{dups_found}/{len(planted_dups)} one-word edits found ({long_found}/{len(long_dups)} of "
            f">= 30 words), {other_dups} other removed",
        ),
        ("max RSS (process)", f"{result['maxrss_mib_process']} MiB"),
    ]
    w = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"{k:<{w}}  {v}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
