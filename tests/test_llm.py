"""mathscale_utils.inference.llm against the loopback fake server: retries, cache, order, concurrency, usage, budget, resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.inference.chat import ChatRequest, HTTPError, parse_json_reply
from mathscale_utils.inference.ledger import BudgetExceeded
from mathscale_utils.inference.llm import LLM

from fake_openai import FakeOpenAI, fail_first

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(fake: FakeOpenAI, **kw) -> LLMConfig:
    base = {
        "model": "fake",
        "base_url": fake.base_url,
        "concurrency": 4,
        "max_retries": 4,
        "retry_initial_s": 0.01,
        "timeout_s": 5.0,
    }
    return LLMConfig(**{**base, **kw})


def reqs(n: int, prefix: str = "p") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix}{i}"}]) for i in range(n)]


@pytest.mark.parametrize("kind", ["429", "500", "timeout", "drop", "malformed"])
def test_transient_faults_are_retried(fake_openai, tmp_path, kind):
    fake_openai.fault = fail_first(kind, times=2)
    fake_openai.hang_s = 3.0
    with LLM(cfg_for(fake_openai, timeout_s=0.5), tmp_path, "t", progress=False) as llm:
        out = llm.chat_many(reqs(6))
        assert [r.text for r in out] == [f"echo: p{i}" for i in range(6)]
        assert all(r.attempts == 3 and not r.cached for r in out)
        assert llm.usage()["retries"] == 12 and llm.usage()["failures"] == 0
    assert all(fake_openai.completed[f"p{i}"] == 1 for i in range(6))
    assert fake_openai.faults_sent[kind] == 12


def test_exhausted_retries_fail_that_request_only(fake_openai, tmp_path):
    fake_openai.fault = fail_first("500", times=99, prompts={"p2"})
    with LLM(cfg_for(fake_openai, max_retries=3), tmp_path, "t", progress=False) as llm:
        out = llm.chat_many(reqs(5))
        assert [r.ok for r in out] == [True, True, False, True, True]
        assert "gave up after 3 attempts" in out[2].error and "HTTP 500" in out[2].error
        assert out[2].attempts == 3 and llm.usage()["failures"] == 1
        assert fake_openai.received["p2"] == 3
        llm.chat_many(reqs(5))  # failures are not cached: only p2 is sent again
    assert fake_openai.received["p2"] == 6 and fake_openai.received["p0"] == 1


@pytest.mark.parametrize("kind", ["400", "404"])
def test_client_errors_are_not_retried(fake_openai, tmp_path, kind):
    fake_openai.fault = fail_first(kind, times=99, prompts={"p1"})
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:
        out = llm.chat_many(reqs(3))
    assert out[1].error == f"HTTP {kind}: injected {kind}" and out[1].attempts == 1
    assert out[0].ok and out[2].ok and fake_openai.received["p1"] == 1


def test_retry_after_is_honoured_and_capped(fake_openai, tmp_path):
    fake_openai.fault = fail_first("429", times=1)
    fake_openai.retry_after = "0.4"
    with LLM(cfg_for(fake_openai, retry_initial_s=0.001), tmp_path, "t", progress=False) as llm:
        t0 = time.perf_counter()
        assert llm.chat(reqs(1)[0]).ok
        assert time.perf_counter() - t0 >= 0.4
    fake_openai.retry_after = "3600"
    with LLM(
        cfg_for(fake_openai, retry_initial_s=0.001, retry_max_wait_s=0.2), tmp_path, "t", progress=False
    ) as llm:
        t0 = time.perf_counter()
        assert llm.chat(reqs(1, "q")[0]).ok
        assert time.perf_counter() - t0 < 2.0


def test_http_error_from_answer():
    """The server's message and its Retry-After in seconds (-ms first; an HTTP date is left to our backoff)."""
    body = b'{"error": {"message": "Rate limit reached", "type": "requests"}}'
    e = HTTPError.from_answer(429, body, {"retry-after": "2", "retry-after-ms": "1500"})
    assert (str(e), e.status, e.retry_after) == ("HTTP 429: Rate limit reached", 429, 1.5)
    assert (
        HTTPError.from_answer(503, b"<html>busy</html>", {"retry-after": "Wed, 21 Oct 2015"}).retry_after
        is None
    )
    assert str(HTTPError.from_answer(502, b"", {}, "Bad Gateway")) == "HTTP 502: Bad Gateway"


def test_cache_hits_make_no_calls_and_survive_restart(fake_openai, tmp_path):
    with LLM(cfg_for(fake_openai), tmp_path, "a", progress=False) as llm:
        first = llm.chat_many(reqs(20))
        again = llm.chat_many(reqs(20))
    assert fake_openai.total_completed == 20
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    with LLM(
        cfg_for(fake_openai), tmp_path, "b", progress=False
    ) as llm:  # another stage sharing the cache dir
        requests = reqs(20)
        t0 = time.perf_counter()
        for _ in range(10):
            out = llm.chat_many(requests)
        per_hit = (time.perf_counter() - t0) / 200
        single = llm.chat(requests[3])
        assert all(r.cached for r in out) and single.cached and single.text == "echo: p3"
        assert llm.usage()["cache_hits"] == 201 and llm.usage()["requests"] == 0
    assert per_hit < 1e-3
    assert sum(fake_openai.received.values()) == 20
    rows = read_jsonl(tmp_path / "llm_cache.jsonl")
    assert len(rows) == 20 and set(rows[0]) == {"key", "model", "text", "usage", "finish_reason"}


def test_cache_put_and_get(fake_openai, tmp_path):
    """Answers obtained elsewhere (a provider's batch API) go into the same cache and are found by chat_many."""
    r = reqs(1, "batch")[0]
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:
        assert llm.cache.get(r.key("fake")) is None
        llm.cache.put(r.key("fake"), llm.cfg.model, "from a batch job", 7, 3, "stop")
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:
        got = llm.chat(r)
        assert got == llm.cache.get(r.key("fake"))
    assert (got.text, got.cached, got.prompt_tokens, got.completion_tokens) == (
        "from a batch job",
        True,
        7,
        3,
    )
    assert fake_openai.total_completed == 0


def test_duplicates_in_one_batch_cost_one_call(fake_openai, tmp_path):
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:
        out = llm.chat_many(reqs(1) * 3)
    assert [r.text for r in out] == ["echo: p0"] * 3 and [r.cached for r in out] == [False, True, True]
    assert fake_openai.received["p0"] == 1


def test_results_keep_input_order(fake_openai, tmp_path):
    fake_openai.latency_s = lambda p: (hash(p) % 7) / 100  # responses arrive out of order
    with LLM(cfg_for(fake_openai, concurrency=8), tmp_path, "t", progress=False) as llm:
        out = llm.chat_many(reqs(40))
    assert [r.text for r in out] == [f"echo: p{i}" for i in range(40)]


@pytest.mark.parametrize("concurrency", [1, 5])
def test_concurrency_bound(fake_openai, tmp_path, concurrency):
    fake_openai.latency_s = 0.03
    fake_openai.fault = fail_first("429", 1, prompts={f"p{i}" for i in range(0, 30, 3)})
    with LLM(cfg_for(fake_openai, concurrency=concurrency), tmp_path, "t", progress=False) as llm:
        assert all(r.ok for r in llm.chat_many(reqs(30)))
    assert fake_openai.max_in_flight == concurrency


def test_usage_cost_and_usage_file(fake_openai, tmp_path):
    fake_openai.answer = lambda body: {
        "content": "ok",
        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
    }
    cfg = cfg_for(fake_openai, price_prompt_per_1m=2.0, price_completion_per_1m=10.0)
    with LLM(cfg, tmp_path / "cache", "03_gen", usage_dir=tmp_path / "usage", progress=False) as llm:
        llm.chat_many(reqs(5))
        llm.chat_many(reqs(6))
        u = llm.usage()
    assert (
        u["requests"] == 6
        and u["cache_hits"] == 5
        and u["prompt_tokens"] == 600
        and u["completion_tokens"] == 60
    )
    assert u["cost_usd"] == pytest.approx(6 * (100 * 2 + 10 * 10) / 1e6)
    saved = json.loads((tmp_path / "usage" / "03_gen.json").read_text())
    assert saved["session"]["requests"] == 6 and saved["total"]["sessions"] == 1
    with LLM(
        cfg, tmp_path / "cache", "03_gen", usage_dir=tmp_path / "usage", progress=False
    ) as llm:  # resumed stage
        llm.chat_many(reqs(7))
    saved = json.loads((tmp_path / "usage" / "03_gen.json").read_text())
    assert (
        saved["total"]["requests"] == 7
        and saved["total"]["sessions"] == 2
        and saved["session"]["cache_hits"] == 6
    )


def test_budget_stops_new_requests(fake_openai, tmp_path):
    fake_openai.answer = lambda body: {
        "content": "ok",
        "usage": {"prompt_tokens": 10, "completion_tokens": 10},
    }
    # each request costs $0.02 when done; the estimate before sending is larger (max_tokens=20 at $1 per token)
    cfg = cfg_for(
        fake_openai, concurrency=1, price_prompt_per_1m=1e6, price_completion_per_1m=1e6, budget_usd=100.0
    )
    requests = [
        ChatRequest(messages=[{"role": "user", "content": f"p{i}"}], max_tokens=20) for i in range(20)
    ]
    with LLM(cfg, tmp_path, "t", progress=False) as llm, pytest.warns(BudgetExceeded):
        out = llm.chat_many(requests)
        spent = llm.usage()["cost_usd"]
    done = [r for r in out if r.ok]
    assert 0 < len(done) < 20 and llm.ledger.budget_exhausted
    assert all(r.error == "budget exceeded" for r in out[len(done) :])
    assert spent <= 100.0 and fake_openai.total_completed == len(done)


def test_parse_json_reply():
    assert parse_json_reply('{"a": 1}') == {"a": 1}
    assert parse_json_reply('Sure!\n```json\n{"topics": ["x"]}\n```\nDone.') == {"topics": ["x"]}
    assert parse_json_reply('prefix {"a": "line1\nline2"} suffix {"b": 2}') == {"a": "line1\nline2"}
    assert parse_json_reply('{broken} then {"ok": true}') == {"ok": True}
    assert parse_json_reply("[1, 2]") is None
    assert (
        parse_json_reply("no json here") is None
        and parse_json_reply(None) is None
        and parse_json_reply("") is None
    )


def test_chat_many_inside_running_event_loop(fake_openai, tmp_path):
    """As in a Jupyter cell: a loop is already running in this thread."""
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:

        async def cell():
            sync_out = llm.chat_many(reqs(5))
            async_out = await llm.achat_many(reqs(5, "a"))
            return sync_out, async_out

        sync_out, async_out = asyncio.run(cell())
    assert [r.text for r in sync_out] == [f"echo: p{i}" for i in range(5)]
    assert [r.text for r in async_out] == [f"echo: a{i}" for i in range(5)]


def test_api_key_is_sent_but_never_written(fake_openai, tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("MATHSCALE_TEST_KEY", secret)
    fake_openai.fault = fail_first("401", times=99, prompts={"p1"})
    cfg = cfg_for(fake_openai, api_key_env="MATHSCALE_TEST_KEY")
    with LLM(cfg, tmp_path / "cache", "t", usage_dir=tmp_path / "usage", progress=True) as llm:
        out = llm.chat_many(reqs(3))
    assert fake_openai.headers[0]["Authorization"] == f"Bearer {secret}"
    assert out[1].error.startswith("HTTP 401") and secret not in out[1].error and "***" in out[1].error
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(), f


def test_missing_key_for_remote_endpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("MATHSCALE_TEST_KEY", raising=False)
    cfg = LLMConfig(model="m", base_url="https://api.example.invalid/v1", api_key_env="MATHSCALE_TEST_KEY")
    with (
        LLM(cfg, tmp_path, "t", progress=False) as llm,
        pytest.raises(RuntimeError, match="MATHSCALE_TEST_KEY"),
    ):
        llm.chat(reqs(1)[0])


def test_request_body_and_response_format(fake_openai, tmp_path):
    """A schema goes in OpenAI's json_schema form to a model known to take it (here: said so in llm.capabilities)
    and in llama.cpp's form to a llama.cpp server; an unknown model is asked in JSON mode, and without any
    response_format when no message says "JSON" (OpenAI refuses json_object then)."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = ChatRequest(
        messages=[{"role": "user", "content": "x"}],
        seed=7,
        stop=["\n\n"],
        response_format={"type": "json_object", "schema": schema},
    )
    structured = {"capabilities": {"structured_outputs": True}}
    with LLM(cfg_for(fake_openai, **structured), tmp_path, "t", progress=False) as llm:
        llm.chat(r)
    body = fake_openai.bodies[-1]
    assert fake_openai.headers[-1]["Content-Type"] == "application/json"
    assert body["seed"] == 7 and body["stop"] == ["\n\n"] and body["model"] == "fake"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema},
    }
    with LLM(
        cfg_for(fake_openai, response_format_style="llama_cpp"), tmp_path / "b", "t", progress=False
    ) as llm:
        llm.chat(r)
    assert fake_openai.bodies[-1]["response_format"] == {"type": "json_object", "schema": schema}
    with LLM(cfg_for(fake_openai), tmp_path / "c", "t", progress=False) as llm:
        llm.chat(r)
        assert "response_format" not in fake_openai.bodies[-1]
        llm.chat(replace(r, messages=[{"role": "user", "content": "Reply in JSON: x"}]))
        assert fake_openai.bodies[-1]["response_format"] == {"type": "json_object"}


def test_key_depends_on_everything_that_changes_the_answer():
    r = ChatRequest(messages=[{"role": "user", "content": "x"}])
    k = r.key("m")
    assert k == ChatRequest(messages=[{"content": "x", "role": "user"}]).key("m") and len(k) == 64
    others = [
        r.key("m2"),
        ChatRequest(messages=[{"role": "user", "content": "y"}]).key("m"),
        ChatRequest(messages=r.messages, temperature=0.5).key("m"),
        ChatRequest(messages=r.messages, max_tokens=10).key("m"),
        ChatRequest(messages=r.messages, seed=1).key("m"),
        ChatRequest(messages=r.messages, stop=["x"]).key("m"),
        ChatRequest(messages=r.messages, response_format={"type": "json_object"}).key("m"),
    ]
    assert len({k, *others}) == 8


def test_torn_cache_tail_is_tolerated(fake_openai, tmp_path):
    with LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm:
        llm.chat_many(reqs(3))
    with open(tmp_path / "llm_cache.jsonl", "a") as f:
        f.write('{"key": "abc", "text": "cut by a cra')
    with (
        pytest.warns(UserWarning, match="torn"),
        LLM(cfg_for(fake_openai), tmp_path, "t", progress=False) as llm,
    ):
        assert all(r.cached for r in llm.chat_many(reqs(3)))
        llm.chat_many(reqs(4))
    assert len(read_jsonl(tmp_path / "llm_cache.jsonl")) == 4
    assert fake_openai.total_completed == 4


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
from mathscale_utils.inference.llm import LLM, ChatRequest, LLMConfig
base_url, cache_dir, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
cfg = LLMConfig(model="fake", base_url=base_url, concurrency=4, retry_initial_s=0.01)
with LLM(cfg, cache_dir, "resume", progress=False) as llm:
    out = llm.chat_many([ChatRequest(messages=[{"role": "user", "content": f"p{i}"}]) for i in range(n)])
print(json.dumps({"ok": sum(r.ok for r in out), "cached": sum(r.cached for r in out)}))
"""


def test_kill_and_resume_repeats_no_completed_call(fake_openai, tmp_path):
    """kill -9 a run after k answers were saved (the server hangs every later request), resume it, count calls."""
    n, k = 30, 12
    fake_openai.stall_after = k
    cache = tmp_path / "llm_cache.jsonl"
    cmd = [sys.executable, "-c", RESUME_SCRIPT, fake_openai.base_url, str(tmp_path), str(n)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "first_run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (cache.exists() and cache.read_text().count("\n") >= k):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the first run never saved k answers"
        time.sleep(0.05)
    time.sleep(0.2)  # nothing else can complete: every request after the k-th hangs
    assert fake_openai.total_completed == k and fake_openai.in_flight > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert cache.read_text().count("\n") == k

    fake_openai.stall_after = None
    fake_openai.release_stalled()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ok": n, "cached": k}
    assert all(fake_openai.completed[f"p{i}"] == 1 for i in range(n)), fake_openai.completed
    assert fake_openai.total_completed == n
    assert len({r["key"] for r in read_jsonl(cache)}) == n == len(read_jsonl(cache))


def test_an_adapter_changes_the_cache_key(tmp_path):
    """A student with a LoRA must not be answered from the base model's cache (nor from another adapter's)."""
    from mathscale_utils.inference.cache import model_id

    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"adapter one")
    b.write_bytes(b"adapter two")
    base = LLMConfig(model="m")
    ids = {
        model_id(base),
        model_id(base.model_copy(update={"lora_path": str(a)})),
        model_id(base.model_copy(update={"lora_path": str(b)})),
    }
    assert len(ids) == 3 and model_id(base) == "m"
