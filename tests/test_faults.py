"""Failure modes of a run, each injected for real: a run fails loudly, names its problem, and damages nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathscale_utils.core.io import FILE_MODE, Locked, locked, read_json, write_json
from mathscale_utils.core.method_config import SeedsConfig
from mathscale_utils.core.params import ROOT, ParamsError, load_params, parse_params
from mathscale_utils.data.seeds import load_seeds
from mathscale_utils.runs.chain import StageFailed, run_chain, sweep_params

from fake_openai import EXTRACTION_REPLY, FakeOpenAI


def write_params(tmp_path: Path, base_url: str, extra: str = "", seeds: int = 6) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(
        f"run_name: t\noutputs_dir: {tmp_path / 'out'}\nstages: ['01']\n"
        f"llm: {{model: fake-model, base_url: {base_url}, concurrency: 2, max_retries: 2, retry_initial_s: 0.01}}\n"
        f"extract: {{seeds: {{source: builtin, limit: {seeds}}}}}\n{extra}"
    )
    return p


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ipynb"))}


# ---- a run cannot damage the repository -------------------------------------------------------------------------


def test_dot_names_are_refused_and_the_committed_notebooks_are_never_overwritten(tmp_path):
    for text in ("run_name: ..\n", "run_name: .\n"):
        with pytest.raises(ParamsError, match="not a name"):
            parse_params(text)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"sweep_name: ..\nbase: {ROOT / 'params' / 'smoke.yaml'}\nsettings: [{{name: a}}]\n")
    with pytest.raises(ParamsError, match="not a name"):
        sweep_params(sweep, write=False)
    before = digest(ROOT / "notebooks")
    params = tmp_path / "p.yaml"  # a legal name whose run directory is the repository itself
    params.write_text(f"run_name: {ROOT.name}\noutputs_dir: {ROOT.parent}\n")
    with pytest.raises(ParamsError, match="over the committed ones"):
        run_chain(params)
    assert digest(ROOT / "notebooks") == before and not (ROOT / "manifest.json").exists()


# ---- a stage whose work failed fails, with its counts -------------------------------------------------------------


@pytest.mark.parametrize("engine", ["python", "notebook"])
def test_a_stage_whose_requests_all_fail_says_so_and_fails(tmp_path, engine):
    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY, fault=lambda p, n: "500") as fake:
        params = write_params(tmp_path, fake.base_url)
        with pytest.raises(StageFailed) as e:
            run_chain(params, engine=engine)
    msg = str(e.value)
    assert (
        "6 of 6 request(s) failed" in msg and "HTTP 500" in msg and "--only 01" in msg
    )  # why, and how to resume
    entry = read_json(tmp_path / "out" / "t" / "manifest.json")["stages"]["01"]
    assert entry["status"] == "failed" and entry["requests"] == {"ok": 0, "failed": 6, "budget_stopped": 0}
    assert len((tmp_path / "out" / "t" / "concepts.jsonl").read_text().splitlines()) == 6  # nothing lost


def test_one_failure_among_successes_fails_the_stage_unless_params_allow_it(tmp_path):
    def fault(prompt: str, n: int) -> str | None:
        return "500" if "A jacket costs $80" in prompt else None

    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY, fault=fault) as fake:
        params = write_params(tmp_path, fake.base_url, seeds=50)
        with pytest.raises(StageFailed, match=r"1 of 50 request\(s\) failed"):
            run_chain(params, engine="python")
        first = read_json(tmp_path / "out" / "t" / "manifest.json")["stages"]["01"]
        assert first["status"] == "failed" and first["tokens"] > 0 and first["tokens_per_s"] > 0
        params.write_text(
            params.read_text().replace(
                "retry_initial_s: 0.01", "retry_initial_s: 0.01, allowed_failures: 0.05"
            )
        )
        manifest = run_chain(params, engine="python")
    assert manifest["stages"]["01"]["status"] == "ok"
    assert manifest["stages"]["01"]["requests"] == {"ok": 49, "failed": 1, "budget_stopped": 0}


def test_the_budget_stopping_a_stage_fails_it(tmp_path):
    prices = "llm: {model: fake-model, base_url: URL, price_prompt_per_1m: 1000, budget_usd: 0.5, concurrency: 1}\n"
    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY) as fake:
        params = write_params(tmp_path, fake.base_url)
        text = params.read_text().splitlines()
        text[3] = prices.replace("URL", fake.base_url).strip()
        params.write_text("\n".join(text) + "\n")
        with pytest.warns(UserWarning, match="budget"), pytest.raises(StageFailed, match="llm.budget_usd"):
            run_chain(params, engine="python")
    counts = read_json(tmp_path / "out" / "t" / "manifest.json")["stages"]["01"]["requests"]
    assert counts["budget_stopped"] > 0 and counts["ok"] + counts["budget_stopped"] == 6


# ---- one chain per run directory and per cache --------------------------------------------------------------------


def test_a_second_chain_on_the_same_run_or_cache_is_refused(tmp_path):
    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY) as fake:
        params = write_params(tmp_path, fake.base_url)
        run = load_params(params).run
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from mathscale_utils.core.io import locked\n"
                "with locked(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)",
                str(run.lock),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(Locked, match=f"pid {holder.pid}"):
                run_chain(params, engine="python")
            assert fake.total_completed == 0  # refused before any call
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
        assert run_chain(params, engine="python")["status"] == "ok"  # a killed holder leaves no stale lock
        other = tmp_path / "other.yaml"  # another run sharing the first one's cache while it is locked
        other.write_text(params.read_text().replace("run_name: t", f"run_name: u\ncache_dir: {run.cache}"))
        with locked(run.cache / ".lock", "cache"):
            with pytest.raises(Locked, match="LLM cache"):
                run_chain(other, engine="python")


# ---- bad input is refused when it is read, naming file, line and key ----------------------------------------------


def test_params_refused_at_load_time_name_key_and_line(tmp_path):
    with pytest.raises(ParamsError, match=r"p.yaml:4: key 'llm.model': given twice \(first on line 3\)"):
        parse_params("run_name: x\nllm:\n  model: a\n  model: b\n", source="p.yaml")
    with pytest.raises(ParamsError, match="key 'extract.seeds'.*needs 'path'"):
        parse_params("run_name: x\nextract:\n  seeds: {source: jsonl}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"sweep_name: s\nbase: {ROOT / 'params' / 'smoke.yaml'}\nbase: x\nsettings: [{{name: a}}]\n"
    )
    with pytest.raises(ParamsError, match="sweep.yaml:3: key 'base': given twice"):
        sweep_params(sweep, write=False)


def test_a_seed_line_that_is_not_utf8_is_reported_and_skipped(tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    good = [json.dumps({"question": f"How much is {i} + {i}?"}).encode() for i in range(3)]
    seeds.write_bytes(
        good[0] + b"\n" + b'{"question": "caf\xe9 prices"}\n' + good[1] + b"\n" + good[2] + b"\n"
    )
    recs, warnings = load_seeds(SeedsConfig(source="jsonl", path=str(seeds)), None)
    assert len(recs) == 3 and warnings == [f"{seeds}:2: skipped: not valid UTF-8 (byte 0xe9 at column 18)"]
    with FakeOpenAI(
        answer=lambda body: EXTRACTION_REPLY
    ) as fake:  # the stage says it on the console and in its summary
        params = write_params(tmp_path, fake.base_url)
        params.write_text(
            params.read_text().replace("{source: builtin, limit: 6}", f"{{source: jsonl, path: {seeds}}}")
        )
        run_chain(params, engine="python")
    assert f"{seeds}:2: skipped: not valid UTF-8" in capsys.readouterr().out
    summary = read_json(tmp_path / "out" / "t" / "extract_summary.json")
    assert summary["seeds"] == 3 and any("not valid UTF-8" in w for w in summary["warnings"])


# ---- one file mode -------------------------------------------------------------------------------------------------


def test_every_file_a_run_writes_has_the_same_mode(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain.txt").write_text("x")  # what open() gives a new file under this umask
    assert FILE_MODE == (tmp_path / "plain.txt").stat().st_mode & 0o777
    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY) as fake:
        run_chain(write_params(tmp_path, fake.base_url), engine="python")
    modes = {
        p.relative_to(tmp_path): p.stat().st_mode & 0o777
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    modes[Path("a.json")] = (tmp_path / "a.json").stat().st_mode & 0o777
    assert set(modes.values()) == {FILE_MODE}, modes


def test_a_killed_chain_leaves_the_cache_usable(tmp_path):
    """kill -9 in the middle of stage 01: the answers received are kept, the re-run only asks the rest."""
    with FakeOpenAI(answer=lambda body: EXTRACTION_REPLY, latency_s=0.3) as fake:
        params = write_params(tmp_path, fake.base_url, seeds=20)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mathscale_utils.runs.chain", str(params), "--engine", "python"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cache = tmp_path / "out" / "t" / "cache" / "llm_cache.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 6):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        answered = len(cache.read_text().splitlines())
        before = fake.total_completed
        assert 6 <= answered < 20
        run_chain(params, engine="python")
        assert fake.total_completed - before <= 20 - answered + 2  # only the rest (and the 2 in flight)
