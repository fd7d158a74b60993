"""The papermill chain: runs notebook 01 end to end, writes a manifest, resumes for free, fails loudly."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_json, read_jsonl
from mathscale_utils.core.params import ROOT, load_params
from mathscale_utils.runs.chain import main, run_chain, sweep_params

from fake_openai import FakeOpenAI

SECRET = "sk-test-DO-NOT-LEAK-0123456789"
WORDS = ["percent", "speed", "area", "ratio", "probability", "sum", "volume", "root"]


def scripted_extraction(body: dict) -> str:
    """Topics and KPs that depend on the question, so the frequency filter has something to do."""
    text = body["messages"][0]["content"].lower()
    hits = [w for w in WORDS if w in text] or ["arithmetic"]
    return json.dumps(
        {
            "topics": [f"Topic {hits[0]}", "Word problems"],
            "knowledge_points": [f"KP {w}" for w in hits] + ["KP unique " + text[-40:]],
        }
    )


def write_params(tmp_path: Path, base_url: str, **extra) -> Path:
    lines = [
        "run_name: t",
        f"outputs_dir: {tmp_path / 'out'}",
        "stages: ['01']",
        "llm:",
        "  model: fake-model",
        f"  base_url: {base_url}",
        "  api_key_env: MATHSCALE_TEST_KEY",
        "  concurrency: 4",
        "extract:",
        "  seeds:",
        f"    source: {extra.get('source', 'builtin')}",
        f"    limit: {extra.get('limit', 12)}",
    ]
    if "path" in extra:
        lines.append(f"    path: {extra['path']}")
    p = tmp_path / "params.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_chain_runs_notebook_01_and_resumes_without_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", SECRET)
    with FakeOpenAI(answer=scripted_extraction) as fake:
        params = write_params(tmp_path, fake.base_url)
        manifest = run_chain(params)
        first_calls = fake.total_completed
        run_dir = tmp_path / "out" / "t"
        rows = read_jsonl(run_dir / "concepts.jsonl")
        assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
        assert first_calls == 12
        # the frequency filter ran: the per-question "unique" KP is extracted once and dropped
        assert all(not any(k.startswith("KP unique") for k in r["knowledge_points"]) for r in rows)
        assert any(r["knowledge_points"] for r in rows)
        assert manifest["status"] == "ok" and manifest["stages"]["01"]["status"] == "ok"
        assert manifest["stages"]["01"]["llm"]["session"]["requests"] == 12
        assert manifest["packages"]["papermill"] and manifest["git"]["commit"]
        assert (run_dir / "notebooks" / "01_extract_concepts.ipynb").exists()
        assert (run_dir / "top_concepts.png").stat().st_size > 1000
        # re-running the stage repeats no LLM call
        run_chain(params, only="01")
        assert fake.total_completed == first_calls
        assert read_jsonl(run_dir / "concepts.jsonl") == rows
    # the key never reaches any file the run wrote (executed notebooks, manifest, cache, usage)
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="ignore"), f


def test_malformed_reply_is_retried_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "x")

    def answer(body):
        last = body["messages"][-1]["content"]
        if "A rectangle has a length" in body["messages"][0]["content"] and not last.startswith("Your reply"):
            return "Topics: geometry"  # not JSON: triggers the corrective retry
        return scripted_extraction(body)

    with FakeOpenAI(answer=answer) as fake:
        run_chain(write_params(tmp_path, fake.base_url, limit=50))  # all built-in seeds
        assert fake.total_completed == 51
    rows = read_jsonl(tmp_path / "out" / "t" / "concepts.jsonl")
    retried = [r for r in rows if r["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["status"] == "ok"


def test_failed_stage_names_notebook_cell_and_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "x")
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"question": ""}\n{"id": 3}\n')
    params = write_params(tmp_path, "http://127.0.0.1:9/v1", source="jsonl", path=bad)
    assert main([str(params)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"stage 01 failed in .*01_extract_concepts\.ipynb \(cell \d+\)", err)
    assert "seeds.jsonl" in err
    manifest = read_json(tmp_path / "out" / "t" / "manifest.json")
    assert manifest["status"] == "failed" and manifest["stages"]["01"]["status"] == "failed"


def test_bad_params_refused_before_anything_runs(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(f"run_name: t\noutputs_dir: {tmp_path / 'out'}\nllm:\n  temprature: 0.2\n")
    assert main([str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:4" in err and "llm.temprature" in err and "unknown key" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smoke_params_run_every_stage_with_the_embedded_model(tmp_path):
    """The real thing: the chain's CLI runs all six notebooks on params/smoke.yaml with the embedded 135M model."""
    text = (ROOT / "params" / "smoke.yaml").read_text()
    params = tmp_path / "smoke.yaml"
    params.write_text(text + f"outputs_dir: {tmp_path / 'out'}\n")
    r = subprocess.run(
        [sys.executable, "-m", "mathscale_utils.runs.chain", str(params)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "out" / "smoke"
    manifest = read_json(run_dir / "manifest.json")
    assert [manifest["stages"][s]["status"] for s in ("01", "02", "03", "04", "05", "06")] == ["ok"] * 6
    assert manifest["stages"]["01"]["llm"]["total"]["requests"] >= 8
    assert len(read_jsonl(run_dir / "concepts.jsonl")) == 8
    assert (run_dir / "concept_graph.graphml").exists() and (run_dir / "views" / "topic_graph.html").exists()
    summary = read_json(run_dir / "generate_summary.json")
    assert summary["funnel"][0]["kept"] <= 3 and summary["counts"]["seed_rows"] == 8
    card = read_json(run_dir / "adapter" / "training_card.json")
    assert card["steps"] == 4 and (run_dir / "adapter" / "adapter.gguf").exists()
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["adapter"] and metrics["n_items"] == len(read_jsonl(run_dir / "predictions.jsonl")) > 0
    _assert_baseline_and_flags(run_dir, metrics, manifest)
    assert read_json(run_dir / "scaling_summary.json")["runs"]


def _assert_baseline_and_flags(run_dir: Path, metrics: dict, manifest: dict) -> None:
    """Stage 05 asked the untrained base GGUF (no adapter) the same items with the same prompt, under its own
    identity; metrics.json holds both, their paired difference and the degenerate-answer counts; stage 06's curve
    starts at the base."""
    base = metrics["baseline"]
    assert base["identity"] == "smollm2-135m-instruct@llama_cpp" and base["n_items"] == metrics["n_items"]
    assert {"paper", "strict", "degenerate", "difference"} <= set(base) and base["paper"]["micro"] is not None
    rows = {r["id"]: r for r in read_jsonl(run_dir / "predictions.jsonl")}
    base_rows = {r["id"]: r for r in read_jsonl(run_dir / "baseline_predictions.jsonl")}
    assert rows.keys() == base_rows.keys() and all(base_rows[i]["prompt"] == rows[i]["prompt"] for i in rows)
    assert (
        {r["model"] for r in base_rows.values()} == {base["identity"]} != {r["model"] for r in rows.values()}
    )
    flags = metrics["degenerate"]
    assert flags["n"] == metrics["n_items"] - metrics["n_errors"] and set(flags["datasets"]) == {
        "gsm8k",
        "MATH",
    }
    assert all(
        isinstance(r["loop"], bool) and r["finish_reason"] in ("stop", "length") for r in rows.values()
    )
    assert manifest["stages"]["05"]["llm"]["total"]["requests"] >= 2 * metrics["n_items"]  # both students
    curve = read_json(run_dir / "scaling_summary.json")["curve"]
    assert any(p["examples"] == 0 and p["run"] == "base" for p in curve)


def test_sweep_shares_the_cache_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "x")
    with FakeOpenAI(answer=scripted_extraction) as fake:
        base = write_params(tmp_path, fake.base_url, limit=6)
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(
            f"sweep_name: sw\nbase: {base}\ncommon: {{extract.min_count: 1}}\nsettings:\n"
            "  - name: a\n    set: {extract.min_count: 2}\n"
            "  - name: b\n"
        )
        assert main(["--sweep", str(sweep)]) == 0
        assert fake.total_completed == 6  # setting b extracted the same seeds from the shared cache
        runs = tmp_path / "out" / "sw" / "runs"
        a, b = (read_json(runs / f"sw-{n}" / "manifest.json") for n in "ab")
        assert a["params"]["tags"] == {"sweep": "sw", "setting": "a", "extract.min_count": 2}
        assert b["params"]["extract"]["min_count"] == 1
        assert b["stages"]["01"]["llm"]["session"]["cache_hits"] == 6
        rows_a = read_jsonl(runs / "sw-a" / "concepts.jsonl")
        rows_b = read_jsonl(runs / "sw-b" / "concepts.jsonl")
        assert sum(map(len, (r["knowledge_points"] for r in rows_b))) > sum(
            map(len, (r["knowledge_points"] for r in rows_a))
        )
        assert main(["--sweep", str(sweep)]) == 0  # both settings done: skipped
        assert fake.total_completed == 6


def test_sweep_can_reuse_another_runs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "x")
    with FakeOpenAI(answer=scripted_extraction) as fake:
        base = write_params(tmp_path, fake.base_url, limit=4)
        assert main([str(base)]) == 0 and fake.total_completed == 4
        first_cache = load_params(base).llm_cache_dir
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(f"sweep_name: sw\nbase: {base}\ncache_dir: {first_cache}\nsettings:\n  - name: a\n")
        assert main(["--sweep", str(sweep)]) == 0
        assert fake.total_completed == 4  # the sweep's extraction came from the first run's cache


def test_sweep_settings_do_not_leak_into_each_other(tmp_path):
    """A setting that overrides one key of a `common` section must leave that section intact for the next ones."""
    base = write_params(tmp_path, "http://127.0.0.1:9/v1")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"sweep_name: sw\nbase: {base}\ncommon:\n  extract.seeds: {{source: builtin, limit: 8}}\nsettings:\n"
        "  - name: half\n    set: {extract.seeds.limit: 4, extract.seeds.datasets: [custom]}\n"
        "  - name: full\n"
    )
    half, full = (load_params(p, check_files=False) for p in sweep_params(sweep))
    assert (half.extract.seeds.limit, half.extract.seeds.datasets) == (4, ["custom"])
    assert (full.extract.seeds.limit, full.extract.seeds.datasets) == (8, None)
    assert "&id" not in (tmp_path / "out" / "sw" / "params" / "half.yaml").read_text()  # no YAML aliases


def test_sweep_rejects_unknown_keys(tmp_path, capsys):
    base = write_params(tmp_path, "http://127.0.0.1:9/v1")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"sweep_name: sw\nbase: {base}\nsettings:\n  - name: a\n    set: {{extract.min_cuont: 2}}\n"
    )
    assert main(["--sweep", str(sweep)]) == 2
    assert "extract.min_cuont" in capsys.readouterr().err
