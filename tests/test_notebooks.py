"""The committed notebooks are the readable story of the method: clean, parameterised, and each opens with its idea."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
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


def _widget_notebook() -> nbformat.NotebookNode:
    """A notebook as papermill saves it: a tqdm bar (a box of description, progress, counts) and another widget."""

    state = {
        "bar": {
            "model_name": "HBoxModel",
            "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]},
        },
        "l": {
            "model_name": "HTMLModel",
            "state": {"value": "extract\u2007concepts:\u2007100%", "layout": "IPY_MODEL_y"},
        },
        "p": {"model_name": "FloatProgressModel", "state": {"value": 10.0, "max": 10.0}},
        "r": {"model_name": "HTMLModel", "state": {"value": "\u200710/10\u2007[00:05&lt;00:00]"}},
        "y": {"model_name": "LayoutModel", "state": {}},
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_out"]}},
        "out": {
            "model_name": "OutputModel",
            "state": {"outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]},
        },
    }
    view = "application/vnd.jupyter.widget-view+json"
    cell = nbformat.v4.new_code_cell("work()")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", {view: {"model_id": "bar"}, "text/plain": "extract concepts: 0%"}
        ),
        nbformat.v4.new_output("display_data", {view: {"model_id": "box"}, "text/plain": "VBox(...)"}),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    return nb


def test_progress_bars_become_their_final_line_and_other_widgets_stay():
    from mathscale_utils.reporting.widget_state import final_progress_lines, saved_state

    nb = _widget_notebook()
    assert final_progress_lines(nb) == 1
    bar, box = nb.cells[0].outputs
    assert bar.data == {"text/plain": "extract concepts: 100%|██████████| 10/10 [00:05<00:00]"}
    assert "application/vnd.jupyter.widget-view+json" in box.data
    assert set(saved_state(nb)) == {"box", "out"}  # the bar's models are gone, the explorer's kept
    only_bar = _widget_notebook()
    only_bar.cells[0].outputs.pop()
    final_progress_lines(only_bar)
    assert "widgets" not in only_bar.metadata


def test_static_widgets_show_what_was_saved():
    from mathscale_utils.reporting.widget_state import static_widgets

    nb = _widget_notebook()
    flat = static_widgets(nb)
    bar, text = flat.cells[0].outputs
    assert "<progress value='10.0' max='10.0'></progress>" in bar.data["text/html"]
    assert "extract\u2007concepts:\u2007100%" in bar.data["text/html"]
    assert text.output_type == "stream" and text.text == "hi\n"
    assert "widgets" not in flat.metadata and "widgets" in nb.metadata  # a copy


def test_chain_trusts_what_it_executes(tmp_path, monkeypatch):
    """The chain's notebooks are signed in Jupyter's data directory, where a JupyterLab started later looks."""
    from nbformat.sign import NotebookNotary

    from mathscale_utils.runs.chain import finish_notebook

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    path = tmp_path / "02.ipynb"
    nb = _widget_notebook()
    nb.cells[0].outputs.append(
        nbformat.v4.new_output("display_data", {"text/html": "<iframe srcdoc='x'></iframe>"})
    )
    nbformat.write(nb, path)
    with NotebookNotary() as notary:
        assert not notary.check_signature(nbformat.read(path, as_version=4))
    finish_notebook(path)
    assert (tmp_path / "jupyter" / "nbsignatures.db").exists()
    done = nbformat.read(path, as_version=4)
    assert done.cells[0].outputs[0].data["text/plain"].startswith("extract concepts: 100%|")
    with NotebookNotary() as notary:  # a fresh notary, as a new Lab process would make
        assert notary.check_signature(done)
        done.cells[0].outputs[0].data["text/plain"] = "changed"
        assert not notary.check_signature(done)


def test_notebooks_02_and_03_run_the_method_on_toy_examples():
    """The toy cells call the functions the stage uses, not a copy of them."""
    text = {p.name[:2]: p.read_text(encoding="utf-8") for p in NOTEBOOKS}
    for call in (
        "graph.build_graph(toy_rows",
        "compose.step_probabilities(",
        "compose.walks_from(",
        "explorer.explore(",
    ):
        assert call in text["02"], call
    for call in ("gen.FewShotIndex(", ".nearest(toy_kps", "filters.Decontaminator("):
        assert call in text["03"], call


_AVX512_BF16 = """
import importlib.abc, importlib.util, sys

class AsOnAnAvx512Bf16Cpu(importlib.abc.MetaPathFinder):
    # bitsandbytes asks the hub for its optional CPU kernel only where the CPU has AVX512-BF16: pretend it has
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AsOnAnAvx512Bf16Cpu())
if sys.argv[1] == "finetune":
    import mathscale_utils.training.finetune
import bitsandbytes
print("bitsandbytes", bitsandbytes.__version__)
"""


def test_bitsandbytes_hub_noise_is_silenced_in_stage_04(tmp_path):
    """Notebook 04 printed "Failed to load CPU gemm_4bit_forward from kernels-community ... offline mode": the
    training module filters exactly that (bitsandbytes then uses its own kernel), and nothing else."""
    pytest.importorskip("bitsandbytes")
    script = tmp_path / "bnb.py"
    script.write_text(_AVX512_BF16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    runs = {
        how: subprocess.run(
            [sys.executable, str(script), how], capture_output=True, text=True, env=env, timeout=600
        )
        for how in ("bare", "finetune")
    }
    assert all(r.returncode == 0 and "bitsandbytes" in r.stdout for r in runs.values()), runs
    assert "Failed to load CPU gemm_4bit_forward" in runs["bare"].stderr  # the noise, reproduced
    assert (
        "gemm_4bit_forward" not in runs["finetune"].stderr
        and "publisher trust" not in runs["finetune"].stderr
    )


def test_a_signature_store_that_cannot_be_written_costs_the_trust_not_the_stage(
    tmp_path, monkeypatch, capsys
):
    from mathscale_utils.runs.chain import finish_notebook

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(blocked / "jupyter"))
    path = tmp_path / "01.ipynb"
    nbformat.write(_widget_notebook(), path)
    finish_notebook(path)
    assert "run `jupyter trust" in capsys.readouterr().err
    assert (
        nbformat.read(path, as_version=4)
        .cells[0]
        .outputs[0]
        .data["text/plain"]
        .startswith("extract concepts: 100%")
    )
