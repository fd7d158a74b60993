"""The paper's path end to end on CPU at toy size (params/paper_dry.yaml): an API-shaped teacher through the Batch API
that refuses what OpenAI refuses (tests/openai_rules.py),
MWPBench train seeds with the frequency filter, the GPU recipe's training code, the trained student served by a
server the stage starts, asked with raw completions; then a second student, asked afresh."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from mathscale_utils.core.artifacts import STAGE_IDS
from mathscale_utils.core.io import read_json, read_jsonl
from mathscale_utils.core.params import ROOT, load_params
from mathscale_utils.evaluation.mwpbench import load_predictions
from mathscale_utils.runs.chain import run_chain

from fake_batch import FakeBatchAPI

WORDS = ("percent", "ratio", "area", "speed", "probability", "sum", "angle", "fraction", "prime", "function")


def teacher(body: dict) -> str:
    """A scripted teacher: concepts drawn from a small vocabulary (so the frequency filter keeps some), and a
    question with a solution that names the composition's knowledge points."""
    prompt = body["messages"][-1]["content"]
    if "Reply with JSON only" in prompt:
        text = prompt.lower()
        hits = [w for w in WORDS if w in text] or ["arithmetic"]
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        return json.dumps(
            {
                "topics": [f"Topic {hits[0]}"],
                "knowledge_points": [f"KP {hits[0]}", f"KP shared {h % 4}", f"KP {h % 97}"],
            }
        )
    kps = re.findall(r"^- (.+)$", prompt.split("Knowledge Points:", 1)[-1].split("Reply in", 1)[0], re.M)[:2]
    n = len(prompt) % 50 + 2
    return (
        f"Question: A class uses {' and '.join(kps)}. If each of {n} students solves 3 problems, how many problems "
        f"are solved?\nSolution: {n} students x 3 = {3 * n} problems.\nThe answer is {3 * n}"
    )


@pytest.mark.slow
def test_the_paper_path_runs_end_to_end_and_a_second_student_is_asked_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run-0123456789")
    with FakeBatchAPI(answer=teacher, provider=True, enqueued_limit=8000) as api:
        text = (ROOT / "params" / "paper_dry.yaml").read_text()
        text = text.replace("http://127.0.0.1:8080/v1", api.base_url)
        params = tmp_path / "paper_dry.yaml"
        params.write_text(text + f"outputs_dir: {tmp_path / 'out'}\n")
        manifest = run_chain(params, engine="python")
        assert api.calls["chat"] == 0 and api.calls["batches.create"] >= 4  # the teacher only through batches
        # every request valid for gpt-3.5-turbo, and the queue never above the provider's limit
        assert not api.refused and 0 < api.peak_enqueued["gpt-3.5-turbo"] <= 8000
    P = load_params(params)
    assert manifest["status"] == "ok" and [manifest["stages"][s]["status"] for s in STAGE_IDS] == ["ok"] * 6
    extract = read_json(P.run.extract_summary)
    assert (
        extract["min_count"] == 2
        and 0 < extract["knowledge_points_after_filter"] < extract["knowledge_points_before_filter"]
    )
    assert {r["source"] for r in read_jsonl(P.run.concepts)} >= {"gsm8k", "MATH"}
    assert read_json(P.run.compositions_stats)["kept"] == 6
    card = read_json(P.run.training_card)
    assert card["steps"] == 3 and card["hyperparameters"]["prompt_format"] == "alpaca"
    # two DDP ranks
    assert card["world_size"] == 2 and card["backend"] == "gloo"
    assert card["effective_batch"] == 4
    metrics = read_json(P.run.metrics)
    # asked through the server stage 05 started: the trained student, text completions
    student = metrics["llm"]
    rows = load_predictions(P.run.predictions)
    first = {r["model"] for r in rows}
    assert len(first) == 1 and next(iter(first)).startswith("smollm2-135m-instruct+lora:")
    assert next(iter(first)).endswith("@llama_cpp") and student["requests"] == len(rows) == metrics["n_items"]
    assert all("### Response:" in r["prompt"] and r["prompt"].endswith("### Response:") for r in rows)

    # a second student (trained differently) behind the same evaluation: every item is asked again
    params.write_text(params.read_text().replace("lr: 1.0e-3", "lr: 5.0e-4"))  # trains again, from the start
    manifest = run_chain(params, only="04,05", engine="python")
    assert manifest["stages"]["05"]["status"] == "ok"
    second = {r["model"] for r in load_predictions(P.run.predictions)}
    assert len(second) == 1 and second != first
    assert read_json(P.run.metrics)["llm"]["requests"] == len(rows)  # no answer came from the first student
