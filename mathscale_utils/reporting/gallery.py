"""A run's executed notebooks as a static HTML gallery (``make docs`` writes the quickstart's into ``docs/gallery/``),
so a reader of the repository sees the tables, figures and interactive views without running anything.

    python -m mathscale_utils.reporting.gallery RUN_DIR OUT_DIR

What is written into OUT_DIR::

    index.html                 the run (name, params, commit) and one link per notebook
    NN_<name>.html             each executed notebook (nbconvert's JupyterLab look)
    views/NN_<name>-K.html     each interactive view, taken out of its notebook (the notebooks hold them inline)
    assets/<sha256[:16]>.js    code and styles the pages share (vis-network, sigma.js, JupyterLab's CSS), once each

Offline, like the views: no page asks for anything outside OUT_DIR. nbconvert's template would fetch require.js,
MathJax and mermaid from CDNs; the gallery's template leaves them out, so formulas and the mermaid flowcharts show as
their source text. Widgets become what they showed when the notebook was saved (a progress bar as an HTML
``<progress>``, the explorer's tables), since a static page has no kernel. Paths under the repository are written
relative to it, the home directory as ``~``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import sys
from pathlib import Path

import nbformat

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_json, write_text
from mathscale_utils.core.params import ROOT
from mathscale_utils.reporting.widget_state import static_widgets

SHARE_MIN_BYTES = 20_000  # inline scripts and styles at least this big go to assets/ (libraries, CSS)
_SRCDOC = re.compile(r'<iframe srcdoc="([^"]*)"([^>]*?) sandbox="allow-scripts"')
_INLINE = re.compile(r"<(script|style)([^>]*)>(.*?)</\1>", re.S | re.I)

# ----------------------------------------------------------------------------------------------------------------
# Paths, views, shared assets
# ----------------------------------------------------------------------------------------------------------------


def _relative_paths(text: str) -> str:
    text = text.replace(str(ROOT) + "/", "")
    home = str(Path.home())
    return text.replace(home + "/", "~/") if len(home) > 1 else text


def _clean_text(nb: nbformat.NotebookNode) -> None:
    """Local paths in outputs and parameters written relative to the repository (or ~), in place."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.source = _relative_paths(cell.source)
        for o in cell.outputs:
            if "text" in o:
                o.text = _relative_paths(o.text)
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in o.get("data", {}):
                    o.data[mime] = _relative_paths(o.data[mime])


def _share(page: str, out_dir: Path, prefix: str, written: dict[str, Path]) -> str:
    """Move big inline scripts and styles of a page into content-addressed files under assets/ (so a library that
    several pages inline is stored once), referenced as ``prefix``assets/<name>."""

    def repl(m: re.Match) -> str:
        tag, attrs, body = m.group(1).lower(), m.group(2), m.group(3)
        if len(body.encode("utf-8")) < SHARE_MIN_BYTES or "src=" in attrs or "application/json" in attrs:
            return m.group(0)
        ext = "js" if tag == "script" else "css"
        name = f"{hashlib.sha256(body.encode('utf-8')).hexdigest()[:16]}.{ext}"
        if name not in written:
            written[name] = write_text(out_dir / "assets" / name, body)
        if tag == "script":
            return f'<script src="{prefix}assets/{name}"></script>'
        return f'<link rel="stylesheet" href="{prefix}assets/{name}">'

    return _INLINE.sub(repl, page)


def _extract_views(
    nb: nbformat.NotebookNode, stem: str, out_dir: Path, written: dict[str, Path]
) -> list[Path]:
    """Each view a notebook holds inline (``views.show_html``: a sandboxed iframe whose srcdoc is the page) is written
    to views/<stem>-K.html and its iframe pointed there, in place. The iframe loses its sandbox: a sandboxed frame of a
    gallery opened from disk (file://) may not load the shared scripts in assets/, and the pages are our own."""
    views: list[Path] = []

    def repl(m: re.Match) -> str:
        inner = _share(html.unescape(m.group(1)), out_dir, "../", written)
        path = write_text(out_dir / "views" / f"{stem}-{len(views) + 1}.html", inner)
        views.append(path)
        return f'<iframe src="views/{path.name}"{m.group(2)}'

    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if "text/html" in o.get("data", {}):
                o.data["text/html"] = _SRCDOC.sub(repl, o.data["text/html"])
    return views


# ----------------------------------------------------------------------------------------------------------------
# Pages
# ----------------------------------------------------------------------------------------------------------------


def _exporter():
    from nbconvert import HTMLExporter

    static = Path(__file__).resolve().with_name("static")
    return HTMLExporter(
        template_name="lab", template_file="gallery.html.j2", extra_template_paths=[str(static)]
    )


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    head = next((ln for ln in first.splitlines() if ln.startswith("# ")), "")
    return head[2:].strip() or fallback


def _index(run_dir: Path, pages: list[tuple[str, str]]) -> str:
    man = read_json(RunDir(run_dir).manifest) if RunDir(run_dir).manifest.exists() else {}
    commit = (man.get("git") or {}).get("commit") or "unknown"
    rows = "".join(f"<li><a href='{html.escape(f)}'>{html.escape(t)}</a></li>" for f, t in pages)
    about = (
        f"run <b>{html.escape(str(man.get('run_name', run_dir.name)))}</b>, params "
        f"<code>{html.escape(_relative_paths(str(man.get('params_file', '?'))))}</code>, commit "
        f"<code>{html.escape(commit[:12])}</code>, started {html.escape(str(man.get('started', '?')))}"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head><meta charset='utf-8'><title>MathScale notebooks</title>\n"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em}</style>\n"
        "</head>\n<body>\n<h1>MathScale: the executed notebooks</h1>\n"
        f"<p>{about}. Rendered by <code>make docs</code> "
        "(<code>python -m mathscale_utils.reporting.gallery</code>); the interactive views work offline.</p>\n"
        f"<ol>{rows}</ol>\n</body>\n</html>\n"
    )


def _clear(out_dir: Path) -> None:
    """Remove what an earlier gallery wrote here (pages, views, assets), so no stale file stays behind."""
    for pattern in ("index.html", "[0-9][0-9]_*.html", "views/*.html", "assets/*.js", "assets/*.css"):
        for f in out_dir.glob(pattern):
            f.unlink()


def write_gallery(run_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Render every executed notebook of a run (``run_dir/notebooks/*.ipynb``) into ``out_dir`` (see the module
    docstring); returns {relative path: path} of every file written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    notebooks = sorted(RunDir(run_dir).notebooks.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{RunDir(run_dir).notebooks}: no executed notebook (run the chain first)")
    _clear(out_dir)
    exporter, shared, written = _exporter(), {}, {}
    pages = []
    for path in notebooks:
        nb = static_widgets(nbformat.read(path, as_version=4))
        _clean_text(nb)
        views = _extract_views(nb, path.stem, out_dir, shared)
        page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        name = f"{path.stem}.html"
        written[name] = write_text(out_dir / name, _share(page, out_dir, "", shared))
        written.update({f"views/{v.name}": v for v in views})
        pages.append((name, _title(nb, path.stem)))
    written["index.html"] = write_text(out_dir / "index.html", _index(run_dir, pages))
    written.update({f"assets/{k}": v for k, v in shared.items()})
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render a run's executed notebooks to a static HTML gallery.")
    ap.add_argument("run_dir", help="a run directory, e.g. outputs/quickstart")
    ap.add_argument("out_dir", help="where to write the gallery, e.g. docs/gallery")
    args = ap.parse_args(argv)
    try:
        written = write_gallery(args.run_dir, args.out_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in written.values())
    print(
        f"{len(written)} files, {total / 1e6:.2f} MB in {args.out_dir}: open {Path(args.out_dir) / 'index.html'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
