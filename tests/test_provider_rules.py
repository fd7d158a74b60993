"""Requests valid at a hosted provider: the teacher path (extraction, generation, the answer check) against loopback
servers that refuse what api.openai.com refuses, answering as it does (tests/openai_rules.py), live and through the
Batch API; the capability table; the step down after a 400 on response_format; token limits; the Batch API's queue
limit, its refused jobs and its leftovers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai_rules
import pytest

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.io import read_json
from mathscale_utils.core.llm_config import BatchConfig, LLMConfig
from mathscale_utils.core.method_config import ExtractConfig
from mathscale_utils.core.params import load_params
from mathscale_utils.inference import capabilities
from mathscale_utils.inference.batch import BatchRunner
from mathscale_utils.inference.chat import ChatRequest, estimate_prompt_tokens
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import concepts
from mathscale_utils.runs import stages

from fake_batch import FakeBatchAPI
from fake_openai import EXTRACTION_REPLY, FakeOpenAI

KEY_ENV = "MATHSCALE_TEST_KEY"
QUESTIONS = [
    "A shop sells 3 pens for 2 dollars. How much do 12 pens cost?",
    "What is the area of a circle of radius 3?",
    "Solve 2x + 5 = 17 for x.",
    "A train travels 120 km in 1.5 hours. What is its average speed?",
]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-key-0123456789")


def llm_for(base_url: str, cache: Path, model: str = "gpt-3.5-turbo", **kw) -> LLM:
    base = {"model": model, "base_url": base_url, "api_key_env": KEY_ENV, "max_retries": 2}
    base.update(retry_initial_s=0.01, concurrency=2)
    return LLM(LLMConfig(**{**base, **kw}), cache_dir=cache, stage="t", progress=False)


def records() -> list[Record]:
    return [Record(f"s{i}", "custom", "custom", q, "1") for i, q in enumerate(QUESTIONS)]


def post(url: str, body: dict, key: str = "sk-x") -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- the fake provider refuses what the provider refuses -------------------------------------------------------


def test_the_fake_provider_answers_refusals_as_openai_does():
    ok = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
    schema = {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"type": "object"}}}
    cases = [  # (body change, status, param, code)
        ({"model": "gpt-3.5-turbo-0613"}, 404, None, "model_not_found"),
        ({"response_format": schema}, 400, "response_format", None),
        ({"response_format": {"type": "json_object"}}, 400, "messages", None),  # no "json" in the messages
        ({"response_format": {"type": "json_object", "schema": {}}}, 400, "response_format", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "array_above_max_length"),
        ({"max_tokens": 5000}, 400, "max_tokens", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": "word " * 20_000}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
        ({"messages": [{"role": "bot", "content": "hi"}]}, 400, "messages[0].role", "invalid_value"),
        ({"messages": []}, 400, "messages", "empty_array"),
        ({"temperature": 3}, 400, "temperature", "decimal_above_max_value"),
        ({"schema": {}}, 400, None, None),  # an argument the API does not know
    ]
    with FakeOpenAI(provider=True) as fake:
        url = fake.base_url + "/chat/completions"
        assert post(url, ok)[0] == 200
        json_mode = {
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "JSON?"}],
        }
        assert post(url, {**ok, **json_mode})[0] == 200
        for change, status, param, code in cases:
            got, doc = post(url, {**ok, **change})
            assert (got, doc["error"]["param"], doc["error"]["code"]) == (status, param, code), change
            assert set(doc["error"]) == {"message", "type", "param", "code"} and doc["error"]["message"]
        assert post(fake.base_url + "/completions", {"model": "gpt-3.5-turbo", "prompt": "x"})[0] == 404
        assert post(url, ok, key="")[0] == 401


def test_the_capability_table_agrees_with_the_provider_rules_where_both_know_a_model():
    for name, (context, out, schema, json_mode) in openai_rules.MODELS.items():
        caps = capabilities.lookup(name)
        assert (caps.context_window, caps.max_output_tokens) == (context, out), name
        assert (caps.structured_outputs, caps.json_mode, caps.max_stop) == (schema, json_mode, 4), name
    assert capabilities.lookup("gpt-4o-mini-2024-07-18").row == "gpt-4o-mini"
    assert capabilities.lookup("gpt-4-0613").row == "gpt-4"
    assert capabilities.lookup("gpt-4.5-preview") == capabilities.DEFAULT  # no prefix match inside a version
    assert "retired" in capabilities.lookup("gpt-3.5-turbo-0613").unsupported
    assert not capabilities.DEFAULT.structured_outputs and capabilities.DEFAULT.max_stop is None


# ---- live requests ---------------------------------------------------------------------------------------------


def test_extraction_is_valid_for_gpt35_in_json_mode(tmp_path):
    """gpt-3.5-turbo has no structured outputs: stage 01's schema request goes in JSON mode, which its prompt allows
    (it says "JSON"); every reply parses."""
    with FakeOpenAI(provider=True, answer=lambda body: EXTRACTION_REPLY) as fake:
        with llm_for(fake.base_url, tmp_path) as llm:
            out = concepts.extract(records(), llm, ExtractConfig())
        assert not fake.refused and all(not e.error and e.topics for e in out)
        assert {json.dumps(b["response_format"]) for b in fake.bodies} == {'{"type": "json_object"}'}


def test_the_generation_stage_and_its_answer_check_send_valid_requests(tmp_path, monkeypatch):
    """Stage 03 on gpt-3.5-turbo at a provider that refuses invalid bodies: first requests, every kind of retry
    (corrective, shorter, solve-it) and the answer check all pass, and the stage ends with every pair kept."""
    from test_generate import make_run, scripted_generation

    monkeypatch.delenv("MATHSCALE_DATA_DIR", raising=False)
    modes = ["ok", "malformed-once", "truncated", "qonly", "ok"]
    with FakeOpenAI(provider=True, answer=scripted_generation) as fake:
        params = make_run(tmp_path, fake.base_url, modes, decontaminate=False, answer_check=True)
        params.write_text(params.read_text().replace("model: fake-model", "model: gpt-3.5-turbo"))
        summary = stages.generate(load_params(params), log=lambda s: None)
        assert not fake.refused and len(fake.bodies) >= len(modes) + 3 + 5
        assert summary["funnel"][-1]["kept"] == len(modes) and summary["requests"]["failed"] == 0


def test_a_400_on_response_format_steps_down_once_and_is_remembered(tmp_path):
    """Told (wrongly) that gpt-3.5-turbo has structured outputs, the client meets the provider's 400, asks once more
    in JSON mode, and from then on (this session and the next: provider_modes.json in the cache dir) asks so at once.
    The answer is cached under a key that says how it was asked, never under the schema request's own key."""
    wrong = {"capabilities": {"structured_outputs": True}}
    req = concepts.build_request(QUESTIONS[0], ExtractConfig())
    with FakeOpenAI(provider=True, answer=lambda body: EXTRACTION_REPLY) as fake:
        with pytest.warns(UserWarning, match="refused response_format json_schema"):
            with llm_for(fake.base_url, tmp_path, concurrency=1, **wrong) as llm:
                out = llm.chat_many([concepts.build_request(q, ExtractConfig()) for q in QUESTIONS])
        assert all(r.ok for r in out) and fake.refused == {"response_format": 1}
        assert [b["response_format"]["type"] for b in fake.bodies] == ["json_schema"] + ["json_object"] * 4
        assert out[0].attempts == 2 and out[0].key != req.key("gpt-3.5-turbo")
        assert out[0].key == req.key("gpt-3.5-turbo", {"response_format": "json_object"})
        memory = read_json(tmp_path / capabilities.MODES_FILE)
        assert [v["mode"] for v in memory.values()] == ["json_object"]
        fake.reset_counters()
        with llm_for(fake.base_url, tmp_path, **wrong) as llm:  # a re-run: every answer cached, no 400
            again = llm.chat_many([concepts.build_request(q, ExtractConfig()) for q in QUESTIONS])
        assert all(r.cached for r in again) and not fake.received
        with llm_for(fake.base_url, tmp_path, **wrong) as llm:
            llm.chat(concepts.build_request("Another question?", ExtractConfig()))
        assert not fake.refused and fake.bodies[-1]["response_format"] == {"type": "json_object"}


def test_token_limits_are_kept_within_the_model(tmp_path):
    prose = (
        "Tell me about the moon and the tides. " * 1_000
    )  # ~11K tokens by the fake's count, ~15K by estimate
    with (
        FakeOpenAI(provider=True, answer=lambda body: "fine") as fake,
        llm_for(fake.base_url, tmp_path) as llm,
    ):
        with pytest.warns(UserWarning, match="above the 4096 output tokens"):
            big = llm.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=5000))
        long = llm.chat(ChatRequest(messages=[{"role": "user", "content": prose}], max_tokens=4000))
        too_long = llm.chat(ChatRequest(messages=[{"role": "user", "content": prose * 2}]))
        stops = llm.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}], stop=list("abcde")))
        text = llm.chat(ChatRequest(prompt="### Instruction: hi"))
        assert big.ok and long.ok and not fake.refused
        assert [b["max_tokens"] for b in fake.bodies] == [
            4096,
            16_385 - estimate_prompt_tokens([{"content": prose}]),
        ]
        assert "does not fit the 16,385-token context" in too_long.error
        assert "5 stop strings" in stops.error and "chat model" in text.error
        assert len(fake.bodies) == 2  # the refused three were never sent


# ---- the Batch API -------------------------------------------------------------------------------------------------


def runner(llm: LLM, state: Path, **cfg) -> BatchRunner:
    return BatchRunner(
        llm.cache,
        llm.ledger,
        llm.cfg,
        state,
        BatchConfig(poll_s=0, **cfg),
        log=lambda s: None,
        shaper=llm.shaper,
    )


def test_batch_jobs_stay_within_the_queue_limit_and_their_lines_are_valid(tmp_path):
    reqs = [
        concepts.build_request(f"{q} (variant {i})", ExtractConfig()) for i in range(5) for q in QUESTIONS
    ]
    with FakeBatchAPI(provider=True, enqueued_limit=3_000, answer=lambda b: EXTRACTION_REPLY) as api:
        llm = llm_for(api.base_url, tmp_path / "cache")
        rep = runner(llm, tmp_path / "b", max_enqueued_tokens=3_000).run(reqs)
        assert rep["done"] and rep["cached"] == 20 and not api.refused and api.calls["chat"] == 0
        jobs = read_json(tmp_path / "b" / "state.json")["jobs"]
        assert len(jobs) >= 3 and all(j["tokens"] <= 3_000 for j in jobs)  # ~460 tokens a request
        assert 0 < api.peak_enqueued["gpt-3.5-turbo"] <= 3_000
        line = json.loads((tmp_path / "b" / jobs[0]["request_file"]).read_text().splitlines()[0])
        assert (
            line["body"]["response_format"] == {"type": "json_object"}
            and line["url"] == "/v1/chat/completions"
        )


def test_a_job_refused_for_the_queue_limit_is_sent_again_and_costs_no_round(tmp_path):
    """The organisation's queue holds less than batch.max_enqueued_tokens says (another run uses it): the provider
    fails a job with token_limit_exceeded. Beside other jobs, it is sent again once they finish; alone, it is cut in
    two. With max_rounds 1 every request is still answered: a refusal is no round."""
    reqs = [
        ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=100)
        for i in range(24)
    ]
    with FakeBatchAPI(provider=True, enqueued_limit=600) as api:  # ~110 tokens a request
        llm = llm_for(api.base_url, tmp_path / "cache")
        beside = runner(llm, tmp_path / "a", max_enqueued_tokens=1_200, max_rounds=1, max_requests_per_job=5)
        rep = beside.run(reqs[:12])
        assert rep["done"] and rep["cached"] == 12 and not rep["given_up"]
        jobs = read_json(tmp_path / "a" / "state.json")["jobs"]
        assert [len(j["refused"]) for j in jobs] == [0, 1, 0] and {j["round"] for j in jobs} == {1}
        assert beside.limit == jobs[1]["tokens"] and api.refused["token_limit_exceeded"] == 1
        alone = runner(llm, tmp_path / "b", max_enqueued_tokens=1_200, max_rounds=1)
        rep = alone.run(reqs[12:])
        assert rep["done"] and rep["cached"] == 12 and not rep["given_up"]
        jobs = read_json(tmp_path / "b" / "state.json")["jobs"]
        assert [(j["status"], j["n"]) for j in jobs] == [
            ("split", 10),
            ("completed", 2),
            ("completed", 5),
            ("completed", 5),
        ]
        assert api.refused["token_limit_exceeded"] == 2 and api.peak_enqueued["gpt-3.5-turbo"] <= 600


def test_a_batch_line_refused_for_its_response_format_is_asked_again_in_json_mode(tmp_path):
    reqs = [concepts.build_request(q, ExtractConfig()) for q in QUESTIONS]
    wrong = {"capabilities": {"structured_outputs": True}}
    with FakeBatchAPI(provider=True, answer=lambda b: EXTRACTION_REPLY) as api:
        llm = llm_for(
            api.base_url, tmp_path / "cache", backend="batch", batch={"poll_s": 0, "max_rounds": 1}, **wrong
        )
        with pytest.warns(UserWarning, match="refused response_format json_schema"):
            out = llm.chat_many(reqs)
        assert all(r.ok for r in out) and api.refused == {"response_format": 4} and api.calls["chat"] == 0
        assert api.calls["batches.create"] == 2  # the schema job (refused line by line), then JSON mode


def test_leftovers_fail_unless_live_fallback_is_set(tmp_path):
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    bad = reqs[1].key("gpt-3.5-turbo")
    with FakeBatchAPI(plan=lambda cid, body, n: "fail" if cid == bad else "ok") as api:
        batch = {"poll_s": 0, "max_rounds": 2}
        with llm_for(api.base_url, tmp_path / "a", backend="batch", batch=batch) as llm:
            out = llm.chat_many(reqs)
        assert [r.ok for r in out] == [True, False, True] and api.calls["chat"] == 0
        assert "gave up on this request after 2 submission(s): HTTP 500" in out[1].error
        assert "live_fallback" in out[1].error
        with llm_for(
            api.base_url, tmp_path / "a", backend="batch", batch={**batch, "live_fallback": True}
        ) as llm:
            llm.chat_many(reqs)
        assert api.calls["chat"] == 1  # now it went out live (this fake answers no live call)


def test_a_batch_line_refused_with_a_client_error_is_given_up_at_once(tmp_path):
    """The same body would be refused again: no second round is spent on it."""
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    reqs[2].messages[0]["role"] = "bot"
    with FakeBatchAPI(provider=True) as api:
        llm = llm_for(api.base_url, tmp_path / "cache")
        rep = runner(llm, tmp_path / "b", max_rounds=3).run(reqs)
        assert rep["cached"] == 2 and list(rep["given_up"].values()) == [
            "HTTP 400: Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', 'function', "
            "'tool', and 'developer'."
        ]
        assert api.submissions[reqs[2].key("gpt-3.5-turbo")] == 1


def test_the_fake_batch_api_fails_files_that_break_the_batch_rules(tmp_path):
    import openai

    client = openai.OpenAI(base_url="", api_key="sk-x")
    ok = {"method": "POST", "url": "/v1/chat/completions"}
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    files = {
        "duplicate_custom_id": [
            {"custom_id": "a", **ok, "body": body},
            {"custom_id": "a", **ok, "body": body},
        ],
        "invalid_url": [{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": body}],
        "invalid_method": [{"custom_id": "a", "method": "GET", "url": ok["url"], "body": body}],
        "mismatched_model": [
            {"custom_id": "a", **ok, "body": body},
            {"custom_id": "b", **ok, "body": {**body, "model": "gpt-4o-mini"}},
        ],
    }
    with FakeBatchAPI(provider=True, max_file_bytes=2_000) as api:
        client = openai.OpenAI(base_url=api.base_url, api_key="sk-x", max_retries=0)
        for code, lines in files.items():
            data = "".join(json.dumps(x) + "\n" for x in lines).encode()
            f = client.files.create(file=("in.jsonl", data), purpose="batch")
            b = client.batches.create(input_file_id=f.id, endpoint=ok["url"], completion_window="24h")
            b = client.batches.retrieve(b.id)
            assert b.status == "failed" and b.errors.data[0].code == code, code
        big = client.files.create(file=("in.jsonl", b"x" * 3_000), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="too large"):
            client.batches.create(input_file_id=big.id, endpoint=ok["url"], completion_window="24h")


def test_keys_say_how_a_request_was_sent_and_stay_as_they_were_when_sent_as_asked():
    """An answer given in a weaker mode (or with a lower max_tokens) has a key of its own; a request sent as asked
    keeps the key it always had, so the caches of earlier runs (the embedded server's, a local vLLM's) stay valid."""
    req = concepts.build_request(QUESTIONS[0], ExtractConfig())
    keys = {
        req.key("m"),
        req.key("m", {"response_format": "json_object"}),
        req.key("m", {"response_format": "text"}),
    }
    assert len(keys) == 3 and req.key("m", {}) == req.key("m")
    assert req.key("m", {"max_tokens": 100}) != req.key("m")
    embedded = capabilities.Shaper(LLMConfig(), "qwen2.5-coder-1.5b-instruct")
    assert embedded.shape(req).key == req.key("qwen2.5-coder-1.5b-instruct")
    assert embedded.shape(req).body["response_format"]["schema"]["required"] == ["topics", "knowledge_points"]
    gpt = capabilities.Shaper(
        LLMConfig(model="gpt-3.5-turbo", base_url="https://api.openai.com/v1"), "gpt-3.5-turbo"
    )
    shaped = gpt.shape(req)
    assert shaped.mode == "json_object" and shaped.key == req.key(
        "gpt-3.5-turbo", {"response_format": "json_object"}
    )
    other = concepts.build_request(QUESTIONS[1], ExtractConfig())
    assert gpt.shape(other).key != shaped.key  # another prompt, in the same mode: another key
