"""Stage 05 checks what a server serves before recording its answers (training/served.py), and asks the untrained
base student beside the fine-tuned one: on the student's own vLLM server, at a server you run, or on one it starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_served import BASE_ANSWER, STUDENT_ANSWER, FakeServed

from mathscale_utils.core.io import read_json
from mathscale_utils.core.params import parse_params
from mathscale_utils.evaluation.mwpbench import load_predictions
from mathscale_utils.runs import stages
from mathscale_utils.training import served
from mathscale_utils.training.serve import serving, student_id

SHIM = Path(__file__).resolve().parent / "fake_served.py"


def _params(tmp_path: Path, evaluate: str, finetune: str = "{base_model: org/base-7b}"):
    text = (
        f"run_name: r\noutputs_dir: {tmp_path}\nllm: {{model: teacher, base_url: 'http://127.0.0.1:9/v1'}}\n"
        f"finetune: {finetune}\nevaluate: {{datasets: [gsm8k], n_per_dataset: 2, max_tokens: 32, {evaluate}}}\n"
    )
    return parse_params(text)


def _lora(P, weights: bytes = b"lora weights") -> Path:
    P.run.adapter.mkdir(parents=True, exist_ok=True)
    (P.run.adapter / "adapter_config.json").write_text("{}")
    (P.run.adapter / "adapter_model.safetensors").write_bytes(weights)
    return P.run.adapter


@pytest.fixture
def in_process(monkeypatch):
    """Servers run in this (older) process here: their start time says nothing, so it is not looked at."""
    monkeypatch.setattr(served, "server_started_at", lambda url: None)


def _check(P):
    sid = student_id(P)
    with serving(P) as (cfg, _):
        return served.check_served(P, cfg, sid)


def test_a_server_serving_the_trained_adapter_is_verified(tmp_path, in_process):
    P0 = _params(tmp_path, "serve: off, model: student, base_url: 'http://x/v1'")
    adapter = _lora(P0)
    with FakeServed.vllm(["org/base-7b", "--enable-lora", "--lora-modules", f"student={adapter}"]) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        check = _check(P)
    assert check["verified"] and check["weights"] == [str(adapter)] and "student" in check["models"]


def test_a_stale_server_is_refused_before_anything_is_recorded(tmp_path, in_process):
    """A server still holding an earlier student (another copy of the adapter, other weights): stage 05 refuses it
    and writes neither predictions nor metrics, so no stale answer is cached under the new student's identity."""
    old = tmp_path / "old_adapter"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"the previous student")
    with FakeServed.vllm(["org/base-7b", "--enable-lora", "--lora-modules", f"student={old}"]) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        _lora(P, b"the new student")
        with pytest.raises(served.ServedModelError, match="weights differ"):
            stages.evaluate(P, log=lambda m: None)
        assert srv.asked == []
    assert not P.run.predictions.exists() and not P.run.metrics.exists()
    assert (
        not (P.llm_cache_dir / "llm_cache.jsonl").exists()
        or not (P.llm_cache_dir / "llm_cache.jsonl").read_text()
    )


def test_a_server_started_before_the_adapter_was_rewritten_is_refused(tmp_path):
    """Same path, same files on disk, but the server loaded them before stage 04 rewrote them in place: the start
    time of the process listening on the port (this machine) gives it away."""
    P0 = _params(tmp_path, "serve: off, model: student, base_url: 'http://x/v1'")
    adapter = _lora(P0, b"first training")
    port = _free_port()
    argv = ["org/base-7b", "--enable-lora", "--lora-modules", f"student={adapter}", "--host", "127.0.0.1"]
    proc = subprocess.Popen([sys.executable, str(SHIM), *argv, "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait(url)
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{url}'")
        assert _check(P)["verified"]  # started after the adapter was written
        time.sleep(2.5)  # start times are known to about a second
        _lora(P, b"second training")  # retrained in place; the server still holds the first
        with pytest.raises(served.ServedModelError, match="started before stage 04 wrote"):
            _check(P)
    finally:
        proc.kill()
        proc.wait(10)


def test_llama_cpp_servers_name_their_adapter(tmp_path, in_process):
    P0 = _params(tmp_path, "serve: off, model: student, base_url: 'http://x/v1'")
    _lora(P0)
    P0.run.adapter_gguf.write_bytes(b"gguf of this adapter")
    with FakeServed.llama_cpp("student", str(P0.run.adapter_gguf)) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        assert _check(P)["verified"]
    other = tmp_path / "other.gguf"
    other.write_bytes(b"gguf of another adapter")
    with FakeServed.llama_cpp("student", str(other)) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        with pytest.raises(served.ServedModelError, match="weights differ"):
            _check(P)


def test_an_unlisted_model_is_refused(tmp_path, in_process):
    with FakeServed.vllm(["org/base-7b", "--served-model-name", "base"]) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        _lora(P)
        with pytest.raises(served.ServedModelError, match=r"serves \['base'\], not 'student'"):
            _check(P)


def test_a_server_that_cannot_say_is_refused_unless_accepted(tmp_path, in_process, fake_openai):
    """A server that lists the name but not the weights behind it is refused; evaluate.accept_unverified_server
    accepts it, and metrics.json records the answers as unverified."""
    fake_openai.model = "student"
    fake_openai.answer = lambda body: "The answer is 18."
    P = _params(tmp_path, f"serve: off, model: student, base_url: '{fake_openai.base_url}', baseline: false")
    _lora(P)
    with pytest.raises(served.ServedModelError, match="accept_unverified_server"):
        stages.evaluate(P, log=lambda m: None)
    assert fake_openai.total_completed == 0
    P = _params(
        tmp_path,
        f"serve: off, model: student, base_url: '{fake_openai.base_url}', baseline: false, "
        "accept_unverified_server: true",
    )
    metrics = stages.evaluate(P, log=lambda m: None)
    assert metrics["served"]["verified"] is False and "accepted unchecked" in metrics["served"]["how"]
    assert read_json(P.run.metrics)["served"]["verified"] is False and metrics["baseline"] is None


def test_stage_05_asks_the_base_at_a_server_you_run(tmp_path, in_process):
    P0 = _params(tmp_path, "serve: off, model: student, base_url: 'http://x/v1'")
    adapter = _lora(P0)
    argv = [
        "org/base-7b",
        "--served-model-name",
        "base",
        "--enable-lora",
        "--lora-modules",
        f"student={adapter}",
    ]
    with FakeServed.vllm(argv) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}', baseline_model: base")
        metrics = stages.evaluate(P, log=lambda m: None)
        asked = list(srv.asked)
    assert asked == ["student"] * 2 + ["base"] * 2
    _assert_baseline(P, metrics, f"base@{srv.base_url}")
    # a fully fine-tuned student: vLLM serves one full model, so the base is at a URL of its own
    P.run.adapter.joinpath("adapter_config.json").unlink()
    P.run.adapter.joinpath("adapter_model.safetensors").unlink()
    P.run.adapter.joinpath("config.json").write_text("{}")
    P.run.adapter.joinpath("model.safetensors").write_bytes(b"full weights")
    P.run.training_card.write_text("{}")
    with (
        FakeServed.vllm([str(P.run.adapter), "--served-model-name", "student"]) as srv,
        FakeServed.vllm(["org/base-7b"]) as base_srv,
    ):
        P = _params(
            tmp_path,
            f"serve: off, model: student, base_url: '{srv.base_url}', baseline_base_url: '{base_srv.base_url}'",
        )
        metrics = stages.evaluate(P, log=lambda m: None)
        assert srv.asked == ["student"] * 2 and base_srv.asked == ["org/base-7b"] * 2
    assert (
        metrics["served"]["verified"]
        and metrics["baseline"]["identity"] == f"org/base-7b@{base_srv.base_url}"
    )
    # the base is missing at the URL: the stage says what to do
    with FakeServed.vllm([str(P.run.adapter), "--served-model-name", "student"]) as srv:
        P = _params(tmp_path, f"serve: off, model: student, base_url: '{srv.base_url}'")
        with pytest.raises(served.ServedModelError, match="evaluate.baseline_model"):
            served.base_on_server(
                P, P.llm.model_copy(update={"model": "student", "base_url": srv.base_url}), "off"
            )


def test_stage_05_asks_the_base_on_the_students_vllm_server(tmp_path, monkeypatch):
    """serve: vllm with a LoRA: the server lists the base as the LoRA's parent, and the baseline is asked there."""
    monkeypatch.setenv("VLLM_SHIM_ARGS", str(tmp_path / "argv.json"))
    P = _params(tmp_path, f"serve: vllm, vllm_command: ['{sys.executable}', '{SHIM}'], server_startup_s: 60")
    _lora(P)
    metrics = stages.evaluate(P, log=lambda m: None)
    assert json.loads((tmp_path / "argv.json").read_text())[0] == "org/base-7b"  # one server for both
    _assert_baseline(P, metrics, "org/base-7b@vllm")


def test_stage_05_starts_a_base_server_after_a_full_fine_tune(tmp_path, monkeypatch):
    """serve: vllm with a fully fine-tuned model: its server holds only the student, so the base gets its own."""
    monkeypatch.setenv("VLLM_SHIM_ARGS", str(tmp_path / "argv.json"))
    P = _params(tmp_path, f"serve: vllm, vllm_command: ['{sys.executable}', '{SHIM}'], server_startup_s: 60")
    P.run.adapter.mkdir(parents=True)
    (P.run.adapter / "config.json").write_text("{}")
    (P.run.adapter / "model.safetensors").write_bytes(b"full weights")
    P.run.training_card.write_text("{}")
    metrics = stages.evaluate(P, log=lambda m: None)
    assert json.loads((tmp_path / "argv.json").read_text())[0] == "org/base-7b"  # the last server: the base's
    _assert_baseline(P, metrics, "org/base-7b@vllm")


def _assert_baseline(P, metrics, identity):
    rows, base_rows = load_predictions(P.run.predictions), load_predictions(P.run.baseline_predictions)
    assert [r["completion"] for r in rows] == [STUDENT_ANSWER] * 2
    assert [r["completion"] for r in base_rows] == [BASE_ANSWER] * 2
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in base_rows]  # the same prompt
    b = metrics["baseline"]
    assert b["identity"] == identity and b["n_items"] == 2 and {r["model"] for r in base_rows} == {identity}
    assert b["paper"]["datasets"]["gsm8k"]["n"] == 2 and b["strict"]["micro"] is not None
    d = b["difference"]["paper"]["micro"]
    assert d["n"] == 2 and d["difference"] == metrics["paper"]["micro"] - b["paper"]["micro"]
    assert d["low"] <= d["difference"] <= d["high"]
    assert read_json(P.run.metrics)["baseline"]["identity"] == identity


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def test_a_cached_llama_cpp_baseline_starts_no_server(tmp_path):
    """On CPU the base is the student's GGUF without its adapter, started by the LLM client on the first request
    that is not cached: a re-run (or a sweep sharing the cache) answers the baseline without starting anything."""
    from mathscale_utils.core.artifacts import Record
    from mathscale_utils.core.templates import fill_template
    from mathscale_utils.evaluation.mwpbench import eval_request, run_eval
    from mathscale_utils.inference.llm import LLM

    P = _params(tmp_path, "serve: llama_cpp", "{base_model: smollm2-135m-instruct}")
    recs = [Record(f"g{i}", "gsm8k", "gsm8k", f"What is {i} + {i}?", str(2 * i)) for i in range(3)]
    with served.base_server(P, "llama_cpp") as cfg:
        assert (cfg.model, cfg.base_url, cfg.lora_path) == ("smollm2-135m-instruct", None, None)
        assert cfg.identity == "smollm2-135m-instruct@llama_cpp"
        with LLM.for_stage(P, "05_evaluate_baseline", cfg, progress=False) as llm:
            for r in recs:  # answers of an earlier run, in the run's cache
                key = eval_request(fill_template("alpaca", r.question), P.evaluate).key(llm.model_id)
                llm.cache.put(key, cfg.model, f"The answer is {r.answer}.", 10, 5, "stop")
            rows = run_eval(recs, llm, P.evaluate, P.run.baseline_predictions)
            assert llm._server is None  # nothing was started
    assert all(r["cached"] and r["paper_correct"] for r in rows)


def test_notebook_05_shows_base_against_fine_tuned_and_the_flags(tmp_path):
    """Notebook 05 itself, headless, against a server you run (a vLLM stand-in started after training, serving the
    LoRA and its base): the checked server, the side-by-side table and plot, the flag counts for both students."""
    import papermill as pm

    from mathscale_utils.core.params import ROOT
    from mathscale_utils.runs.chain import ensure_kernel

    P0 = _params(tmp_path, "serve: off, model: student, base_url: 'http://x/v1'")
    adapter = _lora(P0)
    port = _free_port()
    argv = [
        "org/base-7b",
        "--served-model-name",
        "base",
        "--enable-lora",
        "--lora-modules",
        f"student={adapter}",
    ]
    proc = subprocess.Popen([sys.executable, str(SHIM), *argv, "--host", "127.0.0.1", "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait(url)
        params = tmp_path / "p.yaml"
        params.write_text(
            f"run_name: r\noutputs_dir: {tmp_path}\nllm: {{model: teacher, base_url: 'http://127.0.0.1:9/v1'}}\n"
            "finetune: {base_model: org/base-7b}\n"
            f"evaluate: {{datasets: [gsm8k, MATH], n_per_dataset: 2, serve: 'off', model: student, base_url: '{url}', "
            "baseline_model: base}\n"
        )
        out = tmp_path / "05.ipynb"
        pm.execute_notebook(
            str(ROOT / "notebooks" / "05_mwpbench_eval.ipynb"),
            str(out),
            parameters={"params_file": str(params)},
            kernel_name=ensure_kernel(),
            cwd=str(ROOT),
            progress_bar=False,
        )
    finally:
        proc.kill()
        proc.wait(10)
    metrics = read_json(P0.run.metrics)
    assert metrics["served"]["verified"] and metrics["baseline"]["identity"] == f"base@{url}"
    assert metrics["baseline"]["degenerate"]["loop"] == 4 and metrics["degenerate"]["loop"] == 0
    text = out.read_text()
    assert "only fine-tuned right" in text and "repetition loop" in text and "Maybe it is 7" in text
    assert "image/png" in text  # the base-against-fine-tuned plot
