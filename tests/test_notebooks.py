"""The committed notebooks are the readable story of the method: clean, parameterised, and each opens with its idea."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
STAGES = ["01", "02", "03", "04", "05", "06"]


def test_one_notebook_per_stage():
    assert [p.name[:2] for p in NOTEBOOKS] == STAGES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_parameterised(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), (
        "commit notebooks without outputs"
    )
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and "params_file" in "".join(tagged[0]["source"]), (
        "papermill needs one parameters cell"
    )
    assert nb["metadata"]["kernelspec"]["name"] == "mathscale"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_its_idea_and_a_figure(path):
    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    text = "".join(first["source"])
    assert first["cell_type"] == "markdown" and text.startswith(f"# {path.name[:2]} ")
    figure = re.search(r"```mermaid\nflowchart (LR|TD)\n(.*?)```", text, re.S)
    assert figure, "the opening cell needs a mermaid flowchart of the step"
    edges = [ln for ln in figure.group(2).splitlines() if "-->" in ln]
    assert len(edges) >= 3, "a figure of the step's data flow, not a single arrow"
