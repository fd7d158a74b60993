"""Rows shaped like concepts.jsonl, for the concept-graph and random-walk tests."""

from __future__ import annotations

import numpy as np


def row(sid, topics, kps, status="ok"):
    return {
        "seed_id": sid,
        "source": "test",
        "question": f"question {sid}",
        "solution": None,
        "answer": None,
        "topics": topics,
        "knowledge_points": kps,
        "raw_topics": topics,
        "raw_knowledge_points": kps,
        "status": status,
        "error": None if status == "ok" else "boom",
    }


def synthetic_rows(n_seeds=400, n_topics=25, n_kps=60, seed=0):
    """Random extractions with clustered, Zipf-ish concepts (1-2 topics, 1-5 KPs per question)."""
    rng = np.random.default_rng(seed)
    pt = 1 / np.arange(1, n_topics + 1)
    pt /= pt.sum()
    rows = []
    for i in range(n_seeds):
        t1 = int(rng.choice(n_topics, p=pt))
        ts = [t1]
        if rng.random() < 0.6:
            ts.append(int(np.clip(t1 + rng.integers(-3, 4), 0, n_topics - 1)))
        ks = [int((t1 * 2 + rng.integers(0, 8)) % n_kps) for _ in range(int(rng.integers(1, 6)))]
        rows.append(row(f"q{i}", [f"t{t}" for t in ts], [f"k{k}" for k in ks]))
    return rows
