"""Seed and benchmark loaders: the real shared files (skipped when absent) and hand-made ones."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.io import DataError
from mathscale_utils.core.method_config import SeedsConfig
from mathscale_utils.data.benchmarks import (
    MC_FILTER_KEYWORDS,
    MWPBENCH_DATASETS,
    availability,
    dataset_of_topic,
    load_mwpbench,
    math_topic,
    mc_to_word,
    read_agieval_math,
    read_agieval_sat,
    read_college_math,
    read_fresh_gaokao,
    read_gaokao_bench,
    read_gsm8k,
    read_math,
    read_official,
    read_tal,
)
from mathscale_utils.data.seeds import load_seeds
from mathscale_utils.evaluation.mwpbench import cap_per_task, stratified_subset
from mathscale_utils.grading.answers import find_boxed

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MATHSCALE_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA / "PROVENANCE.md").exists(),
    reason=f"shared data folder not found at {DATA} (set MATHSCALE_DATA_DIR to the folder with PROVENANCE.md)",
)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# ---------------------------------------------------------------------------------------------------------------
# the real files


@needs_data
def test_gsm8k_counts_and_reduction():
    train, test = read_gsm8k(DATA, "train"), read_gsm8k(DATA, "test")
    assert (len(train), len(test)) == (7473, 1319)
    r = test[0]
    assert r.answer == "18" and r.dataset == r.data_topic == "gsm8k"
    assert "<<" not in r.solution and "####" not in r.solution and r.solution.endswith("market.")
    assert all("<<" not in x.solution for x in train)


@needs_data
def test_math_counts_topics_and_boxed_answers():
    train, test = read_math(DATA, "train"), read_math(DATA, "test")
    assert (len(train), len(test)) == (7498, 5000)  # two train rows with an empty box skipped
    topics = Counter(r.data_topic for r in test)
    assert set(topics) == {
        "MATH.Algebra",
        "MATH.Counting_&_Probability",
        "MATH.Geometry",
        "MATH.Intermediate_Algebra",
        "MATH.Number_Theory",
        "MATH.Prealgebra",
        "MATH.Precalculus",
    }
    assert topics["MATH.Algebra"] == 1187
    assert test[0].answer == "2" and test[0].id == "MATH.test/algebra/1.json"
    assert all(r.answer for r in train + test)


@needs_data
def test_exact_mwpbench_rows():
    assert (len(read_college_math(DATA, "train")), len(read_college_math(DATA, "test"))) == (1281, 2818)
    assert len(read_gaokao_bench(DATA)) == 508
    fresh = read_fresh_gaokao(DATA)
    assert len(fresh) == 30 and {r.dataset for r in fresh} == {"fresh_gaokao_math_2023"}
    test = read_college_math(DATA, "test")
    assert Counter(r.data_topic for r in test)["college_math.algebra"] == 1000
    assert test[0].answer == "$10-4 n$" and test[0].meta["license"].startswith("Creative Commons")
    assert len({r.id for r in test}) == len(test)


@needs_data
def test_converted_multiple_choice_sets():
    tal_train, tal_test = read_tal(DATA, "train"), read_tal(DATA, "test")
    assert (len(tal_train), len(tal_test)) == (2712, 1629)  # paper: 2638 / 1496 with the unknown 6th keyword
    assert all(not any(k in r.question.lower() for k in MC_FILTER_KEYWORDS) for r in tal_test)
    assert tal_test[0].answer == tal_test[0].meta["options"][tal_test[0].meta["label"]].strip()
    sat = read_agieval_sat(DATA)
    assert len(sat) == 111  # paper: 102
    assert sat[0].answer == "10"
    assert len(read_agieval_sat(DATA, extra_keywords=["which"])) == 102
    amath = read_agieval_math(DATA)
    assert len(amath) == 1000 and amath[0].answer == "(3,4]"


@needs_data
def test_load_mwpbench_and_availability():
    test = load_mwpbench("test", DATA)
    assert len({r.id for r in test}) == len(test)
    counts = Counter(r.dataset for r in test)
    assert counts["gsm8k"] == 1319 and counts["MATH"] == 5000 and counts["college_math"] == 2818
    assert not counts["math23k_en"] and not counts["ape210k_en"] and not counts["agieval.gaokao-math-en"]
    assert list(counts) == [d for d in MWPBENCH_DATASETS if counts[d]]  # grouped in Table 5 order
    status = {r["dataset"]: r["status"] for r in availability("test", DATA)}
    assert (
        status["college_math"]
        == status["gaokao_bench_math_en"]
        == status["fresh_gaokao_math_2023"]
        == "exact"
    )
    assert status["tal"] == status["agieval.sat-math"] == "approximate"
    assert status["math23k_en"] == status["ape210k_en"] == status["agieval.gaokao-math-en"] == "missing"
    train = load_mwpbench("train", DATA)
    assert Counter(r.dataset for r in train) == {
        "gsm8k": 7473,
        "MATH": 7498,
        "college_math": 1281,
        "tal": 2712,
    }


def test_missing_data_folder_is_reported(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_gsm8k(tmp_path, "test")
    rows = availability("test", tmp_path)
    assert {r["status"] for r in rows} == {"missing"}


# ---------------------------------------------------------------------------------------------------------------
# hand-made rows


def test_mc_to_word_conversion():
    opts = {"A": " 12 ", "B": "$\\frac{1}{2}$", "C": ""}
    assert mc_to_word("What is 3 x 4?", opts, "A") == ("What is 3 x 4?", "12")
    assert mc_to_word("  Compute half.  ", opts, "B") == ("Compute half.", "$\\frac{1}{2}$")
    for q in (
        "Which of the following is prime?",
        "WHICH ONE is larger?",
        "Which is even?",
        "Pick the following.",
        "Which statement is true?",
    ):
        assert mc_to_word(q, opts, "A") is None
    assert mc_to_word("What is 3 x 4?", opts, "D") is None  # no such option
    assert mc_to_word("What is 3 x 4?", opts, "C") is None  # empty option
    assert mc_to_word("Which number is 12?", opts, "A") == ("Which number is 12?", "12")
    assert mc_to_word("Which number is 12?", opts, "A", extra_keywords=["which"]) is None
    assert mc_to_word("Passage: which one. Q?", opts, "A", filter_text="Q?") == (
        "Passage: which one. Q?",
        "12",
    )


def test_read_tal_and_sat_on_hand_made_rows(tmp_path):
    tal = [
        {
            "queId": "q1",
            "qid": "1",
            "difficulty": "1",
            "problem": "What is 2+2? ",
            "answer_option_list": [
                [{"aoVal": "A", "content": "$$3$$"}],
                [{"aoVal": "B", "content": "$$4$$ "}],
            ],
            "answer_value": "B",
            "answer_analysis": ["2+2=4"],
        },
        {
            "queId": "q2",
            "problem": "Which of the following is odd?",
            "answer_option_list": [[{"aoVal": "A", "content": "3"}]],
            "answer_value": "A",
            "answer_analysis": None,
        },
    ]
    _write_jsonl(tmp_path / "tal_scq5k_en" / "test.jsonl", tal)
    recs = read_tal(tmp_path, "test")
    assert [(r.id, r.question, r.answer, r.solution) for r in recs] == [
        ("tal.test.q1", "What is 2+2?", "$$4$$", "2+2=4")
    ]
    sat = [
        {
            "passage": "",
            "question": "If x=3, what is 2x?",
            "options": ["(A)5", "(B)$6$"],
            "label": "B",
            "other": {"solution": "s"},
        },
        {
            "passage": "P.",
            "question": "Which of the following is true?",
            "options": ["(A)a"],
            "label": "A",
            "other": {},
        },
        {
            "passage": "Which one? A table.",
            "question": "How many?",
            "options": ["(A)7", "(B)8"],
            "label": "A",
            "other": {},
        },
    ]
    _write_jsonl(tmp_path / "agieval" / "sat-math.jsonl", sat)
    recs = read_agieval_sat(tmp_path)
    assert [(r.answer, r.question) for r in recs] == [
        ("$6$", "If x=3, what is 2x?"),
        ("7", "Which one? A table.\nHow many?"),
    ]


def test_gsm8k_and_math_readers_on_hand_made_rows(tmp_path):
    _write_jsonl(
        tmp_path / "gsm8k" / "test.jsonl", [{"question": "Q", "answer": "a <<2*3=6>>6 b\n#### 1,080"}]
    )
    [r] = read_gsm8k(tmp_path, "test")
    assert (r.answer, r.solution) == ("1,080", "a 6 b")
    _write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [{"question": "Q", "answer": "no marker"}])
    with pytest.raises(DataError, match=r"train.jsonl:1: .*####"):
        read_gsm8k(tmp_path, "train")
    rows = [
        {
            "problem": "P",
            "level": "Level 1",
            "type": "Counting & Probability",
            "solution": "so $\\boxed{\\frac{1}{2}}$ and finally \\boxed{\\dfrac{3}{4}}.",
            "unique_id": "test/c/1.json",
        }
    ]
    _write_jsonl(tmp_path / "math" / "test.jsonl", rows)
    [m] = read_math(tmp_path, "test")
    assert (m.answer, m.data_topic, m.id) == (
        "\\dfrac{3}{4}",
        "MATH.Counting_&_Probability",
        "MATH.test/c/1.json",
    )


def test_find_boxed_variants():
    assert find_boxed("a \\boxed{x{y}} b \\fbox{z}") == "z"
    assert find_boxed("\\boxed 5 and more") == "5"
    assert find_boxed("none") is None


def test_topics_map_to_datasets():
    assert dataset_of_topic("MATH.Number_Theory") == "MATH"
    assert dataset_of_topic("college_math.linear_algebra") == "college_math"
    assert dataset_of_topic("agieval.sat-math") == "agieval.sat-math"
    assert dataset_of_topic("FreshGaokaoMath2023") == "fresh_gaokao_math_2023"
    assert dataset_of_topic("something_else") == "custom"
    assert math_topic("Counting & Probability") == "MATH.Counting_&_Probability"


def _official_rows():
    rows = []
    for i in range(5):
        rows.append(
            {
                "data_topic": "ape210k_en",
                "data_source": "ape",
                "question": f"ape {i}",
                "answer": str(i),
                "license": "",
                "question_number": str(i),
            }
        )
    rows.append({"data_topic": "MATH.Algebra", "question": "m", "answer": "$2$", "question_number": "7"})
    rows.append({"data_topic": "math23k_en", "question": "z", "answer": 3, "question_number": "1"})
    rows.append({"data_topic": "gsm8k", "question": "g", "answer": "4", "question_number": ""})
    rows.append({"data_topic": "gsm8k", "question": "g2", "answer": "5", "question_number": ""})
    return rows


def test_official_file_is_grouped_by_topic(tmp_path):
    path = _write_jsonl(tmp_path / "full_test.json", _official_rows())
    recs = load_mwpbench("test", None, official_file=path)
    assert [r.dataset for r in recs] == ["gsm8k", "gsm8k", "MATH", "math23k_en"] + ["ape210k_en"] * 5
    assert recs[3].answer == "3" and len({r.id for r in recs}) == len(recs)
    assert [r.question for r in cap_per_task(recs, 2) if r.dataset == "ape210k_en"] == ["ape 0", "ape 1"]
    assert [r.dataset for r in load_mwpbench("test", None, path, datasets=["math23k_en"])] == ["math23k_en"]
    status = {
        r["dataset"]: (r["status"], r["n_here"])
        for r in availability("test", None, official_file=path, include_fresh=False)
    }
    assert status["ape210k_en"] == ("exact", 5) and status["tal"][0] == "missing"
    assert len(read_official(path)) == 9
    bad = _write_jsonl(
        tmp_path / "bad.json", ['{"data_topic": "gsm8k", "question": "q", "answer": "1"}', "{oops"]
    )
    with pytest.raises(DataError, match=r"bad.json:2"):
        read_official(bad)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError):
        load_mwpbench("test", DATA, datasets=["mmlu"])
    with pytest.raises(ValueError):
        load_mwpbench("dev", DATA)


# ---------------------------------------------------------------------------------------------------------------
# stratified subsets


def _records():
    recs = []
    for topic, n in (("MATH.Algebra", 60), ("MATH.Geometry", 30), ("MATH.Precalculus", 10)):
        recs += [Record(f"{topic}.{i}", "MATH", topic, "q", "1") for i in range(n)]
    recs += [Record(f"gsm8k.{i}", "gsm8k", "gsm8k", "q", "1") for i in range(7)]
    return recs


def test_stratified_subset_is_reproducible_and_proportional():
    recs = _records()
    a = stratified_subset(recs, 20, seed=1)
    b = stratified_subset(list(recs), 20, seed=1)
    c = stratified_subset(recs, 20, seed=2)
    assert [r.id for r in a] == [r.id for r in b]
    assert [r.id for r in a] != [r.id for r in c]
    counts = Counter(r.data_topic for r in a)
    assert counts == {"MATH.Algebra": 12, "MATH.Geometry": 6, "MATH.Precalculus": 2, "gsm8k": 7}
    pos = {r.id: i for i, r in enumerate(recs)}
    assert [pos[r.id] for r in a] == sorted(pos[r.id] for r in a)  # original order kept
    assert stratified_subset(recs, None, seed=0) == recs
    assert len(stratified_subset(recs, 1000, seed=0)) == len(recs)
    by_ds = stratified_subset(recs, 10, seed=0, by="dataset")
    assert Counter(r.dataset for r in by_ds) == {"MATH": 10, "gsm8k": 7}


def test_stratified_subset_rounding_sums_to_n():
    recs = _records()
    for n in (1, 3, 7, 11, 99):
        assert sum(1 for r in stratified_subset(recs, n, seed=5) if r.dataset == "MATH") == n


# ---------------------------------------------------------------------------------------------------------------
# seeds


def test_load_seeds_builtin():
    recs, warnings = load_seeds(SeedsConfig(), DATA)
    assert recs and all(r.question and r.dataset == "custom" for r in recs)
    assert len({r.id for r in recs}) == len(recs)
    assert warnings == []


def test_load_seeds_jsonl_reports_malformed_rows(tmp_path):
    lines = [
        json.dumps({"id": "a", "question": "What is 1+1?", "solution": "1+1=2", "answer": "2"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps({"id": "c", "question": "   "}),
        json.dumps({"id": "d", "question": 42}),
        json.dumps({"id": "e", "question": "Q e", "solution": ["not", "a", "string"]}),
        json.dumps({"id": "a", "question": "duplicate id"}),
        "",
        json.dumps(["a", "list"]),
        json.dumps({"question": "No id, numeric answer", "answer": 7}),
    ]
    path = _write_jsonl(tmp_path / "seeds.jsonl", lines)
    recs, warnings = load_seeds(SeedsConfig(source="jsonl", path=str(path)), None)
    assert [r.id for r in recs] == ["a", "seeds.10"]
    assert recs[1].answer == "7" and recs[0].solution == "1+1=2"
    joined = "\n".join(warnings)
    for line in (2, 3, 4, 5, 6, 7, 9):
        assert f"{path}:{line}:" in joined, (line, joined)
    assert len(warnings) == 7
    assert "not valid JSON" in joined and "missing key 'question'" in joined and "empty 'question'" in joined
    assert "duplicate id 'a'" in joined and "has type int" in joined and "has type list" in joined


def test_load_seeds_errors(tmp_path):
    empty = _write_jsonl(tmp_path / "empty.jsonl", ["{bad", json.dumps({"x": 1})])
    with pytest.raises(DataError, match="no usable seed"):
        load_seeds(SeedsConfig(source="jsonl", path=str(empty)), None)
    with pytest.raises(
        ValueError, match="needs 'path'"
    ):  # refused when the params load, before any stage runs
        SeedsConfig(source="jsonl")
    with pytest.raises(DataError, match="not found"):
        load_seeds(SeedsConfig(source="jsonl", path=str(tmp_path / "nope.jsonl")), None)
    with pytest.raises(DataError, match="data folder"):
        load_seeds(SeedsConfig(source="gsm8k"), tmp_path / "missing")
    with pytest.raises(ValueError):
        SeedsConfig(source="jsonl", pathh="x")
    with pytest.raises(ValueError):
        SeedsConfig(limit=0)


def test_load_seeds_limit_is_a_seeded_sample(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [json.dumps({"question": f"Q{i}"}) for i in range(50)])
    cfg = SeedsConfig(source="jsonl", path=str(path), limit=10, sample_seed=3)
    a, wa = load_seeds(cfg, None)
    b, _ = load_seeds(cfg, None)
    c, _ = load_seeds(cfg.model_copy(update={"sample_seed": 4}), None)
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]
    assert len(a) == 10 and "random sample of 10 of 50" in wa[0]
    ids = [int(r.id.split(".")[1]) for r in a]
    assert ids == sorted(ids)
    _, w = load_seeds(cfg.model_copy(update={"limit": 60}), None)
    assert "more than the 50 available" in w[0]
    smaller, _ = load_seeds(cfg.model_copy(update={"limit": 5}), None)
    assert {r.id for r in smaller} < {
        r.id for r in a
    }  # nested: halving the seeds keeps half of the same ones


def test_load_seeds_official_train_file(tmp_path):
    path = _write_jsonl(tmp_path / "full_train.json", _official_rows())
    recs, warnings = load_seeds(SeedsConfig(source="mwpbench", path=str(path)), None)
    assert len(recs) == 9 and warnings == []


@needs_data
def test_load_seeds_from_shared_train_splits():
    recs, _ = load_seeds(SeedsConfig(source="gsm8k", limit=5), DATA)
    assert len(recs) == 5 and all(r.dataset == "gsm8k" and r.solution for r in recs)
    recs, warnings = load_seeds(SeedsConfig(source="mwpbench"), DATA)
    assert Counter(r.dataset for r in recs) == {
        "gsm8k": 7473,
        "MATH": 7498,
        "college_math": 1281,
        "tal": 2712,
    }
    assert any("math23k_en" in w for w in warnings)
    recs, _ = load_seeds(SeedsConfig(source="mwpbench", datasets=["gsm8k", "MATH"], limit=10), DATA)
    assert len(recs) == 10 and {r.dataset for r in recs} <= {"gsm8k", "MATH"}
    with pytest.raises(DataError, match="GSM8K"):
        load_seeds(SeedsConfig(source="mwpbench", datasets=["GSM8K"]), DATA)


@needs_data
def test_cpu_ablation_seed_sets_are_subsets_of_the_full_one():
    """Table 6 on CPU removes seeds from the full setting's set; it never draws a different set."""
    sweep = yaml.safe_load((ROOT / "params" / "ablation_cpu.yaml").read_text())
    base = sweep["common"]["extract.seeds"]

    def seeds(setting: dict) -> list:
        over = {
            k.rsplit(".", 1)[1]: v
            for k, v in setting.get("set", {}).items()
            if k.startswith("extract.seeds.")
        }
        return load_seeds(SeedsConfig(**{**base, **over}), DATA)[0]

    by_name = {s["name"]: seeds(s) for s in sweep["settings"]}
    full = [r.id for r in by_name["full"]]
    assert len(full) == 48 and len(set(full)) == 48
    half = [r.id for r in by_name["seeds50"]]
    assert len(half) == 24 and half == [i for i in full if i in set(half)]
    assert [r.id for r in by_name["gsm8k_math"]] == [
        r.id for r in by_name["full"] if r.dataset in ("gsm8k", "MATH")
    ]
    for name in ("topics50", "kps50"):
        assert [r.id for r in by_name[name]] == full
