"""The executed notebooks as a user opens them: a real smoke run (params/smoke.yaml with the whole-graph page on, the
embedded 135M model), then JupyterLab started on loopback and each executed notebook opened in headless Chromium,
without running anything.

Checked in Lab's page: every view of notebook 02 draws (its iframe holds a vis-network canvas with nodes, or, for the
whole graph, sigma's WebGL canvases), every figure shows (each image output is a decoded <img>), the explorer renders
from the widget state saved with the notebook, and no notebook carries an error or a warning (no stderr or error
output, no "...Warning" text). The chain and Lab share a Jupyter data directory under tmp, as they share
~/.local/share/jupyter on a user's machine: that is where the chain's signatures live, so a freshly started Lab trusts
the executed notebooks. No request leaves loopback."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mathscale_utils.core.params import ROOT

from browser import find_chromium, painted_pixels, requested_urls, start_chromium, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]
WARNING_TEXT = re.compile(r"\b[A-Z]\w*Warning\b|\bWARNING\b|Traceback \(most recent call last\)")
TEXT_TYPES = ("text/plain", "text/html", "text/markdown")
SRCDOC = re.compile(r'srcdoc="[^"]*"')


@pytest.fixture(scope="session")
def jupyter_dirs(tmp_path_factory) -> dict[str, str]:
    """Jupyter's data, config and runtime directories for this session: the chain signs into this data directory
    and Lab reads it, as both use ~/.local/share/jupyter on a user's machine."""
    base = tmp_path_factory.mktemp("jupyter")
    dirs = {name: base / name for name in ("data", "config", "runtime")}
    for d in dirs.values():
        d.mkdir()
    settings = dirs["config"] / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in {
        # no "would you like news?" toast over the notebook (and no request for news)
        "apputils-extension/notification": {"fetchNews": "false"},
        # every cell on the page at once (Lab's default attaches a cell's outputs as it scrolls into view)
        "notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    return {f"JUPYTER_{name.upper()}_DIR": str(d) for name, d in dirs.items()}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, jupyter_dirs) -> Path:
    """The chain's CLI on params/smoke.yaml (all six stages, about two minutes on an idle machine)."""
    tmp = tmp_path_factory.mktemp("smoke")
    params = tmp / "smoke.yaml"
    text = (ROOT / "params" / "smoke.yaml").read_text()
    assert "  whole_graph: false\n" in text
    text = text.replace("  whole_graph: false\n", "  whole_graph: true\n")  # the WebGL page too, inside Lab
    params.write_text(text + f"outputs_dir: {tmp / 'out'}\n")
    env = {**os.environ, **jupyter_dirs}
    r = subprocess.run(
        [sys.executable, "-m", "mathscale_utils.runs.chain", str(params)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stderr, r.stderr[
        -3000:
    ]  # e.g. ipykernel's about TCP: the kernel speaks over IPC
    return tmp / "out" / "smoke"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab(smoke_run, jupyter_dirs, tmp_path_factory):
    """`jupyter lab` on 127.0.0.1 (a free port, a token, no browser) serving the run directory."""
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={smoke_run}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    env = {**os.environ, **jupyter_dirs}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=smoke_run)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > end:
                raise AssertionError(f"jupyter lab did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    if find_chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")
    drv = start_chromium(size=(1400, 1000))
    try:
        yield drv
    finally:
        drv.quit()


def _outputs(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(
        "".join(v) if isinstance(v, list) else str(v)
        for k, v in output.get("data", {}).items()
        if k in TEXT_TYPES
    )


def open_in_lab(drv, lab: dict, notebook: str) -> None:
    """Open an executed notebook in Lab and wait until its last cell's outputs are on the page."""
    drv.get(f"{lab['base']}/lab/tree/notebooks/{notebook}?reset&token={lab['token']}")
    wait_for(
        drv,
        "return document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook') !== null"
        " && document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').length > 3",
        timeout=90,
        what=f"{notebook} to open in Lab",
    )
    time.sleep(2.0)  # let the outputs' renderers (images, widgets) finish


def _panel_js(body: str) -> str:
    return f"const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)'); {body}"


def test_chain_signs_the_notebooks_it_executes(smoke_run, jupyter_dirs, monkeypatch):
    import nbformat
    from nbformat.sign import NotebookNotary

    for k, v in jupyter_dirs.items():
        monkeypatch.setenv(k, v)
    paths = sorted((smoke_run / "notebooks").glob("*.ipynb"))
    assert [p.name[:2] for p in paths] == ["01", "02", "03", "04", "05", "06"]
    with NotebookNotary() as notary:
        for p in paths:
            assert notary.check_signature(nbformat.read(p, as_version=4)), f"{p.name} is not trusted"


def test_no_executed_notebook_carries_an_error_or_a_warning(smoke_run):
    for p in sorted((smoke_run / "notebooks").glob("*.ipynb")):
        for o in _outputs(json.loads(p.read_text(encoding="utf-8"))):
            assert o["output_type"] != "error", f"{p.name}: {o.get('ename')}: {o.get('evalue')}"
            assert not (o["output_type"] == "stream" and o["name"] == "stderr"), f"{p.name}: {_text(o)[:500]}"
            shown = SRCDOC.sub(
                "", _text(o)
            )  # a view's page (its inlined libraries) is not text the reader sees
            hit = WARNING_TEXT.search(shown)
            assert hit is None, f"{p.name}: {shown[max(0, hit.start() - 200) : hit.end() + 300]}"


def test_lab_shows_every_view_figure_and_widget(smoke_run, lab, browser):
    drv = browser
    requested_urls(drv)
    for p in sorted((smoke_run / "notebooks").glob("*.ipynb")):
        nb = json.loads(p.read_text(encoding="utf-8"))
        outs = _outputs(nb)
        n_images = sum("image/png" in o.get("data", {}) for o in outs)
        n_views = sum("<iframe srcdoc=" in _text(o) for o in outs)
        n_widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)
        open_in_lab(drv, lab, p.name)

        # figures: every image output is a decoded <img>
        sizes = drv.execute_script(
            _panel_js(
                "return [...panel.querySelectorAll('.jp-OutputArea-output img')]"
                ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"
            )
        )
        assert len(sizes) == n_images, f"{p.name}: {len(sizes)} images shown, {n_images} in the notebook"
        assert all(ok and w > 100 and h > 100 for ok, w, h in sizes), f"{p.name}: {sizes}"

        # widgets render from the saved state (the explorer), neither as "Loading widget..." nor as an error
        if n_widgets:
            wait_for(
                drv,
                _panel_js(
                    "return panel.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length > 0"
                    " && !panel.innerText.includes('Loading widget');"
                ),
                timeout=60,
                what=f"{p.name}: its widgets to render from the saved state",
            )
        page_text = drv.execute_script(_panel_js("return panel.innerText;"))
        assert "Error displaying widget" not in page_text and "Loading widget" not in page_text, p.name

        # no stderr or error output
        bad = drv.execute_script(
            _panel_js(
                "return [...panel.querySelectorAll("
                "'.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')].map(e => e.innerText);"
            )
        )
        assert bad == [], f"{p.name}: {bad}"

        # views: each iframe holds a vis-network canvas with nodes, drawn
        frames = drv.execute_script(
            _panel_js("return [...panel.querySelectorAll('.jp-OutputArea-output iframe')];")
        )
        assert len(frames) == n_views, f"{p.name}: {len(frames)} views shown, {n_views} in the notebook"
        kinds: list[str] = []
        for i, frame in enumerate(frames):
            drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", frame)
            drv.switch_to.frame(frame)
            try:
                n_nodes = wait_for(
                    drv,
                    "return (typeof network !== 'undefined' && document.querySelector('#mynetwork canvas') !== null"
                    " && network.body.data.nodes.length)"
                    " || (window.msRendered !== undefined && msGraph.order)",
                    timeout=60,
                    what=f"{p.name}: view {i} to draw",
                )
                assert n_nodes > 0
                kinds.append(drv.execute_script("return typeof network !== 'undefined' ? 'vis' : 'sigma'"))
            finally:
                drv.switch_to.default_content()
            time.sleep(1.5)
            # the frame's own picture (a capture of the whole window may show a frame's WebGL a frame late)
            painted = painted_pixels(frame.screenshot_as_png)
            assert painted > 2000, f"{p.name}: view {i} looks empty ({painted} painted pixels)"
        if p.name.startswith("02"):
            # the topic graph, the ego view, the whole graph (WebGL) and a walk
            assert kinds == ["vis", "vis", "sigma", "vis"], kinds
            assert n_widgets >= 1, "notebook 02 shows the explorer"
    left = [
        u
        for u in requested_urls(drv)
        if not u.startswith((lab["base"], "data:", "blob:", "about:", "chrome:"))
    ]
    assert left == [], f"requests that left loopback: {left[:5]}"
