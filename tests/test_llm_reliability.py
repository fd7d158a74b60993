"""The client when things go wrong: a closed port, a budget spread over re-runs and stages, a session killed with
kill -9, bad `llm:` settings, and the ok / failed / budget_stopped counts every LLM stage reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_json
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.params import ParamsError, parse_params
from mathscale_utils.inference.chat import ChatRequest
from mathscale_utils.inference.ledger import BudgetExceeded
from mathscale_utils.inference.llm import LLM

from fake_openai import FakeOpenAI, fail_first

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1e6  # $1 per token: a reply of 10 + 10 tokens costs $20


def reqs(n: int, prefix: str = "p", max_tokens: int = 20) -> list[ChatRequest]:
    return [
        ChatRequest(messages=[{"role": "user", "content": f"{prefix}{i}"}], max_tokens=max_tokens)
        for i in range(n)
    ]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def priced(fake: FakeOpenAI, **kw) -> LLMConfig:
    """Every reply is 10 prompt + 10 completion tokens, $20; a request's estimate before sending is $26 (prompt
    "pN" = (2 + 16) / 3 tokens, plus max_tokens=20)."""
    fake.answer = lambda body: {"content": "ok", "usage": {"prompt_tokens": 10, "completion_tokens": 10}}
    base = {"model": "fake", "base_url": fake.base_url, "concurrency": 1, "retry_initial_s": 0.01}
    return LLMConfig(**{**base, "price_prompt_per_1m": PRICE, "price_completion_per_1m": PRICE, **kw})


# ---- a closed port ------------------------------------------------------------------------------------------


def test_refused_connection_says_cannot_connect_at_once(tmp_path):
    port = closed_port()
    cfg = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        t0 = time.perf_counter()
        out = llm.chat(reqs(1)[0])
        assert time.perf_counter() - t0 < 2
    assert out.error == f"cannot connect to 127.0.0.1:{port} (connection refused)"


def test_a_down_endpoint_stops_the_batch_quickly(tmp_path):
    """Default retries (6 attempts, backoff from 0.5 s): without the stop, 50 requests would take minutes."""
    port = closed_port()
    cfg = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", concurrency=4)
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        t0 = time.perf_counter()
        out = llm.chat_many(reqs(50))
        first = time.perf_counter() - t0
        sent = llm.usage()["requests"]
        t0 = time.perf_counter()
        again = llm.chat_many(reqs(50, "q"))  # still down: the next call stops at its first refusal
        second = time.perf_counter() - t0
        u = llm.usage()
    assert first < 5 and second < 1, (first, second)
    for r in out + again:
        assert r.error.startswith(f"cannot connect to 127.0.0.1:{port}") and "looks down" in r.error
    assert sent < 50 and u["requests"] - sent <= 2 * cfg.concurrency
    assert (u["ok"], u["failed"], u["budget_stopped"]) == (0, 100, 0)


def test_the_endpoint_is_tried_again_by_the_next_call(tmp_path):
    port = closed_port()
    cfg = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", concurrency=2, retry_initial_s=0.01)
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        assert all("looks down" in r.error for r in llm.chat_many(reqs(20)))
        fake = FakeOpenAI().start(port)  # the endpoint comes back on the same port
        try:
            out = llm.chat_many(reqs(20))
        finally:
            fake.stop()
    assert all(r.ok for r in out) and fake.total_completed == 20


def test_server_errors_do_not_stop_the_batch(fake_openai, tmp_path):
    """500s are answers, not "cannot connect": they are retried as before and never stop the batch."""
    fake_openai.fault = fail_first("500", times=3)
    cfg = LLMConfig(model="fake", base_url=fake_openai.base_url, concurrency=8, retry_initial_s=0.01)
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        assert all(r.ok for r in llm.chat_many(reqs(30)))


# ---- the budget counts earlier sessions and other stages ----------------------------------------------------


def test_budget_counts_earlier_sessions_and_other_stages(fake_openai, tmp_path):
    """$100 covers 4 requests ($20 each, $26 estimated before sending): stage a spends 2, a second stage gets 2
    more, and a re-run of stage a none. Each session alone would have sent up to 4."""
    cfg = priced(fake_openai, budget_usd=100.0)
    cache, usage = tmp_path / "cache", tmp_path / "usage"
    with LLM(cfg, cache, "a", usage_dir=usage, progress=False) as llm:
        assert all(r.ok for r in llm.chat_many(reqs(2)))
    with LLM(cfg, cache, "b", usage_dir=usage, progress=False) as llm, pytest.warns(BudgetExceeded):
        out = llm.chat_many(reqs(10, "b"))
        assert llm.usage()["run_spent_usd"] == pytest.approx(80.0)
    assert sum(r.ok for r in out) == 2 and all(r.error == "budget exceeded" for r in out[2:])
    with LLM(cfg, cache, "a", usage_dir=usage, progress=False) as llm, pytest.warns(BudgetExceeded):
        out = llm.chat_many(reqs(3, "c"))
        assert llm.chat_many(reqs(2))[0].cached  # answers already paid for are free
    assert all(r.error == "budget exceeded" for r in out)
    assert fake_openai.total_completed == 4
    a = read_json(usage / "a.json")
    assert a["total"]["sessions"] == 2 and a["total"]["cost_usd"] == pytest.approx(40.0)
    assert (a["session"]["ok"], a["session"]["budget_stopped"], a["total"]["ok"]) == (2, 3, 4)


KILL_SCRIPT = """
import sys
from pathlib import Path
from mathscale_utils.inference.llm import LLM, ChatRequest, LLMConfig
base_url, d = sys.argv[1], Path(sys.argv[2])
cfg = LLMConfig(model="fake", base_url=base_url, concurrency=4, price_prompt_per_1m=1e6,
                price_completion_per_1m=1e6)
with LLM(cfg, d / "cache", "01_extract", usage_dir=d / "usage", progress=False) as llm:
    llm.chat_many([ChatRequest(messages=[{"role": "user", "content": f"p{i}"}], max_tokens=20) for i in range(30)])
"""


def test_spend_of_a_killed_session_is_counted(fake_openai, tmp_path):
    """kill -9 after k paid answers with 4 requests hanging: the next session counts the k answers and the 4
    requests in flight (their estimates, $26 each: they may have been paid), and not much more."""
    k = 6
    cfg = priced(fake_openai)
    fake_openai.stall_after = k
    cache = tmp_path / "cache" / "llm_cache.jsonl"
    cmd = [sys.executable, "-c", KILL_SCRIPT, fake_openai.base_url, str(tmp_path)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (cache.exists() and cache.read_text().count("\n") >= k and fake_openai.in_flight == 4):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the first session never saved k answers"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    fake_openai.stall_after = None
    fake_openai.release_stalled()

    with LLM(cfg, tmp_path / "cache", "03_generate", usage_dir=tmp_path / "usage", progress=False) as other:
        spent = other.ledger.spent_usd()
    assert k * 20 + 4 * 26 <= spent <= k * 20 + 8 * 26, spent
    with LLM(cfg, tmp_path / "cache", "01_extract", usage_dir=tmp_path / "usage", progress=False) as llm:
        assert sum(r.cached for r in llm.chat_many(reqs(30))) == k  # the rest is sent (and paid) again
        u = llm.usage()
    total = u["total"]
    assert total["unclosed_usd"] > 0 and total["sessions"] == 2
    assert u["run_spent_usd"] == pytest.approx(total["cost_usd"] + total["unclosed_usd"])
    assert total["cost_usd"] + total["unclosed_usd"] >= 30 * 20 + 4 * 26  # 4 requests paid twice
    saved = read_json(tmp_path / "usage" / "01_extract.json")
    assert saved["session"]["open"] is False and saved["total"]["unclosed_usd"] == u["total"]["unclosed_usd"]


def test_usage_file_is_written_while_answers_arrive(fake_openai, tmp_path):
    """Read the usage file from another thread while chat_many runs: it already has spend, and says open."""
    cfg = priced(fake_openai, concurrency=2)
    fake_openai.latency_s = 0.05
    path = tmp_path / "usage" / "t.json"
    with LLM(cfg, tmp_path, "t", usage_dir=tmp_path / "usage", progress=False) as llm:
        run = threading.Thread(target=llm.chat_many, args=(reqs(60),))
        run.start()
        deadline = time.monotonic() + 10
        while not (path.exists() and read_json(path)["total"]["cost_usd"] > 0):
            assert time.monotonic() < deadline and run.is_alive(), "no usage written before the end"
            time.sleep(0.02)
        mid = read_json(path)
        run.join(30)
    assert mid["session"]["open"] is True and mid["session"]["reserved_usd"] > 0
    assert read_json(path)["session"]["open"] is False


# ---- ok / failed / budget_stopped ---------------------------------------------------------------------------


def test_usage_counts_ok_failed_and_budget_stopped(fake_openai, tmp_path):
    fake_openai.fault = fail_first("400", times=99, prompts={"p1"})
    cfg = priced(fake_openai, budget_usd=60.0)  # two paid answers, then the budget stops the rest
    usage = tmp_path / "usage"
    with LLM(cfg, tmp_path, "t", usage_dir=usage, progress=False) as llm, pytest.warns(BudgetExceeded):
        llm.chat_many(reqs(5))
        first = llm.usage()
    assert (first["ok"], first["failed"], first["budget_stopped"]) == (2, 1, 2)
    with LLM(cfg, tmp_path, "t", usage_dir=usage, progress=False) as llm, pytest.warns(BudgetExceeded):
        llm.chat_many(reqs(5))
        u = llm.usage()
    assert (u["ok"], u["failed"], u["budget_stopped"]) == (2, 0, 3)  # the 400 is not sent again: budget
    assert (u["total"]["ok"], u["total"]["failed"], u["total"]["budget_stopped"]) == (4, 1, 5)
    saved = read_json(usage / "t.json")
    assert saved["session"]["budget_stopped"] == 3 and saved["total"]["failed"] == 1


# ---- bad `llm:` settings are refused when the params file is read -------------------------------------------


@pytest.mark.parametrize(
    "line, key",
    [
        ("concurrency: 0", "llm.concurrency"),
        ("timeout_s: 0", "llm.timeout_s"),
        ("timeout_s: -5", "llm.timeout_s"),
        ("budget_usd: -1", "llm.budget_usd"),
        ("max_retries: 0", "llm.max_retries"),
        ("max_connect_failures: 0", "llm.max_connect_failures"),
        ("base_url: 127.0.0.1:8000/v1", "llm.base_url"),
        ("base_url: ftp://example.com/v1", "llm.base_url"),
        ("base_url: http://localhost:port/v1", "llm.base_url"),
    ],
)
def test_bad_llm_settings_are_refused_with_key_and_line(line, key):
    with pytest.raises(ParamsError) as e:
        parse_params(f"run_name: x\nllm:\n  model: m\n  {line}\n", source="p.yaml")
    assert f"p.yaml:4: key '{key}'" in str(e.value), str(e.value)
    if key == "llm.base_url":
        assert "http(s) URL" in str(e.value)


def test_good_llm_settings_pass():
    text = "run_name: x\nllm:\n  base_url: https://api.openai.com/v1\n  budget_usd: 0\n  concurrency: 1\n"
    assert parse_params(text).llm.base_url == "https://api.openai.com/v1"
    assert parse_params("run_name: x\nllm:\n  base_url: http://[::1]:8000/v1\n").llm.base_url


def test_usage_file_is_json_with_the_documented_keys(fake_openai, tmp_path):
    with LLM(priced(fake_openai), tmp_path, "t", usage_dir=tmp_path / "u", progress=False) as llm:
        llm.chat_many(reqs(2))
    doc = json.loads((tmp_path / "u" / "t.json").read_text())
    need = {"ok", "failed", "budget_stopped", "cost_usd", "batch_cost_usd", "requests", "cache_hits"}
    assert need <= doc["session"].keys() and need | {"unclosed_usd", "sessions"} <= doc["total"].keys()
    assert doc["run_spent_usd"] == pytest.approx(40.0)
