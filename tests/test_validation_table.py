"""Table 7 runnable: the validation sweeps' params, and the comparison frame of notebook 06 on run directories written
by the stages' own writers (generation, the answer check and the metrics through the LLM client and a loopback
teacher), so that a change to what stage 03 or 05 records shows up here."""

from __future__ import annotations

import math
import re

import pytest
from test_scaling import predictions

from mathscale_utils.core.artifacts import CompositionRow, Record, stage
from mathscale_utils.core.io import write_json, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.core.params import ROOT, Params
from mathscale_utils.evaluation import mwpbench
from mathscale_utils.evaluation.paper_tables import TABLE7
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import compose, concepts, dataset_card, filters
from mathscale_utils.method import generate as gen
from mathscale_utils.reporting import scaling, validation
from mathscale_utils.runs import chain

N = 8  # compositions; the teacher's re-solve disagrees on those with an odd number: 4 of 8 flagged


def teacher(body: dict) -> dict:
    """Writes a pair whose answer is the composition's number; re-solving, gets odd numbers wrong (one more)."""
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("Solve the following math problem"):
        n = int(re.search(r"count (\d+) apples", prompt).group(1))
        text = f"Counting gives {n + n % 2}.\nThe answer is {n + n % 2}"
    else:
        n = int(re.search(r"Counting to (\d+)", prompt).group(1))
        text = (
            f"Question: Sam and Ann count {n} apples. How many?\nSolution: They count {n}.\nThe answer is {n}"
        )
    return {"content": text, "usage": {"prompt_tokens": 100, "completion_tokens": 30}}


def make_run(
    server, root, setting: str, check: bool, answers: dict[str, str], shift: int = 0, sweep: str = "val"
):
    """A finished sweep run root/<sweep>-<setting>: stage 01's concepts, stage 02's compositions (N, from `shift` on),
    stage 03 with the answer check on or off (dropping flagged pairs), stage 05's metrics, the manifest."""
    cfg = GenerateConfig(decontaminate=False, dedup=False, export_hf=False, answer_check=check)
    P = Params(
        run_name=f"{sweep}-{setting}",
        outputs_dir=str(root),
        tags={"sweep": sweep, "setting": setting},
        generate=cfg,
        llm=LLMConfig(model="teacher", base_url=server.base_url),
    )
    run = P.run
    extractions = [
        concepts.Extraction(
            Record(f"s{i}", "custom", "custom", f"Seed {i}?", str(i)), ["t"], [f"k{i}", "k"], 1
        )
        for i in range(4)
    ]
    seeds = concepts.to_rows(extractions, P.extract.min_count)
    write_jsonl(run.concepts, seeds)
    concepts.write_summary(run, extractions, P.extract.min_count)
    comps = [
        CompositionRow(
            id=f"c{i:07d}",
            topics=["Counting"],
            knowledge_points=[f"Counting to {i}"],
            start_topic="t",
            epoch=0,
        )
        for i in range(shift, shift + N)
    ]
    compose.write_compositions(comps, run.root)
    server.answer = teacher
    with LLM.for_stage(P, stage("03").label, progress=False) as llm:
        raw = gen.generate_shards(run, comps, gen.FewShotIndex(seeds), llm, cfg, P.seed, log=lambda m: None)
        checks = filters.check_answers(raw, llm, cfg, P.seed) if check else None
    asm = filters.filter_and_assemble(raw, seeds, cfg, "teacher", checks=checks, log=lambda m: None)
    dataset_card.export(run, asm, cfg, P.llm, seeds, P.seed)
    mwpbench.write_metrics(run, mwpbench.compute_metrics(predictions(answers)), P.evaluate, "student")
    manifest = chain.manifest_for(P)
    manifest["stages"]["03"] = chain.record_stage(chain.stage_entry("03", "python"), "ok", 1.0, {})
    manifest["status"] = "ok"
    write_json(run.manifest, manifest)
    return run.root


def test_the_table_7_frame_lines_up_validation_off_and_on_with_the_paper(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "off", False, {"gsm8k": "++--", "tal": "+-"})
    make_run(fake_openai, tmp_path, "on", True, {"gsm8k": "+---", "tal": "+-"})
    make_run(
        fake_openai, tmp_path, "on", True, {"gsm8k": "+"}, sweep="lone"
    )  # no off run beside it: left out
    runs = scaling.collect_runs(tmp_path)
    t = validation.validation_table(runs)
    assert list(t.index) == [
        ("val", "off"),
        ("val", "on (drop)"),
        *[("paper", name) for name in TABLE7],
    ]
    off, on = t.loc[("val", "off")], t.loc[("val", "on (drop)")]
    assert (off["paper_row"], on["paper_row"]) == (
        "100% GPT-3.5 (original)",
        "74% GPT-3.5 + 26% GPT-4-corrected",
    )
    assert on["checked"] == N and on["flagged_%"] == 50.0 and math.isnan(off["flagged_%"])
    # 8 generated pairs + 4 seed rows; the check dropped the 4 pairs it flagged
    assert (off["train_rows"], on["train_rows"]) == (12, 8)
    assert off["same_compositions"] and on["same_compositions"] and on["compositions"] == N
    assert (off["macro"], on["macro"]) == (50.0, 37.5) and on["macro_change"] == pytest.approx(-12.5)
    assert on["paper_macro_change"] == pytest.approx(11.1 - 11.5) and on["paper_flagged_%"] == 26.0
    paper = t.loc["paper"]
    assert paper.loc["100% GPT-4", ["paper_micro", "paper_macro"]].tolist() == [9.8, 10.9]
    assert paper["train_rows"].tolist() == [5000] * 3


def test_other_compositions_are_flagged(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "off", False, {"gsm8k": "+-"})
    make_run(fake_openai, tmp_path, "on", True, {"gsm8k": "+-"}, shift=1)
    t = validation.validation_table(scaling.collect_runs(tmp_path))
    assert t.loc[("val", "off"), "same_compositions"] and not t.loc[("val", "on (drop)"), "same_compositions"]


def test_without_runs_the_frame_is_the_paper_table():
    t = validation.validation_table(scaling.collect_runs(ROOT / "no-such-outputs"))
    assert list(t.index.get_level_values("sweep")) == ["paper"] * 3


@pytest.mark.parametrize(
    ("sweep_file", "examples"), [("params/validation_cpu.yaml", 8), ("params/validation_paper.yaml", 5000)]
)
def test_the_validation_sweeps_differ_only_in_the_answer_check(sweep_file, examples):
    """Each sweep's settings are valid params (validated as the chain would) that take the same compositions and
    train on as many examples (Table 7: 5K), and differ in generate.answer_check alone."""
    import yaml

    assert len(chain.sweep_params(ROOT / sweep_file, write=False)) == 2
    sweep = chain.Sweep.model_validate(yaml.safe_load((ROOT / sweep_file).read_text()))
    assert {s.name: s.set for s in sweep.settings} == {
        "off": {"generate.answer_check": False},
        "on": {"generate.answer_check": True},
    }
    assert sweep.common["generate.answer_check_action"] == "drop"
    assert (
        sweep.common["finetune.max_examples"] == examples and sweep.common["generate.n_questions"] > examples
    )
