"""Run collection and the scaling / ablation / growth / cost tables of notebook 06, on hand-made run directories."""

import math

import pytest

from mathscale_utils import scaling
from mathscale_utils.io import read_json, write_json, write_jsonl


def make_run(root, name, pairs, macro, setting=None, calls=0, wall=10.0, sweep="sw"):
    d = root / name
    tags = {"sweep": sweep, "setting": setting} if setting else {}
    write_json(
        d / "manifest.json",
        {
            "run_name": name,
            "status": "ok",
            "params": {"tags": tags},
            "stages": {
                "03": {
                    "wall_s": wall,
                    "llm": {
                        "total": {
                            "attempts": calls,
                            "prompt_tokens": 100 * calls,
                            "completion_tokens": 50 * calls,
                            "cost_usd": 0.0,
                        }
                    },
                }
            },
        },
    )
    write_json(
        d / "extract_summary.json",
        {"seeds": 50, "topics_after_filter": 10, "knowledge_points_after_filter": 20},
    )
    write_json(d / "generate_summary.json", {"counts": {"generated_kept": pairs}})
    write_json(
        d / "metrics.json",
        {
            "model": "m",
            "n_items": 8,
            "paper": {"micro": macro - 1, "macro": macro, "datasets": {"gsm8k": {"accuracy": macro + 5}}},
            "strict": {
                "micro": macro - 2,
                "macro": macro - 1,
                "datasets": {"gsm8k": {"accuracy": macro + 4}},
            },
        },
    )
    return d


def test_collect_runs_and_scaling_frame(tmp_path):
    make_run(tmp_path, "a", 8, 10.0, calls=8)
    make_run(tmp_path, "b", 16, 12.0, calls=8, wall=20.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    write_json(
        tmp_path / "a" / "generation" / "manifest.json", {"n_shards": 1, "fingerprints": []}
    )  # not a run
    runs = scaling.collect_runs(tmp_path)
    assert sorted(runs["run"]) == ["a", "b"]
    assert runs.set_index("run").loc["b", "paper_macro"] == 12.0
    assert runs.set_index("run").loc["a", "paper:gsm8k"] == 15.0
    long = scaling.scaling_frame(runs, "strict")
    assert set(long["metric"]) == {"micro", "macro", "gsm8k"}
    assert long[(long.metric == "macro") & (long.pairs == 16)]["accuracy"].item() == 11.0
    ax = scaling.plot_scaling(runs)
    assert ax.get_xscale() == "log"
    band = scaling.micro_interval(runs).set_index("pairs")
    half = 1.96 * math.sqrt(9.0 * 91.0 / 8)  # run a: micro 9% over 8 items
    assert band.loc[8, "low"] == 0.0 and band.loc[8, "high"] == pytest.approx(9.0 + half)
    assert scaling.micro_interval(runs.iloc[0:0]).empty


def test_ablation_table_relative_change(tmp_path):
    make_run(tmp_path, "full", 8, 10.0, setting="full")
    make_run(tmp_path, "kp", 8, 8.0, setting="kps50")
    t = scaling.ablation_table(scaling.collect_runs(tmp_path))
    assert t.loc["kps50", "relative_change_%"] == pytest.approx(-20.0)
    assert t.loc["kps50", "paper_relative_change_%"] == pytest.approx((13.2 / 14.5 - 1) * 100)


def test_ablation_table_keeps_sweeps_apart_in_the_papers_order(tmp_path):
    for sweep, base in (("a", 10.0), ("b", 20.0)):
        make_run(tmp_path, f"{sweep}-kps", 8, base / 2, setting="kps50", sweep=sweep)
        make_run(tmp_path, f"{sweep}-full", 8, base, setting="full", sweep=sweep)
    make_run(tmp_path, "a-n6", 6, 3.0, setting="n6", sweep="a")  # a size setting is not a Table 6 row
    t = scaling.ablation_table(scaling.collect_runs(tmp_path))
    assert list(t.index) == [("a", "full"), ("a", "kps50"), ("b", "full"), ("b", "kps50")]
    assert t["relative_change_%"].tolist() == [0.0, -50.0, 0.0, -50.0]  # each against its own sweep's full


def test_curves_keep_sweeps_and_lone_runs_apart(tmp_path):
    make_run(tmp_path, "n6", 6, 10.0, setting="n6", sweep="size")
    make_run(tmp_path, "n12", 12, 12.0, setting="n12", sweep="size")
    make_run(tmp_path, "full", 16, 30.0, setting="full", sweep="abl")
    make_run(tmp_path, "kps", 16, 1.0, setting="kps50", sweep="abl")
    make_run(tmp_path, "quickstart", 11, 50.0)
    runs = scaling.curve_runs(scaling.collect_runs(tmp_path))
    assert sorted(runs["run"]) == ["full", "n12", "n6", "quickstart"]  # the kps50 variant is not a size point
    assert sorted(set(runs["curve"])) == ["abl", "quickstart", "size"]
    ax = scaling.plot_scaling(runs)
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}
    assert lines["macro · size"] == [10.0, 12.0] and lines["macro · quickstart"] == [50.0]
    assert not any(label.startswith("gsm8k") for label in lines)  # per-dataset lines only for a single curve
    one = scaling.plot_scaling(runs[runs["curve"] == "size"])
    assert {ln.get_label() for ln in one.get_lines()} >= {"macro", "micro", "gsm8k"}


def test_cost_table_extrapolates_per_pair(tmp_path):
    make_run(tmp_path, "a", 10, 10.0, calls=12, wall=30.0)
    t = scaling.cost_table(scaling.collect_runs(tmp_path), target_pairs=1000)
    row = t.iloc[0]
    assert row["calls_per_pair"] == pytest.approx(1.2) and row["calls_for_1,000"] == pytest.approx(1200)
    assert row["tokens_per_pair"] == pytest.approx(180.0)
    assert math.isclose(row["days_for_1,000_one_worker"], 3000 / 86400)


def test_concept_growth_counts_unique_concepts(tmp_path):
    rows = [
        {"status": "ok", "raw_topics": ["A"], "raw_knowledge_points": ["k1", "k2"]},
        {"status": "ok", "raw_topics": ["A", "B"], "raw_knowledge_points": ["k1"]},
        {"status": "failed", "raw_topics": [], "raw_knowledge_points": []},
        {"status": "ok", "raw_topics": ["C"], "raw_knowledge_points": ["k3"]},
    ]
    write_jsonl(tmp_path / "c.jsonl", rows)
    g = scaling.concept_growth(tmp_path / "c.jsonl", min_count=2, points=3)
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


def test_notebook_06_draws_an_ablation_sweep(tmp_path):
    """The notebook itself, headless, over hand-made runs of an ablation sweep: the Table 6 variants are in the
    ablation table and not on the size curve."""
    import papermill as pm

    from mathscale_utils.chain import ensure_kernel
    from mathscale_utils.params import ROOT

    out = tmp_path / "out"
    make_run(out, "sw-full", 16, 20.0, setting="full")
    make_run(out, "sw-kps50", 15, 10.0, setting="kps50")
    concepts = [
        {"status": "ok", "raw_topics": [f"t{i}"], "raw_knowledge_points": [f"k{i}", "k"]} for i in range(4)
    ]
    write_jsonl(out / "sw-full" / "concepts.jsonl", concepts)
    params = tmp_path / "p.yaml"
    params.write_text(
        f"run_name: sw-full\noutputs_dir: {out}\nllm:\n  model: smollm2-135m-instruct\nextract:\n  coverage_sample: 0\n"
    )
    pm.execute_notebook(str(ROOT / "notebooks" / "06_scaling_curves.ipynb"), str(tmp_path / "06.ipynb"),
                        parameters={"params_file": str(params)}, kernel_name=ensure_kernel(), cwd=str(ROOT),
                        progress_bar=False)  # fmt: skip
    summary = read_json(out / "sw-full" / "scaling_summary.json")
    assert {r["setting"]: r["relative_change_%"] for r in summary["ablation"]} == {
        "full": 0.0,
        "kps50": -50.0,
    }
    assert {r["run"] for r in summary["curve"]} == {"sw-full"}
    assert (out / "sw-full" / "scaling_curves.png").stat().st_size > 1000
    assert summary["concept_growth"][-1]["knowledge_points"] == 5
