"""Concept graph construction, statistics and GraphML round trip."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import networkx as nx
import pytest

from mathscale_utils.core.io import read_json
from mathscale_utils.core.method_config import GraphConfig
from mathscale_utils.method.graph import (
    build_graph,
    central_nodes,
    components,
    degree_distribution,
    degree_table,
    graph_summary,
    load_graph,
    louvain,
    save_graph,
    subgraph,
    topic_kp_matrix,
    type_counts,
)

from concept_rows import row

EPS = 1e-5


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
