"""run_eval end to end: the real LLM client against the fake OpenAI server, plus a duck-typed fake for edge cases."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.student_config import EvalConfig
from mathscale_utils.core.templates import STOP_STRINGS, fill_template
from mathscale_utils.evaluation.answer_review import disagreements, error_examples, write_fresh_gaokao_check
from mathscale_utils.evaluation.mwpbench import compute_metrics, load_predictions, rejudge, run_eval
from mathscale_utils.inference.cache import model_id
from mathscale_utils.inference.llm import LLM

from fake_openai import fail_first, prompt_of

RECORDS = [
    Record("gsm8k.0", "gsm8k", "gsm8k", "Janet has 3 apples and buys 15 more. How many?", "18"),
    Record("gsm8k.1", "gsm8k", "gsm8k", "What is 6 x 7?", "42"),
    Record("MATH.a", "MATH", "MATH.Algebra", "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "\\frac{3}{4}"),
    Record("MATH.g", "MATH", "MATH.Geometry", "A square has side 3. Area?", "9"),
    Record("college.0", "college_math", "college_math.algebra", "Simplify: $-10-4(n-5)$", "$10-4 n$"),
    Record("tal.0", "tal", "tal", "What is half of 1?", "$$0.5$$"),
    Record("fresh.1", "fresh_gaokao_math_2023", "FreshGaokaoMath2023", "Find x if 2x=2.", "1"),
]
ANSWERS = {  # question -> completion
    RECORDS[0].question: "She has 3 + 15 = 18 apples. The answer is 18.",
    RECORDS[1].question: "6 x 7 = 41. The answer is 41.",  # wrong
    RECORDS[2].question: "We get $\\boxed{\\frac{3}{4}}$.",
    RECORDS[3].question: "The area is $3^2 = \\boxed{9}$.",
    RECORDS[4].question: "The answer is $10-4n$.",
    RECORDS[5].question: "Half of one is \\boxed{\\frac{1}{2}}.",  # paper judge: wrong ("0.5" rule one-sided)
    RECORDS[6].question: "So x = 1. The answer is 1.",
}


def _answer(body: dict) -> str:
    prompt = prompt_of(body)
    for q, a in ANSWERS.items():
        if q in prompt:
            return a
    return "I do not know."


def _llm(fake, tmp_path: Path, **kw) -> LLM:
    cfg = LLMConfig(
        model="fake-model", base_url=fake.base_url, concurrency=4, max_retries=2, retry_initial_s=0.01, **kw
    )
    return LLM(
        cfg, cache_dir=tmp_path / "cache", stage="05_eval", usage_dir=tmp_path / "usage", progress=False
    )


def test_run_eval_through_the_llm_client(fake_openai, tmp_path):
    fake_openai.answer = _answer
    cfg = EvalConfig(max_tokens=64, chunk_size=3)
    out = tmp_path / "predictions.jsonl"
    with _llm(fake_openai, tmp_path) as llm:
        rows = run_eval(RECORDS, llm, cfg, out)
    assert [r["id"] for r in rows] == [r.id for r in RECORDS]
    # what was sent: one user message with the filled template, greedy, the paper's stop strings
    assert len(fake_openai.bodies) == len(RECORDS)
    for body in fake_openai.bodies:
        assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
        assert body["temperature"] == 0.0 and body["max_tokens"] == 64
        assert body["stop"] == list(STOP_STRINGS)
    sent = {b["messages"][0]["content"] for b in fake_openai.bodies}
    assert sent == {fill_template("alpaca", r.question) for r in RECORDS}
    by_id = {r["id"]: r for r in rows}
    assert by_id["gsm8k.0"]["paper_correct"] and by_id["gsm8k.0"]["extracted"] == "18"
    assert not by_id["gsm8k.1"]["paper_correct"] and not by_id["gsm8k.1"]["strict_correct"]
    assert by_id["MATH.a"]["paper_correct"] and by_id["MATH.a"]["strict_correct"]
    assert by_id["tal.0"]["strict_correct"] and not by_id["tal.0"]["paper_correct"]
    assert all(r["error"] is None and r["template"] == "alpaca" and r["model"] == "fake-model" for r in rows)
    saved = load_predictions(out)
    assert [r["id"] for r in saved] == [r["id"] for r in rows]
    m = compute_metrics(saved)
    assert m["paper"]["datasets"]["gsm8k"]["accuracy"] == 50.0
    assert m["paper"]["datasets"]["MATH"]["accuracy"] == 100.0
    assert m["paper"]["fresh_gaokao_math_2023"]["accuracy"] == 100.0
    assert m["n_items"] == 6 and m["n_errors"] == 0 and m["n_disagreements"] == 1
    assert [d["id"] for d in disagreements(saved)] == ["tal.0"]
    assert set(error_examples(saved)) == {"gsm8k", "tal"}
    page = write_fresh_gaokao_check(saved, tmp_path / "fresh.html", records=[RECORDS[-1]])
    text = page.read_text()
    assert "Find x if 2x=2." in text and "1 of 1 questions evaluated" in text


def test_failed_requests_are_scored_wrong_counted_and_retried_on_resume(fake_openai, tmp_path):
    fake_openai.answer = _answer
    bad = fill_template("alpaca", RECORDS[0].question)
    fake_openai.fault = fail_first("400", times=1, prompts={bad})  # a non-retryable error, once
    cfg = EvalConfig(max_tokens=32)
    out = tmp_path / "predictions.jsonl"
    with _llm(fake_openai, tmp_path) as llm:
        rows = run_eval(RECORDS, llm, cfg, out)
    failed = {r["id"]: r for r in rows}["gsm8k.0"]
    assert (
        failed["error"]
        and failed["completion"] == ""
        and not failed["paper_correct"]
        and not failed["strict_correct"]
    )
    m = compute_metrics(load_predictions(out))
    assert m["n_errors"] == 1 and m["paper"]["datasets"]["gsm8k"]["correct"] == 0
    # resume: only the failed item is asked again; it now succeeds and its newer row wins
    fake_openai.reset_counters()
    fake_openai.fault = None
    with _llm(fake_openai, tmp_path) as llm:
        rows = run_eval(RECORDS, llm, cfg, out)
    assert sum(fake_openai.received.values()) == 1
    assert {r["id"]: r for r in rows}["gsm8k.0"]["paper_correct"]
    assert compute_metrics(load_predictions(out))["n_errors"] == 0


def test_killed_run_resumes_without_repeating(fake_openai, tmp_path):
    fake_openai.answer = _answer
    cfg = EvalConfig(max_tokens=32, chunk_size=2)
    out = tmp_path / "predictions.jsonl"
    with _llm(fake_openai, tmp_path) as llm:
        run_eval(RECORDS[:3], llm, cfg, out)  # "killed" after three items
    with open(out, "a", encoding="utf-8") as f:  # and a torn half-written line at the end
        f.write('{"id": "MATH.g", "dataset": "MA')
    fake_openai.reset_counters()
    with _llm(fake_openai, tmp_path / "other") as llm:  # a fresh cache: any repeat would reach the server
        rows = run_eval(RECORDS, llm, cfg, out)
    assert sum(fake_openai.received.values()) == len(RECORDS) - 3
    assert [r["id"] for r in rows] == [r.id for r in RECORDS]
    lines = out.read_text().splitlines()
    assert len(lines) == len(RECORDS) and all(json.loads(x) for x in lines)


# ---------------------------------------------------------------------------------------------------------------
# a duck-typed LLM (same chat_many interface) for edge cases


@dataclass
class _Result:
    text: str | None
    error: str | None = None
    cached: bool = False


class _FakeLLM:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def chat_many(self, requests, desc=""):
        self.calls.append(len(requests))
        return [self.reply(r.messages[0]["content"]) for r in requests]


def test_duck_typed_llm_none_text_and_chunks(tmp_path):
    llm = _FakeLLM(lambda p: _Result(None) if "6 x 7" in p else _Result("The answer is 18."))
    rows = run_eval(RECORDS[:4], llm, EvalConfig(chunk_size=3), tmp_path / "p.jsonl")
    assert llm.calls == [3, 1]
    by_id = {r["id"]: r for r in rows}
    assert by_id["gsm8k.1"]["error"] == "no text in the response" and not by_id["gsm8k.1"]["paper_correct"]
    assert by_id["gsm8k.0"]["paper_correct"] and by_id["gsm8k.0"]["model"] is None


class _KeyedLLM(_FakeLLM):
    """Answers both request kinds, and records every request it was sent."""

    def __init__(self, reply, model_id="student"):
        super().__init__(reply)
        self.model_id, self.sent = model_id, []

    def chat_many(self, requests, desc=""):
        self.calls.append(len(requests))
        self.sent += requests
        return [self.reply(r.prompt if r.prompt is not None else r.messages[0]["content"]) for r in requests]


@pytest.mark.parametrize(
    "change",
    [
        {"cfg": {"max_tokens": 99}},
        {"cfg": {"stop": ["</s>"]}},
        {"cfg": {"stop": None}},
        {"cfg": {"template": "alpaca_force_ans"}},
        {"kind": "completion"},
        {"model_id": "student+lora:other"},
    ],
    ids=["max_tokens", "stop", "no_stop", "template", "request_kind", "model"],
)
def test_resume_is_keyed_by_every_setting_that_shapes_a_request(tmp_path, change):
    """A changed setting re-asks every item (its newer row wins); the same settings ask nothing again."""
    out = tmp_path / "p.jsonl"
    first = _KeyedLLM(lambda p: _Result("The answer is 1."))
    run_eval(RECORDS[:3], first, EvalConfig(), out)
    run_eval(RECORDS[:3], first, EvalConfig(), out)
    assert first.calls == [3]  # unchanged: resumed, nothing asked
    llm = _KeyedLLM(lambda p: _Result("The answer is 18."), change.get("model_id", "student"))
    cfg = EvalConfig(**change.get("cfg", {}))
    rows = run_eval(RECORDS[:3], llm, cfg, out, kind=change.get("kind", "chat"))
    assert llm.calls == [3] and all(r["completion"] == "The answer is 18." for r in rows)
    assert len({r["request_key"] for r in rows}) == 3
    assert [r["completion"] for r in load_predictions(out)] == ["The answer is 18."] * 3
    run_eval(RECORDS[:3], llm, cfg, out, kind=change.get("kind", "chat"))
    assert llm.calls == [3]  # the new settings, resumed: nothing asked again


def test_rows_made_before_request_keys_are_asked_again(tmp_path):
    """A predictions file written before rows carried request_key (or by hand) is not trusted: asked again."""
    out = tmp_path / "p.jsonl"
    llm = _KeyedLLM(lambda p: _Result("The answer is 18."))
    rows = run_eval(RECORDS[:2], llm, EvalConfig(), out)
    out.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "request_key"}) + "\n" for r in rows)
    )
    run_eval(RECORDS[:2], llm, EvalConfig(), out)
    assert llm.calls == [2, 2]


def test_a_retrained_student_is_asked_again(tmp_path):
    """Resuming skips items the same student answered; rows of another student (a retrained adapter) are stale."""
    out = tmp_path / "p.jsonl"
    first = _FakeLLM(lambda p: _Result("The answer is 1."))
    first.model_id = model_id(LLMConfig(model="student"))
    run_eval(RECORDS[:2], first, EvalConfig(), out)
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"new weights")
    second = _FakeLLM(lambda p: _Result("The answer is 18."))
    second.model_id = model_id(LLMConfig(model="student", lora_path=str(adapter)))
    rows = run_eval(RECORDS[:2], second, EvalConfig(), out)
    assert second.calls == [2] and all(r["completion"] == "The answer is 18." for r in rows)
    assert rows[0]["model"].startswith("student+lora:")
    run_eval(RECORDS[:2], second, EvalConfig(), out)
    assert second.calls == [2]  # same student again: nothing asked
    assert [r["completion"] for r in load_predictions(out)] == ["The answer is 18."] * 2


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_eval(
            [RECORDS[0], RECORDS[0]], _FakeLLM(lambda p: _Result("x")), EvalConfig(), tmp_path / "p.jsonl"
        )


def test_rejudge_recomputes_verdicts(tmp_path):
    llm = _FakeLLM(lambda p: _Result("The answer is 18."))
    rows = run_eval(RECORDS[:2], llm, EvalConfig(), tmp_path / "p.jsonl")
    again = rejudge(rows, golds={"gsm8k.1": "18"})
    assert [r["paper_correct"] for r in again] == [True, True]


def test_which_model_stage_05_asks(tmp_path):
    from mathscale_utils.core.params import parse_params
    from mathscale_utils.training.serve import _student_server, request_kind, serving, student_id

    def params(extra: str = ""):
        text = f"run_name: r\noutputs_dir: {tmp_path}\nllm: {{model: teacher, base_url: http://api.example/v1}}\n"
        return parse_params(text + extra)

    with serving(params()) as (cfg, why):
        assert cfg.model == "teacher" and "no trained student" in why
    with serving(params("evaluate: {model: student, base_url: 'http://127.0.0.1:8000/v1'}\n")) as (cfg, why):
        assert (cfg.model, cfg.base_url, cfg.lora_path) == ("student", "http://127.0.0.1:8000/v1", None)
    adapter = tmp_path / "r" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError, match="cannot serve"), serving(params()):  # a GPU adapter is never skipped
        pass
    with serving(params("evaluate: {use_adapter: false}\n")) as (cfg, _):
        assert cfg.model == "teacher"
    (adapter / "adapter.gguf").write_bytes(b"gguf")
    P = params("finetune: {base_model: smollm2-135m-instruct, prompt_format: alpaca}\n")
    assert student_id(P) == "smollm2-135m-instruct+lora:" + hashlib.sha256(b"weights").hexdigest()[:16]
    assert request_kind(P, student=True) == "completion" and request_kind(P, student=False) == "chat"
    if _model_missing():
        return
    server = _student_server(P, "llama_cpp")  # the GGUF base with adapter.gguf (not started here)
    args = server.server_args()
    assert str(adapter / "adapter.gguf") in args and "student" in args


def _model_missing() -> bool:
    from mathscale_utils.inference.weights import ModelError, ensure_model

    try:
        ensure_model("smollm2-135m-instruct")
    except ModelError:
        return True
    return False


def test_each_student_behind_one_endpoint_is_asked_afresh(tmp_path, fake_openai):
    """Evaluation through an endpoint keys its cache and prediction rows by the student (base, content hash of the
    trained weights, endpoint), not by the model name: a retrained student behind the same name is asked again."""
    from mathscale_utils.core.params import parse_params
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.training.serve import serving

    fake_openai.answer = lambda body: "The answer is 18."
    P = parse_params(
        f"run_name: r\noutputs_dir: {tmp_path}\ncache_dir: {tmp_path / 'shared-cache'}\n"
        f"evaluate: {{model: student, base_url: '{fake_openai.base_url}'}}\n"
    )
    adapter = P.run.adapter
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    models = []
    for weights in (b"student one", b"student two"):
        (adapter / "adapter_model.safetensors").write_bytes(weights)
        before = fake_openai.total_completed
        with serving(P) as (cfg, _), LLM.for_stage(P, "05_evaluate", cfg, progress=False) as llm:
            rows = run_eval(RECORDS[:3], llm, EvalConfig(), P.run.predictions)
        assert fake_openai.total_completed - before == 3  # asked, not answered from the first student's cache
        models.append({r["model"] for r in rows})
    assert len(models[0]) == len(models[1]) == 1 and models[0] != models[1]
    assert all(fake_openai.base_url in m and "student" in m for ms in models for m in ms)


def test_a_base_model_student_gets_the_bare_alpaca_prompt_as_a_text_completion(tmp_path, fake_openai):
    from mathscale_utils.core.llm_config import LLMConfig
    from mathscale_utils.inference.llm import LLM

    fake_openai.answer = lambda body: " The answer is 18."
    cfg = LLMConfig(model="student", base_url=fake_openai.base_url, identity="base+lora:1")
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        rows = run_eval(RECORDS[:1], llm, EvalConfig(), tmp_path / "p.jsonl", kind="completion")
    body = fake_openai.bodies[-1]
    assert "messages" not in body and body["prompt"] == fill_template("alpaca", RECORDS[0].question)
    assert rows[0]["completion"] == " The answer is 18." and rows[0]["model"] == "base+lora:1"


def test_stage_05_starts_and_stops_a_vllm_server_for_the_student(tmp_path, monkeypatch):
    """evaluate.serve: vllm runs `vllm serve BASE --enable-lora --lora-modules student=ADAPTER` on loopback for the
    stage (a stand-in executable here: no GPU), asks it, and stops it after."""
    import socket
    import sys

    from mathscale_utils.core.params import parse_params
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.training.serve import request_kind, serving

    shim = Path(__file__).resolve().parent / "vllm_shim.py"
    monkeypatch.setenv("VLLM_SHIM_ARGS", str(tmp_path / "argv.json"))
    P = parse_params(
        f"run_name: r\noutputs_dir: {tmp_path}\nfinetune: {{base_model: org/base-7b, prompt_format: alpaca}}\n"
        f"evaluate: {{serve: vllm, vllm_command: ['{sys.executable}', '{shim}'], server_startup_s: 60}}\n"
    )
    P.run.adapter.mkdir(parents=True)
    (P.run.adapter / "adapter_config.json").write_text("{}")
    (P.run.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with serving(P) as (cfg, why), LLM.for_stage(P, "05_evaluate", cfg, progress=False) as llm:
        port = int(cfg.base_url.rsplit(":", 1)[1].split("/")[0])
        rows = run_eval(RECORDS[:2], llm, EvalConfig(), P.run.predictions, kind=request_kind(P, True))
    assert "vllm" in why and [r["completion"] for r in rows] == [" The answer is 18."] * 2
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "org/base-7b" and f"student={P.run.adapter}" in argv and "--enable-lora" in argv
    assert rows[0]["model"].startswith("org/base-7b+lora:") and rows[0]["model"].endswith("@vllm")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # stopped after the stage


def test_a_killed_chain_takes_its_vllm_server_with_it(tmp_path):
    """The student's server runs behind the same watchdog as llama.cpp's: kill -9 the process that started it and
    the server's port closes (no orphaned vLLM holding a GPU)."""
    import socket
    import subprocess
    import sys
    import time

    shim = Path(__file__).resolve().parent / "vllm_shim.py"
    code = (
        "from mathscale_utils.training.serve import CommandServer; import time\n"
        f"s = CommandServer([{sys.executable!r}, {str(shim)!r}], {str(tmp_path / 'log')!r}, 60).start()\n"
        "print(s.port, flush=True); time.sleep(300)\n"
    )
    env = {**os.environ, "VLLM_SHIM_ARGS": str(tmp_path / "argv.json")}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(parent.stdout.readline())
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # serving
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.2)
            except OSError:
                break
        else:
            pytest.fail(f"the server on port {port} outlived the process that started it")
    finally:
        parent.kill()


def _vllm_params(tmp_path, monkeypatch, finetune: str):
    """Params whose stage 05 starts the vLLM stand-in (tests/vllm_shim.py records its argv) for the student."""
    import sys

    from mathscale_utils.core.params import parse_params

    shim = Path(__file__).resolve().parent / "vllm_shim.py"
    monkeypatch.setenv("VLLM_SHIM_ARGS", str(tmp_path / "argv.json"))
    return parse_params(
        f"run_name: r\noutputs_dir: {tmp_path}\nfinetune: {{{finetune}}}\n"
        f"evaluate: {{serve: vllm, vllm_command: ['{sys.executable}', '{shim}'], server_startup_s: 60}}\n"
    )


def _served_argv(P, tmp_path) -> tuple[list[str], str, list[dict]]:
    """Start the student server as stage 05 does, ask it two questions; (its argv, the why line, the rows)."""
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.training.serve import request_kind, serving

    with serving(P) as (cfg, why), LLM.for_stage(P, "05_evaluate", cfg, progress=False) as llm:
        rows = run_eval(RECORDS[:2], llm, EvalConfig(), P.run.predictions, kind=request_kind(P, True))
    return json.loads((tmp_path / "argv.json").read_text()), why, rows


def test_a_qlora_adapter_is_served_on_the_4bit_base_it_was_trained_on(tmp_path, monkeypatch):
    """QLoRA trained the adapter on an NF4 base with bf16 compute: vLLM quantizes the base the same way as it loads
    it (--quantization bitsandbytes) and computes in bfloat16, the adapter unmerged on top."""
    P = _vllm_params(
        tmp_path, monkeypatch, "base_model: org/base-7b, prompt_format: alpaca, method: qlora, bf16: true"
    )
    P.run.adapter.mkdir(parents=True)
    (P.run.adapter / "adapter_config.json").write_text("{}")
    (P.run.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    argv, why, rows = _served_argv(P, tmp_path)
    assert argv[0] == "org/base-7b" and argv[argv.index("--quantization") + 1] == "bitsandbytes"
    assert argv[argv.index("--dtype") + 1] == "bfloat16" and f"student={P.run.adapter}" in argv
    assert "4-bit NF4" in why and [r["completion"] for r in rows] == [" The answer is 18."] * 2


def test_the_training_card_says_how_the_student_is_served(tmp_path, monkeypatch):
    """Stage 05 serves the student as stage 04's card recorded it, even when the finetune section changed since; a
    LoRA trained in fp32 is served in float32, with no quantization."""
    from mathscale_utils.core.io import write_json
    from mathscale_utils.core.student_config import FinetuneConfig
    from mathscale_utils.training.serve import serving_plan, vllm_args

    P = _vllm_params(tmp_path, monkeypatch, "base_model: org/base-7b, method: qlora, bf16: true")
    P.run.adapter.mkdir(parents=True)
    (P.run.adapter / "adapter_config.json").write_text("{}")
    (P.run.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    args = vllm_args(P)
    assert args[args.index("--quantization") + 1] == "bitsandbytes"
    lora = serving_plan(FinetuneConfig(base_model="org/base-7b", method="lora"))
    write_json(P.run.training_card, {"serving": lora})
    args = vllm_args(P)
    assert "--quantization" not in args and args[args.index("--dtype") + 1] == "float32"


def test_llama_cpp_never_serves_a_qlora_adapter_on_the_gguf_base(tmp_path):
    from mathscale_utils.core.params import parse_params
    from mathscale_utils.training.serve import serving

    P = parse_params(
        f"run_name: r\noutputs_dir: {tmp_path}\nfinetune: {{base_model: smollm2-135m-instruct, method: qlora}}\n"
        "evaluate: {serve: llama_cpp}\n"
    )
    P.run.adapter.mkdir(parents=True)
    (P.run.adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (P.run.adapter / "adapter.gguf").write_bytes(b"gguf")
    with pytest.raises(ValueError, match="4-bit NF4.*evaluate.serve: vllm"), serving(P):
        pass
    auto = P.model_copy(update={"evaluate": P.evaluate.model_copy(update={"serve": "auto"})})
    with (
        pytest.raises(ValueError, match="cannot serve"),
        serving(auto),
    ):  # auto does not pick llama.cpp either
        pass


def test_a_full_finetune_is_served_in_its_training_dtype_and_known_by_its_weights(tmp_path, monkeypatch):
    """A full fine-tune trained with bf16 compute is served in bfloat16 (vLLM's "auto" would pick fp16 for its fp32
    weights), and its identity is a content hash of the saved model files: new weights are a new student, a
    rewritten training card is not."""
    from mathscale_utils.training.serve import student_id

    P = _vllm_params(
        tmp_path, monkeypatch, "base_model: org/base-7b, prompt_format: alpaca, method: full, bf16: true"
    )
    model = P.run.adapter
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    assert student_id(P) is None  # no weights saved: no student
    (model / "model.safetensors").write_bytes(b"full weights")
    (model / "training_card.json").write_text('{"steps": 6}')
    first = student_id(P)
    (model / "training_card.json").write_text('{"steps": 6, "requests": {"ok": 2}}')
    (model / "training_card.md").write_text("# another card")
    assert student_id(P) == first and first.startswith("org/base-7b+full:")
    (model / "model.safetensors").write_bytes(b"other weights")
    assert student_id(P) != first
    (model / "model.safetensors").write_bytes(b"full weights")
    (model / "config.json").write_text('{"model_type": "mistral"}')
    assert student_id(P) != first  # the config is part of the saved model
    argv, why, rows = _served_argv(P, tmp_path)
    assert argv[:3] == [str(model), "--served-model-name", "student"]
    assert argv[argv.index("--dtype") + 1] == "bfloat16" and "--enable-lora" not in argv
    assert rows[0]["model"].startswith("org/base-7b+full:") and "bfloat16" in why
