"""Views: offline self-contained HTML, escaped tooltips, fixed layouts for big views, figures on small graphs,
and a real headless-Chromium check that an exported pyvis page draws with the network switched off."""

from __future__ import annotations

import html
import json
import re
import shutil
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
        assert "vis.Network" in page and "vis-network" in page.lower()
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
    whole = whole_graph_view(graph, tmp_path / "whole.html", ViewsConfig(whole_graph_max_edges=5))
    nodes = _nodes_in_page(whole.read_text(encoding="utf-8"))
    assert len(nodes) == graph.number_of_nodes() and all("x" in n for n in nodes)


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


def _chromium() -> tuple[str, str] | None:
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def offline_chromium():
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        # no network: every request goes to a dead proxy, and CDP switches the network off as well
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ):
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=Service(found[1]))
    drv.set_script_timeout(20)
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
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
