"""The whole concept graph as one offline HTML page drawn with WebGL (sigma.js on graphology), and the layout that
places its nodes.

Every topic and knowledge point is a node, at a position computed here (:func:`layout_positions`); the strongest
``whole_graph_max_edges`` edges are drawn (each node keeps its strongest one). A search box finds a concept, a click
lists its drawn neighbours with their co-occurrence counts, hovering highlights a neighbourhood, and the two node
types can be hidden. The page is one file with no request to make: sigma.js and graphology are inlined from the
copies vendored in ``static/`` (taken from the npm registry; versions, checksums and licences in
``static/VENDORED.json``). sigma 3.0 is used rather than 4.0, whose new style system was weeks old when vendored.

Speed: the positions are computed here, so the browser only parses the data and uploads it to the GPU; 10K nodes
and 20K edges open in well under 3 s in headless Chromium (``bench/bench_views.py``).

Data in the page (``<script id="ms-data" type="application/json">``)::

    {"title": str, "colors": [topic, kp],
     "nodes": [[label, type (0 topic, 1 KP), freq, x, y, size], ...],
     "edges": [[i, j, count, width], ...]}            # i, j index "nodes"
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import networkx as nx
import numpy as np

from mathscale_utils.core.io import write_text
from mathscale_utils.core.method_config import ViewsConfig
from mathscale_utils.method.graph import KP_COLOR, TOPIC, TOPIC_COLOR

STATIC = Path(__file__).resolve().with_name("static")

# ----------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------


def _force_layout(H: nx.Graph, seed: int, iterations: int) -> np.ndarray:
    """networkx's ForceAtlas2 as an (n, 2) array (1,400 nodes: about 8 s for 50 iterations on one core)."""
    if H.number_of_nodes() <= 1:
        return np.zeros((H.number_of_nodes(), 2))
    pos = nx.forceatlas2_layout(H, max_iter=iterations, seed=seed, strong_gravity=True)
    return np.array([pos[v] for v in H], dtype=float)


def layout_positions(H: nx.Graph, seed: int = 0, scale: float | None = None, iterations: int = 50) -> dict:
    """Positions {node: (x, y)} in pixels for a view drawn with physics off.

    Up to 2,500 nodes, or a graph of one type: a force-directed layout of the whole graph. The paper's graph (~2K
    topics + ~9K KPs) lays out the topic graph only and puts each KP at the count-weighted mean of its topics plus a
    small jitter, so KPs sit next to the topics they co-occur with, at O(topics²) instead of O(nodes²)."""
    nodes = list(H)
    n = len(nodes)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    scale = scale or 45.0 * math.sqrt(n)
    topics = [v for v in nodes if H.nodes[v].get("type", TOPIC) == TOPIC]
    if n <= 2500 or len(topics) in (0, n) or len(topics) > 2500:
        pos = _force_layout(H, seed, iterations)
    else:
        t_pos = dict(zip(topics, _force_layout(H.subgraph(topics), seed, iterations), strict=True))
        spread = (
            0.6 * float(np.ptp(np.array(list(t_pos.values())), axis=0).mean() or 1.0) / math.sqrt(len(topics))
        )
        pos = np.zeros((n, 2))
        for i, v in enumerate(nodes):
            if v in t_pos:
                pos[i] = t_pos[v]
                continue
            nb = [(t_pos[u], d.get("count", 1)) for u, d in H[v].items() if u in t_pos]
            centre = np.average([p for p, _ in nb], axis=0, weights=[w for _, w in nb]) if nb else (0.0, 0.0)
            pos[i] = centre + rng.normal(0, spread, 2)
    pos -= np.median(pos, axis=0)
    extent = float(np.quantile(np.abs(pos), 0.98)) or 1.0
    pos = pos / extent * scale
    return {v: (round(float(pos[i, 0]), 1), round(float(pos[i, 1]), 1)) for i, v in enumerate(nodes)}


# ----------------------------------------------------------------------------------------------------------------
# Vendored JavaScript
# ----------------------------------------------------------------------------------------------------------------


def vendored() -> list[dict]:
    """The vendored packages as ``static/VENDORED.json`` lists them (name, version, file, sha256, licence)."""
    return json.loads((STATIC / "VENDORED.json").read_text(encoding="utf-8"))["packages"]


def vendored_script(name: str) -> str:
    """The code of a vendored package, checked against its recorded sha256, without its source-map comment (the
    map is not vendored, and a page must ask for nothing)."""
    pkg = next((p for p in vendored() if p["name"] == name), None)
    if pkg is None:
        raise KeyError(f"{name!r} is not vendored in {STATIC / 'VENDORED.json'}")
    data = (STATIC / pkg["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != pkg["sha256"]:
        raise RuntimeError(f"{STATIC / pkg['file']}: sha256 differs from VENDORED.json (file changed?)")
    lines = data.decode("utf-8").splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith("//# sourceMappingURL="))


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------

_CSS = """
html, body { margin: 0; height: 100%; font: 13px/1.35 system-ui, sans-serif; color: #222; background: #fff; }
#ms-bar { position: absolute; top: 0; left: 0; right: 0; padding: 6px 10px; background: rgba(255,255,255,.92);
  border-bottom: 1px solid #ddd; z-index: 2; display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
#ms-bar b { font-size: 14px; } #ms-bar input[type=search] { width: 280px; }
.ms-dot { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 4px; vertical-align: -1px; }
#ms-graph { position: absolute; top: 40px; left: 0; right: 0; bottom: 0; }
#ms-info { position: absolute; right: 8px; top: 70px; width: 300px; max-height: 75%; overflow: auto; z-index: 2;
  background: rgba(255,255,255,.96); border: 1px solid #ccc; border-radius: 4px; padding: 8px; display: none; }
#ms-info ol { margin: 4px 0 0 18px; padding: 0; } #ms-info li { cursor: pointer; }
"""

_APP_JS = """
(function () {
  "use strict";
  var T = window.msTimes = { start: performance.now() };
  var D = JSON.parse(document.getElementById("ms-data").textContent);
  T.parsed = performance.now();
  var KIND = ["topic", "knowledge point"];
  var g = new graphology.Graph({ type: "undirected", multi: false, allowSelfLoops: false });
  D.nodes.forEach(function (n, i) {
    g.addNode(String(i), { label: n[0], kind: n[1], freq: n[2], x: n[3], y: n[4], size: n[5], color: D.colors[n[1]] });
  });
  D.edges.forEach(function (e) {
    g.addUndirectedEdge(String(e[0]), String(e[1]), { count: e[2], size: e[3], color: "#cfcfcf" });
  });
  T.graph = performance.now();
  window.msGraph = g;
  var box = document.getElementById("ms-graph"), info = document.getElementById("ms-info");
  var renderer = null, focus = null, near = null, selected = null, show = [true, true];

  function setFocus(node) {
    focus = node;
    near = node === null ? null : new Set(g.neighbors(node).concat([node]));
    renderer.refresh({ skipIndexation: true });
  }
  function el(tag, text) { var e = document.createElement(tag); e.textContent = text; return e; }
  function showInfo(node) {  // text only: labels come from an LLM
    var a = g.getNodeAttributes(node);
    info.replaceChildren(el("b", a.label),
      el("div", KIND[a.kind] + ", in " + a.freq + " seed question" + (a.freq === 1 ? "" : "s")));
    var nb = g.mapEdges(node, function (e, attr, s, t) { return [s === node ? t : s, attr.count]; });
    nb.sort(function (x, y) { return y[1] - x[1]; });
    info.appendChild(el("div", nb.length + " drawn neighbour" + (nb.length === 1 ? "" : "s") + " (co-occurrence count):"));
    var ol = document.createElement("ol");
    nb.slice(0, 50).forEach(function (p) {
      var li = el("li", g.getNodeAttribute(p[0], "label") + " (" + KIND[g.getNodeAttribute(p[0], "kind")] + "): " + p[1]);
      li.onclick = function () { select(p[0]); };
      ol.appendChild(li);
    });
    info.appendChild(ol);
    info.style.display = "block";
  }
  function select(node) {
    selected = node;
    setFocus(node);
    showInfo(node);
    var xs = [], ys = [];  // frame the node and its drawn neighbours
    near.forEach(function (n) { var d = renderer.getNodeDisplayData(n); if (d) { xs.push(d.x); ys.push(d.y); } });
    if (!xs.length) return;
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var ratio = Math.min(1, Math.max(0.08, 1.3 * Math.max(x1 - x0, y1 - y0)));
    renderer.getCamera().animate({ x: (x0 + x1) / 2, y: (y0 + y1) / 2, ratio: ratio }, { duration: 400 });
  }

  function start() {
    renderer = new Sigma(g, box, {
      hideEdgesOnMove: true, labelRenderedSizeThreshold: 7, labelDensity: 0.08, zIndex: true,
      nodeReducer: function (node, data) {
        var out = Object.assign({}, data);
        if (!show[data.kind]) { out.hidden = true; return out; }
        if (near !== null) {
          if (near.has(node)) { out.forceLabel = true; out.zIndex = 1; }
          else { out.color = "#e8e8e8"; out.label = ""; out.zIndex = 0; }
        }
        return out;
      },
      edgeReducer: function (edge, data) {
        var out = Object.assign({}, data), ends = g.extremities(edge);
        if (!show[g.getNodeAttribute(ends[0], "kind")] || !show[g.getNodeAttribute(ends[1], "kind")]) out.hidden = true;
        else if (focus !== null) {
          if (ends[0] === focus || ends[1] === focus) { out.color = "#777"; out.zIndex = 1; } else out.hidden = true;
        }
        return out;
      }
    });
    T.sigma = performance.now();
    window.msRenderer = renderer;
    renderer.once("afterRender", function () { window.msRendered = performance.now(); });
    requestAnimationFrame(function () { requestAnimationFrame(function () {
      if (window.msRendered === undefined) window.msRendered = performance.now();
    }); });
    renderer.on("enterNode", function (e) { if (selected === null) setFocus(e.node); });
    renderer.on("leaveNode", function () { if (selected === null) setFocus(null); });
    renderer.on("clickNode", function (e) { select(e.node); });
    renderer.on("clickStage", function () { selected = null; info.style.display = "none"; setFocus(null); });
  }

  // search: the datalist holds only the labels that match what was typed (thousands of options would slow the page)
  var keys = [], byKey = new Map(), list = document.getElementById("ms-labels"), search = document.getElementById("ms-search");
  g.forEachNode(function (node, a) {
    var key = a.label + " (" + KIND[a.kind] + ")";
    keys.push(key);
    byKey.set(key, node);
  });
  search.addEventListener("input", function () {
    var q = search.value.toLowerCase(), hits = [];
    if (renderer !== null && byKey.has(search.value)) { select(byKey.get(search.value)); return; }
    for (var i = 0; i < keys.length && hits.length < 30 && q.length > 1; i++) {
      if (keys[i].toLowerCase().indexOf(q) >= 0) hits.push(keys[i]);
    }
    list.replaceChildren.apply(list, hits.map(function (k) { var o = document.createElement("option"); o.value = k; return o; }));
  });
  [0, 1].forEach(function (k) {
    document.getElementById("ms-show" + k).addEventListener("change", function (ev) {
      show[k] = ev.target.checked;
      if (renderer !== null) renderer.refresh({ skipIndexation: true });
    });
  });
  T.search = performance.now();

  // sigma needs a container with a size: inside a notebook the page may load in a frame not laid out yet
  function sized() { return box.offsetWidth > 0 && box.offsetHeight > 0; }
  function boot() {
    try { start(); } catch (err) { window.msError = String(err); box.textContent = "cannot draw the graph: " + err; }
  }
  box.style.top = document.getElementById("ms-bar").offsetHeight + "px";
  if (sized()) { boot(); } else {
    var watch = new ResizeObserver(function () {
      box.style.top = document.getElementById("ms-bar").offsetHeight + "px";
      if (sized()) { watch.disconnect(); boot(); }
    });
    watch.observe(document.body);
  }
})();
"""


def _edges_to_draw(G: nx.Graph, limit: int) -> list[tuple[str, str, int]]:
    """The strongest edges: first each node's strongest one (so no node floats alone), then by count up to limit."""
    by_count = sorted(G.edges(data="count"), key=lambda e: (-e[2], e[0], e[1]))
    keep: dict[frozenset, tuple[str, str, int]] = {}
    best_of: dict[str, tuple[str, str, int]] = {}
    for e in by_count:
        for n in e[:2]:
            best_of.setdefault(n, e)
    for e in best_of.values():
        keep[frozenset(e[:2])] = e
    for e in by_count:
        if len(keep) >= max(limit, len(best_of)):
            break
        keep.setdefault(frozenset(e[:2]), e)
    return list(keep.values())


def whole_graph_data(G: nx.Graph, config: ViewsConfig | None = None, seed: int = 0) -> dict:
    """The page's data (see the module docstring): every node at its layout position, the strongest edges."""
    cfg = config or ViewsConfig()
    ids = list(G)
    index = {n: i for i, n in enumerate(ids)}
    pos = layout_positions(G, seed=seed)
    max_freq = max((d for _, d in G.nodes(data="freq")), default=1)
    nodes = []
    for n in ids:
        d = G.nodes[n]
        size = round(2.5 + 12.5 * math.sqrt(d["freq"] / max(max_freq, 1)), 2)
        nodes.append([d["label"], 0 if d["type"] == TOPIC else 1, d["freq"], *pos[n], size])
    drawn = _edges_to_draw(G, cfg.whole_graph_max_edges)
    max_count = max((c for *_, c in drawn), default=1)
    edges = [
        [index[a], index[b], c, round(0.4 + 2.6 * math.log1p(c) / math.log1p(max(max_count, 1)), 2)]
        for a, b, c in drawn
    ]
    title = f"Whole concept graph: {len(ids):,} nodes, {len(edges):,} of {G.number_of_edges():,} edges (the strongest)"
    return {"title": title, "colors": [TOPIC_COLOR, KP_COLOR], "nodes": nodes, "edges": edges}


def _json_for_script(data: dict) -> str:
    """JSON that cannot end its <script> element early: every '<' is written as \\u003c (concepts come from an LLM)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def whole_graph_page(data: dict) -> str:
    """The self-contained HTML page for :func:`whole_graph_data`'s data."""
    import html

    title = html.escape(data["title"])
    dots = "".join(
        f"<label><input type='checkbox' id='ms-show{k}' checked><span class='ms-dot' style='background:{c}'>"
        f"</span>{name}</label>"
        for k, (name, c) in enumerate(zip(("topics", "knowledge points"), data["colors"], strict=True))
    )
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<div id='ms-bar'><b>{title}</b>{dots}"
        "<input type='search' id='ms-search' list='ms-labels' placeholder='find a topic or knowledge point'>"
        "<datalist id='ms-labels'></datalist><span>click a node for its neighbours; scroll to zoom</span></div>\n"
        "<div id='ms-graph'></div>\n<div id='ms-info'></div>\n"
        f"<script>{vendored_script('graphology')}</script>\n<script>{vendored_script('sigma')}</script>\n"
        f"<script id='ms-data' type='application/json'>{_json_for_script(data)}</script>\n"
        f"<script>{_APP_JS}</script>\n</body>\n</html>\n"
    )


def whole_graph_view(G: nx.Graph, path: str | Path, config: ViewsConfig | None = None, seed: int = 0) -> Path:
    """Write the whole graph as one offline WebGL page (every topic and KP; the strongest edges)."""
    return write_text(path, whole_graph_page(whole_graph_data(G, config, seed)))
