"""The static gallery of a run's executed notebooks: one page per notebook, each view taken out into views/ with the
libraries the views share stored once, nothing fetched from outside the gallery, and (in Chromium, offline) the views
still draw."""

from __future__ import annotations

import base64
import re
import time

import nbformat
import pytest

from mathscale_utils.core.io import write_json
from mathscale_utils.core.params import ROOT
from mathscale_utils.method.graph import build_graph
from mathscale_utils.reporting.gallery import main, write_gallery
from mathscale_utils.reporting.views import remote_urls, show_html, topic_graph_view
from mathscale_utils.reporting.whole_graph import whole_graph_view

from browser import find_chromium, requested_urls, start_chromium, wait_for

ROWS = [
    {"seed_id": f"s{i}", "topics": [t, "Algebra"], "knowledge_points": [f"kp {i % 5}", f"kp {(i + 1) % 5}"]}
    for i, t in enumerate(["Fractions", "Geometry", "Money", "Fractions", "Geometry", "Ratios"])
]
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2215b2e0000000049454e44ae426082"
    )
).decode()


def _code(source: str, *outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = list(outputs)
    return cell


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with two executed notebooks: views shown inline, a figure, a saved widget, local paths."""
    run = tmp_path / "run"
    G = build_graph(ROWS)
    views = [
        topic_graph_view(G, run / "views" / "a.html"),
        topic_graph_view(G, run / "views" / "b.html"),
        whole_graph_view(G, run / "views" / "whole.html"),
    ]
    html_out = [nbformat.v4.new_output("display_data", {"text/html": show_html(v).data}) for v in views]
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "w1"}, "text/plain": "VBox()"}
    state = {
        "w1": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_o1"]}},
        "o1": {
            "model_name": "OutputModel",
            "state": {
                "outputs": [{"output_type": "display_data", "data": {"text/html": "<table>explored</table>"}}]
            },
        },
    }
    nb2 = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# 02 · The concept graph\n\nSome $f_{co}$ text."),
            _code("show()", *html_out),
            _code("explore()", nbformat.v4.new_output("display_data", widget)),
        ]
    )
    nb2.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    nb1 = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# 01 · Extract concepts"),
            _code(
                "print(run)",
                nbformat.v4.new_output(
                    "stream", name="stdout", text=f"run directory: {ROOT}/outputs/quickstart\n"
                ),
                nbformat.v4.new_output("display_data", {"image/png": PNG, "text/plain": "<Figure>"}),
            ),
        ]
    )
    (run / "notebooks").mkdir(parents=True)
    nbformat.write(nb1, run / "notebooks" / "01_extract_concepts.ipynb")
    nbformat.write(nb2, run / "notebooks" / "02_concept_graph.ipynb")
    write_json(
        run / "manifest.json",
        {"run_name": "quickstart", "git": {"commit": "abc123"}, "params_file": "p.yaml"},
    )
    return run


def test_gallery_pages_views_and_shared_assets(run_dir, tmp_path):
    out = tmp_path / "docs" / "gallery"
    (out / "assets").mkdir(parents=True)
    (out / "assets" / "stale.js").write_text("old")  # left by an earlier gallery
    written = write_gallery(run_dir, out)
    assert {"index.html", "01_extract_concepts.html", "02_concept_graph.html"} <= set(written)
    assert sorted(p.name for p in (out / "views").iterdir()) == [
        f"02_concept_graph-{k}.html" for k in (1, 2, 3)
    ]
    assert not (out / "assets" / "stale.js").exists()
    page = (out / "02_concept_graph.html").read_text(encoding="utf-8")
    assert "srcdoc" not in page and page.count('<iframe src="views/02_concept_graph-') == 3
    assert "<table>explored</table>" in page and "widget-state" not in page  # the widget as it was saved
    # vis-network (in both pyvis views), sigma and graphology and JupyterLab's CSS are each stored once
    shared = [p for p in (out / "assets").iterdir()]
    assert len({p.read_bytes() for p in shared}) == len(shared)
    vis = [p for p in shared if b"vis-network" in p.read_bytes()[:2000] or b"vis.Network" in p.read_bytes()]
    assert len(vis) == 1
    for k in (1, 2):
        view = (out / "views" / f"02_concept_graph-{k}.html").read_text(encoding="utf-8")
        assert f'src="../assets/{vis[0].name}"' in view
    # nothing asks the network: no CDN script, style or font in any file
    for f in out.rglob("*"):
        if f.suffix in (".html", ".css"):
            assert remote_urls(f.read_text(encoding="utf-8")) == [], f
    first = (out / "01_extract_concepts.html").read_text(encoding="utf-8")
    assert "run directory: outputs/quickstart" in first and str(ROOT) not in first
    assert re.search(r'<img[^>]+src="data:image/png;base64,', first)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "href='01_extract_concepts.html'>01 · Extract concepts<" in index and "abc123" in index
    total = sum(p.stat().st_size for p in written.values())
    assert total < 2_000_000, total


def test_gallery_cli(run_dir, tmp_path, capsys):
    assert main([str(run_dir), str(tmp_path / "g")]) == 0
    assert "index.html" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing"), str(tmp_path / "g2")]) == 1
    assert "no executed notebook" in capsys.readouterr().err


@pytest.mark.browser
def test_gallery_views_draw_offline(run_dir, tmp_path):
    if find_chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")
    out = tmp_path / "gallery"
    write_gallery(run_dir, out)
    drv = start_chromium(offline=True)
    try:
        requested_urls(drv)
        drv.get((out / "02_concept_graph.html").as_uri())
        frames = drv.find_elements("css selector", "iframe")
        assert len(frames) == 3
        for i, frame in enumerate(frames):
            drv.execute_script("arguments[0].scrollIntoView();", frame)
            drv.switch_to.frame(frame)
            try:
                if i < 2:
                    n = wait_for(
                        drv, "return typeof network !== 'undefined' && network.body.data.nodes.length", 60
                    )
                else:
                    wait_for(drv, "return window.msRendered", 60, "the sigma frame")
                    n = drv.execute_script("return msGraph.order")
                assert n == build_graph(ROWS).number_of_nodes() or (i < 2 and n > 0)
            finally:
                drv.switch_to.default_content()
        time.sleep(0.5)
        urls = requested_urls(drv)
        left = [u for u in urls if not u.startswith(("file:", "data:", "blob:", "chrome:", "about:"))]
        assert left == [], left
        assert any(u.endswith(".js") and "/assets/" in u for u in urls)  # the views loaded the shared code
    finally:
        drv.quit()
