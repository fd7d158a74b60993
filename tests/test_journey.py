"""The journey page follows one generated pair back to its seed and forward to an evaluated answer.

The run directory is written by the stages' own writers and row builders, with a loopback OpenAI-compatible server
as the teacher and the student, so a change to the format of any file the page reads shows up here."""

from __future__ import annotations

import pytest

from mathscale_utils.core.artifacts import CompositionRow, Record, stage
from mathscale_utils.core.io import DataError, read_jsonl, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.core.params import Params
from mathscale_utils.evaluation import mwpbench
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import compose, concepts, dataset_card, filters
from mathscale_utils.method import generate as gen
from mathscale_utils.method.graph import build_graph, save_graph
from mathscale_utils.reporting.journey import journey_markdown, main

# (id, question, answer, topics, knowledge points): "Multiplication", seen once, falls to the frequency filter
SEEDS = [
    ("s1", "Tom has 3 apples and buys 4 more.", "7", ["Arithmetic"], ["Addition"]),
    ("s2", "A train covers 60 km in 1.5 hours.", "40", ["Arithmetic", "Rates"], ["Addition", "Speed"]),
    ("s3", "A car drives 30 km/h for 2 h.", "60", ["Rates"], ["Speed", "Multiplication"]),
]
WALK = CompositionRow(
    id="c0000001",
    topics=["Rates", "Arithmetic"],
    knowledge_points=["Speed", "Addition"],
    start_topic="Rates",
    epoch=0,
)
TEACHER_REPLY = (
    "Question: A bus goes 40 km/h for 2 h, then 10 km more. How far?\n"
    "Solution: 40*2 = 80, 80 + 10 = 90. The answer is 90"
)
ITEMS = [
    Record("gsm8k-1", "gsm8k", "gsm8k", "What is 2+2?", "4"),
    Record("gsm8k-2", "gsm8k", "gsm8k", "What is 3+3?", "6"),
]
STUDENT_REPLIES = {
    "What is 2+2?": "The answer is 5",
    "What is 3+3?": "The answer is 6",
}  # one wrong, one right
GENERATE = GenerateConfig(decontaminate=False, export_hf=False)  # no MWPBench test set, no HF copy


def _quiet(_: str) -> None:
    """A stage log that prints nothing."""


def _student(body: dict) -> str:
    """The student's reply to an evaluation prompt: the scripted answer to the question in it."""
    prompt = body["messages"][-1]["content"]
    return next(reply for question, reply in STUDENT_REPLIES.items() if question in prompt)


def _export_pairs(P: Params, raw: list[dict]) -> None:
    """Stage 03's assembly and export of the teacher's rows: mathscaleqa.jsonl, generate_summary.json, the card."""
    seeds = read_jsonl(P.run.concepts)
    asm = filters.filter_and_assemble(raw, seeds, P.generate, P.llm.model, log=_quiet)
    dataset_card.export(P.run, asm, P.generate, P.llm, seeds, P.seed)


@pytest.fixture
def params(tmp_path, fake_openai) -> Params:
    """A run through stages 01, 02, 03 and 05, each file written as the stage writes it."""
    P = Params(
        run_name="run",
        outputs_dir=str(tmp_path),
        generate=GENERATE,
        llm=LLMConfig(model="teacher-x", base_url=fake_openai.base_url),
    )
    run, min_count = P.run, P.extract.min_count
    extractions = [
        concepts.Extraction(Record(sid, "custom", "custom", q, a), topics, kps, attempts=1)
        for sid, q, a, topics, kps in SEEDS
    ]
    write_jsonl(run.concepts, concepts.to_rows(extractions, min_count))
    concepts.write_summary(run, extractions, min_count)
    save_graph(build_graph(read_jsonl(run.concepts), P.graph), run)
    compose.write_compositions([WALK], run)
    seeds, comps = gen.load_inputs(run)
    fake_openai.answer = lambda body: TEACHER_REPLY
    with LLM.for_stage(P, stage("03").label, progress=False) as teacher:
        raw = gen.generate_shards(
            run, comps, gen.FewShotIndex(seeds), teacher, P.generate, P.seed, log=_quiet
        )
    _export_pairs(P, raw)
    fake_openai.answer = _student
    student = LLMConfig(model="student", base_url=fake_openai.base_url)
    with LLM.for_stage(P, stage("05").label, student, progress=False) as llm:
        rows = mwpbench.run_eval(ITEMS, llm, P.evaluate, run.predictions)
    mwpbench.write_metrics(run, mwpbench.compute_metrics(rows), P.evaluate, student.model)
    return P


def test_page_follows_the_pair_from_its_first_shot_seed(params):
    page = journey_markdown(params.run_dir)
    assert "Seed `s2`" in page and "A train covers 60 km" in page  # the first few-shot seed (KPs nearest)
    assert "start at topic **Rates**" in page
    assert "step to knowledge point **Speed** (co-occurred in 1 seed question(s))" in page
    assert "A bus goes 40 km/h" in page and "### Response: 40*2 = 80" in page.replace("\n", " ")
    assert (
        "MWPBench item `gsm8k-2`" in page and "the paper's judge says correct" in page
    )  # a correct one first
    assert "teacher-x" in page
    assert "Over the 2 evaluated items: micro 50.0%, macro 50.0% (paper's judge)" in page


def test_cli_writes_the_page_and_reports_a_run_without_pairs(params, tmp_path, capsys):
    out = tmp_path / "page.md"
    assert main([str(params.run_dir), str(out)]) == 0 and out.read_text().startswith(
        "# One question's journey"
    )
    _export_pairs(params, [])  # a teacher that wrote nothing: only the seed rows are kept
    with pytest.raises(DataError, match="no generated pair"):
        journey_markdown(params.run_dir)
    assert main([str(params.run_dir)]) == 1 and "no generated pair" in capsys.readouterr().err
