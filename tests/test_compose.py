"""The random walk that composes concepts: counts, invariants, rates, dedup, compositions.jsonl."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import networkx as nx
import numpy as np
import pytest
from scipy.stats import chisquare

from mathscale_utils.core.io import read_json
from mathscale_utils.core.method_config import ComposeConfig
from mathscale_utils.method.compose import compose, drop_table, read_compositions, write_compositions
from mathscale_utils.method.graph import build_graph, composition_path, kp_id, topic_id

from concept_rows import row, synthetic_rows

EPS = 1e-5


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


def test_the_walk_stops_at_the_number_of_unique_compositions_asked_for(syn_graph):
    cfg = ComposeConfig(epochs=1000, n_compositions=333, chunk_walkers=100)
    res = compose(syn_graph, cfg, seed=0)
    st = res.stats
    assert len(res) == 333 and st["reached_target"] and st["short_of_target"] == 0
    assert st["walks"] == st["kept"] + st["dropped_no_topic"] + st["dropped_no_kp"] + st["dropped_duplicate"]
    assert st["epochs_run"] < 1000
    few = compose(
        syn_graph, ComposeConfig(epochs=2, n_compositions=10**6), seed=0
    ).stats  # the cap comes first
    assert not few["reached_target"] and few["short_of_target"] == 10**6 - few["kept"] > 0


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
    import mathscale_utils.method.compose as compose_mod

    cfg = ComposeConfig(epochs=20, chunk_walkers=150)
    expected = compose(syn_graph, cfg, seed=9).records()
    monkeypatch.setattr(compose_mod, "_hash_rows", lambda rows: np.zeros(rows.shape[0], dtype=np.uint64))
    assert compose(syn_graph, cfg, seed=9).records() == expected


def test_dedup_collision_across_chunks(monkeypatch):
    import mathscale_utils.method.compose as compose_mod

    monkeypatch.setattr(compose_mod, "_hash_rows", lambda rows: np.full(rows.shape[0], 7, dtype=np.uint64))
    d = compose_mod._Dedup(2)
    a = np.array([[1, 2]], dtype=np.int32)
    assert d.new(a).tolist() == [0]
    d.add(a, np.array([0]))
    b = np.array([[3, 4], [1, 2], [3, 4]], dtype=np.int32)  # same hash as a, different row first
    new = d.new(b)
    assert d.exact and new.tolist() == [0]
    d.add(b, new)
    assert d.new(np.array([[3, 4], [5, 6]], dtype=np.int32)).tolist() == [1]
