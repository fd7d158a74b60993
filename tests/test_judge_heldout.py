"""The blind held-out judge set (tests/data/judge_heldout.jsonl) is intact: its schema, unique ids, balanced labels,
its questions and golds as the benchmark files have them, its labels as the labels file has them, and a rebuild
from the same rows and labels byte-identical. It checks the set only, never the judge's score on it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "tests" / "data" / "judge_heldout.jsonl"
DATA = Path(os.environ.get("MATHSCALE_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA / "PROVENANCE.md").exists(),
    reason=f"shared data folder not found at {DATA} (set MATHSCALE_DATA_DIR to the folder with PROVENANCE.md)",
)


def _load(name: str):
    """A bench script as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


B = _load("build_judge_heldout")
ROWS = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]


def test_schema_and_ids():
    assert len(ROWS) >= 200
    for r in ROWS:
        assert tuple(r) == B.FIELDS, r["id"]
        assert isinstance(r["label"], bool), r["id"]
        assert r["model"] in B.MODELS and r["style"] in B.STYLES, r["id"]
        assert r["id"] == f"{r['source']}|{B.SHORT[r['model']]}|{r['style']}"
        for k in ("question", "gold", "completion", "kind", "note"):
            assert isinstance(r[k], str) and r[k].strip(), (r["id"], k)
    assert len({r["id"] for r in ROWS}) == len(ROWS)


def test_balance_and_spread():
    labels = Counter(r["label"] for r in ROWS)
    assert 0.35 <= labels[True] / len(ROWS) <= 0.65, labels
    models = Counter(r["model"] for r in ROWS)
    assert set(models) == set(B.MODELS), models
    assert len({r["dataset"] for r in ROWS}) >= 6
    assert len({r["style"] for r in ROWS}) == len(B.STYLES)
    for m in B.MODELS:  # each model's rows are judged on their own too: both labels present
        assert {r["label"] for r in ROWS if r["model"] == m} == {True, False}, m


def test_rows_match_labels_file_and_rebuild_is_identical():
    labels = B.read_labels(B.LABELS_PATH)
    for r in ROWS:
        lab = labels[r["id"]]
        assert (lab["label"], lab["kind"], lab["note"]) == (r["label"], r["kind"], r["note"]), r["id"]
        assert lab["sha"] == B.text_sha(r["completion"]), r["id"]
    # every true label is in the set (balance leaves out false rows only); no dropped (null) label is
    assert {i for i, lab in labels.items() if lab["label"]} == {r["id"] for r in ROWS if r["label"]}
    assert all(labels[r["id"]]["label"] is not None for r in ROWS)
    # the candidates as they came from the cache: the set's rows without the labelling fields, same order
    cands = [{k: r[k] for k in B.FIELDS if k not in ("label", "kind", "note")} for r in ROWS]
    mine = {r["id"]: labels[r["id"]] for r in ROWS}
    assert B.encode(B.balance(B.assemble(cands, mine))) == SET.read_bytes()


def test_docstrings_state_the_make_up():
    text = B.makeup_text(ROWS)
    assert text in B.__doc__
    bench = (ROOT / "bench" / "bench_judge_heldout.py").read_text(encoding="utf-8")
    assert text in bench


def test_balance_keeps_every_true_row_and_spreads_false_ones():
    def row(i: int, label: bool, model: str, kind: str) -> dict:
        return {"id": f"r{i}", "label": label, "model": model, "kind": kind}

    rows = [row(0, True, "a", "x"), row(1, True, "b", "x")]
    rows += [row(i, False, "a", "y") for i in range(2, 8)] + [row(8, False, "b", "z"), row(9, True, "a", "y")]
    kept = B.balance(rows, max_false_share=0.5)  # 3 true rows: 3 false ones, from both strata
    assert [r["id"] for r in kept if r["label"]] == ["r0", "r1", "r9"]
    false = [r for r in kept if not r["label"]]
    assert len(false) == 3 and {r["kind"] for r in false} == {"y", "z"}
    assert [r["id"] for r in kept] == [r["id"] for r in rows if r in kept]  # order kept
    assert B.balance(rows, max_false_share=0.9) == rows  # enough room: every row


def test_assemble_refuses_a_changed_completion_and_bad_labels(tmp_path):
    labels = B.read_labels(B.LABELS_PATH)
    cand = {k: ROWS[0][k] for k in B.FIELDS if k not in ("label", "kind", "note")}
    mine = {cand["id"]: labels[cand["id"]]}
    with pytest.raises(SystemExit, match="changed since it was labelled"):
        B.assemble([{**cand, "completion": cand["completion"] + " "}], mine)
    with pytest.raises(SystemExit, match="labels name no candidate"):
        B.assemble([cand], labels)
    with pytest.raises(SystemExit, match="candidates have no label"):
        B.assemble([cand], {})
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps({"id": "x", "label": "yes", "kind": "k", "note": "n", "sha": "0"}) + "\n")
    with pytest.raises(SystemExit, match=r"labels.jsonl:1: label must be"):
        B.read_labels(bad)


@needs_data
def test_questions_and_golds_are_the_benchmark_files():
    from mathscale_utils.data.benchmarks import load_mwpbench

    recs = {r.id: r for r in load_mwpbench("test", DATA, datasets=list(B.QUOTAS))}
    for r in ROWS:
        rec = recs[r["source"]]
        assert (rec.dataset, rec.question, rec.answer) == (r["dataset"], r["question"], r["gold"]), r["id"]
    planned = {j.id for j in B.plan(B.select_items(DATA))}
    assert {r["id"] for r in ROWS} <= planned  # every row is one the build script asks for


def test_bench_arithmetic_with_a_stub_checker():
    """The bench's rates and listings on a stub that answers "correct" for every third row (no judge involved):
    the lead runs the bench once, so its arithmetic is checked here."""
    bench = _load("bench_judge_heldout")
    rows = ROWS[:30]
    calls = iter(range(len(rows)))
    out = bench.score(rows, lambda completion, gold: (next(calls) % 3 == 0, None, None))
    said = [i % 3 == 0 for i in range(len(rows))]
    o = out["overall"]
    assert o["tp"] == sum(1 for r, p in zip(rows, said, strict=True) if r["label"] and p)
    assert o["fn"] == len(out["misses"]) and o["fp"] == len(out["false_positives"])
    assert o["tp"] + o["fn"] + o["fp"] + o["tn"] == len(rows)
    assert sum(k["n"] for k in out["by_kind"].values()) == len(rows)
    assert bench.wrap_gold("\\frac12") == "$\\frac12$" and bench.wrap_gold("$x=1$") == "$x=1$"
