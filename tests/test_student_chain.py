"""Stages 04 and 05 through the chain, by the code path a GPU run takes, on CPU: params/paper_full_ft.yaml as it is
but for the size (the 135M model from a local HF directory, like a hub model: no GGUF form, so served by vLLM, here
tests/vllm_shim.py), trained, served and evaluated by itself, then the chain re-run over the finished stage 04."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_json, read_jsonl, write_jsonl
from mathscale_utils.core.params import ROOT, load_params
from mathscale_utils.runs import chain

SMALL = "smollm2-135m-instruct"
ROWS = [
    {
        "id": f"r{i}",
        "question": f"Sam has {i} apples and buys 2 more. How many?",
        "solution": f"The answer is {i + 2}",
    }
    for i in range(8)
]


def test_paper_full_ft_serves_its_student_for_stage_05_itself():
    """The file's stage 05 starts vLLM for the model stage 04 saved, in training's dtype, not a server you run."""
    from mathscale_utils.training.serve import serving_plan, trained_serving

    P = load_params(ROOT / "params/paper_full_ft.yaml", check_files=False)
    assert P.stages == ["04", "05"] and P.evaluate.serve == "vllm" and P.evaluate.model is None
    plan = trained_serving(P)
    assert plan == serving_plan(P.finetune) and (plan["weights"], plan["dtype"]) == ("model", "bfloat16")


def _model_dir() -> str:
    from mathscale_utils.inference.weights import ModelError, base_path

    try:
        return base_path(SMALL)
    except ModelError as e:
        pytest.skip(f"embedded model missing: {e}")


@pytest.mark.slow
def test_paper_full_ft_runs_04_then_05_and_a_rerun_passes(tmp_path, monkeypatch):
    """paper_full_ft.yaml shrunk to CPU size (every key it sets is kept but the model, batch, steps and GPUs), with
    vLLM replaced by its stand-in: the chain trains the full model, stage 05 serves that model directory (float32:
    this run trained without bf16) and scores it. The chain run again finds stage 04 finished: the student is not
    trained again, stage 04's card is written again (the chain checks it was) and the run passes."""
    d = yaml.safe_load((ROOT / "params/paper_full_ft.yaml").read_text())
    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS)
    d["outputs_dir"] = str(tmp_path / "outputs")
    d["cache_dir"] = str(tmp_path / "cache")
    d["finetune"].update(
        base_model=_model_dir(),
        train_file=str(tmp_path / "mathscaleqa.jsonl"),
        per_device_batch=2,
        grad_accum=1,
        max_steps=2,
        max_length=128,
        bf16=False,
        save_steps=100,  # the final step is saved all the same
        eval_holdout=2,
        launcher="none",
        num_processes=1,
        accelerate_config=None,
    )
    shim = Path(__file__).resolve().parent / "vllm_shim.py"
    d["evaluate"].update(
        vllm_command=[sys.executable, str(shim)],
        server_startup_s=60,
        datasets=["gsm8k"],
        n_per_dataset=2,
        max_tokens=32,
    )
    params = tmp_path / "paper_full_ft.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    monkeypatch.setenv("VLLM_SHIM_ARGS", str(tmp_path / "argv.json"))
    monkeypatch.setenv("VLLM_SHIM_LOG", str(tmp_path / "servers.jsonl"))
    if not os.environ.get("MATHSCALE_DATA_DIR"):
        pytest.skip("MATHSCALE_DATA_DIR (MWPBench) not set")

    first = chain.run_chain(params, engine="python")
    run = RunDir(tmp_path / "outputs" / "paper_full_ft")
    assert first["status"] == "ok" and [first["stages"][s]["status"] for s in ("04", "05")] == ["ok", "ok"]
    card = read_json(run.training_card)
    assert (card["method"], card["steps"], card["serving"]["dtype"]) == ("full", 2, "float32")
    student, base = map(
        json.loads, (tmp_path / "servers.jsonl").read_text().splitlines()
    )  # the fine-tuned student, then the baseline
    assert student[:3] == [str(run.adapter), "--served-model-name", "student"]
    assert student[student.index("--dtype") + 1] == "float32"
    assert base[0] == d["finetune"]["base_model"] and base[base.index("--dtype") + 1] == "float32"
    metrics = read_json(run.metrics)
    assert metrics["n_items"] == 2 and metrics["n_errors"] == 0 and "+full:" in metrics["identity"]

    weights = (run.adapter / "model.safetensors").stat().st_mtime_ns
    loss = read_jsonl(run.loss)
    again = chain.run_chain(params, engine="python")
    assert again["status"] == "ok" and again["stages"]["04"]["status"] == "ok"
    assert (run.adapter / "model.safetensors").stat().st_mtime_ns == weights and read_jsonl(run.loss) == loss
    assert read_json(run.training_card)["steps"] == 2 and not (run.finetune / "superseded").exists()
    assert read_json(run.metrics)["identity"] == metrics["identity"]  # the same student, known by its weights
