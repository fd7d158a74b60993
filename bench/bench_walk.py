"""Benchmark: random-walk concept composition at paper scale, on one core.

The paper composes 2M unique concept sets from a graph of 2,018 topics and 8,892 KPs (§4.1). We build a synthetic
graph of that size from synthetic extractions (20K seed questions, each with 1–2 topics and 1–5 KPs drawn from
Zipf-like distributions; KPs cluster around topics, so the degree structure looks like real co-occurrence data),
drop concepts seen once (as stage 01 does), then time ``compose`` until 2M unique compositions exist.

    .venv/bin/python bench/bench_walk.py [--seeds 20000] [--target 2000000]

Writes bench/results/walk.json and prints a table. Target: < 60 s for the walk.
"""

from __future__ import annotations

import os

# one core: set before numpy is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.core.method_config import ComposeConfig, GraphConfig  # noqa: E402
from mathscale_utils.method.compose import compose, write_compositions  # noqa: E402
from mathscale_utils.method.graph import build_graph, type_counts  # noqa: E402


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def synthetic_extractions(
    n_seeds: int = 20_000,
    n_topics: int = 2_300,
    n_kps: int = 15_000,
    seed: int = 0,
) -> list[dict]:
    """Rows shaped like concepts.jsonl. Topics are Zipf-distributed; a second topic (60 % of questions) is a
    "nearby" one (similar rank, so topics form clusters); each topic owns a Zipf-ordered list of 60 KPs, and 70 %
    of a question's 1–5 KPs come from its topics' lists, the rest from a global Zipf. Concepts seen once are
    dropped afterwards, as stage 01 does. The defaults give about 2K topics and 9K KPs after that filter."""
    rng = np.random.default_rng(seed)
    n_own = 60
    own = rng.choice(n_kps, size=(n_topics, n_own), p=_zipf_weights(n_kps, 0.4))
    t1 = rng.choice(n_topics, size=n_seeds, p=_zipf_weights(n_topics, 0.9))
    t2 = np.clip(t1 + rng.integers(-30, 31, size=n_seeds), 0, n_topics - 1)
    has_t2 = (rng.random(n_seeds) < 0.6) & (t2 != t1)
    n_k = rng.integers(1, 6, size=n_seeds)
    k_own_pos = rng.choice(n_own, size=(n_seeds, 5), p=_zipf_weights(n_own, 1.0))
    k_from_t2 = has_t2[:, None] & (rng.random((n_seeds, 5)) < 0.5)
    k_global = rng.choice(n_kps, size=(n_seeds, 5), p=_zipf_weights(n_kps, 0.5))
    k_is_own = rng.random((n_seeds, 5)) < 0.7
    k_topic = np.where(k_from_t2, t2[:, None], t1[:, None])
    kp_idx = np.where(k_is_own, own[k_topic, k_own_pos], k_global)
    rows = []
    for i in range(n_seeds):
        topics = [f"topic {t1[i]}"] + ([f"topic {t2[i]}"] if has_t2[i] else [])
        kps = list(dict.fromkeys(f"kp {k}" for k in kp_idx[i, : n_k[i]]))
        rows.append(
            {
                "seed_id": f"s{i:06d}",
                "source": "synthetic",
                "question": f"synthetic question {i}",
                "topics": topics,
                "knowledge_points": kps,
                "status": "ok",
            }
        )
    # the paper's singleton filter
    tf = Counter(t for r in rows for t in r["topics"])
    kf = Counter(k for r in rows for k in r["knowledge_points"])
    for r in rows:
        r["topics"] = [t for t in r["topics"] if tf[t] > 1]
        r["knowledge_points"] = [k for k in r["knowledge_points"] if kf[k] > 1]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20_000)
    ap.add_argument("--target", type=int, default=2_000_000, help="unique compositions to produce")
    ap.add_argument("--epochs", type=int, default=5_000, help="upper bound on epochs (the cap stops earlier)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best and the median are reported")
    ap.add_argument("--no-write", action="store_true", help="skip timing the compositions.jsonl writer")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "walk.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    rows = synthetic_extractions(n_seeds=args.seeds, seed=args.seed)
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    G = build_graph(rows, GraphConfig())
    t_build = time.perf_counter() - t0
    counts = type_counts(G)

    cfg = ComposeConfig(epochs=args.epochs, n_compositions=args.target)
    compose(G, ComposeConfig(epochs=1), seed=args.seed)  # warm-up (imports, first allocations)
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        comps = compose(G, cfg, seed=args.seed)
        times.append(time.perf_counter() - t0)
    t_walk = min(times)
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del comps
    tracemalloc.start()  # a separate run: tracing slows numpy down a little
    comps = compose(G, cfg, seed=args.seed)
    _, peak_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_write = None
    if not args.no_write:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_compositions(comps, tmp)
            t_write = time.perf_counter() - t0
    load = os.getloadavg()[0]

    st = comps.stats
    result = {
        "graph": {
            "seeds": args.seeds,
            "topics": counts["nodes"]["topic"],
            "kps": counts["nodes"]["kp"],
            "edges": counts["edges"],
        },
        "timing_s": {
            "synthetic_data": round(t_data, 2),
            "build_graph": round(t_build, 2),
            "compose_best": round(t_walk, 2),
            "compose_median": round(statistics.median(times), 2),
            "compose_runs": [round(t, 2) for t in times],
            "write_compositions_jsonl": None if t_write is None else round(t_write, 2),
        },
        "load_average_1min": round(load, 2),
        "compositions": st["kept"],
        "compositions_per_s": round(st["kept"] / t_walk),
        "target": args.target,
        "target_s": 60,
        "met_target": bool(st["kept"] >= args.target and t_walk < 60),
        "walks": st["walks"],
        "epochs_run": st["epochs_run"],
        "drops": {k: st[k] for k in ("dropped_no_topic", "dropped_no_kp", "dropped_duplicate")},
        "dead_ends": {k: st[k] for k in ("topic_phase_dead_end", "hybrid_dead_end", "kp_phase_dead_end")},
        "topics_per_composition": st["topics_per_composition"],
        "kps_per_composition": st["kps_per_composition"],
        "peak_traced_mib_compose": round(peak_traced / 2**20, 1),
        "maxrss_mib_after_compose": round(maxrss_mib, 1),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
        },
    }
    write_json(args.out, result)

    table = [
        (
            "graph",
            f"{result['graph']['topics']} topics, {result['graph']['kps']} KPs, "
            f"{sum(counts['edges'].values())} edges",
        ),
        ("build_graph", f"{t_build:.2f} s"),
        ("compose (best / median)", f"{t_walk:.2f} s / {statistics.median(times):.2f} s (target < 60 s)"),
        ("unique compositions", f"{st['kept']:,}"),
        ("compositions/s", f"{result['compositions_per_s']:,}"),
        ("walks / epochs", f"{st['walks']:,} / {st['epochs_run']}"),
        (
            "dropped no-topic/no-KP/dup",
            f"{st['dropped_no_topic']:,} / {st['dropped_no_kp']:,} / {st['dropped_duplicate']:,}",
        ),
        ("peak traced (compose)", f"{result['peak_traced_mib_compose']} MiB"),
        ("max RSS (process)", f"{result['maxrss_mib_after_compose']} MiB"),
        ("write compositions.jsonl", "skipped" if t_write is None else f"{t_write:.1f} s"),
        ("load average (1 min)", f"{load:.2f} on {os.cpu_count()} CPUs"),
    ]
    w = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"{k:<{w}}  {v}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
