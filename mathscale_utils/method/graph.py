"""The concept graph (MathScale §3.2, METHOD.md §3): topics and knowledge points linked by co-occurrence in a
seed question; construction, save/load, and the statistics and figures notebook 02 shows. The walk over it is in ``compose.py``.

The idea in two sentences: topics and knowledge points (KPs) that were extracted from the same seed question are
linked, with an edge weight that grows with the number of such questions; a random walk over that graph then
collects a few related topics and KPs ("a concept composition") that become the prompt for a new question.

Graph
    Nodes are typed: a topic has id ``"T::<name>"``, a KP ``"K::<name>"`` (so a string that is both a topic and a KP
    gives two distinct nodes); the plain string is in the ``label`` attribute. Node attributes: ``type`` ("topic" or
    "kp"), ``label``, ``freq`` (number of seed questions it was extracted from), ``examples`` (a few seed ids).
    Edges are undirected and of three kinds, each its own sub-graph: ``"topic-topic"``, ``"topic-kp"``,
    ``"kp-kp"``. Edge attributes: ``kind``, ``count`` (number of seed questions in which both ends occur, once per
    question), ``weight`` = log(count + epsilon) (Eq. 1, epsilon = 1e-5), ``examples`` (a few seed ids).

Artifacts (all in the run directory)
    ``concept_graph.graphml``  the graph; list attributes are JSON strings so networkx and Gephi both read it.
    ``graph_summary.json``      counts per node and edge type, components, degrees (see :func:`graph_summary`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, write_json, write_text
from mathscale_utils.core.method_config import GraphConfig

TOPIC = "topic"
KP = "kp"
EDGE_KINDS = ("topic-topic", "topic-kp", "kp-kp")
SUBGRAPHS = {"topic": "topic-topic", "hybrid": "topic-kp", "kp": "kp-kp"}
TOPIC_COLOR = "#f28e2b"  # in every figure and view
KP_COLOR = "#4e79a7"

# ----------------------------------------------------------------------------------------------------------------
# Node ids
# ----------------------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def topic_id(name: str) -> str:
    """Node id of a topic."""
    return f"T::{name}"


def kp_id(name: str) -> str:
    """Node id of a knowledge point."""
    return f"K::{name}"


def _clean(name: Any) -> str:
    # XML (GraphML) cannot hold control characters; concept strings come from an LLM.
    return _CONTROL.sub("", str(name)).strip()


def _unique(items: Iterable[Any]) -> list[str]:
    """Cleaned, non-empty, first-occurrence order: a concept repeated in one question counts once."""
    seen: dict[str, None] = {}
    for x in items or []:
        s = _clean(x)
        if s:
            seen.setdefault(s, None)
    return list(seen)


# ----------------------------------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------------------------------


def build_graph(rows: Iterable[dict], config: GraphConfig | None = None) -> nx.Graph:
    """Build the typed co-occurrence graph from concept rows (the schema of ``concepts.jsonl``).

    Rows whose status is not "ok" are skipped. Within a question, each concept and each pair counts once.
    The graph attributes record epsilon and how many seed questions were used.
    """
    cfg = config or GraphConfig()
    n_ex = cfg.n_examples
    per_q: list[tuple[str, list[str], list[str]]] = []
    n_rows = n_skipped = 0
    for row in rows:
        n_rows += 1
        if row.get("status", "ok") != "ok":
            n_skipped += 1
            continue
        per_q.append(
            (
                str(row.get("seed_id", n_rows - 1)),
                _unique(row.get("topics")),
                _unique(row.get("knowledge_points")),
            )
        )

    node_freq: Counter[str] = Counter()
    for _, ts, ks in per_q:
        node_freq.update(topic_id(t) for t in ts)
        node_freq.update(kp_id(k) for k in ks)
    keep = {n for n, c in node_freq.items() if c >= cfg.min_freq}
    dropped = _ablate(keep, cfg)
    keep -= dropped

    node_examples: dict[str, list[str]] = defaultdict(list)
    edge_count: Counter[tuple[str, str]] = Counter()
    edge_examples: dict[tuple[str, str], list[str]] = defaultdict(list)
    n_used = 0
    for sid, ts, ks in per_q:
        tn = [topic_id(t) for t in ts if topic_id(t) in keep]
        kn = [kp_id(k) for k in ks if kp_id(k) in keep]
        if not tn and not kn:
            continue
        n_used += 1
        for n in itertools.chain(tn, kn):
            if len(node_examples[n]) < n_ex:
                node_examples[n].append(sid)
        pairs = itertools.chain(
            itertools.combinations(tn, 2), itertools.product(tn, kn), itertools.combinations(kn, 2)
        )
        for a, b in pairs:
            key = (a, b) if a <= b else (b, a)
            edge_count[key] += 1
            if len(edge_examples[key]) < n_ex:
                edge_examples[key].append(sid)

    G = nx.Graph(
        epsilon=cfg.epsilon,
        n_seed_rows=n_rows,
        n_seed_skipped=n_skipped,
        n_seed_used=n_used,
        n_topics_dropped=sum(n.startswith("T::") for n in dropped),
        n_kps_dropped=sum(n.startswith("K::") for n in dropped),
    )
    for n in sorted(keep, key=lambda n: (n[0] != "T", -node_freq[n], n)):
        G.add_node(
            n,
            type=TOPIC if n.startswith("T::") else KP,
            label=n[3:],
            freq=node_freq[n],
            examples=node_examples.get(n, []),
        )
    for (a, b), c in sorted(edge_count.items()):
        G.add_edge(
            a,
            b,
            kind=_edge_kind(G.nodes[a]["type"], G.nodes[b]["type"]),
            count=c,
            weight=math.log(c + cfg.epsilon),
            examples=edge_examples[(a, b)],
        )
    return G


def _ablate(nodes: set[str], cfg: GraphConfig) -> set[str]:
    """The concepts the Table 6 ablation removes: a seeded random fraction of the distinct topics and of the KPs."""
    rng = random.Random(cfg.drop_seed)
    out: set[str] = set()
    for prefix, frac in (("T::", cfg.drop_topics), ("K::", cfg.drop_kps)):
        of_type = sorted(n for n in nodes if n.startswith(prefix))
        out.update(rng.sample(of_type, round(len(of_type) * frac)))
    return out


def _edge_kind(ta: str, tb: str) -> str:
    if ta == tb:
        return "topic-topic" if ta == TOPIC else "kp-kp"
    return "topic-kp"


def nodes_of_type(G: nx.Graph, node_type: str) -> list[str]:
    """Node ids of one type ("topic" or "kp"), in graph order."""
    return [n for n, t in G.nodes(data="type") if t == node_type]


def subgraph(G: nx.Graph, which: str) -> nx.Graph:
    """One of the three sub-graphs: "topic" (topic-topic), "kp" (kp-kp) or "hybrid" (bipartite topic-kp).

    "topic" and "kp" keep every node of their type, including those without an edge of that kind.
    """
    if which not in SUBGRAPHS:
        raise ValueError(f"unknown sub-graph {which!r}; use one of {list(SUBGRAPHS)}")
    kind = SUBGRAPHS[which]
    H = nx.Graph()
    if which == "topic":
        H.add_nodes_from((n, G.nodes[n]) for n in nodes_of_type(G, TOPIC))
    elif which == "kp":
        H.add_nodes_from((n, G.nodes[n]) for n in nodes_of_type(G, KP))
    else:
        H.add_nodes_from(G.nodes(data=True))
    H.add_edges_from((a, b, d) for a, b, d in G.edges(data=True) if d["kind"] == kind)
    return H


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


def save_graph(G: nx.Graph, run_dir: str | Path) -> dict[str, Path]:
    """Write ``concept_graph.graphml`` (list attributes as JSON strings) and ``graph_summary.json``."""
    run = RunDir(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    H = nx.Graph(**{k: v for k, v in G.graph.items() if isinstance(v, (str, int, float, bool))})
    for n, d in G.nodes(data=True):
        H.add_node(
            n, **{k: (json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v) for k, v in d.items()}
        )
    for a, b, d in G.edges(data=True):
        H.add_edge(
            a,
            b,
            **{k: (json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v) for k, v in d.items()},
        )
    xml = "<?xml version='1.0' encoding='utf-8'?>\n" + "\n".join(nx.generate_graphml(H)) + "\n"
    graph_path = write_text(run.graph, xml)
    summary_path = write_json(run.graph_summary, graph_summary(G))
    return {"graph": graph_path, "summary": summary_path}


def load_graph(path: str | Path) -> nx.Graph:
    """Read a graph written by :func:`save_graph` (a run directory or the .graphml file) and restore lists."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).graph
    if not path.exists():
        raise DataError(f"{path}: file not found")
    G = nx.read_graphml(path)
    for _, d in G.nodes(data=True):
        _restore_lists(d)
    for _, _, d in G.edges(data=True):
        _restore_lists(d)
    return nx.Graph(G)


def _restore_lists(d: dict) -> None:
    ex = d.get("examples")
    if isinstance(ex, str):
        try:
            d["examples"] = json.loads(ex)
        except json.JSONDecodeError:
            d["examples"] = [ex] if ex else []
    for key in ("freq", "count"):
        if key in d:
            d[key] = int(d[key])


# ----------------------------------------------------------------------------------------------------------------
# Statistics (for the notebook)
# ----------------------------------------------------------------------------------------------------------------


def type_counts(G: nx.Graph) -> dict[str, dict[str, int]]:
    """Number of nodes per type and of edges per kind (with the total co-occurrence count per kind)."""
    nodes = Counter(t for _, t in G.nodes(data="type"))
    edges = Counter(k for _, _, k in G.edges(data="kind"))
    mass = Counter()
    for _, _, d in G.edges(data=True):
        mass[d["kind"]] += d["count"]
    return {
        "nodes": {TOPIC: nodes.get(TOPIC, 0), KP: nodes.get(KP, 0)},
        "edges": {k: edges.get(k, 0) for k in EDGE_KINDS},
        "edge_count_sum": {k: mass.get(k, 0) for k in EDGE_KINDS},
    }


def degree_table(G: nx.Graph):
    """A pandas DataFrame, one row per node: label, type, freq and degree in each sub-graph (plain and weighted
    by co-occurrence count)."""
    import pandas as pd

    deg = {n: dict.fromkeys(EDGE_KINDS, 0) for n in G}
    wdeg = {n: dict.fromkeys(EDGE_KINDS, 0) for n in G}
    for a, b, d in G.edges(data=True):
        for n in (a, b):
            deg[n][d["kind"]] += 1
            wdeg[n][d["kind"]] += d["count"]
    recs = []
    for n, d in G.nodes(data=True):
        recs.append(
            {
                "node": n,
                "label": d["label"],
                "type": d["type"],
                "freq": d["freq"],
                "deg_topic": deg[n]["topic-topic"],
                "deg_hybrid": deg[n]["topic-kp"],
                "deg_kp": deg[n]["kp-kp"],
                "degree": sum(deg[n].values()),
                "weighted_degree": sum(wdeg[n].values()),
            }
        )
    cols = ["node", "label", "type", "freq", "deg_topic", "deg_hybrid", "deg_kp", "degree", "weighted_degree"]
    return pd.DataFrame.from_records(recs, columns=cols)


def degree_distribution(G: nx.Graph, which: str = "all") -> dict[int, int]:
    """{degree: number of nodes} in the whole graph ("all") or one sub-graph ("topic", "kp", "hybrid")."""
    H = G if which == "all" else subgraph(G, which)
    return dict(sorted(Counter(d for _, d in H.degree()).items()))


def components(G: nx.Graph, which: str = "all") -> dict[str, Any]:
    """Connected components: how many, the largest sizes, and how many nodes are isolated."""
    H = G if which == "all" else subgraph(G, which)
    sizes = sorted((len(c) for c in nx.connected_components(H)), reverse=True)
    return {
        "n_nodes": H.number_of_nodes(),
        "n_edges": H.number_of_edges(),
        "n_components": len(sizes),
        "largest": sizes[:5],
        "largest_fraction": (sizes[0] / H.number_of_nodes()) if sizes else 0.0,
        "n_isolated": sum(1 for s in sizes if s == 1),
    }


def louvain(G: nx.Graph, which: str = "topic", seed: int = 0, resolution: float = 1.0, top: int = 5):
    """Louvain communities (networkx, weighted by co-occurrence count) of a sub-graph or of the whole graph.

    Returns a DataFrame sorted by size: community index, size, number of topics/KPs and the most frequent members.
    Isolated nodes form their own singleton communities; an edgeless graph gives only singletons.
    """
    import pandas as pd

    H = G if which == "all" else subgraph(G, which)
    cols = ["community", "size", "n_topics", "n_kps", "top_members"]
    if H.number_of_nodes() == 0:
        return pd.DataFrame(columns=cols)
    comms = nx.community.louvain_communities(H, weight="count", resolution=resolution, seed=seed)
    comms = sorted(comms, key=lambda c: (-len(c), min(c)))
    recs = []
    for i, c in enumerate(comms):
        members = sorted(c, key=lambda n: (-G.nodes[n]["freq"], n))
        recs.append(
            {
                "community": i,
                "size": len(c),
                "n_topics": sum(1 for n in c if G.nodes[n]["type"] == TOPIC),
                "n_kps": sum(1 for n in c if G.nodes[n]["type"] == KP),
                "top_members": ", ".join(G.nodes[n]["label"] for n in members[:top]),
            }
        )
    return pd.DataFrame.from_records(recs, columns=cols)


def central_nodes(G: nx.Graph, node_type: str = TOPIC, k: int = 10, measure: str = "weighted_degree"):
    """The k most central nodes of one type: by "freq", "degree", "weighted_degree" (sum of co-occurrence counts
    over all edges) or "pagerank" (on the whole graph, weighted by count). Returns a DataFrame."""
    table = degree_table(G)
    table = table[table["type"] == node_type].copy()
    if measure == "pagerank":
        pr = nx.pagerank(G, weight="count") if G.number_of_edges() else dict.fromkeys(G, 0.0)
        table["pagerank"] = table["node"].map(pr)
    if measure not in table.columns:
        raise ValueError(f"unknown measure {measure!r}")
    table = table.sort_values([measure, "freq", "label"], ascending=[False, False, True])
    return table.head(k).reset_index(drop=True)


def topic_kp_matrix(G: nx.Graph, n_topics: int = 15, n_kps: int = 25):
    """Co-occurrence counts of the most frequent topics (rows) with the most frequent KPs (columns) as a DataFrame.

    The KPs are the ones with the largest total count with the chosen topics, so the matrix is not mostly zeros.
    """
    import pandas as pd

    topics = sorted(nodes_of_type(G, TOPIC), key=lambda n: (-G.nodes[n]["freq"], n))[:n_topics]
    mass: Counter[str] = Counter()
    for t in topics:
        for nb, d in G[t].items():
            if d["kind"] == "topic-kp":
                mass[nb] += d["count"]
    kps = [n for n, _ in sorted(mass.items(), key=lambda x: (-x[1], x[0]))[:n_kps]]
    data = np.zeros((len(topics), len(kps)), dtype=int)
    for i, t in enumerate(topics):
        for j, k in enumerate(kps):
            if G.has_edge(t, k):
                data[i, j] = G[t][k]["count"]
    return pd.DataFrame(
        data, index=[G.nodes[t]["label"] for t in topics], columns=[G.nodes[k]["label"] for k in kps]
    )


def graph_summary(G: nx.Graph) -> dict[str, Any]:
    """The content of ``graph_summary.json``: counts, components, degrees and the most frequent concepts."""
    counts = type_counts(G)
    topics = nodes_of_type(G, TOPIC)
    kps = nodes_of_type(G, KP)
    topic_deg = {n: 0 for n in topics}
    hybrid_deg = {n: 0 for n in topics}
    kp_deg = {n: 0 for n in kps}
    for a, b, kind in G.edges(data="kind"):
        if kind == "topic-topic":
            topic_deg[a] += 1
            topic_deg[b] += 1
        elif kind == "kp-kp":
            kp_deg[a] += 1
            kp_deg[b] += 1
        else:
            hybrid_deg[a if a in hybrid_deg else b] += 1

    def _deg_stats(values: list[int]) -> dict[str, float]:
        if not values:
            return {"mean": 0.0, "median": 0.0, "max": 0}
        arr = np.asarray(values)
        return {"mean": float(arr.mean()), "median": float(np.median(arr)), "max": int(arr.max())}

    def _top(nodes: list[str], k: int = 10) -> list[dict[str, Any]]:
        best = sorted(nodes, key=lambda n: (-G.nodes[n]["freq"], n))[:k]
        return [{"label": G.nodes[n]["label"], "freq": G.nodes[n]["freq"]} for n in best]

    labels_t = {G.nodes[n]["label"] for n in topics}
    labels_k = {G.nodes[n]["label"] for n in kps}
    return {
        "epsilon": G.graph.get("epsilon"),
        "seed_rows": G.graph.get("n_seed_rows"),
        "seed_rows_skipped": G.graph.get("n_seed_skipped"),
        "seed_rows_used": G.graph.get("n_seed_used"),
        "ablation_topics_dropped": G.graph.get("n_topics_dropped", 0),
        "ablation_kps_dropped": G.graph.get("n_kps_dropped", 0),
        **counts,
        "labels_both_topic_and_kp": len(labels_t & labels_k),
        "components": {which: components(G, which) for which in ("all", "topic", "kp", "hybrid")},
        "topics_without_topic_neighbour": sum(1 for v in topic_deg.values() if v == 0),
        "topics_without_kp_neighbour": sum(1 for v in hybrid_deg.values() if v == 0),
        "kps_without_kp_neighbour": sum(1 for v in kp_deg.values() if v == 0),
        "degree": {
            "topic-topic": _deg_stats(list(topic_deg.values())),
            "topic-kp (topics)": _deg_stats(list(hybrid_deg.values())),
            "kp-kp": _deg_stats(list(kp_deg.values())),
        },
        "top_topics": _top(topics),
        "top_kps": _top(kps),
    }


def question_index(rows: Iterable[dict]) -> dict[str, str]:
    """{seed_id: question text} for tooltips."""
    return {str(r.get("seed_id")): str(r.get("question") or "") for r in rows}


def composition_path(G: nx.Graph, comp: dict) -> list[tuple[str, str]]:
    """The edges a composition's walk used, as node-id pairs (topic chain, hybrid step, KP chain); for views.

    The hybrid edge joins the first KP to the last topic if they are linked, else to a linked collected topic."""
    ts = [topic_id(t) for t in comp["topics"]]
    start = topic_id(comp["start_topic"]) if comp.get("start_topic") else None
    if start and (not ts or ts[0] != start):
        ts = [start, *ts]
    ks = [kp_id(k) for k in comp["knowledge_points"]]
    edges = [(a, b) for a, b in itertools.pairwise(ts) if G.has_edge(a, b)]
    if ks:
        link = next((t for t in reversed(ts) if G.has_edge(t, ks[0])), None)
        if link:
            edges.append((link, ks[0]))
    edges += [(a, b) for a, b in itertools.pairwise(ks) if G.has_edge(a, b)]
    return edges


def degree_distribution_figure(G: nx.Graph):
    """Log-log degree distributions: topics in the topic graph, KPs in the KP graph, and both sides of the
    topic-KP graph. Nodes of degree 0 cannot be drawn on a log axis; the legend says how many there are."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [
        ("topic-topic (topics)", "topic-topic", TOPIC, TOPIC_COLOR, "o"),
        ("topic-KP (topics)", "topic-kp", TOPIC, "#ffbe7d", "s"),
        ("topic-KP (KPs)", "topic-kp", KP, "#a0cbe8", "s"),
        ("KP-KP (KPs)", "kp-kp", KP, KP_COLOR, "o"),
    ]
    drawn = False
    for name, kind, ntype, color, marker in series:
        deg = dict.fromkeys(nodes_of_type(G, ntype), 0)
        for a, b, k in G.edges(data="kind"):
            if k == kind:
                for n in (a, b):
                    if n in deg:
                        deg[n] += 1
        if not deg:
            continue
        values = np.fromiter(deg.values(), dtype=int)
        zeros = int((values == 0).sum())
        ks, cs = np.unique(values[values > 0], return_counts=True)
        if ks.size:
            ax.scatter(
                ks, cs, s=18, color=color, marker=marker, alpha=0.8, label=f"{name}; {zeros} with degree 0"
            )
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no edges", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("degree (number of neighbours in the sub-graph)")
    ax.set_ylabel("number of nodes")
    ax.set_title("Degree distributions of the concept graph")
    fig.tight_layout()
    return fig


def topic_kp_heatmap(matrix, max_label: int = 40):
    """Heat map of a topic x KP co-occurrence count DataFrame (see ``graph.topic_kp_matrix``); log colour scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n_r, n_c = matrix.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.35 * max(n_c, 1), 16), min(2 + 0.35 * max(n_r, 1), 12)))
    if n_r == 0 or n_c == 0 or int(matrix.to_numpy().max()) == 0:
        ax.text(0.5, 0.5, "no topic-KP co-occurrences", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    data = matrix.to_numpy().astype(float)
    masked = np.ma.masked_where(data == 0, data)
    im = ax.imshow(masked, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1, vmax=max(data.max(), 2)))

    def cut(s: str) -> str:
        return s if len(s) <= max_label else s[: max_label - 1] + "…"

    ax.set_xticks(range(n_c), [cut(str(c)) for c in matrix.columns], rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), [cut(str(r)) for r in matrix.index], fontsize=8)
    ax.set_facecolor("#f4f4f4")
    fig.colorbar(im, ax=ax, label="seed questions with both (log scale)")
    ax.set_title("Topic x knowledge-point co-occurrence (most frequent topics)")
    fig.tight_layout()
    return fig


__all__ = [
    "composition_path",
    "build_graph",
    "save_graph",
    "load_graph",
    "graph_summary",
    "type_counts",
    "degree_table",
    "degree_distribution",
    "components",
    "louvain",
    "central_nodes",
    "topic_kp_matrix",
    "subgraph",
    "nodes_of_type",
    "question_index",
    "topic_id",
    "kp_id",
]
