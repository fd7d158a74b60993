"""Interactive views of the concept graph (its static figures are in graph.py).

What is drawn
    * the topic graph (the most frequent topics and their topic-topic edges, coloured by Louvain community);
    * the ego network of one topic (its KPs and neighbouring topics);
    * one sampled walk, highlighted on its neighbourhood;
    * the whole graph, every topic and KP: one WebGL page (sigma.js), written by ``whole_graph.py``.

Offline by design
    pyvis views are written with ``cdn_resources="in_line"`` (vis-network inlined) and then cleaned: the
    template's remote stylesheet/script tags (bootstrap) are removed, so a view draws with no network at all;
    :func:`remote_urls` lists what is left to load (it must be empty). The whole-graph page inlines sigma.js and
    graphology from the copies vendored in ``static/``.

Conventions
    Node size grows with frequency (number of seed questions), colour says the type (topic orange, KP blue),
    edge width grows with the co-occurrence count. Tooltips are HTML built here, with every piece of user
    content (concept strings, seed questions) escaped, then turned into DOM elements in the page (vis-network
    shows plain strings as text only). Views above ``physics_max_nodes`` nodes get positions computed in
    ``whole_graph.py`` (:func:`layout_positions`) and physics off, so they open in seconds.

In a notebook, :func:`show_html` puts a view inline (an iframe holding the page itself): JupyterLab draws it once the
notebook is trusted, which the chain does for the notebooks it executes (``runs/chain.py``).

Files are written with ``mathscale_utils.core.io.write_text`` into ``run_dir/views/``.
"""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import write_text
from mathscale_utils.core.method_config import ViewsConfig
from mathscale_utils.method.graph import (
    KP,
    KP_COLOR,
    TOPIC,
    TOPIC_COLOR,
    composition_path,
    kp_id,
    nodes_of_type,
    subgraph,
    topic_id,
)
from mathscale_utils.reporting.whole_graph import layout_positions, whole_graph_view

WALK_COLOR = "#e15759"
CENTER_COLOR = "#b07aa1"
PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
]  # fmt: skip

# ----------------------------------------------------------------------------------------------------------------
# Tooltips, sizes
# ----------------------------------------------------------------------------------------------------------------


def _esc(text: Any, limit: int | None = None) -> str:
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    # escape, then break the literal "href" so pyvis never switches to its innerHTML popup mode
    return html.escape(s).replace("href", "hre<wbr>f")


def _examples_html(ids: Iterable[str], questions: dict[str, str] | None, cfg: ViewsConfig) -> str:
    ids = list(ids)[: cfg.tooltip_questions]
    if not ids:
        return ""
    items = []
    for sid in ids:
        q = (questions or {}).get(str(sid))
        text = f"<b>{_esc(sid)}</b>: {_esc(q, cfg.tooltip_chars)}" if q else f"<b>{_esc(sid)}</b>"
        items.append(f"<li>{text}</li>")
    return (
        "<div style='margin-top:4px'>example seed questions:</div><ul style='margin:2px 0 0 16px;padding:0'>"
        + ("".join(items) + "</ul>")
    )


def _node_title(
    G: nx.Graph, n: str, questions: dict[str, str] | None, cfg: ViewsConfig, extra: str = ""
) -> str:
    d = G.nodes[n]
    kind = "topic" if d["type"] == TOPIC else "knowledge point"
    head = f"<b>{_esc(d['label'])}</b><br>{kind}, in {d['freq']} seed question{'s' if d['freq'] != 1 else ''}"
    return f"<div class='ms-tip'>{head}{extra}{_examples_html(d.get('examples', []), questions, cfg)}</div>"


def _edge_title(G: nx.Graph, a: str, b: str, questions: dict[str, str] | None, cfg: ViewsConfig) -> str:
    d = G[a][b]
    head = (
        f"<b>{_esc(G.nodes[a]['label'])}</b> — <b>{_esc(G.nodes[b]['label'])}</b><br>"
        f"{d['kind']}: together in {d['count']} seed question{'s' if d['count'] != 1 else ''}"
    )
    return f"<div class='ms-tip'>{head}{_examples_html(d.get('examples', []), questions, cfg)}</div>"


def _node_size(freq: int, max_freq: int, lo: float = 8.0, hi: float = 40.0) -> float:
    return lo + (hi - lo) * math.sqrt(freq / max(max_freq, 1))


def _edge_width(count: int, max_count: int, lo: float = 1.0, hi: float = 8.0) -> float:
    return lo + (hi - lo) * math.log1p(count) / math.log1p(max(max_count, 1))


def _type_color(t: str) -> str:
    return TOPIC_COLOR if t == TOPIC else KP_COLOR


def _resolve_topic(G: nx.Graph, topic: str) -> str:
    for cand in (topic, topic_id(topic)):
        if cand in G and G.nodes[cand]["type"] == TOPIC:
            return cand
    raise KeyError(f"topic {topic!r} is not in the graph")


# ----------------------------------------------------------------------------------------------------------------
# pyvis plumbing
# ----------------------------------------------------------------------------------------------------------------

_REMOTE_TAG = re.compile(
    r"<link\b[^>]*\bhref\s*=\s*[\"']https?://[^>]*>|<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^>]*>\s*</script>",
    re.IGNORECASE | re.DOTALL,
)
_REMOTE_REF = re.compile(
    r"""(?:\b(?:src|href)\s*=\s*["']?|@import\s+(?:url\()?["']?|url\(\s*["']?)(https?:)?//[^"')\s>]+""",
    re.IGNORECASE,
)

_TOOLTIP_JS = """
                  // mathscale: titles are HTML built (and escaped) in Python; vis-network shows strings as text,
                  // so turn them into elements.
                  function msTitles(ds) {
                      var upd = [];
                      ds.forEach(function (item) {
                          if (typeof item.title === "string" && item.title.indexOf("<div class='ms-tip'>") === 0) {
                              var el = document.createElement("div");
                              el.innerHTML = item.title;
                              upd.push({id: item.id, title: el});
                          }
                      });
                      if (upd.length) { ds.update(upd); }
                  }
                  msTitles(nodes);
                  msTitles(edges);
                  network = new vis.Network(container, data, options);"""

_EXTRA_CSS = """
<style type="text/css">
  body { margin: 0; font-family: sans-serif; }
  .card { border: 0; }
  #mynetwork { float: none !important; box-sizing: border-box; }
  div.vis-tooltip { white-space: normal; max-width: 480px; font-family: sans-serif; font-size: 13px; }
  .ms-legend { font: 13px sans-serif; padding: 4px 8px; }
  .ms-legend span { display: inline-block; width: 11px; height: 11px; border-radius: 6px; margin: 0 4px 0 12px; }
</style>
"""


def remote_urls(page: str) -> list[str]:
    """URLs that the page would load from the network (src/href attributes, CSS imports/url()). Must be empty."""
    out = []
    for m in _REMOTE_REF.finditer(page):
        url = m.group(0)
        if "data:" in url:
            continue
        out.append(url)
    return out


def _new_network(cfg: ViewsConfig):
    from pyvis.network import Network

    return Network(height=cfg.height, width="100%", directed=False, cdn_resources="in_line", heading="")


def _options(physics: bool, n_nodes: int) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "nodes": {"shape": "dot", "font": {"size": 14, "face": "sans-serif"}, "borderWidth": 1},
        "edges": {"color": {"color": "#bbbbbb", "highlight": WALK_COLOR}, "smooth": False},
        "interaction": {"hover": True, "tooltipDelay": 120, "hideEdgesOnDrag": n_nodes > 500},
    }
    if physics:
        opts["physics"] = {
            "enabled": True,
            "solver": "forceAtlas2Based",
            "forceAtlas2Based": {"gravitationalConstant": -60, "springLength": 110, "avoidOverlap": 0.3},
            "stabilization": {"enabled": True, "iterations": 300, "fit": True},
        }
    else:
        opts["physics"] = {"enabled": False}
        opts["layout"] = {"improvedLayout": False}
        opts["interaction"]["hideEdgesOnZoom"] = n_nodes > 500
    return opts


def _render(
    G: nx.Graph,
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    cfg: ViewsConfig,
    title: str,
    legend: list[tuple[str, str]],
    seed: int,
    positions: dict | None = None,
) -> str:
    """Turn node/edge dicts into a self-contained, offline HTML page (pyvis template + clean-up)."""
    physics = len(nodes) <= cfg.physics_max_nodes and positions is None
    if not physics and positions is None:
        positions = layout_positions(G.subgraph([d["id"] for d in nodes]), seed=seed)
    if positions:
        for d in nodes:
            x, y = positions[d["id"]]
            d["x"], d["y"] = x, y
    net = _new_network(cfg)
    # fill pyvis' lists directly: its add_node/add_edge scan all nodes and edges on every call (quadratic)
    for d in nodes:
        d.setdefault("shape", "dot")
        net.nodes.append(d)
        net.node_ids.append(d["id"])
        net.node_map[d["id"]] = d
    net.edges.extend(edges)
    net.options = _options(physics, len(nodes))
    page = net.generate_html()
    page = _REMOTE_TAG.sub("", page)
    page = page.replace("<center>\n<h1></h1>\n</center>", "").replace(
        "<center>\n          <h1></h1>\n        </center>", ""
    )
    anchor = "network = new vis.Network(container, data, options);"
    if anchor not in page:  # pragma: no cover - guards a pyvis template change
        raise RuntimeError("unexpected pyvis template: cannot install HTML tooltips")
    page = page.replace(anchor, _TOOLTIP_JS.strip("\n"), 1)
    legend_html = "".join(f"<span style='background:{c}'></span>{html.escape(name)}" for name, c in legend)
    header = f"<div class='ms-legend'><b>{html.escape(title)}</b>{legend_html}</div>"
    page = page.replace("</head>", _EXTRA_CSS + "</head>", 1).replace("<body>", "<body>\n" + header, 1)
    page = page.replace("<html>", "<!DOCTYPE html>\n<html>", 1)
    return page


def _write(page: str, path: str | Path) -> Path:
    left = remote_urls(page)
    if left:  # pragma: no cover - guards a pyvis template change
        raise RuntimeError(f"view would need the network: {left[:3]}")
    return write_text(path, page)


def _node_dict(G: nx.Graph, n: str, questions, cfg: ViewsConfig, max_freq: int, **over) -> dict[str, Any]:
    d = G.nodes[n]
    out = {
        "id": n,
        "label": d["label"],
        "color": _type_color(d["type"]),
        "size": _node_size(d["freq"], max_freq),
        "title": _node_title(G, n, questions, cfg),
        "group": d["type"],
    }
    out.update(over)
    return out


def _edge_dict(
    G: nx.Graph, a: str, b: str, questions, cfg: ViewsConfig, max_count: int, **over
) -> dict[str, Any]:
    out = {
        "from": a,
        "to": b,
        "width": _edge_width(G[a][b]["count"], max_count),
        "title": _edge_title(G, a, b, questions, cfg),
    }
    out.update(over)
    return out


def _strongest(G: nx.Graph, n: str, kind: str, k: int, exclude: Iterable[str] = ()) -> list[str]:
    ex = set(exclude)
    nb = [(u, d["count"]) for u, d in G[n].items() if d["kind"] == kind and u not in ex]
    nb.sort(key=lambda x: (-x[1], x[0]))
    return [u for u, _ in nb[:k]]


# ----------------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------------


def topic_graph_view(
    G: nx.Graph,
    path: str | Path,
    questions: dict[str, str] | None = None,
    config: ViewsConfig | None = None,
    seed: int = 0,
) -> Path:
    """The ``top_topics`` most frequent topics and their topic-topic edges, coloured by Louvain community."""
    cfg = config or ViewsConfig()
    topics = sorted(nodes_of_type(G, TOPIC), key=lambda n: (-G.nodes[n]["freq"], n))[: cfg.top_topics]
    T = subgraph(G, "topic").subgraph(topics)
    comms = nx.community.louvain_communities(T, weight="count", seed=seed) if T.number_of_nodes() else []
    comms = sorted(comms, key=lambda c: (-len(c), min(c)))
    colour = {n: PALETTE[i % len(PALETTE)] for i, c in enumerate(comms) for n in c}
    max_freq = max((G.nodes[n]["freq"] for n in topics), default=1)
    max_count = max((d["count"] for _, _, d in T.edges(data=True)), default=1)
    nodes = [_node_dict(G, n, questions, cfg, max_freq, color=colour.get(n, TOPIC_COLOR)) for n in topics]
    edges = [_edge_dict(G, a, b, questions, cfg, max_count) for a, b in T.edges()]
    title = f"Topic graph: {len(topics)} most frequent topics, {len(edges)} topic-topic edges"
    page = _render(G, nodes, edges, cfg, title, [("colour = Louvain community", "#ffffff")], seed)
    return _write(page, path)


def ego_view(
    G: nx.Graph,
    topic: str,
    path: str | Path,
    questions: dict[str, str] | None = None,
    config: ViewsConfig | None = None,
    seed: int = 0,
) -> Path:
    """One topic with its strongest KPs and neighbouring topics, and every edge among them."""
    cfg = config or ViewsConfig()
    centre = _resolve_topic(G, topic)
    kps = _strongest(G, centre, "topic-kp", cfg.ego_max_kps)
    tops = _strongest(G, centre, "topic-topic", cfg.ego_max_topics)
    members = [centre, *tops, *kps]
    H = G.subgraph(members)
    max_freq = max(G.nodes[n]["freq"] for n in members)
    max_count = max((d["count"] for _, _, d in H.edges(data=True)), default=1)
    nodes = []
    for n in members:
        over: dict[str, Any] = {}
        if n == centre:
            over = {
                "color": {"background": TOPIC_COLOR, "border": CENTER_COLOR},
                "borderWidth": 4,
                "size": 45,
            }
        nodes.append(_node_dict(G, n, questions, cfg, max_freq, **over))
    edges = []
    for a, b in H.edges():
        direct = centre in (a, b)
        edges.append(_edge_dict(G, a, b, questions, cfg, max_count, color="#888888" if direct else "#d5d5d5"))
    title = f"Ego network of the topic “{G.nodes[centre]['label']}”: {len(tops)} topics, {len(kps)} KPs"
    page = _render(G, nodes, edges, cfg, title, [("topic", TOPIC_COLOR), ("knowledge point", KP_COLOR)], seed)
    return _write(page, path)


def walk_view(
    G: nx.Graph,
    composition: dict,
    path: str | Path,
    questions: dict[str, str] | None = None,
    config: ViewsConfig | None = None,
    seed: int = 0,
) -> Path:
    """One composition: its walk (start topic -> topics -> first KP -> KPs) in red with step numbers, on a
    neighbourhood of the ``walk_context`` strongest neighbours of each walk node in the sub-graph it walked."""
    cfg = config or ViewsConfig()
    ts = [topic_id(t) for t in composition["topics"]]
    start = topic_id(composition["start_topic"]) if composition.get("start_topic") else None
    if start and start not in ts:
        ts = [start, *ts]
    ks = [kp_id(k) for k in composition["knowledge_points"]]
    walk = [n for n in (*ts, *ks) if n in G]
    path_edges = {frozenset(e) for e in composition_path(G, composition)}
    context: list[str] = []
    for n in walk:
        kinds = ("topic-topic", "topic-kp") if G.nodes[n]["type"] == TOPIC else ("kp-kp",)
        for kind in kinds:
            context += _strongest(G, n, kind, cfg.walk_context, exclude=walk)
    members = list(dict.fromkeys([*walk, *context]))
    H = G.subgraph(members)
    max_freq = max((G.nodes[n]["freq"] for n in members), default=1)
    max_count = max((d["count"] for _, _, d in H.edges(data=True)), default=1)
    step = {n: i + 1 for i, n in enumerate(walk)}
    nodes = []
    for n in members:
        if n in step:
            d = G.nodes[n]
            over = {
                "label": f"{step[n]}. {d['label']}",
                "color": {"background": _type_color(d["type"]), "border": WALK_COLOR},
                "borderWidth": 4,
                "size": max(_node_size(d["freq"], max_freq), 22),
                "font": {"size": 18, "color": "#000000"},
                "title": _node_title(G, n, questions, cfg, extra=f"<br>walk step {step[n]}"),
            }
        else:
            over = {
                "color": "#d0d0d0" if G.nodes[n]["type"] == KP else "#f6d2a8",
                "font": {"color": "#888888"},
            }
        nodes.append(_node_dict(G, n, questions, cfg, max_freq, **over))
    edges = []
    for a, b in H.edges():
        if frozenset((a, b)) in path_edges:
            # orient the arrow along the walk
            src, dst = (a, b) if step.get(a, 99) < step.get(b, 99) else (b, a)
            edges.append(
                _edge_dict(G, src, dst, questions, cfg, max_count, color=WALK_COLOR, width=5, arrows="to")
            )
        else:
            edges.append(_edge_dict(G, a, b, questions, cfg, max_count, color="#e0e0e0"))
    title = (
        f"Walk {composition.get('id', '')}: {len(ts)} topics, {len(ks)} KPs (red: the walk, grey: context)"
    )
    legend = [("topic", TOPIC_COLOR), ("knowledge point", KP_COLOR), ("walk", WALK_COLOR)]
    return _write(_render(G, nodes, edges, cfg, title, legend, seed), path)


def show_html(path: str | Path, height: int = 780):
    """Display a written view inline in a notebook (an iframe whose srcdoc is the page itself, so it works in
    executed notebooks opened from anywhere). Returns an IPython HTML object."""
    from IPython.display import HTML

    page = Path(path).read_text(encoding="utf-8")
    frame = (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{int(height)}px;'
        'border:1px solid #ddd" sandbox="allow-scripts"></iframe>'
    )
    with warnings.catch_warnings():  # IPython suggests IFrame(src=...), which needs a served file
        warnings.simplefilter("ignore", UserWarning)
        return HTML(frame)


def write_views(
    G: nx.Graph,
    run_dir: str | Path,
    questions: dict[str, str] | None = None,
    composition: dict | None = None,
    config: ViewsConfig | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write every view into ``run_dir/views/``; returns {name: path}. Skips what the graph cannot show (no
    topics: no topic/ego view; no composition: no walk view)."""
    cfg = config or ViewsConfig()
    out_dir = RunDir(run_dir).views
    out: dict[str, Path] = {}
    if not cfg.enabled:
        return out
    topics = sorted(nodes_of_type(G, TOPIC), key=lambda n: (-G.nodes[n]["freq"], n))
    if topics:
        out["topic_graph"] = topic_graph_view(G, out_dir / "topic_graph.html", questions, cfg, seed)
        ego = cfg.ego_topic or G.nodes[topics[0]]["label"]
        out["ego"] = ego_view(G, ego, out_dir / "ego_topic.html", questions, cfg, seed)
    if composition is not None:
        out["walk"] = walk_view(G, composition, out_dir / "walk.html", questions, cfg, seed)
    if cfg.whole_graph:
        out["whole_graph"] = whole_graph_view(G, out_dir / "whole_graph.html", cfg, seed)
    manifest = {k: str(p.name) for k, p in out.items()}
    write_text(out_dir / "index.json", json.dumps(manifest, indent=2) + "\n")
    return out
