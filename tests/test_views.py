"""Views: offline self-contained HTML, escaped tooltips, fixed layouts for big views, figures on small graphs, the
vendored sigma.js of the whole-graph page, and real headless-Chromium checks that an exported pyvis page and the
WebGL whole-graph page draw with the network switched off."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from pathlib import Path

import matplotlib
import pytest

from mathscale_utils.core.method_config import ComposeConfig, ViewsConfig
from mathscale_utils.method.compose import compose
from mathscale_utils.method.graph import (
    build_graph,
    degree_distribution_figure,
    question_index,
    topic_kp_heatmap,
    topic_kp_matrix,
)
from mathscale_utils.reporting.views import (
    ego_view,
    layout_positions,
    remote_urls,
    show_html,
    topic_graph_view,
    walk_view,
    whole_graph_view,
    write_views,
)
from mathscale_utils.reporting.whole_graph import STATIC, vendored, vendored_script, whole_graph_data

from browser import find_chromium, painted_pixels, requested_urls, start_chromium, wait_for

matplotlib.use("Agg")

EVIL = '<script>alert("x")</script> <img src=x onerror=alert(1)> 3 < 4 & href'


def _row(sid, topics, kps, question="What is 2 + 2?"):
    return {"seed_id": sid, "question": question, "topics": topics, "knowledge_points": kps, "status": "ok"}


@pytest.fixture
def rows():
    out = [_row("evil", ["Algebra", "Fractions"], ["Adding fractions", "Algebra"], EVIL)]
    for i in range(40):
        t = ["Algebra", "Fractions", "Geometry", "Probability", "Money"][i % 5]
        t2 = ["Fractions", "Geometry", "Algebra"][i % 3]
        kps = [f"kp {(i * 3 + j) % 17}" for j in range(1 + i % 4)]
        out.append(_row(f"s{i}", [t, t2] if t2 != t else [t], kps, f"Question {i}: compute {i} * 3."))
    return out


@pytest.fixture
def graph(rows):
    return build_graph(rows)


def _nodes_in_page(page: str) -> list[dict]:
    m = re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", page, re.S)
    assert m, "no node data in page"
    return json.loads(m.group(1))


def test_views_are_self_contained_and_escaped(tmp_path, graph, rows):
    comp = compose(graph, ComposeConfig(epochs=2), seed=0).record(0)
    out = write_views(graph, tmp_path, question_index(rows), comp, ViewsConfig(), seed=0)
    assert set(out) == {"topic_graph", "ego", "walk", "whole_graph"}
    assert json.loads((tmp_path / "views" / "index.json").read_text())["ego"] == "ego_topic.html"
    for path in out.values():
        page = path.read_text(encoding="utf-8")
        assert remote_urls(page) == [], path
        drawn_by = "new Sigma(" if path.name == "whole_graph.html" else "vis.Network"
        assert drawn_by in page
        assert "<script>alert" not in page and "onerror=alert(1)>" not in page
    titles = {n["id"]: n["title"] for n in _nodes_in_page(out["ego"].read_text(encoding="utf-8"))}
    assert html.escape('<script>alert("x")</script>') in titles["T::Algebra"]  # shown as text in the tooltip


def test_remote_urls_detects_cdn_references():
    assert remote_urls('<script src="https://cdn.example/x.js"></script>')
    assert remote_urls('<link href="//cdn.example/x.css" rel="stylesheet">')
    assert remote_urls("<style>@import url('https://fonts.example/a.css');</style>")
    assert remote_urls('<img src="data:image/png;base64,AAAA">') == []


def test_small_views_use_physics_big_views_fixed_positions(tmp_path, graph):
    small = topic_graph_view(graph, tmp_path / "small.html", config=ViewsConfig(physics_max_nodes=300))
    page = small.read_text(encoding="utf-8")
    assert '"physics": {"enabled": true' in page
    big = topic_graph_view(graph, tmp_path / "big.html", config=ViewsConfig(physics_max_nodes=2))
    page = big.read_text(encoding="utf-8")
    assert '"physics": {"enabled": false}' in page and '"improvedLayout": false' in page
    assert all("x" in n and "y" in n for n in _nodes_in_page(page))


def _whole_data(page: str) -> dict:
    m = re.search(r"<script id='ms-data' type='application/json'>(.*?)</script>", page, re.S)
    assert m, "no graph data in the whole-graph page"
    return json.loads(m.group(1))


def test_whole_graph_page_holds_every_node_and_the_strongest_edges(tmp_path, graph):
    page = whole_graph_view(graph, tmp_path / "whole.html", ViewsConfig(whole_graph_max_edges=5)).read_text()
    assert remote_urls(page) == [] and "sourceMappingURL" not in page
    data = _whole_data(page)
    assert len(data["nodes"]) == graph.number_of_nodes()
    assert {n[0] for n in data["nodes"]} == {d["label"] for _, d in graph.nodes(data=True)}
    # every node keeps its strongest edge, so more than 5 edges may be drawn, and never more than needed
    ends = {i for e in data["edges"] for i in e[:2]}
    assert ends == set(range(graph.number_of_nodes()))
    assert 5 <= len(data["edges"]) < graph.number_of_edges()
    counts = sorted((c for *_, c in graph.edges(data="count")), reverse=True)
    assert max(e[2] for e in data["edges"]) == counts[0]
    # the evil topic cannot close the data's <script> element
    assert "</script><script>" not in page.split("id='ms-data'")[1].split("</script>")[0]


def test_vendored_javascript_is_the_registry_files():
    for pkg in vendored():
        body = (STATIC / pkg["file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == pkg["sha256"], pkg["file"]
        assert (
            (STATIC / pkg["license_file"]).read_text().lstrip().startswith(("Copyright", "The MIT License"))
        )
        assert pkg["tarball"].startswith("https://registry.npmjs.org/") and pkg["integrity"].startswith(
            "sha512-"
        )
        code = vendored_script(pkg["name"])
        assert "sourceMappingURL" not in code and len(code) > 50_000
    with pytest.raises(KeyError):
        vendored_script("d3")


def test_a_changed_vendored_file_is_refused(tmp_path, monkeypatch):
    from mathscale_utils.reporting import whole_graph

    copy = tmp_path / "static"
    copy.mkdir()
    for f in STATIC.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    sigma = next(p for p in vendored() if p["name"] == "sigma")
    (copy / sigma["file"]).write_bytes((copy / sigma["file"]).read_bytes() + b"\n// changed")
    monkeypatch.setattr(whole_graph, "STATIC", copy)
    with pytest.raises(RuntimeError, match="sha256"):
        whole_graph.vendored_script("sigma")


def test_whole_graph_data_of_an_empty_graph():
    data = whole_graph_data(build_graph([]))
    assert data["nodes"] == [] and data["edges"] == []


def test_ego_and_walk_views_content(tmp_path, graph):
    page = ego_view(
        graph, "Algebra", tmp_path / "ego.html", config=ViewsConfig(ego_max_kps=3, ego_max_topics=2)
    )
    ids = {n["id"] for n in _nodes_in_page(page.read_text(encoding="utf-8"))}
    assert "T::Algebra" in ids and len(ids) <= 6
    with pytest.raises(KeyError):
        ego_view(graph, "No such topic", tmp_path / "x.html")
    comp = compose(graph, ComposeConfig(epochs=1), seed=1).record(0)
    page = walk_view(graph, comp, tmp_path / "walk.html").read_text(encoding="utf-8")
    labels = {n["label"] for n in _nodes_in_page(page)}
    assert f"1. {comp['start_topic']}" in labels
    assert '"arrows": "to"' in page


def test_layout_positions_scale(graph):
    assert layout_positions(graph.subgraph([])) == {}
    pos = layout_positions(graph, seed=0)
    assert set(pos) == set(graph) and all(len(p) == 2 for p in pos.values())
    assert layout_positions(graph, seed=0) == pos


def test_figures_and_views_on_tiny_and_empty_graphs(graph, tmp_path):
    import matplotlib.pyplot as plt

    empty = build_graph([])
    for G in (graph, empty, build_graph([_row("a", ["A"], []), _row("b", ["A"], [])])):
        plt.close(degree_distribution_figure(G))
        plt.close(topic_kp_heatmap(topic_kp_matrix(G)))
        assert write_views(G, tmp_path / str(G.number_of_nodes()), {}, None, ViewsConfig()) is not None


def test_show_html_embeds_page(tmp_path, graph):
    p = topic_graph_view(graph, tmp_path / "t.html")
    out = show_html(p, height=300)
    assert out.data.startswith("<iframe srcdoc=") and "height:300px" in out.data


# ----------------------------------------------------------------------------------------------------------------
# real browser
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline_chromium():
    if find_chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium.webdriver")
    drv = start_chromium(offline=True)
    try:
        yield drv
    finally:
        drv.quit()


def _wait_for_network(drv, timeout=30.0):
    js = (
        "return typeof network !== 'undefined' && network !== null"
        " && document.querySelector('#mynetwork canvas') !== null"
    )
    end = time.time() + timeout
    while time.time() < end:
        if drv.execute_script(js):
            return
        time.sleep(0.2)
    raise AssertionError("vis-network canvas did not appear")


@pytest.mark.browser
def test_exported_view_draws_offline_in_chromium(offline_chromium, tmp_path, graph, rows):
    drv = offline_chromium
    questions = question_index(rows)
    comp = compose(graph, ComposeConfig(epochs=1), seed=0).record(0)
    pages = {
        "ego": ego_view(graph, "Algebra", tmp_path / "ego.html", questions),
        "walk": walk_view(graph, comp, tmp_path / "walk.html", questions),
        "fixed": topic_graph_view(
            graph, tmp_path / "fixed.html", questions, ViewsConfig(physics_max_nodes=1)
        ),
    }
    for name, path in pages.items():
        expected = len(_nodes_in_page(path.read_text(encoding="utf-8")))
        drv.get(Path(path).resolve().as_uri())
        _wait_for_network(drv)
        loaded = drv.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(("file:", "data:", "blob:")) for u in loaded), loaded
        # the test really is offline
        status = drv.execute_async_script(
            "const cb = arguments[0]; fetch('http://example.com/').then(() => cb('online'), () => cb('offline'));"
        )
        assert status == "offline"
        assert drv.execute_script("return network.body.data.nodes.length") == expected
        assert drv.execute_script("return nodes.length") == expected
        time.sleep(2.0 if name != "fixed" else 0.5)  # let physics settle a little before the picture
        painted = drv.execute_script(
            """const c = document.querySelector('#mynetwork canvas');
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
               let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n;"""
        )
        assert painted > 2000, f"{name}: canvas looks empty ({painted} painted pixels)"
        shot = tmp_path / f"{name}.png"
        assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    # tooltips are DOM elements built from escaped text: the evil question is text, not markup
    drv.get(pages["ego"].resolve().as_uri())
    _wait_for_network(drv)
    tip = drv.execute_script(
        """const t = nodes.get('T::Algebra').title;
           return [t instanceof HTMLElement, t.textContent, t.querySelectorAll('script,img').length];"""
    )
    assert tip[0] is True and '<script>alert("x")</script>' in tip[1] and tip[2] == 0


@pytest.mark.browser
def test_whole_graph_page_draws_offline_with_webgl(offline_chromium, tmp_path, rows):
    drv = offline_chromium
    evil = "</script><img src=x onerror=alert(1)>"
    graph = build_graph([*rows, _row("x", [evil, "Algebra"], ["kp 1"])])
    page = whole_graph_view(graph, tmp_path / "whole.html", ViewsConfig(whole_graph_max_edges=30))
    data = _whole_data(page.read_text(encoding="utf-8"))
    requested_urls(drv)  # forget the browser's own start-up requests
    drv.get(page.resolve().as_uri())
    wait_for(drv, "return window.msRendered", timeout=60, what="the first sigma frame")
    assert drv.execute_script("return [msGraph.order, msGraph.size]") == [
        len(data["nodes"]),
        len(data["edges"]),
    ]
    assert drv.execute_script("return msRenderer.getCanvases().nodes.getContext('webgl2') !== null")
    # the labels are text: the evil topic's markup stays a string and adds no element
    assert evil in drv.execute_script("return msGraph.mapNodes((n, a) => a.label)")
    assert drv.execute_script("return document.querySelectorAll('img').length") == 0
    time.sleep(0.5)
    assert painted_pixels(drv.get_screenshot_as_png(), (0, 80, 1280, 900)) > 5000, "the graph looks empty"
    # a click on the search result focuses the node and lists its neighbours
    drv.execute_script(
        "const s = document.getElementById('ms-search'); s.value = 'Algebra (topic)';"
        " s.dispatchEvent(new Event('input'));"
    )
    info = wait_for(drv, "return document.getElementById('ms-info').innerText", what="the node's panel")
    assert info.startswith("Algebra") and "topic, in" in info and "drawn neighbour" in info
    # nothing left the machine: every request was the file itself or inline data
    status = drv.execute_async_script(
        "const cb = arguments[0]; fetch('http://example.com/').then(() => cb('online'), () => cb('offline'));"
    )
    assert status == "offline"
    left = [u for u in requested_urls(drv) if not u.startswith(("file:", "data:", "blob:", "chrome:"))]
    assert left == ["http://example.com/"], left


@pytest.mark.browser
def test_whole_graph_page_waits_for_a_frame_with_a_size(offline_chromium, tmp_path, graph):
    """In a notebook the page may load in a frame that is not laid out yet (JupyterLab renders outputs before
    attaching them): it draws once the frame has a size, instead of failing on an empty container."""
    drv = offline_chromium
    page = whole_graph_view(graph, tmp_path / "whole.html")
    frame = show_html(page, height=600).data.replace("height:600px", "height:0px")
    (tmp_path / "host.html").write_text(f"<!DOCTYPE html><html><body>{frame}</body></html>", encoding="utf-8")
    drv.get((tmp_path / "host.html").as_uri())
    iframe = drv.find_element("css selector", "iframe")
    time.sleep(1.0)
    drv.switch_to.frame(iframe)
    assert drv.execute_script("return [window.msRendered, window.msError]") == [
        None,
        None,
    ]  # waiting, not failed
    drv.switch_to.default_content()
    drv.execute_script("arguments[0].style.height = '600px';", iframe)
    drv.switch_to.frame(iframe)
    wait_for(drv, "return window.msRendered", timeout=60, what="the first sigma frame after the resize")
    assert drv.execute_script("return [msRenderer.getGraph().order, window.msError]") == [
        graph.number_of_nodes(),
        None,
    ]
