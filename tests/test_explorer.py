"""Notebook 02's explorer and the walk helpers it shares with the notebooks' toy cells: one step's probabilities are
Eq. 2 on the walk's own arrays, walks come from the stage's walk with the run's settings, and a walk that is one of the
run's compositions shows the question stage 03 generated for it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import write_jsonl
from mathscale_utils.core.method_config import ComposeConfig
from mathscale_utils.method import compose
from mathscale_utils.method.graph import build_graph, kp_id, save_graph, topic_id
from mathscale_utils.reporting import explorer


def _row(sid, topics, kps):
    return {"seed_id": sid, "question": f"q {sid}", "topics": topics, "knowledge_points": kps, "status": "ok"}


ROWS = [
    _row("q1", ["Fractions"], ["Common denominator", "Adding fractions"]),
    _row("q2", ["Fractions", "Ratios"], ["Adding fractions", "Unit rate"]),
    _row("q3", ["Ratios"], ["Unit rate", "Adding fractions"]),
    _row("q4", ["Fractions", "Ratios"], ["Adding fractions"]),
    _row("q5", ["Geometry"], ["Area of a circle"]),
]


@pytest.fixture
def run_dir(tmp_path):
    G = build_graph(ROWS)
    save_graph(G, tmp_path)
    comps = compose.compose(G, ComposeConfig(epochs=20), seed=0)
    compose.write_compositions(comps, tmp_path)
    rows = comps.records()
    run = RunDir(tmp_path)
    shard = [
        {"composition_id": rows[0]["id"], "status": "ok", "reason": None, "question": "Kept question?"},
        {"composition_id": rows[1]["id"], "status": "ok", "reason": None, "question": "Removed question?"},
        {"composition_id": rows[2]["id"], "status": "rejected", "reason": "no answer", "question": None},
    ]
    write_jsonl(run.shard(0), shard)
    write_jsonl(run.mathscaleqa, [{"composition_id": rows[0]["id"], "question": "Kept question?"}])
    return tmp_path


def test_step_probabilities_are_eq2_on_the_walk_arrays():
    G = build_graph(ROWS)
    wg = compose.walk_graph(G)
    eps = G.graph["epsilon"]
    adding = wg.kp_ids.index(kp_id("Adding fractions"))
    p = {wg.kp_labels[j]: v for j, v in compose.step_probabilities(wg, "kk", adding).items()}
    # Adding fractions co-occurs with Unit rate in 2 questions, with Common denominator in 1
    assert p == pytest.approx(
        {"Unit rate": (2 + eps) / (3 + 2 * eps), "Common denominator": (1 + eps) / (3 + 2 * eps)}
    )
    unit = wg.kp_ids.index(kp_id("Unit rate"))
    assert compose.step_probabilities(wg, "kk", adding, visited=[unit]) == {
        wg.kp_ids.index(kp_id("Common denominator")): pytest.approx(1.0)
    }
    geometry = wg.topic_ids.index(topic_id("Geometry"))
    assert compose.step_probabilities(wg, "tt", geometry) == {}  # no topic neighbour: the phase ends
    assert math.isclose(sum(compose.step_probabilities(wg, "tk", 0).values()), 1.0)


def test_walks_from_follow_the_run_settings():
    G = build_graph(ROWS)
    wg = compose.walk_graph(G)
    fractions = wg.topic_ids.index(topic_id("Fractions"))
    cfg = ComposeConfig(n_topic_steps=(1, 1), n_kp_steps=(0, 0))
    walks = compose.walks_from(wg, fractions, 50, cfg, np.random.default_rng(0)).records()
    assert len(walks) == 50
    assert all(w["topics"] == ["Fractions", "Ratios"] and len(w["knowledge_points"]) == 1 for w in walks)
    # the hybrid step leaves from the last topic (Ratios): only Ratios' KPs are reachable
    assert {w["knowledge_points"][0] for w in walks} == {"Unit rate", "Adding fractions"}
    again = compose.walks_from(wg, fractions, 50, cfg, np.random.default_rng(0)).records()
    assert again == walks


def test_neighbours_table(run_dir):
    rg = explorer.load_run_graph(run_dir, ComposeConfig(), seed=0)
    t = explorer.neighbours(rg, topic_id("Fractions"))
    assert list(t["edge"].unique()) == ["topic-topic", "topic-kp"]
    ratios = t[t["neighbour"] == "Ratios"].iloc[0]
    assert ratios["count"] == 2 and ratios["weight"] == pytest.approx(math.log(2 + 1e-5), abs=1e-4)
    assert ratios["p(step)"] == pytest.approx(1.0)  # the only topic neighbour
    assert t[t["edge"] == "topic-kp"]["p(step)"].sum() == pytest.approx(1.0, abs=1e-3)
    k = explorer.neighbours(rg, kp_id("Unit rate"))
    assert k[k["edge"] == "topic-kp"]["p(step)"].isna().all()  # the walk never steps from a KP to a topic
    assert k[k["edge"] == "kp-kp"]["p(step)"].sum() == pytest.approx(1.0, abs=1e-3)


def test_walks_carry_their_composition_and_question(run_dir):
    rg = explorer.load_run_graph(run_dir, ComposeConfig(epochs=20), seed=0)
    assert rg.questions[next(iter(rg.compositions.values()))["id"]]["status"] == "kept"
    statuses = {q["status"] for q in rg.questions.values()}
    assert statuses == {"kept", "removed by the filters", "rejected: no answer"}
    walks = explorer.walks_table(rg, topic_id("Fractions"), n=40, seed=1)
    assert len(walks) == 40 and all(w.startswith("Fractions") for w in walks["topics"])
    assert walks["composition"].str.startswith("composition c").all()  # a small graph: every walk is known
    kept_id = next(iter(rg.compositions.values()))["id"]
    with_kept = walks[walks["composition"] == f"composition {kept_id}"]
    assert (with_kept["generated question"] == "[kept] Kept question?").all()
    through = explorer.sample_walks(rg, kp_id("Common denominator"), n=3, seed=0)
    assert len(through) == 3 and all("Common denominator" in w["knowledge_points"] for w in through)
    lonely = explorer.walks_table(rg, topic_id("Geometry"), n=3)
    assert set(lonely["topics"]) == {"Geometry"} and set(lonely["knowledge points"]) == {"Area of a circle"}


def test_compositions_with_a_concept(run_dir):
    rg = explorer.load_run_graph(run_dir, ComposeConfig(), seed=0)
    table = explorer.compositions_with(rg, kp_id("Adding fractions"), limit=50)
    assert len(table) and all("Adding fractions" in k for k in table["knowledge points"])
    assert table["generated question"].iloc[0] != ""  # compositions with a question come first


def test_the_first_concept_shown_is_one_a_question_came_from(run_dir):
    """The saved notebook shows a generated question: the picker starts at the most frequent topic that one came
    from, and at the most frequent topic when stage 03 generated nothing."""
    rg = explorer.load_run_graph(run_dir, ComposeConfig(), seed=0)
    choices = explorer.concept_choices(rg.G)
    only = next(c for c in rg.compositions.values() if "Fractions" not in c["topics"])
    rg.questions = {only["id"]: {"question": "q?", "status": "kept"}}
    first = explorer.first_choice(rg, choices)
    assert first.startswith("topic: ") and first.removeprefix("topic: ") in only["topics"]
    assert explorer.compositions_with(rg, choices[first])["generated question"].iloc[0] == "[kept] q?"
    rg.questions = {}
    assert explorer.first_choice(rg, choices) == next(iter(choices)) == "topic: Fractions"


def test_explorer_widget_follows_the_picked_concept(run_dir):
    pytest.importorskip("ipywidgets")
    ex = explorer.explore(run_dir, ComposeConfig(), seed=0)
    assert ex.concept.value == "topic: Fractions"  # the most frequent topic first
    assert set(ex.frames) == {"neighbours", "walks", "compositions"}
    ex.concept.value = "KP: Unit rate"
    assert set(ex.frames["neighbours"]["neighbour"]) == {"Fractions", "Ratios", "Adding fractions"}
    assert all("Unit rate" in k for k in ex.frames["walks"]["knowledge points"])
    before = ex.frames["walks"]
    ex.n_walks.value = 2
    assert len(ex.frames["walks"]) == 2
    ex.resample.click()
    assert ex.walk_seed.value == 1 and ex.frames["walks"] is not before


def test_explorer_panels_are_escaped_html_widgets(tmp_path):
    """The panels are HTML widgets (no Output widget for nbclient to answer mid-cell), and LLM text stays text."""
    w = pytest.importorskip("ipywidgets")
    evil = "<img src=x onerror=alert(1)>"
    G = build_graph([*ROWS, _row("q6", ["Fractions"], [evil, "Adding fractions"])])
    save_graph(G, tmp_path)
    compose.write_compositions(compose.compose(G, ComposeConfig(epochs=5), seed=0), tmp_path)
    ex = explorer.explore(tmp_path, ComposeConfig(), seed=0)
    assert all(isinstance(p, w.HTML) for p in ex.panels.values())
    assert not any(isinstance(c, w.Output) for c in ex.widget.children)
    page = ex.panels["neighbours"].value
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and evil not in page
    assert "<th>neighbour</th>" in page and "<td>Ratios</td>" in page
    ex.concept.value = "topic: Geometry"
    assert "<td>Area of a circle</td>" in ex.panels["neighbours"].value
