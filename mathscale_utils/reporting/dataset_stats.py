"""What the generated data set looks like (notebook 03): how much of the concept graph it covers, and simple
difficulty proxies (question length, KPs per question, solution steps), generated questions next to the seeds."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_jsonl
from mathscale_utils.method.graph import KP, TOPIC, load_graph


def graph_vocabulary(run_dir: str | Path, seeds: Sequence[dict] | None = None) -> tuple[set[str], set[str]]:
    """(topics, KPs) of the concept graph (``concept_graph.graphml``), else of the filtered concepts."""
    run = RunDir(run_dir)
    if run.graph.exists():
        G = load_graph(run.graph)
        topics = {d.get("label", n) for n, d in G.nodes(data=True) if d.get("type") == TOPIC}
        kps = {d.get("label", n) for n, d in G.nodes(data=True) if d.get("type") == KP}
        return topics, kps
    seeds = seeds if seeds is not None else read_jsonl(run.concepts)
    return {t for s in seeds for t in s.get("topics") or []}, {
        k for s in seeds for k in s.get("knowledge_points") or []
    }


def coverage(rows: Iterable[dict], topics: set[str], kps: set[str]) -> dict:
    """Share of the graph's topics and KPs that at least one generated question uses (one pass: rows may stream)."""
    n, used_t, used_k = 0, set(), set()
    for r in rows:
        if r.get("source", "generated") == "generated":
            n += 1
            used_t.update(r["topics"])
            used_k.update(r["knowledge_points"])
    used_t &= topics
    used_k &= kps
    return {
        "generated_questions": n,
        "graph_topics": len(topics),
        "topics_used": len(used_t),
        "topic_coverage": round(len(used_t) / len(topics), 4) if topics else None,
        "graph_kps": len(kps),
        "kps_used": len(used_k),
        "kp_coverage": round(len(used_k) / len(kps), 4) if kps else None,
    }


def solution_steps(solution: str) -> int:
    """A difficulty proxy: non-empty lines, or sentences when the solution is one paragraph."""
    lines = [x for x in solution.split("\n") if x.strip()]
    if len(lines) > 1:
        return len(lines)
    return max(1, len(re.findall(r"[.!?](?:\s|$)", solution)))


def difficulty_proxies(rows: Sequence[dict]) -> list[dict]:
    """Per row: source, question words, KPs in its composition, solution steps, solution words."""
    return [
        {
            "id": r["id"],
            "source": r["source"],
            "question_words": len(r["question"].split()),
            "n_kps": len(r["knowledge_points"]),
            "n_topics": len(r["topics"]),
            "solution_steps": solution_steps(r["solution"]),
            "solution_words": len(r["solution"].split()),
        }
        for r in rows
    ]


def plot_funnel(funnel: Sequence[tuple[str, int, int]]):
    """The generation funnel: questions kept (blue) and removed (red) at every step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.6 * len(funnel) + 1.2))
    y = list(range(len(funnel)))[::-1]
    kept, removed = [k for _, k, _ in funnel], [r for _, _, r in funnel]
    ax.barh(y, kept, color="tab:blue", label="kept")
    ax.barh(y, removed, left=kept, color="tab:red", alpha=0.6, label="removed")
    ax.set_yticks(y, [step for step, _, _ in funnel])
    for yi, k, r in zip(y, kept, removed, strict=True):
        ax.text(k + r, yi, f"  {k} kept, {r} removed", va="center", fontsize=9)
    ax.set_xlabel("questions")
    ax.set_title("generation funnel")
    ax.legend(loc="lower right")
    ax.set_xlim(0, max([1, *kept]) * 1.5)
    fig.tight_layout()
    return fig
