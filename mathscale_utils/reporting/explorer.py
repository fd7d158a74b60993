"""Explore a run's concept graph in notebook 02: pick a topic or knowledge point (KP) and see its neighbours with their
weights, walks sampled from it live with the run's ``compose:`` settings (the stage's own walk, ``compose.walks_from``),
and, for a composition, the question stage 03 generated from it, if there is one.

The logic is plain functions over a loaded run (:func:`load_run_graph`), tested without a browser; :class:`Explorer`
lays them out with ipywidgets and needs nothing beyond the kernel. A walk starts at a topic (as in the paper), so for
a KP the explorer samples walks from the topics linked to it and keeps those that pass through it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_jsonl
from mathscale_utils.core.method_config import ComposeConfig
from mathscale_utils.method import compose
from mathscale_utils.method.generate import load_raw
from mathscale_utils.method.graph import EDGE_KINDS, KP, TOPIC, load_graph

KIND_NAME = {TOPIC: "topic", KP: "KP"}
HEADINGS = {
    "neighbours": "<b>Neighbours</b>: co-occurrence count, weight log(count + ε), p(one walk step picks it)",
    "walks": "<b>Walks sampled now</b> with the run's compose settings (the stage's own walk)",
    "compositions": "<b>The run's compositions with it</b>, and the question stage 03 generated from each, if any",
}
MAX_KP_WALKERS = 20_000  # walks tried when looking for walks through a KP


@dataclass
class RunGraph:
    """What the explorer reads from a run: the graph, its walk arrays and settings, compositions and questions."""

    G: nx.Graph
    wg: compose.WalkGraph
    config: ComposeConfig
    seed: int
    compositions: dict[tuple[frozenset, frozenset], dict] = field(
        default_factory=dict
    )  # by (topic set, KP set)
    questions: dict[str, dict] = field(default_factory=dict)  # by composition id: {"question", "status"}

    def index(self, node: str) -> int:
        """The node's row in the walk arrays."""
        ids = self.wg.topic_ids if self.G.nodes[node]["type"] == TOPIC else self.wg.kp_ids
        return ids.index(node)


def _set_key(topics, kps) -> tuple[frozenset, frozenset]:
    return frozenset(topics), frozenset(kps)


def generated_questions(run_dir: str | Path) -> dict[str, dict]:
    """{composition id: {"question", "status"}} from stage 03's shards and mathscaleqa.jsonl: "kept" (in the training
    set), "removed by the filters" (decontamination or near-duplicates), or why the reply was rejected."""
    run = RunDir(run_dir)
    kept = {r["composition_id"]: r for r in read_jsonl(run.mathscaleqa)} if run.mathscaleqa.exists() else {}
    out: dict[str, dict] = {}
    for r in load_raw(run.root) if run.generation.exists() else []:
        cid = r["composition_id"]
        if cid in kept:
            status = "kept"
        elif r["status"] == "ok":
            status = "removed by the filters"
        else:
            status = f"{r['status']}: {r.get('reason') or ''}".strip(": ")
        out[cid] = {"question": (kept.get(cid) or r).get("question") or "", "status": status}
    return out


def load_run_graph(run_dir: str | Path, config: ComposeConfig, seed: int) -> RunGraph:
    """Load what stages 02 and 03 wrote in a run directory (stage 03 may not have run yet)."""
    run = RunDir(run_dir)
    G = load_graph(run.graph)
    comps = compose.read_compositions(run.root) if run.compositions.exists() else []
    return RunGraph(
        G=G,
        wg=compose.walk_graph(G),
        config=config,
        seed=seed,
        compositions={_set_key(c["topics"], c["knowledge_points"]): c for c in comps},
        questions=generated_questions(run.root),
    )


def concept_choices(G: nx.Graph) -> dict[str, str]:
    """{"topic: <label>" or "KP: <label>": node id}, topics first, most frequent first (the explorer's picker)."""
    nodes = sorted(G, key=lambda n: (G.nodes[n]["type"] != TOPIC, -G.nodes[n]["freq"], G.nodes[n]["label"]))
    return {f"{KIND_NAME[G.nodes[n]['type']]}: {G.nodes[n]['label']}": n for n in nodes}


def first_choice(rg: RunGraph, choices: dict[str, str]) -> str:
    """The picker's first value: the most frequent topic that a generated question came from, so that the saved
    notebook shows every panel filled; the most frequent topic when stage 03 has not run."""
    generated = {t for c in rg.compositions.values() if c["id"] in rg.questions for t in c["topics"]}
    for choice, node in choices.items():
        if rg.G.nodes[node]["type"] == TOPIC and rg.G.nodes[node]["label"] in generated:
            return choice
    return next(iter(choices), "")


def neighbours(rg: RunGraph, node: str) -> pd.DataFrame:
    """The node's neighbours: edge kind, co-occurrence count, weight log(count + ε), and the probability that one
    walk step from the node picks it (Eq. 2, in the step's sub-graph; empty where no walk step goes that way:
    the walk never steps from a KP to a topic)."""
    G, is_topic = rg.G, rg.G.nodes[node]["type"] == TOPIC
    i = rg.index(node)
    steps = {"topic-topic": ("tt", rg.wg.topic_ids), "topic-kp": ("tk", rg.wg.kp_ids)} if is_topic else {}
    steps = steps or {"kp-kp": ("kk", rg.wg.kp_ids)}
    p_step = {
        ids[j]: p
        for phase, ids in steps.values()
        for j, p in compose.step_probabilities(rg.wg, phase, i).items()
    }
    rows = [
        {
            "neighbour": G.nodes[u]["label"],
            "type": KIND_NAME[G.nodes[u]["type"]],
            "edge": d["kind"],
            "count": d["count"],
            "weight": round(d["weight"], 4),
            "p(step)": round(p_step[u], 4) if u in p_step else None,
        }
        for u, d in G[node].items()
    ]
    cols = ["neighbour", "type", "edge", "count", "weight", "p(step)"]
    rows.sort(key=lambda r: (EDGE_KINDS.index(r["edge"]), -r["count"], r["neighbour"]))
    return pd.DataFrame(rows, columns=cols)


def _annotate(rg: RunGraph, walk: dict) -> dict:
    """A sampled walk as the stage would see it: dropped or not, its composition id and generated question."""
    comp = rg.compositions.get(_set_key(walk["topics"], walk["knowledge_points"]))
    gen = rg.questions.get(comp["id"]) if comp else None
    if not walk["knowledge_points"] and rg.config.drop_without_kp:
        fate = "dropped: no knowledge point"
    elif comp is None:
        fate = "not in compositions.jsonl (a new combination)"
    else:
        fate = f"composition {comp['id']}"
    return {
        "topics": " → ".join(walk["topics"]),
        "knowledge points": " → ".join(walk["knowledge_points"]),
        "composition": fate,
        "generated question": (f"[{gen['status']}] {gen['question']}".strip() if gen else ""),
    }


def sample_walks(rg: RunGraph, node: str, n: int = 5, seed: int = 0) -> list[dict]:
    """n walks of the stage's walk with the run's settings: from a topic, or passing through a KP (walks from the
    KP's topics, kept when they reach it; fewer than n when the KP is rarely reached)."""
    rng = np.random.default_rng(seed)
    if rg.G.nodes[node]["type"] == TOPIC:
        return compose.walks_from(rg.wg, rg.index(node), n, rg.config, rng).records()
    label = rg.G.nodes[node]["label"]
    starts = [u for u in rg.G[node] if rg.G.nodes[u]["type"] == TOPIC]
    per_start = max(1, min(2_000, MAX_KP_WALKERS // max(len(starts), 1)))
    found: list[dict] = []
    for t in starts:
        walks = compose.walks_from(rg.wg, rg.index(t), per_start, rg.config, rng)
        found += [w for w in walks if label in w["knowledge_points"]][: n - len(found)]
        if len(found) >= n:
            break
    return found


def walks_table(rg: RunGraph, node: str, n: int = 5, seed: int = 0) -> pd.DataFrame:
    """:func:`sample_walks` as a table, each walk with its fate and generated question."""
    cols = ["topics", "knowledge points", "composition", "generated question"]
    return pd.DataFrame([_annotate(rg, w) for w in sample_walks(rg, node, n, seed)], columns=cols)


def compositions_with(rg: RunGraph, node: str, limit: int = 10) -> pd.DataFrame:
    """The run's compositions (compositions.jsonl) that contain the node, with their generated questions."""
    label, is_topic = rg.G.nodes[node]["label"], rg.G.nodes[node]["type"] == TOPIC
    rows = []
    for comp in rg.compositions.values():
        if label in (comp["topics"] if is_topic else comp["knowledge_points"]):
            gen = rg.questions.get(comp["id"])
            rows.append(
                {
                    "id": comp["id"],
                    "topics": ", ".join(comp["topics"]),
                    "knowledge points": ", ".join(comp["knowledge_points"]),
                    "generated question": f"[{gen['status']}] {gen['question']}".strip() if gen else "",
                }
            )
    rows.sort(key=lambda r: (not r["generated question"], r["id"]))
    return pd.DataFrame(rows[:limit], columns=["id", "topics", "knowledge points", "generated question"])


_TABLE_CSS = (
    "<style>.ms-x table{border-collapse:collapse;font-size:12px}.ms-x th,.ms-x td{padding:2px 8px;"
    "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}</style>"
)


def table_html(name: str, frame: pd.DataFrame, empty: str) -> str:
    """One explorer panel as HTML: its heading and the table (every cell escaped: concepts come from an LLM)."""
    with pd.option_context("display.max_colwidth", None):
        body = (
            frame.to_html(index=False, escape=True, border=0)
            if len(frame)
            else f"<i>{html.escape(empty)}</i>"
        )
    return f"{_TABLE_CSS}<div class='ms-x'><p>{HEADINGS[name]}</p>{body}</div>"


class Explorer:
    """The notebook widget: a concept picker, then its neighbours, live walks and the run's compositions with it.
    ``frames`` keeps the tables last shown (what a test reads).

    The panels are HTML widgets whose value the kernel sets, not Output widgets: a notebook run by papermill then
    exchanges no message with the kernel while the cell runs (nbclient answers Output widgets over the shell channel,
    and a run of the chain once stalled on that exchange)."""

    def __init__(self, rg: RunGraph, start: str | None = None, n_walks: int = 5):
        import ipywidgets as w

        self.rg, self.choices = rg, concept_choices(rg.G)
        self.frames: dict[str, pd.DataFrame] = {}
        self.concept = w.Combobox(
            value=start or first_choice(rg, self.choices),
            options=list(self.choices),
            ensure_option=True,
            description="concept",
            placeholder="type a topic or knowledge point",
            layout=w.Layout(width="60%"),
        )
        self.n_walks = w.IntSlider(value=n_walks, min=1, max=20, description="walks")
        self.walk_seed = w.IntText(value=rg.seed, description="seed", layout=w.Layout(width="180px"))
        self.resample = w.Button(description="sample again", icon="refresh")
        self.panels = {name: w.HTML() for name in HEADINGS}
        controls = w.HBox([self.n_walks, self.walk_seed, self.resample])
        self.widget = w.VBox([self.concept, controls, *self.panels.values()])
        self.concept.observe(lambda _: self.show(), names="value")
        self.n_walks.observe(lambda _: self.show_walks(), names="value")
        self.walk_seed.observe(lambda _: self.show_walks(), names="value")
        self.resample.on_click(lambda _: self._next_seed())
        self.show()

    @property
    def node(self) -> str | None:
        return self.choices.get(self.concept.value)

    def _put(self, name: str, frame: pd.DataFrame, empty: str) -> None:
        self.frames[name] = frame
        self.panels[name].value = table_html(name, frame, empty)

    def _next_seed(self) -> None:
        self.walk_seed.value += 1  # observing the seed redraws the walks

    def show_walks(self) -> None:
        if self.node is not None:
            table = walks_table(self.rg, self.node, self.n_walks.value, self.walk_seed.value)
            self._put("walks", table, "no walk reached this concept")

    def show(self) -> None:
        if self.node is None:
            return
        self._put("neighbours", neighbours(self.rg, self.node), "no neighbours")
        self.show_walks()
        self._put("compositions", compositions_with(self.rg, self.node), "in no composition of this run")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def explore(run_dir: str | Path, config: ComposeConfig, seed: int, start: str | None = None) -> Explorer:
    """The explorer on a run directory (what notebook 02's cell calls)."""
    return Explorer(load_run_graph(run_dir, config, seed), start)


__all__ = [
    "RunGraph",
    "load_run_graph",
    "generated_questions",
    "concept_choices",
    "neighbours",
    "sample_walks",
    "walks_table",
    "compositions_with",
    "first_choice",
    "Explorer",
    "table_html",
    "explore",
]
