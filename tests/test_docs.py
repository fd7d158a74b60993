"""README's figures come from runs: `make docs` (reporting/docs.py) records what it quotes from a run's own files,
rewrites README's marked blocks from those records, and changes nothing when run twice on the same runs."""

import re

import pytest
from test_scaling import make_run

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, read_json, write_json
from mathscale_utils.core.params import ROOT
from mathscale_utils.reporting import docs

README = """# a readme

<!-- docs:quickstart -->
typed by hand: 8.1 minutes
<!-- /docs:quickstart -->

text between blocks stays

<!-- docs:scaling_cpu -->
old caption
<!-- /docs:scaling_cpu -->
"""


def quickstart_run(server, outputs, walls=(130.0, 5.0, 140.0, 100.0, 105.0, 4.0)):
    """A finished run named quickstart whose manifest records every stage's wall time."""
    root = make_run(server, outputs, "quickstart", 4, {"gsm8k": "+-", "tal": "+-"})
    run = RunDir(root)
    m = read_json(run.manifest)
    m["stages"] = {f"0{i + 1}": {"status": "ok", "wall_s": w} for i, w in enumerate(walls)}
    m["ended"] = "2026-12-07T10:00:00+00:00"
    write_json(run.manifest, m)
    return root


def sweep(server, outputs, name="scaling_cpu"):
    """Three settings of 2, 4 and 8 pairs, each student trained on one example fewer (what its card says)."""
    runs = outputs / name / "runs"
    for n, answers in ((2, "--+-"), (4, "+-+-"), (8, "++++")):
        root = make_run(server, runs, f"{name}-n{n}", n, {"gsm8k": answers}, setting=f"n{n}", sweep=name)
        write_json(RunDir(root).training_card, {"n_examples": n - 1, "steps": n - 1})


def test_the_quickstart_block_quotes_the_run(tmp_path, fake_openai):
    rec = docs.record_run(quickstart_run(fake_openai, tmp_path))
    assert rec["chain_s"] == pytest.approx(484.0) and rec["stages"]["03"]["wall_s"] == 140.0
    assert rec["accuracy"]["paper"]["micro"] == pytest.approx(50.0) and rec["sizes"]["generated_pairs"] == 4
    text = docs.block_quickstart(rec)
    assert "**8.1 minutes**" in text and "01 130 s, 02 5 s, 03 140 s, 04 100 s, 05 105 s, 06 4 s" in text
    assert "paper judge micro 50.0%" in text


def test_an_unfinished_run_is_not_quoted(tmp_path, fake_openai):
    run = RunDir(quickstart_run(fake_openai, tmp_path))
    m = read_json(run.manifest)
    write_json(run.manifest, {**m, "status": "failed"})
    with pytest.raises(DataError, match="finished runs only"):
        docs.record_run(run.root)


def test_make_docs_rewrites_the_blocks_and_twice_changes_nothing(tmp_path, fake_openai):
    outputs, root = tmp_path / "outputs", tmp_path / "repo"
    quickstart_run(fake_openai, outputs)
    sweep(fake_openai, outputs)
    assert docs.record_all(outputs, root, log=lambda s: None) == ["quickstart", "scaling_cpu"]
    first = docs.render_readme(README, root)
    assert (
        "typed by hand" not in first and "old caption" not in first and "text between blocks stays" in first
    )
    assert "trained on 1, 3, 7 examples (2, 4, 8 kept generated pairs)" in first  # x: from each card
    assert "Paper-judge micro accuracy 25.0%, 50.0%, 100.0%" in first
    records = {p.name: p.read_bytes() for p in (root / docs.RESULTS).iterdir()}
    assert docs.record_all(outputs, root, log=lambda s: None) == ["quickstart", "scaling_cpu"]
    assert {p.name: p.read_bytes() for p in (root / docs.RESULTS).iterdir()} == records
    assert docs.render_readme(first, root) == first


def test_a_block_without_its_record_is_kept_and_an_unknown_block_refused(tmp_path):
    assert docs.render_readme(README, tmp_path) == README
    with pytest.raises(DataError, match="unknown docs block 'mystery'"):
        docs.render_readme("<!-- docs:mystery -->\nx\n<!-- /docs:mystery -->\n", tmp_path)


def test_readme_matches_its_records():
    """README's figure blocks are exactly what their committed records give: a hand edit inside one fails here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [m.group("name") for m in docs.BLOCK.finditer(text)]
    assert {"quickstart", "server", "scaling_cpu"} <= set(names)
    for name in names:
        assert (ROOT / docs.BLOCKS[name][0]).exists(), f"README block {name}: its record is missing"
    assert docs.render_readme(text) == text
    assert not re.search(r"\(filled in by `make docs`", text)
