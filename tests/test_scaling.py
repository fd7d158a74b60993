"""Run collection and the scaling / ablation / growth / cost tables of notebook 06, on run directories written by
the stages' own writers and row builders (a loopback OpenAI-compatible server is the teacher), so that a change to
the format of a file stage 06 reads shows up here."""

import math

import pytest

from mathscale_utils.core.artifacts import CompositionRow, Record, RunDir, stage
from mathscale_utils.core.io import read_json, write_json, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.core.params import Params
from mathscale_utils.core.templates import fill_template
from mathscale_utils.evaluation import baseline, mwpbench
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import concepts, dataset_card, filters
from mathscale_utils.method import generate as gen
from mathscale_utils.reporting import scaling
from mathscale_utils.runs import chain

GENERATE = GenerateConfig(decontaminate=False, dedup=False, export_hf=False)  # every usable reply is kept
PAIR = "Question: How many apples are left?\nSolution: 5 - 2 = 3.\nThe answer is 3."
UNUSABLE_KP = "a knowledge point the teacher cannot write for"
# an item's verdict mark -> (gold, the student's completion): "+" right, "-" wrong, "~" right for the paper's judge
# only (its inline-math substring rule takes "x+12" for "$2$"; the strict judge does not)
COMPLETIONS = {
    "+": ("4", "2 + 2 = 4. The answer is 4."),
    "-": ("4", "The answer is 5."),
    "~": ("$2$", "\\boxed{x+12}"),
}


def _quiet(_: str) -> None:
    """A stage log that prints nothing."""


def teacher(body: dict) -> dict:
    """The teacher: a usable pair for every composition but one naming UNUSABLE_KP; 100 + 50 tokens a reply."""
    text = "I cannot follow that format." if UNUSABLE_KP in body["messages"][0]["content"] else PAIR
    return {"content": text, "usage": {"prompt_tokens": 100, "completion_tokens": 50}}


def predictions(answers: dict[str, str]) -> list[dict]:
    """predictions.jsonl rows judged by both judges: one item per verdict mark, {dataset: "+-~..."}."""
    rows = []
    for dataset, marks in answers.items():
        for i, mark in enumerate(marks):
            gold, completion = COMPLETIONS[mark]
            rec = Record(f"{dataset}-{i}", dataset, dataset, f"Question {i}?", gold)
            prompt = fill_template("alpaca", rec.question)
            rows.append(mwpbench.prediction_row(rec, prompt, completion, None, model="student"))
    return rows


def make_run(server, root, name, pairs, answers, setting=None, sweep="sw", unusable=0, wall=10.0, base=None):
    """A finished run root/name: stage 01's concepts of four seeds, stage 03's `pairs` kept pairs (and `unusable`
    compositions the teacher fails twice) through the LLM client, stage 05's metrics of `answers` (see
    predictions) with the base student's `base` answers as its baseline, and the chain's manifest with stage 03's
    wall time and LLM usage."""
    tags = {"sweep": sweep, "setting": setting} if setting else {}
    P = Params(
        run_name=name,
        outputs_dir=str(root),
        tags=tags,
        generate=GENERATE,
        llm=LLMConfig(model="teacher", base_url=server.base_url),
    )
    run, min_count = P.run, P.extract.min_count
    extractions = [
        concepts.Extraction(
            Record(f"s{i}", "custom", "custom", f"Seed question {i}?", str(i)),
            [f"t{i}"],
            [f"k{i}", "k"],
            attempts=1,
        )
        for i in range(4)
    ]
    seeds = concepts.to_rows(extractions, min_count)
    write_jsonl(run.concepts, seeds)
    concepts.write_summary(run, extractions, min_count)
    comps = [
        CompositionRow(
            id=f"c{i:07d}",
            topics=["Counting"],
            knowledge_points=[f"Counting to {i}"],
            start_topic="Counting",
            epoch=0,
        )
        for i in range(pairs)
    ]
    comps += [
        CompositionRow(
            id=f"u{i:07d}",
            topics=["Counting"],
            knowledge_points=[UNUSABLE_KP, f"KP {i}"],
            start_topic="Counting",
            epoch=0,
        )
        for i in range(unusable)
    ]
    server.answer = teacher
    with LLM.for_stage(P, stage("03").label, progress=False) as llm:
        raw = gen.generate_shards(run, comps, gen.FewShotIndex(seeds), llm, GENERATE, P.seed, log=_quiet)
    asm = filters.filter_and_assemble(raw, seeds, GENERATE, P.llm.model, log=_quiet)
    dataset_card.export(run, asm, GENERATE, P.llm, seeds, P.seed)
    metrics = mwpbench.compute_metrics(predictions(answers))
    extra = {}
    if base:
        base_rows = predictions(base)
        diff = baseline.compare(predictions(answers), base_rows, metrics["datasets_evaluated"])
        extra["baseline"] = baseline.baseline_block(
            "base@llama_cpp", mwpbench.compute_metrics(base_rows), diff
        )
    mwpbench.write_metrics(run, metrics, P.evaluate, "student", **extra)
    manifest = chain.manifest_for(P)
    entry = chain.stage_entry("03", "python")
    manifest["stages"]["03"] = chain.record_stage(entry, "ok", wall, chain.stage_usage(run.root, "03"))
    manifest["status"] = "ok"
    write_json(run.manifest, manifest)
    return run.root


def test_collect_runs_and_scaling_frame(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "a", 8, {"gsm8k": "+~--", "tal": "--"})
    make_run(fake_openai, tmp_path, "b", 16, {"gsm8k": "++~-", "tal": "+-"}, wall=20.0)
    (tmp_path / "broken").mkdir()
    RunDir(tmp_path / "broken").manifest.write_text("{not json")
    assert RunDir(tmp_path / "a").generation_manifest.exists()  # stage 03's own manifest.json: not a run
    runs = scaling.collect_runs(tmp_path)
    assert sorted(runs["run"]) == ["a", "b"]
    assert runs.set_index("run").loc["b", "paper_macro"] == 62.5  # gsm8k 3/4, tal 1/2
    assert runs.set_index("run").loc["a", "paper:gsm8k"] == 50.0
    # sizes count every training example, as the paper's do: 8 generated pairs + the 4 seed rows appended
    assert runs.set_index("run").loc["a", ["generated_pairs", "train_rows"]].tolist() == [8, 12]
    long = scaling.scaling_frame(runs, "strict")
    assert set(long["metric"]) == {"micro", "macro", "gsm8k", "tal"}
    assert (
        long[(long.metric == "macro") & (long.examples == 16 + 4)]["accuracy"].item() == 50.0
    )  # gsm8k 2/4, tal 1/2
    ax = scaling.plot_scaling(runs)
    assert ax.get_xscale() == "log"
    band = scaling.micro_interval(runs).set_index("examples")
    micro = 100 * 2 / 6  # run a: 2 of its 6 items right by the paper's judge (its macro is 25%)
    half = 1.96 * math.sqrt(micro * (100 - micro) / 6)
    assert band.loc[12, "low"] == 0.0 and band.loc[12, "high"] == pytest.approx(micro + half)
    assert scaling.micro_interval(runs.iloc[0:0]).empty


def test_ablation_table_relative_change(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "full", 8, {"gsm8k": "+++++-----"}, setting="full")  # 50%
    make_run(fake_openai, tmp_path, "kp", 8, {"gsm8k": "++++------"}, setting="kps50")  # 40%
    t = scaling.ablation_table(scaling.collect_runs(tmp_path))
    assert t.loc["kps50", "relative_change_%"] == pytest.approx(-20.0)
    assert t.loc["kps50", "paper_relative_change_%"] == pytest.approx((13.2 / 14.5 - 1) * 100)


def test_ablation_table_keeps_sweeps_apart_in_the_papers_order(tmp_path, fake_openai):
    for sweep, full, half in (
        ("a", "++--", "+---"),
        ("b", "++++", "++--"),
    ):  # full 50% / 100%, kps50 half of it
        make_run(fake_openai, tmp_path, f"{sweep}-kps", 8, {"gsm8k": half}, setting="kps50", sweep=sweep)
        make_run(fake_openai, tmp_path, f"{sweep}-full", 8, {"gsm8k": full}, setting="full", sweep=sweep)
    make_run(
        fake_openai, tmp_path, "a-n6", 6, {"gsm8k": "----"}, setting="n6", sweep="a"
    )  # not a Table 6 row
    t = scaling.ablation_table(scaling.collect_runs(tmp_path))
    assert list(t.index) == [("a", "full"), ("a", "kps50"), ("b", "full"), ("b", "kps50")]
    assert t["relative_change_%"].tolist() == [0.0, -50.0, 0.0, -50.0]  # each against its own sweep's full


def test_curves_keep_sweeps_and_lone_runs_apart(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "n6", 6, {"gsm8k": "+---"}, setting="n6", sweep="size")
    make_run(fake_openai, tmp_path, "n12", 12, {"gsm8k": "++--"}, setting="n12", sweep="size")
    make_run(fake_openai, tmp_path, "full", 16, {"gsm8k": "+++-"}, setting="full", sweep="abl")
    make_run(fake_openai, tmp_path, "kps", 16, {"gsm8k": "----"}, setting="kps50", sweep="abl")
    make_run(fake_openai, tmp_path, "quickstart", 11, {"gsm8k": "++++"})
    runs = scaling.curve_runs(scaling.collect_runs(tmp_path))
    assert sorted(runs["run"]) == ["full", "n12", "n6", "quickstart"]  # the kps50 variant is not a size point
    assert sorted(set(runs["curve"])) == ["abl", "quickstart", "size"]
    ax = scaling.plot_scaling(runs)
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}
    assert lines["macro · size"] == [25.0, 50.0] and lines["macro · quickstart"] == [100.0]
    assert not any(label.startswith("gsm8k") for label in lines)  # per-dataset lines only for a single curve
    one = scaling.plot_scaling(runs[runs["curve"] == "size"])
    assert {ln.get_label() for ln in one.get_lines()} >= {"macro", "micro", "gsm8k"}


def test_cost_table_extrapolates_per_pair(tmp_path, fake_openai):
    make_run(fake_openai, tmp_path, "a", 10, {"gsm8k": "+-"}, unusable=1, wall=30.0)  # 10 + 2 calls
    t = scaling.cost_table(scaling.collect_runs(tmp_path), target_pairs=1000)
    row = t.iloc[0]
    assert row["calls_per_pair"] == pytest.approx(1.2) and row["calls_for_1,000"] == pytest.approx(1200)
    assert row["tokens_per_pair"] == pytest.approx(180.0)  # 12 calls x 150 tokens / 10 pairs
    assert math.isclose(row["days_for_1,000_one_worker"], 3000 / 86400)


def test_concept_growth_counts_unique_concepts(tmp_path):
    extractions = [
        concepts.Extraction(Record(f"s{i}", "custom", "custom", f"q{i}", "1"), topics, kps, error, attempts=1)
        for i, (topics, kps, error) in enumerate(
            [(["A"], ["k1", "k2"], None), (["A", "B"], ["k1"], None), ([], [], "boom"), (["C"], ["k3"], None)]
        )
    ]
    run = RunDir(tmp_path)
    write_jsonl(run.concepts, concepts.to_rows(extractions, min_count=2))
    g = scaling.concept_growth(run.concepts, min_count=2, points=3)
    last = g.iloc[-1]
    assert (last["seeds"], last["topics"], last["knowledge_points"]) == (3, 3, 3)
    assert (last["topics (seen >= 2)"], last["knowledge_points (seen >= 2)"]) == (1, 1)
    assert list(g["seeds"]) == [1, 2, 3]


def test_concept_coverage_is_case_insensitive():
    test = [{"raw_topics": ["Algebra", "Geometry"], "raw_knowledge_points": ["Area of a circle", "Ratios"]}]
    train = [{"topics": ["algebra"], "knowledge_points": ["Area of a Circle"]}]
    c = scaling.concept_coverage(test, train)
    assert c["topics_covered_%"] == 50.0 and c["knowledge_points_covered_%"] == 50.0


def test_concept_coverage_near_matches_reworded_concepts():
    test = [
        {
            "raw_topics": ["Linear equations"],
            "raw_knowledge_points": ["Solving linear equations", "Area of a circle"],
        }
    ]
    train = [
        {
            "topics": ["Quadratic equations"],
            "knowledge_points": ["Linear equation solving", "Circle circumference"],
        }
    ]
    c = scaling.concept_coverage(test, train)
    assert c["knowledge_points_covered_%"] == 0.0 and c["knowledge_points_near_%"] == 50.0
    assert c["topics_near_%"] == 0.0  # one shared word of three is not a match at 0.5
    assert scaling.concept_words("The Area of Circles") == {"area", "circle"}
    assert scaling.concept_coverage(test, [])["knowledge_points_near_%"] == 0.0


def test_notebook_06_draws_an_ablation_sweep(tmp_path, fake_openai):
    """The notebook itself, headless, over the runs of an ablation sweep: the Table 6 variants are in the
    ablation table and not on the size curve."""
    import papermill as pm

    from mathscale_utils.core.params import ROOT
    from mathscale_utils.runs.chain import ensure_kernel

    out = tmp_path / "out"
    make_run(fake_openai, out, "sw-full", 16, {"gsm8k": "++--"}, setting="full")
    make_run(fake_openai, out, "sw-kps50", 15, {"gsm8k": "+---"}, setting="kps50")
    params = tmp_path / "p.yaml"
    params.write_text(
        f"run_name: sw-full\noutputs_dir: {out}\nllm:\n  model: smollm2-135m-instruct\nextract:\n  coverage_sample: 0\n"
    )
    pm.execute_notebook(
        str(ROOT / "notebooks" / "06_scaling_curves.ipynb"),
        str(tmp_path / "06.ipynb"),
        parameters={"params_file": str(params)},
        kernel_name=ensure_kernel(),
        cwd=str(ROOT),
        progress_bar=False,
    )
    run = RunDir(out / "sw-full")
    summary = read_json(run.scaling_summary)
    assert {r["setting"]: r["relative_change_%"] for r in summary["ablation"]} == {
        "full": 0.0,
        "kps50": -50.0,
    }
    assert {r["run"] for r in summary["curve"]} == {"sw-full"}
    assert run.scaling_png.stat().st_size > 1000
    assert summary["concept_growth"][-1]["knowledge_points"] == 5  # k0..k3 and k, from make_run's four seeds


def test_the_base_student_is_each_curves_zero_example_point(tmp_path, fake_openai):
    """Stage 05's baseline (the untrained base on the same items) starts each curve at 0 examples: in the long
    table, in the micro interval (its items counted once) and on the plot (at x = 1, labelled "0 (base)")."""
    base = {"gsm8k": "+---", "tal": "--"}
    make_run(fake_openai, tmp_path, "a", 8, {"gsm8k": "+~--", "tal": "--"}, base=base)
    make_run(fake_openai, tmp_path, "b", 16, {"gsm8k": "++~-", "tal": "+-"}, base=base)
    make_run(fake_openai, tmp_path, "lone", 8, {"gsm8k": "++++"}, sweep=None, base={"gsm8k": "++--"})
    runs = scaling.collect_runs(tmp_path)
    runs["curve"] = ["sw", "sw", "lone"]  # runs a and b form one sweep
    assert runs.set_index("run").loc["a", "base_paper_micro"] == pytest.approx(100 / 6)
    assert runs.set_index("run").loc["a", "base_identity"] == "base@llama_cpp"
    long = scaling.scaling_frame(runs, "paper")
    zero = long[long.examples == 0].set_index(["curve", "metric"])["accuracy"]
    assert zero[("sw", "micro")] == pytest.approx(100 / 6) and zero[("sw", "gsm8k")] == 25.0
    assert zero[("lone", "micro")] == 50.0 and (long[long.examples == 0]["run"] == "base").all()
    assert (
        len(long[(long.examples == 0) & (long.curve == "sw")]) == 4
    )  # once per curve: micro, macro, 2 datasets
    band = scaling.micro_interval(runs[runs.curve == "sw"]).set_index("examples")
    assert band.loc[0, "micro"] == pytest.approx(100 / 6) and band.loc[0, "n"] == 6
    ax = scaling.plot_scaling(runs[runs.curve == "sw"])
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "0 (base)" in labels
    assert any(line.get_xdata()[0] == 1 for line in ax.get_lines())  # the curve starts at the base point
    assert "base student" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
