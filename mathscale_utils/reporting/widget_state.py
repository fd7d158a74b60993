"""Widgets in executed notebooks, for readers without a kernel.

A notebook run by papermill keeps its widgets as outputs that point into the widget state saved in its metadata;
JupyterLab draws them from that state. Two rewrites serve readers who have no kernel:

* :func:`final_progress_lines` (the chain, after papermill): each tqdm progress bar becomes the one line tqdm prints
  last in a terminal ("extract concepts: 100%|██████████| 10/10 [...]"). A live bar means nothing once the run is
  over, and a saved one would be drawn with "disconnected" marks by JupyterLab and as a stale 0% line elsewhere.
* :func:`static_widgets` (the gallery): every widget becomes what it showed when saved, as ordinary outputs.
"""

from __future__ import annotations

import copy
import html
import re

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_MODEL_REF = re.compile(r"IPY_MODEL_(\w+)")
_PROGRESS = {"FloatProgressModel", "IntProgressModel"}
_CONTROLS = {
    "ComboboxModel",
    "DropdownModel",
    "IntSliderModel",
    "FloatSliderModel",
    "IntTextModel",
    "TextModel",
}


def saved_state(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """{model id: {"model_name", "state", ...}} saved with the notebook (empty without widgets)."""
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def _children(state: dict, model_id: str) -> list[str]:
    kids = state.get(model_id, {}).get("state", {}).get("children", [])
    return [c.removeprefix("IPY_MODEL_") for c in kids]


def _text(value: str) -> str:
    return html.unescape(value).replace("\u2007", " ").strip()


def progress_line(state: dict, model_id: str) -> str | None:
    """tqdm's notebook bar (a box of description, progress bar, counts) as tqdm's terminal line; None otherwise."""
    if state.get(model_id, {}).get("model_name") != "HBoxModel":
        return None
    kids = [state.get(k, {}) for k in _children(state, model_id)]
    names = [k.get("model_name") for k in kids]
    if len(kids) != 3 or names[0] != "HTMLModel" or names[1] not in _PROGRESS or names[2] != "HTMLModel":
        return None
    left, bar, right = (k.get("state", {}) for k in kids)
    frac = (bar.get("value") or 0) / bar["max"] if bar.get("max") else 0.0
    filled = max(0, min(10, int(frac * 10)))
    return (
        f"{_text(left.get('value', ''))}|{'█' * filled}{' ' * (10 - filled)}| {_text(right.get('value', ''))}"
    )


def _view_id(output: dict) -> str | None:
    if output.get("output_type") not in ("display_data", "execute_result"):
        return None
    view = output.get("data", {}).get(WIDGET_VIEW)
    return view.get("model_id") if isinstance(view, dict) else None


def _keep_used_state(nb: nbformat.NotebookNode) -> None:
    """Drop the saved models no widget output reaches any more (and the whole state when none is left)."""
    state = saved_state(nb)
    todo = [v for c in nb.cells if c.cell_type == "code" for o in c.outputs if (v := _view_id(o))]
    used: set[str] = set()
    while todo:
        m = todo.pop()
        if m in used or m not in state:
            continue
        used.add(m)
        todo += _MODEL_REF.findall(str(state[m].get("state", {})))
    if not used:
        nb.metadata.pop("widgets", None)
    else:
        for m in set(state) - used:
            del state[m]


def final_progress_lines(nb: nbformat.NotebookNode) -> int:
    """Replace each saved tqdm bar by its final terminal line (in place); returns how many were replaced."""
    state, n = saved_state(nb), 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for o in cell.outputs:
            line = progress_line(state, m) if (m := _view_id(o)) else None
            if line is None:
                outs.append(o)
            else:
                outs.append(nbformat.v4.new_output("display_data", {"text/plain": line}))
                n += 1
        cell.outputs = outs
    if n:
        _keep_used_state(nb)
    return n


# ----------------------------------------------------------------------------------------------------------------
# Static outputs (the gallery)
# ----------------------------------------------------------------------------------------------------------------


def _inline_html(state: dict, model_id: str) -> str | None:
    """A simple widget as inline HTML, or None for one that holds outputs or other widgets."""
    m = state.get(model_id)
    if m is None:
        return ""
    name, s = m["model_name"], m.get("state", {})
    if name in ("HTMLModel", "HTMLMathModel"):
        return s.get("value", "")
    if name == "LabelModel":
        return html.escape(str(s.get("value", "")))
    if name in _PROGRESS:
        return f"<progress value='{s.get('value', 0)}' max='{s.get('max', 100)}'></progress>"
    if name in _CONTROLS:
        return f"<b>{html.escape(str(s.get('description', '')))}</b> {html.escape(str(s.get('value', '')))}".strip()
    if name == "ButtonModel":
        return ""
    if name.endswith("BoxModel"):
        parts = [_inline_html(state, c) for c in _children(state, model_id)]
        return None if any(p is None for p in parts) else "&nbsp; ".join(p for p in parts if p)
    return None


def _static_outputs(state: dict, model_id: str) -> list[dict]:
    """What a widget stands for in a static page: an Output widget's own outputs, a box's children in order, a
    simple widget (text, progress bar, control) as one line of HTML."""
    inline = _inline_html(state, model_id)
    if inline is not None:
        return (
            [nbformat.v4.new_output("display_data", {"text/html": f"<div>{inline}</div>"})] if inline else []
        )
    if state[model_id]["model_name"] == "OutputModel":
        return [x for o in state[model_id]["state"].get("outputs", []) for x in _flatten(state, _valid(o))]
    return [x for c in _children(state, model_id) for x in _static_outputs(state, c)]


def _valid(output: dict) -> dict:
    """An output kept in an Output widget's state as a valid notebook output (a display needs its metadata)."""
    if output.get("output_type") in ("display_data", "execute_result"):
        return nbformat.v4.new_output(
            "display_data", output.get("data", {}), metadata=output.get("metadata", {})
        )
    return output


def _flatten(state: dict, output: dict) -> list[dict]:
    model_id = _view_id(output)
    return [output] if model_id is None else _static_outputs(state, model_id)


def static_widgets(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of the notebook whose widget outputs are what they showed when it was saved, and without the saved
    widget state (a static page loads no widget code)."""
    nb = copy.deepcopy(nb)
    state = saved_state(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(x) for o in cell.outputs for x in _flatten(state, o)]
    return nb
