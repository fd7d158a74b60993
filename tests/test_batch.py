"""The Batch API path against a fake /v1/files + /v1/batches server on loopback: upload, create, status transitions,
output and error files, resubmission of only the failed/expired requests, state that survives a restart, and the
generation stage running on it with no live call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_json
from mathscale_utils.core.llm_config import BatchConfig, LLMConfig
from mathscale_utils.core.params import load_params
from mathscale_utils.inference.batch import BatchBudgetError, BatchRunner
from mathscale_utils.inference.chat import ChatRequest, request_body
from mathscale_utils.inference.llm import LLM
from mathscale_utils.runs import stages

from fake_batch import FakeBatchAPI


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "sk-test-key-0123456789")
    monkeypatch.delenv("MATHSCALE_DATA_DIR", raising=False)


def make_llm(tmp_path: Path, base_url: str, **kw) -> LLM:
    cfg = LLMConfig(
        model="fake-model", base_url=base_url, api_key_env="MATHSCALE_TEST_KEY", max_retries=2, **kw
    )
    return LLM(cfg, cache_dir=tmp_path / "cache", stage="t", progress=False)


def runner_for(llm: LLM, state_dir: Path, cfg: BatchConfig | None = None, **kw) -> BatchRunner:
    """The BatchRunner an LLM with backend "batch" makes: its cache, its ledger, its config."""
    return BatchRunner(llm.cache, llm.ledger, llm.cfg, state_dir, cfg, **kw)


def requests(n: int = 10) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[{"role": "user", "content": f"question {i}"}], temperature=0.7, max_tokens=64, seed=0
        )
        for i in range(n)
    ]


def test_collects_outputs_and_resubmits_only_failed_and_expired(tmp_path):
    reqs = requests()
    keys = [r.key("fake-model") for r in reqs]
    fail, expire = {keys[1], keys[4]}, {keys[7], keys[8]}

    def plan(cid, body, n):
        if n == 1 and cid in fail:
            return "fail"
        if n == 1 and cid in expire:
            return "expire"
        return "ok"

    with FakeBatchAPI(plan) as api:
        llm = make_llm(tmp_path, api.base_url)
        runner = runner_for(llm, tmp_path / "batches", BatchConfig(poll_s=0), log=lambda s: None)
        rep = runner.run(reqs)
        assert rep["done"] and rep["cached"] == 10 and not rep["given_up"] and rep["pending"] == 0
        assert api.calls["batches.create"] == 2 and api.calls["files.create"] == 2
        assert all(api.submissions[k] == (2 if k in fail | expire else 1) for k in keys)
        state = read_json(tmp_path / "batches" / "state.json")
        assert [(j["status"], j["n"], j["succeeded"], j["failed"], j["round"]) for j in state["jobs"]] == [
            ("expired", 10, 6, 4, 1),
            ("completed", 4, 4, 0, 2),
        ]
        assert (
            state["failures"][keys[1]]["error"].startswith("HTTP 500")
            and "batch_expired" in state["failures"][keys[7]]["error"]
        )
        assert state["usage"]["prompt_tokens"] == 100 and state["usage"]["completion_tokens"] == 50
        # the normal chat path now finds every reply in the cache (also from a fresh client): no live call
        for client in (llm, make_llm(tmp_path, api.base_url)):
            res = client.chat_many(reqs)
            assert all(r.cached and r.text == f"reply to question {i}" for i, r in enumerate(res))
        assert api.calls["chat"] == 0
        # running again submits nothing
        assert (
            runner_for(llm, tmp_path / "batches", BatchConfig(poll_s=0), log=lambda s: None).run(reqs)[
                "cached_before"
            ]
            == 10
        )
        assert api.calls["batches.create"] == 2


def test_restarted_collector_resumes_the_same_jobs(tmp_path):
    reqs = requests(6)
    with FakeBatchAPI() as api:
        api.hold = True
        cfg = BatchConfig(poll_s=0.01, max_wait_s=0.05)
        rep = runner_for(make_llm(tmp_path, api.base_url), tmp_path / "batches", cfg, log=lambda s: None).run(
            reqs
        )
        assert not rep["done"] and rep["pending"] == 6 and rep["cached"] == 0
        ids = [j["batch_id"] for j in read_json(tmp_path / "batches" / "state.json")["jobs"]]
        assert ids == ["batch_001"]
        # a new process: fresh LLM object, fresh runner, same state folder
        api.hold = False
        rep = runner_for(
            make_llm(tmp_path, api.base_url), tmp_path / "batches", BatchConfig(poll_s=0), log=lambda s: None
        ).run(reqs)
        assert rep["done"] and rep["cached"] == 6
        assert [j["batch_id"] for j in read_json(tmp_path / "batches" / "state.json")["jobs"]] == ids
        assert api.calls["batches.create"] == 1 and set(api.submissions.values()) == {1}


def test_unsaved_batch_id_is_found_again_not_recreated(tmp_path):
    reqs = requests(3)
    with FakeBatchAPI() as api:
        api.hold = True
        runner_for(
            make_llm(tmp_path, api.base_url),
            tmp_path / "batches",
            BatchConfig(poll_s=0, max_wait_s=0),
            log=lambda s: None,
        ).run(reqs)
        state_path = tmp_path / "batches" / "state.json"
        state = read_json(state_path)
        state["jobs"][0]["batch_id"] = None  # the process died between batches.create and saving its answer
        state_path.write_text(json.dumps(state))
        api.hold = False
        rep = runner_for(
            make_llm(tmp_path, api.base_url), tmp_path / "batches", BatchConfig(poll_s=0), log=lambda s: None
        ).run(reqs)
        assert rep["done"] and rep["cached"] == 3
        assert (
            api.calls["batches.create"] == 1
            and api.calls["batches.list"] == 1
            and api.calls["files.create"] == 1
        )


def test_gives_up_after_max_rounds_and_survives_a_failed_batch(tmp_path):
    reqs = requests(4)
    bad = reqs[2].key("fake-model")
    with FakeBatchAPI(plan=lambda cid, body, n: "fail" if cid == bad else "ok", fail_first_batch=True) as api:
        rep = runner_for(
            make_llm(tmp_path, api.base_url),
            tmp_path / "batches",
            BatchConfig(poll_s=0, max_rounds=3),
            log=lambda s: None,
        ).run(reqs)
        assert rep["done"] and rep["cached"] == 3 and list(rep["given_up"]) == [bad]
        assert "HTTP 500" in rep["given_up"][bad]
        state = read_json(tmp_path / "batches" / "state.json")
        assert state["jobs"][0]["status"] == "failed" and state["jobs"][0]["failed"] == 4
        assert api.submissions[bad] == 3 and all(v == 2 for k, v in api.submissions.items() if k != bad)
        assert make_llm(tmp_path, api.base_url).cache.get(bad) is None


def test_budget_is_checked_before_anything_is_uploaded(tmp_path):
    with FakeBatchAPI() as api:
        llm = make_llm(
            tmp_path,
            api.base_url,
            price_prompt_per_1m=1000.0,
            price_completion_per_1m=1000.0,
            budget_usd=0.01,
        )
        with pytest.raises(BatchBudgetError, match="budget"):
            runner_for(llm, tmp_path / "batches", BatchConfig(poll_s=0), log=lambda s: None).run(requests(5))
        assert api.calls["files.create"] == 0


def test_jobs_not_collected_yet_count_against_the_budget(tmp_path):
    """All jobs in flight may cost their estimate: a job that fits the spend so far but not with the estimates of the
    jobs still running waits, not uploaded, until they are collected (their replies cost less than estimated); one
    that cannot fit with nothing in flight is refused before anything is uploaded, saying what it would cost."""
    with FakeBatchAPI() as api:
        api.hold = True  # the first job stays running
        probe = runner_for(
            make_llm(
                tmp_path / "p", api.base_url, price_prompt_per_1m=1000.0, price_completion_per_1m=1000.0
            ),
            tmp_path / "probe",
            log=lambda s: None,
        )
        one = probe._estimate_usd([{"body": request_body(r, "m")} for r in requests(5)])
        llm = make_llm(
            tmp_path,
            api.base_url,
            price_prompt_per_1m=1000.0,
            price_completion_per_1m=1000.0,
            budget_usd=1.5 * one,
        )
        runner = runner_for(
            llm, tmp_path / "batches", BatchConfig(poll_s=0, max_wait_s=0), log=lambda s: None
        )
        assert runner.submit(requests(5)) == 5 and api.calls["files.create"] == 1
        others = requests(10)[5:]
        assert runner.submit(others) == 5 and api.calls["files.create"] == 1  # queued behind the first job
        assert [j["status"] for j in read_json(tmp_path / "batches" / "state.json")["jobs"]] == [
            "validating",
            "queued",
        ]
        assert runner.pending() == {r.key("fake-model") for r in requests(10)}
        api.hold = False
        runner.cfg = BatchConfig(poll_s=0)
        runner.wait()  # the first job is collected (it cost less than its estimate), then the second goes out
        assert api.calls["files.create"] == 2 and all(
            llm.cache.get(r.key("fake-model")) for r in requests(10)
        )
        # with nothing in flight, a job the budget cannot hold is refused and nothing is uploaded
        with pytest.raises(
            BatchBudgetError, match=r"may cost up to \$[0-9.]+.*not collected yet.*queued job"
        ):
            runner.submit(requests(20)[10:])
        assert api.calls["files.create"] == 2


def test_request_lines_match_the_live_body(tmp_path):
    r = ChatRequest(
        messages=[{"role": "user", "content": "x"}],
        max_tokens=9,
        seed=3,
        response_format={"type": "json_object", "schema": {"type": "object"}},
    )
    body = request_body(r, "m")
    assert body["seed"] == 3 and body["model"] == "m" and body["response_format"]["type"] == "json_schema"
    with pytest.raises(ValueError, match="base_url"):
        _ = runner_for(
            make_llm(tmp_path, None), tmp_path / "b", log=lambda s: None
        ).client  # the embedded server has no Batch API


def test_generation_stage_on_the_batch_backend(tmp_path):
    from test_generate import make_run, scripted_generation

    modes = ["ok", "malformed-once", "ok", "truncated", "boxed", "ok"]
    with FakeBatchAPI(answer=scripted_generation) as api:
        params = make_run(
            tmp_path,
            api.base_url,
            modes,
            decontaminate=False,
            llm={"backend": "batch", "batch": {"poll_s": 0}},
        )
        summary = stages.generate(load_params(params), log=lambda s: None)
        assert api.calls["chat"] == 0  # every reply came through the Batch API
        assert api.calls["batches.create"] == 2  # the first requests, then the two retries
        assert sum(api.submissions.values()) == 6 + 2
        assert summary["funnel"][2] == {"step": "parsed (one retry)", "kept": 6, "removed": 0}
        assert summary["usage"]["session"]["requests"] == 0 and summary["usage"]["session"]["cache_hits"] == 8
        assert summary["batch"]["usage"]["prompt_tokens"] == 80


def test_generation_waits_for_running_jobs_without_live_calls(tmp_path):
    from test_generate import make_run, scripted_generation

    with FakeBatchAPI(answer=scripted_generation) as api:
        api.hold = True
        params = make_run(
            tmp_path,
            api.base_url,
            ["ok"] * 5,
            decontaminate=False,
            llm={"backend": "batch", "batch": {"poll_s": 0, "max_wait_s": 0}},
        )
        with pytest.raises(stages.StageError, match="still running"):  # the stage is not done: it says so
            stages.generate(load_params(params), log=lambda s: None)
        s1 = read_json(load_params(params).run.generate_summary)  # and what it has is written
        assert api.calls["chat"] == 0 and api.calls["batches.create"] == 1
        assert s1["funnel"][1] == {"step": "reached (run stopped early)", "kept": 0, "removed": 5}
        assert s1["batch_pending"] == 5
        api.hold = False
        with pytest.raises(stages.StageError, match="still running"):  # one poll: still running
            stages.generate(load_params(params), log=lambda s: None)
        s2 = read_json(load_params(params).run.generate_summary)
        assert s2["funnel"][1]["step"].startswith("reached") and api.calls["chat"] == 0
        params.write_text(params.read_text().replace('"max_wait_s": 0', '"max_wait_s": null'))
        s2 = stages.generate(load_params(params), log=lambda s: None)
        assert api.calls["chat"] == 0 and api.calls["batches.create"] == 1  # the same job, collected
        assert s2["funnel"][-1]["kept"] == 5 and set(api.submissions.values()) == {1}
