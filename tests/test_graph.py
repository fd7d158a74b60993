"""Concept graph construction, statistics, GraphML round trip and the random walk (counts, invariants, rates)."""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from collections import Counter

import networkx as nx
import numpy as np
import pytest
from scipy.stats import chisquare

from mathscale_utils.graph import (
    ComposeConfig,
    GraphConfig,
    build_graph,
    central_nodes,
    components,
    compose,
    composition_path,
    degree_distribution,
    degree_table,
    drop_table,
    graph_summary,
    kp_id,
    load_graph,
    louvain,
    read_compositions,
    save_graph,
    subgraph,
    topic_id,
    topic_kp_matrix,
    type_counts,
    write_compositions,
)
from mathscale_utils.io import read_json

EPS = 1e-5


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


@pytest.fixture
def hand_rows():
    # "A" is a topic and also a KP; s2 repeats KP x (and so the pair x-y); s3 repeats topic B.
    return [
        row("s1", ["A", "B"], ["x", "y", "A"]),
        row("s2", ["A"], ["x", "x", "y"]),
        row("s3", ["B", "B"], ["y"]),
        row("s4", [], [], status="failed"),
        row("s5", ["A", "C"], ["z"]),
    ]


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


# ----------------------------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------------------------


def test_nodes_are_typed_and_counted_once_per_question(hand_rows):
    G = build_graph(hand_rows)
    assert set(G) == {"T::A", "T::B", "T::C", "K::x", "K::y", "K::z", "K::A"}
    freq = dict(G.nodes(data="freq"))
    assert freq == {"T::A": 3, "T::B": 2, "T::C": 1, "K::x": 2, "K::y": 3, "K::z": 1, "K::A": 1}
    assert G.nodes["T::A"]["type"] == "topic" and G.nodes["K::A"]["type"] == "kp"
    assert G.nodes["T::A"]["label"] == G.nodes["K::A"]["label"] == "A"
    assert G.nodes["T::A"]["examples"] == ["s1", "s2", "s5"]
    assert G.graph["n_seed_skipped"] == 1 and G.graph["n_seed_used"] == 4


def test_edge_counts_weights_and_kinds(hand_rows):
    G = build_graph(hand_rows)
    expected = {
        ("T::A", "T::B"): 1,
        ("T::A", "T::C"): 1,
        ("T::A", "K::x"): 2,
        ("T::A", "K::y"): 2,
        ("T::A", "K::A"): 1,  # the topic "A" and the KP "A" are different nodes, linked by s1
        ("T::A", "K::z"): 1,
        ("T::B", "K::x"): 1,
        ("T::B", "K::y"): 2,  # s1 and s3 (B twice in s3 still counts once)
        ("T::B", "K::A"): 1,
        ("T::C", "K::z"): 1,
        ("K::x", "K::y"): 2,  # s1 and s2 (x twice in s2 still counts once)
        ("K::x", "K::A"): 1,
        ("K::y", "K::A"): 1,
    }
    got = {
        tuple(sorted((a, b), key=lambda n: (n[0] != "T", n))): d["count"] for a, b, d in G.edges(data=True)
    }
    assert got == {tuple(sorted(k, key=lambda n: (n[0] != "T", n))): v for k, v in expected.items()}
    for a, b, d in G.edges(data=True):
        assert d["weight"] == pytest.approx(math.log(d["count"] + EPS))
        kinds = {G.nodes[a]["type"], G.nodes[b]["type"]}
        assert d["kind"] == {frozenset({"topic"}): "topic-topic", frozenset({"kp"}): "kp-kp"}.get(
            frozenset(kinds), "topic-kp"
        )
    counts = type_counts(G)
    assert counts["nodes"] == {"topic": 3, "kp": 4}
    assert counts["edges"] == {"topic-topic": 2, "topic-kp": 8, "kp-kp": 3}
    assert G["T::B"]["K::y"]["examples"] == ["s1", "s3"]


def test_subgraphs_and_min_freq(hand_rows):
    G = build_graph(hand_rows)
    T = subgraph(G, "topic")
    assert set(T) == {"T::A", "T::B", "T::C"} and T.number_of_edges() == 2
    K = subgraph(G, "kp")
    assert set(K) == {"K::x", "K::y", "K::z", "K::A"} and K.number_of_edges() == 3
    assert subgraph(G, "hybrid").number_of_edges() == 8
    G2 = build_graph(hand_rows, GraphConfig(min_freq=2))
    assert set(G2) == {"T::A", "T::B", "K::x", "K::y"}
    assert G2["T::A"]["T::B"]["count"] == 1


def test_ablation_drops_a_seeded_fraction_of_each_type(hand_rows):
    G = build_graph(hand_rows)
    H = build_graph(hand_rows, GraphConfig(drop_kps=0.5, drop_seed=1))
    topics = {n for n in G if n.startswith("T::")}
    kps = {n for n in G if n.startswith("K::")}
    assert {n for n in H if n.startswith("T::")} == topics
    assert len({n for n in H if n.startswith("K::")}) == len(kps) - 2 and set(H) < set(G)
    assert H.graph["n_kps_dropped"] == 2 and H.graph["n_topics_dropped"] == 0
    for a, b, d in H.edges(data=True):  # surviving edges keep their counts
        assert d["count"] == G[a][b]["count"]
    assert set(build_graph(hand_rows, GraphConfig(drop_kps=0.5, drop_seed=1))) == set(H)
    T = build_graph(hand_rows, GraphConfig(drop_topics=0.34))
    assert len({n for n in T if n.startswith("T::")}) == len(topics) - 1


def test_epsilon_is_a_parameter(hand_rows):
    G = build_graph(hand_rows, GraphConfig(epsilon=0.5))
    assert G["T::A"]["K::x"]["weight"] == pytest.approx(math.log(2.5))


def test_graphml_round_trip(tmp_path, hand_rows):
    G = build_graph(hand_rows)
    paths = save_graph(G, tmp_path)
    ET.parse(paths["graph"])  # well-formed XML
    plain = nx.read_graphml(paths["graph"])  # what Gephi-like readers see: strings, numbers
    assert json.loads(plain.nodes["T::A"]["examples"]) == ["s1", "s2", "s5"]
    H = load_graph(tmp_path)
    assert set(H) == set(G) and H.number_of_edges() == G.number_of_edges()
    for n, d in G.nodes(data=True):
        assert H.nodes[n] == d
    for a, b, d in G.edges(data=True):
        assert H[a][b]["count"] == d["count"] and H[a][b]["kind"] == d["kind"]
        assert H[a][b]["weight"] == pytest.approx(d["weight"])
        assert H[a][b]["examples"] == d["examples"]
    summary = read_json(paths["summary"])
    assert summary["nodes"] == {"topic": 3, "kp": 4}
    assert summary["labels_both_topic_and_kp"] == 1
    assert summary["seed_rows_skipped"] == 1


def test_odd_strings_survive_graphml(tmp_path):
    rows = [row("a", ['x < y & "z"', "Ünïcode ∑"], ["bad\x00char", "k"]), row("b", ['x < y & "z"'], ["k"])]
    G = build_graph(rows)
    save_graph(G, tmp_path)
    H = load_graph(tmp_path / "concept_graph.graphml")
    assert {d["label"] for _, d in H.nodes(data=True)} == {'x < y & "z"', "Ünïcode ∑", "badchar", "k"}


# ----------------------------------------------------------------------------------------------------------------
# statistics on small graphs (must not crash)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "empty", "topics_only"])
def test_statistics_do_not_crash_on_small_graphs(which, hand_rows):
    rows = {"tiny": hand_rows, "empty": [], "topics_only": [row("a", ["A", "B"], []), row("b", ["A"], [])]}[
        which
    ]
    G = build_graph(rows)
    summary = graph_summary(G)
    json.dumps(summary)
    assert components(G)["n_nodes"] == G.number_of_nodes()
    louvain(G, "topic")
    louvain(G, "all")
    central_nodes(G, "topic", 3, "pagerank")
    central_nodes(G, "kp", 3)
    m = topic_kp_matrix(G)
    assert m.shape[0] == min(15, len([n for n in G if n.startswith("T::")]))
    degree_table(G)
    degree_distribution(G, "kp")


def test_statistics_values(hand_rows):
    G = build_graph(hand_rows)
    m = topic_kp_matrix(G, n_topics=2, n_kps=3)
    assert list(m.index) == ["A", "B"]
    assert m.loc["A", "x"] == 2 and m.loc["B", "y"] == 2
    top = central_nodes(G, "topic", 1, "freq")
    assert top.loc[0, "label"] == "A"
    assert degree_distribution(G, "topic") == {1: 2, 2: 1}
    comms = louvain(G, "all", seed=0)
    assert comms["size"].sum() == G.number_of_nodes()


# ----------------------------------------------------------------------------------------------------------------
# the walk: invariants
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syn_graph():
    return build_graph(synthetic_rows())


def _check_invariants(G, comps, cfg):
    topic_labels = {d["label"] for _, d in G.nodes(data=True) if d["type"] == "topic"}
    kp_labels = {d["label"] for _, d in G.nodes(data=True) if d["type"] == "kp"}
    lo_t, hi_t = cfg.n_topic_steps
    lo_k, hi_k = cfg.n_kp_steps
    seen = set()
    for c in comps:
        ts, ks = c["topics"], c["knowledge_points"]
        assert set(ts) <= topic_labels and set(ks) <= kp_labels
        assert len(ts) == len(set(ts)) and len(ks) == len(set(ks)), "revisit"
        assert 1 <= len(ts) <= 1 + hi_t and 1 <= len(ks) <= 1 + hi_k
        assert ts[0] == c["start_topic"]
        for a, b in itertools.pairwise(ts):
            assert G[topic_id(a)][topic_id(b)]["kind"] == "topic-topic"
        assert G.has_edge(topic_id(ts[-1]), kp_id(ks[0])), "hybrid step must start at the last topic"
        for a, b in itertools.pairwise(ks):
            assert G[kp_id(a)][kp_id(b)]["kind"] == "kp-kp"
        key = (frozenset(ts), frozenset(ks))
        assert key not in seen, "duplicate composition"
        seen.add(key)
        assert 0 <= c["epoch"] < cfg.epochs
        assert len(composition_path(G, c)) == len(ts) + len(ks) - 1


def test_walk_invariants(syn_graph):
    cfg = ComposeConfig(epochs=40)
    res = compose(syn_graph, cfg, seed=1)
    comps = list(res)
    assert len(comps) > 100
    _check_invariants(syn_graph, comps, cfg)
    st = res.stats
    assert st["walks"] == st["kept"] + st["dropped_no_topic"] + st["dropped_no_kp"] + st["dropped_duplicate"]
    assert st["walks"] == cfg.epochs * st["n_topics"]
    assert [c["id"] for c in comps[:3]] == ["c0000000", "c0000001", "c0000002"]


def test_walk_phase_lengths_on_complete_graph():
    # every topic with every topic and KP, every KP with every KP: no dead ends, so lengths follow the draws
    G = nx.Graph()
    for i in range(12):
        G.add_node(f"T::t{i}", type="topic", label=f"t{i}", freq=1, examples=[])
    for i in range(12):
        G.add_node(f"K::k{i}", type="kp", label=f"k{i}", freq=1, examples=[])
    for a, b in itertools.combinations(list(G), 2):
        kind = {"TT": "topic-topic", "KK": "kp-kp"}.get(a[0] + b[0], "topic-kp")
        G.add_edge(a, b, kind=kind, count=1, weight=math.log(1 + EPS), examples=[])
    cfg = ComposeConfig(epochs=500, dedup=False)
    res = compose(G, cfg, seed=3)
    n = len(res)
    assert n == 500 * 12
    nt = Counter(len(c["topics"]) for c in res)
    nk = Counter(len(c["knowledge_points"]) for c in res)
    assert set(nt) == {2, 3} and set(nk) == {1, 2, 3, 4, 5}
    assert chisquare([nt[2], nt[3]]).pvalue > 1e-3
    assert chisquare([nk[i] for i in range(1, 6)]).pvalue > 1e-3
    assert res.stats["topic_phase_dead_end"] == res.stats["kp_phase_dead_end"] == 0
    # each epoch starts every topic exactly once
    per_epoch = Counter((c["epoch"], c["start_topic"]) for c in res)
    assert set(per_epoch.values()) == {1} and len(per_epoch) == n


def test_walk_is_reproducible_and_seed_dependent(syn_graph):
    cfg = ComposeConfig(epochs=5)
    a = compose(syn_graph, cfg, seed=7).records()
    b = compose(syn_graph, cfg, seed=7).records()
    c = compose(syn_graph, cfg, seed=8).records()
    assert a == b
    assert a != c


def test_dedup_equals_first_occurrence_filter(syn_graph):
    # dedup consumes no randomness, so the same seed gives the same walks; dedup keeps first occurrences
    cfg = ComposeConfig(epochs=30, chunk_walkers=200)  # several chunks: dedup must work across chunks too
    kept = compose(syn_graph, cfg, seed=5).records()
    raw = compose(syn_graph, cfg.model_copy(update={"dedup": False}), seed=5).records()
    seen, expect = set(), []
    for c in raw:
        key = (frozenset(c["topics"]), frozenset(c["knowledge_points"]))
        if key not in seen:
            seen.add(key)
            expect.append((c["topics"], c["knowledge_points"], c["epoch"]))
    assert [(c["topics"], c["knowledge_points"], c["epoch"]) for c in kept] == expect
    assert len(raw) > len(kept)


def test_max_compositions_cap_and_accounting(syn_graph):
    cfg = ComposeConfig(epochs=1000, max_compositions=333, chunk_walkers=100)
    res = compose(syn_graph, cfg, seed=0)
    st = res.stats
    assert len(res) == 333 and st["stopped_at_cap"]
    assert st["walks"] == st["kept"] + st["dropped_no_topic"] + st["dropped_no_kp"] + st["dropped_duplicate"]
    assert st["epochs_run"] < 1000


def test_dead_ends_and_drop_rules():
    rows = [
        row("a", ["lonely"], ["k1", "k2"]),  # a topic without topic neighbours
        row("b", ["lonely"], ["k1"]),
        row("c", ["T1", "T2"], []),  # topics without any KP
        row("d", ["T1", "T2"], []),
    ]
    G = build_graph(rows)
    res = compose(G, ComposeConfig(epochs=20), seed=0)
    st = res.stats
    # T1/T2 never reach a KP: dropped; "lonely" ends its topic phase at once and still gets KPs
    assert st["dropped_no_kp"] == 2 * 20
    # "lonely" always dead-ends; T1 -> T2 dead-ends when a second topic step was drawn
    assert 20 < st["topic_phase_dead_end"] < 20 + 40
    assert {tuple(c["topics"]) for c in res} == {("lonely",)}
    assert {frozenset(c["knowledge_points"]) for c in res} <= {
        frozenset({"k1"}),
        frozenset({"k2"}),
        frozenset({"k1", "k2"}),
    }
    assert st["walks"] == st["kept"] + st["dropped_no_kp"] + st["dropped_duplicate"]
    kept_all = compose(G, ComposeConfig(epochs=2, drop_without_kp=False, dedup=False), seed=0)
    assert len(kept_all) == 2 * 3


def test_empty_and_degenerate_graphs():
    assert len(compose(build_graph([]), ComposeConfig(epochs=3))) == 0
    only_topics = build_graph([row("a", ["A", "B"], []), row("b", ["A", "B"], [])])
    res = compose(only_topics, ComposeConfig(epochs=3))
    assert len(res) == 0 and res.stats["dropped_no_kp"] == 6
    only_kps = build_graph([row("a", [], ["x", "y"]), row("b", [], ["x"])])
    assert len(compose(only_kps, ComposeConfig(epochs=3))) == 0


def test_variant_options(syn_graph):
    no_start = compose(syn_graph, ComposeConfig(epochs=5, include_start_topic=False), seed=0)
    for c in no_start:
        assert c["start_topic"] not in c["topics"]
        assert 1 <= len(c["topics"]) <= 2
    rnd = compose(syn_graph, ComposeConfig(epochs=5, hybrid_from="random"), seed=0)
    for c in rnd:
        assert any(syn_graph.has_edge(topic_id(t), kp_id(c["knowledge_points"][0])) for t in c["topics"])
    rev = compose(syn_graph, ComposeConfig(epochs=5, allow_revisits=True), seed=0)
    for c in rev:
        assert len(c["topics"]) == len(set(c["topics"])) and len(c["knowledge_points"]) == len(
            set(c["knowledge_points"])
        )
    longer = compose(syn_graph, ComposeConfig(epochs=5, n_topic_steps=(0, 4), n_kp_steps=(2, 6)), seed=0)
    assert max(len(c["topics"]) for c in longer) <= 5 and max(len(c["knowledge_points"]) for c in longer) <= 7
    with pytest.raises(ValueError):
        ComposeConfig(n_kp_steps=(3, 1))


def test_write_and_read_compositions(tmp_path, syn_graph):
    res = compose(syn_graph, ComposeConfig(epochs=2), seed=0)
    write_compositions(res, tmp_path)
    back = read_compositions(tmp_path)
    assert back == res.records()
    assert set(back[0]) == {"id", "topics", "knowledge_points", "start_topic", "epoch"}
    stats = read_json(tmp_path / "compositions_stats.json")
    assert stats["kept"] == len(back)
    assert [r for r, _ in drop_table(stats)][0] == "walks"


# ----------------------------------------------------------------------------------------------------------------
# the walk: transition probabilities follow exp(weight) = count + eps
# ----------------------------------------------------------------------------------------------------------------


def _star_graph(center_counts: dict[str, int], extra_edges=()):
    """A hand graph: topic A linked to the given nodes with the given counts, plus extra edges (a, b, count)."""
    G = nx.Graph()

    def node(n):
        if n not in G:
            G.add_node(n, type="topic" if n.startswith("T::") else "kp", label=n[3:], freq=1, examples=[])

    def edge(a, b, c):
        node(a)
        node(b)
        kind = {"TT": "topic-topic", "KK": "kp-kp"}.get(a[0] + b[0], "topic-kp")
        G.add_edge(a, b, kind=kind, count=c, weight=math.log(c + EPS), examples=[])

    for n, c in center_counts.items():
        edge("T::A", n, c)
    for a, b, c in extra_edges:
        edge(a, b, c)
    return G


def _starting_at_a(res):
    return [c for c in res if c["start_topic"] == "A"]


@pytest.mark.parametrize("max_rejections", [0, 8])
def test_topic_step_frequencies_match_weights(max_rejections):
    counts = {"T::B": 1, "T::C": 3, "T::D": 6}
    G = _star_graph(counts, [("T::B", "K::k", 1), ("T::C", "K::k", 1), ("T::D", "K::k", 1)])
    cfg = ComposeConfig(
        epochs=6000, n_topic_steps=(1, 1), n_kp_steps=(0, 0), dedup=False, max_rejections=max_rejections
    )
    walks = _starting_at_a(compose(G, cfg, seed=11))
    obs = Counter(c["topics"][1] for c in walks)
    n = sum(obs.values())
    expected = [n * counts[f"T::{x}"] / 10 for x in "BCD"]
    assert chisquare([obs[x] for x in "BCD"], expected).pvalue > 1e-4


@pytest.mark.parametrize("max_rejections", [0, 2, 8])
def test_no_revisit_renormalises_over_unvisited(max_rejections):
    # From A the walk must go to B (only neighbour). From B, the visited A carries most of the weight (100);
    # without revisits the next topic is E or F in the ratio 1 : 3 (exercises rejection and exact masking).
    G = _star_graph(
        {"T::B": 100},
        [
            ("T::B", "T::E", 1),
            ("T::B", "T::F", 3),
            ("T::E", "K::k", 1),
            ("T::F", "K::k", 1),
            ("T::B", "K::k", 1),
        ],
    )
    cfg = ComposeConfig(
        epochs=4000, n_topic_steps=(2, 2), n_kp_steps=(0, 0), dedup=False, max_rejections=max_rejections
    )
    walks = _starting_at_a(compose(G, cfg, seed=2))
    assert all(c["topics"][1] == "B" for c in walks)
    obs = Counter(c["topics"][2] for c in walks)
    assert set(obs) == {"E", "F"}
    n = sum(obs.values())
    assert chisquare([obs["E"], obs["F"]], [n / 4, 3 * n / 4]).pvalue > 1e-4


def test_hybrid_and_kp_step_frequencies():
    G = _star_graph(
        {"T::B": 1, "K::x": 2, "K::y": 8},
        [
            ("K::x", "K::p", 1),
            ("K::x", "K::q", 4),
            ("K::y", "K::p", 1),
            ("K::y", "K::q", 1),
            ("T::B", "K::x", 1),
        ],
    )
    cfg = ComposeConfig(epochs=6000, n_topic_steps=(0, 0), n_kp_steps=(1, 1), dedup=False)
    walks = _starting_at_a(compose(G, cfg, seed=4))
    first = Counter(c["knowledge_points"][0] for c in walks)
    n = sum(first.values())
    assert chisquare([first["x"], first["y"]], [n * 0.2, n * 0.8]).pvalue > 1e-4
    after_x = Counter(c["knowledge_points"][1] for c in walks if c["knowledge_points"][0] == "x")
    m = sum(after_x.values())
    assert chisquare([after_x["p"], after_x["q"]], [m / 5, 4 * m / 5]).pvalue > 1e-4


def test_dedup_survives_hash_collisions(syn_graph, monkeypatch):
    # a hash that collides for every row must switch to exact keys and give the very same result
    import mathscale_utils.graph as graph_mod

    cfg = ComposeConfig(epochs=20, chunk_walkers=150)
    expected = compose(syn_graph, cfg, seed=9).records()
    monkeypatch.setattr(graph_mod, "_hash_rows", lambda rows: np.zeros(rows.shape[0], dtype=np.uint64))
    assert compose(syn_graph, cfg, seed=9).records() == expected


def test_dedup_collision_across_chunks(monkeypatch):
    import mathscale_utils.graph as graph_mod

    monkeypatch.setattr(graph_mod, "_hash_rows", lambda rows: np.full(rows.shape[0], 7, dtype=np.uint64))
    d = graph_mod._Dedup(2)
    a = np.array([[1, 2]], dtype=np.int32)
    assert d.new(a).tolist() == [0]
    d.add(a, np.array([0]))
    b = np.array([[3, 4], [1, 2], [3, 4]], dtype=np.int32)  # same hash as a, different row first
    new = d.new(b)
    assert d.exact and new.tolist() == [0]
    d.add(b, new)
    assert d.new(np.array([[3, 4], [5, 6]], dtype=np.int32)).tolist() == [1]
