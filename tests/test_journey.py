"""The journey page follows one generated pair back to its seed and forward to an evaluated answer."""

from __future__ import annotations

import pytest

from mathscale_utils.graph import build_graph, save_graph
from mathscale_utils.io import DataError, write_jsonl
from mathscale_utils.journey import journey_markdown, main


def _seed(sid, q, topics, kps):
    return {"seed_id": sid, "source": "custom", "question": q, "topics": topics, "knowledge_points": kps,
            "status": "ok"}  # fmt: skip


@pytest.fixture
def run_dir(tmp_path):
    seeds = [
        _seed("s1", "Tom has 3 apples and buys 4 more.", ["Arithmetic"], ["Addition"]),
        _seed("s2", "A train covers 60 km in 1.5 hours.", ["Arithmetic", "Rates"], ["Addition", "Speed"]),
        _seed("s3", "A car drives 30 km/h for 2 h.", ["Rates"], ["Speed", "Multiplication"]),
    ]
    write_jsonl(tmp_path / "concepts.jsonl", seeds)
    save_graph(build_graph(seeds), tmp_path)
    comp = {"id": "c0000001", "topics": ["Rates", "Arithmetic"], "knowledge_points": ["Speed", "Addition"]}
    write_jsonl(tmp_path / "compositions.jsonl", [comp])
    write_jsonl(tmp_path / "generation" / "shard-00000.jsonl",
                [{"composition_id": "c0000001", "shot_ids": ["s2", "s3"], "status": "ok"}])  # fmt: skip
    pair = {"id": "g0000001", "question": "A bus goes 40 km/h for 2 h, then 10 km more. How far?",
            "solution": "40*2 = 80, 80 + 10 = 90. The answer is 90", "answer": "90", "source": "generated",
            "composition_id": "c0000001", "teacher_model": "teacher-x"}  # fmt: skip
    write_jsonl(tmp_path / "mathscaleqa.jsonl", [{"id": "s1", "question": "q", "source": "seed"}, pair])
    write_jsonl(tmp_path / "predictions.jsonl", [
        {"id": "gsm8k-1", "dataset": "gsm8k", "question": "What is 2+2?", "completion": "The answer is 5",
         "extracted": "5", "gold": "4", "paper_correct": False, "strict_correct": False, "model": "student"},
        {"id": "gsm8k-2", "dataset": "gsm8k", "question": "What is 3+3?", "completion": "The answer is 6",
         "extracted": "6", "gold": "6", "paper_correct": True, "strict_correct": True, "model": "student"},
    ])  # fmt: skip
    return tmp_path


def test_page_follows_the_pair_from_its_first_shot_seed(run_dir):
    page = journey_markdown(run_dir)
    assert "Seed `s2`" in page and "A train covers 60 km" in page  # the first few-shot seed
    assert "start at topic **Rates**" in page
    assert "step to knowledge point **Speed** (co-occurred in 1 seed question(s))" in page
    assert "A bus goes 40 km/h" in page and "### Response: 40*2 = 80" in page.replace("\n", " ")
    assert (
        "MWPBench item `gsm8k-2`" in page and "the paper's judge says correct" in page
    )  # a correct one first
    assert "teacher-x" in page


def test_cli_writes_the_page_and_reports_a_run_without_pairs(run_dir, tmp_path, capsys):
    out = tmp_path / "page.md"
    assert main([str(run_dir), str(out)]) == 0 and out.read_text().startswith("# One question's journey")
    write_jsonl(run_dir / "mathscaleqa.jsonl", [{"id": "s1", "question": "q", "source": "seed"}])
    with pytest.raises(DataError, match="no generated pair"):
        journey_markdown(run_dir)
    assert main([str(run_dir)]) == 1 and "no generated pair" in capsys.readouterr().err
