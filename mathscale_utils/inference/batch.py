"""The provider Batch API path (OpenAI-compatible /v1/files + /v1/batches): half price, a 24 h window, no live calls.

    llm:                               # a params file: every stage's teacher calls go through the Batch API
      backend: batch
      batch: {poll_s: 300}
    with LLM.for_stage(P, "03_generate") as llm:
        llm.prefetch(requests)         # submit, poll, collect, resubmit failures; blocks until done or max_wait_s
        results = llm.chat_many(requests)  # every collected reply is now a cache hit: no live call

``LLM`` makes the ``BatchRunner`` below when its backend is "batch", handing it the two things it needs: the reply
cache (collected replies go there) and the spend ledger (the run's budget counts the jobs); stages never touch it.

How it works
    1. Requests already in the LLM cache are skipped. The rest are written as JSON Lines request files
       (``{"custom_id": <ChatRequest key>, "method": "POST", "url": "/v1/chat/completions", "body": {...}}``),
       at most ``max_requests_per_job`` lines / ``max_bytes_per_job`` bytes each, uploaded with purpose "batch",
       and submitted with ``batches.create``.
    2. ``batches.retrieve`` is polled every ``poll_s`` seconds. When a job reaches a terminal status (completed,
       expired, failed, cancelled) its output file (successes) and error file (failed or expired requests) are
       downloaded; every successful reply goes into the LLM cache under its custom_id (= the cache key).
    3. Requests that failed or expired are resubmitted in a new job, at most ``max_rounds`` submissions per request
       in all; the others are never sent again.

State (``<state_dir>/state.json``, rewritten atomically after every change) holds each job's request file, input
file id, batch id, status and counts, per-request failure counts and the token usage. A collector that is stopped
(``max_wait_s``, a killed kernel) and started again polls the same batch ids; a job that was uploaded but whose
batch id was never saved is matched to its batch by input_file_id before anything is created again.

The API key comes from the environment variable named in ``llm.api_key_env``, never from a file.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mathscale_utils.core.io import read_json, write_json, write_jsonl
from mathscale_utils.core.llm_config import BatchConfig, LLMConfig
from mathscale_utils.inference.cache import ReplyCache, model_id
from mathscale_utils.inference.chat import LOCAL_API_KEY, ChatRequest, request_body
from mathscale_utils.inference.ledger import SpendLedger

TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchBudgetError(RuntimeError):
    """The estimated cost of a submission, added to what the run spent (SpendLedger.spent_usd), would pass llm.budget_usd."""


def _describe_error(line: dict) -> str:
    err = line.get("error")
    if isinstance(err, dict):
        return f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip()
    resp = line.get("response") or {}
    body = resp.get("body") or {}
    e = body.get("error") if isinstance(body, dict) else None
    msg = e.get("message") if isinstance(e, dict) else None
    return f"HTTP {resp.get('status_code')}: {msg or 'no message'}"


class BatchRunner:
    """Submit, poll, collect and resubmit Batch API jobs for a list of ChatRequests; state in state_dir. Replies go
    into `cache` under their request keys (made with model_id, default that of llm_cfg); `ledger` counts their
    price against llm_cfg.budget_usd."""

    def __init__(
        self,
        cache: ReplyCache,
        ledger: SpendLedger,
        llm_cfg: LLMConfig,
        state_dir: str | Path,
        cfg: BatchConfig | None = None,
        answering: str | None = None,
        stage: str = "batch",
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = print,
    ):
        self.cache, self.ledger, self.llm_cfg = cache, ledger, llm_cfg
        self.model_id = answering or model_id(llm_cfg)
        self.cfg, self.stage, self.sleep, self.log = cfg or BatchConfig(), stage, sleep, log
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.state = self._load()
        self._client: Any = None
        self._keys_cache: dict[str, list[str]] = {}

    # ---- state -----------------------------------------------------------------------------------------------
    def _load(self) -> dict:
        if self.state_path.exists():
            st = read_json(self.state_path)
            if st.get("model") != self.llm_cfg.model:
                warnings.warn(
                    f"{self.state_path}: jobs were made for model {st.get('model')!r}, not {self.llm_cfg.model!r}",
                    stacklevel=3,
                )
            return st
        return {
            "version": 1,
            "model": self.llm_cfg.model,
            "jobs": [],
            "failures": {},
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
        }

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    @property
    def jobs(self) -> list[dict]:
        return self.state["jobs"]

    def _active(self) -> list[dict]:
        return [j for j in self.jobs if not j.get("collected")]

    def _job_keys(self, job: dict) -> list[str]:
        if job["id"] not in self._keys_cache:
            with open(self.dir / job["request_file"], encoding="utf-8") as f:
                self._keys_cache[job["id"]] = [json.loads(line)["custom_id"] for line in f if line.strip()]
        return self._keys_cache[job["id"]]

    def _failures(self, key: str) -> int:
        return self.state["failures"].get(key, {}).get("n", 0)

    # ---- client ----------------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            cfg = self.llm_cfg
            if cfg.base_url is None:
                raise ValueError(
                    "the Batch API backend needs llm.base_url (an OpenAI-compatible provider), not the embedded server"
                )
            key = os.environ.get(cfg.api_key_env)
            if not key:
                if urlparse(cfg.base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
                    raise RuntimeError(
                        f"set the {cfg.api_key_env} environment variable to use {cfg.base_url}"
                    )
                key = LOCAL_API_KEY
            self._client = openai.OpenAI(
                base_url=cfg.base_url,
                api_key=key,
                max_retries=max(0, cfg.max_retries - 1),
                timeout=cfg.timeout_s,
            )
        return self._client

    # ---- public ----------------------------------------------------------------------------------------------
    def run(self, requests: Sequence[ChatRequest], desc: str = "") -> dict:
        """submit + wait: until every request is cached, has failed max_rounds times, or max_wait_s has passed."""
        wanted: dict[str, ChatRequest] = {}
        for r in requests:
            wanted.setdefault(r.key(self.model_id), r)
        cached_before = sum(self.cache.get(k) is not None for k in wanted)
        self.submit(list(wanted.values()), desc)
        self.wait()
        return self.report(wanted, cached_before)

    def submit(self, requests: Sequence[ChatRequest], desc: str = "") -> int:
        """Submit (without waiting) the requests that are not cached, not in an unfinished job and not given up.

        Request files are the record of what was asked, so callers may submit in parts and drop the requests."""
        model = self.llm_cfg.model
        pending = self.pending()
        lines: dict[str, dict] = {}
        for r in requests:
            k = r.key(self.model_id)
            if k in lines or k in pending or self._failures(k) >= self.cfg.max_rounds or self.cache.get(k):
                continue
            lines[k] = {
                "custom_id": k,
                "method": "POST",
                "url": self.cfg.endpoint,
                "body": request_body(r, model),
            }
        if lines:
            self._submit(list(lines.values()), desc)
        return len(lines)

    def wait(self) -> None:
        """Poll unfinished jobs, collect finished ones, resubmit their failed or expired requests (up to max_rounds
        submissions each); return when no job is unfinished or after max_wait_s (state kept; call again later)."""
        t0 = time.monotonic()
        while True:
            for job in self._active():
                self._poll(job)
            self._resubmit_failures()
            if not self._active():
                return
            if self.cfg.max_wait_s is not None and time.monotonic() - t0 >= self.cfg.max_wait_s:
                return
            self.sleep(self.cfg.poll_s)

    def unfinished(self) -> list[dict]:
        """Jobs not yet collected (submitted, or still running at the provider)."""
        return self._active()

    def pending(self) -> set[str]:
        """Keys of the requests in unfinished jobs."""
        return {k for j in self._active() for k in self._job_keys(j)}

    def _resubmit_failures(self) -> None:
        """Failed/expired requests go out again, their lines read back from the request files they came from."""
        retry = {
            k
            for k, f in self.state["failures"].items()
            if f["n"] < self.cfg.max_rounds and not f.get("resolved")
        }
        retry -= self.pending()
        retry = {k for k in retry if self.cache.get(k) is None}
        if not retry:
            return
        lines: dict[str, dict] = {}
        for job in reversed(self.jobs):
            if not retry - lines.keys():
                break
            with open(self.dir / job["request_file"], encoding="utf-8") as f:
                for raw in f:
                    if raw.strip():
                        line = json.loads(raw)
                        if line["custom_id"] in retry and line["custom_id"] not in lines:
                            lines[line["custom_id"]] = line
        if lines:
            self._submit(list(lines.values()), "resubmission")

    def report(self, wanted: dict[str, ChatRequest], cached_before: int = 0) -> dict:
        cached = sum(self.cache.get(k) is not None for k in wanted)
        pending = {k for j in self._active() for k in self._job_keys(j)} & set(wanted)
        given_up = {
            k: self.state["failures"][k]["error"]
            for k in wanted
            if k in self.state["failures"]
            and self._failures(k) >= self.cfg.max_rounds
            and self.cache.get(k) is None
        }
        rep = {
            "requested": len(wanted),
            "cached_before": cached_before,
            "cached": cached,
            "pending": len(pending),
            "given_up": given_up,
            "done": not pending,
            "jobs": [
                {k: j.get(k) for k in ("id", "batch_id", "status", "n", "round", "succeeded", "failed")}
                for j in self.jobs
            ],
            "usage": dict(self.state["usage"]),
        }
        rep["summary"] = (
            f"{cached}/{len(wanted)} cached ({cached_before} before), {len(pending)} pending, {len(given_up)} given up, "
            f"{len(self.jobs)} job(s)"
        )
        return rep

    # ---- submission ------------------------------------------------------------------------------------------
    def _estimate_usd(self, lines: Sequence[dict]) -> float:
        cfg = self.llm_cfg
        chars = sum(len(str(m.get("content", ""))) + 16 for line in lines for m in line["body"]["messages"])
        out = sum(int(line["body"].get("max_tokens") or 0) for line in lines)
        return (
            (chars / 3 * cfg.price_prompt_per_1m + out * cfg.price_completion_per_1m)
            / 1e6
            * self.cfg.price_factor
        )

    def _chunks(self, lines: Sequence[dict]) -> Iterator[list[dict]]:
        chunk: list[dict] = []
        size = 0
        for line in lines:
            n = len(json.dumps(line, ensure_ascii=False).encode()) + 1
            if chunk and (
                len(chunk) >= self.cfg.max_requests_per_job or size + n > self.cfg.max_bytes_per_job
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(line)
            size += n
        if chunk:
            yield chunk

    def _submit(self, lines: Sequence[dict], desc: str) -> None:
        est = self._estimate_usd(lines)
        budget = self.llm_cfg.budget_usd
        if budget is not None:
            # the run's spend (every stage and session: usage files), at least what these jobs cost so far, and
            # the estimate of every job submitted but not collected yet: all jobs may be out at once
            spent = max(self.ledger.spent_usd(), self.state["usage"]["cost_usd"])
            pending = sum(j.get("est_usd", 0.0) for j in self._active())
            if spent + pending + est > budget:
                raise BatchBudgetError(
                    f"{self.stage}: submitting {len(lines)} request(s) may cost up to ${est:.2f}, and llm.budget_usd "
                    f"= ${budget:g} leaves ${max(0.0, budget - spent - pending):.2f} (spent ${spent:.2f}, "
                    f"${pending:.2f} in jobs not collected yet): nothing was submitted. Raise the budget or ask for "
                    "fewer requests."
                )
        for chunk in self._chunks(lines):
            n = len(self.jobs) + 1
            rnd = 1 + max(self._failures(line["custom_id"]) for line in chunk)
            job = {
                "id": f"job-{n:04d}",
                "request_file": f"requests-{n:04d}.jsonl",
                "n": len(chunk),
                "round": rnd,
                "est_usd": round(est * len(chunk) / len(lines), 6),
                "desc": desc,
                "status": "new",
                "collected": False,
                "input_file_id": None,
                "batch_id": None,
                "created": time.time(),
            }
            write_jsonl(self.dir / job["request_file"], chunk)
            self._keys_cache[job["id"]] = [line["custom_id"] for line in chunk]
            self.jobs.append(job)
            self._save()
            self._create(job)
            self.log(
                f"batch {job['id']} ({desc or self.stage}, round {rnd}): {len(chunk)} request(s) as {job['batch_id']}"
            )

    def _create(self, job: dict) -> None:
        """Upload the request file (if not yet) and create the batch (unless one exists for that input file)."""
        resumed = job["input_file_id"] is not None
        if not resumed:
            path = self.dir / job["request_file"]
            with open(path, "rb") as f:
                fo = self.client.files.create(file=(path.name, f), purpose="batch")
            job["input_file_id"] = fo.id
            job["status"] = "uploaded"
            self._save()
        b = self._find_batch(job["input_file_id"]) if resumed else None
        if b is None:
            b = self.client.batches.create(
                input_file_id=job["input_file_id"],
                endpoint=self.cfg.endpoint,
                completion_window=self.cfg.completion_window,
                metadata={"stage": self.stage, "job": job["id"]},
            )
        job["batch_id"], job["status"] = b.id, b.status
        self._save()

    def _find_batch(self, input_file_id: str) -> Any:
        seen = 0
        for b in self.client.batches.list(limit=100):
            if b.input_file_id == input_file_id:
                return b
            seen += 1
            if seen >= self.cfg.adopt_scan:
                break
        return None

    # ---- polling and collection ------------------------------------------------------------------------------
    def _poll(self, job: dict) -> None:
        if not job.get("batch_id"):
            self._create(job)
            return
        b = self.client.batches.retrieve(job["batch_id"])
        changed = b.status != job.get("status")
        job["status"] = b.status
        rc = getattr(b, "request_counts", None)
        if rc is not None:
            job["request_counts"] = {"total": rc.total, "completed": rc.completed, "failed": rc.failed}
        if b.status in TERMINAL:
            self._collect(job, b)
            job["collected"] = True
            changed = True
        if changed:
            self._save()

    def _lines(self, job: dict, file_id: str, kind: str) -> Iterator[dict]:
        path = self.dir / f"{job['id']}-{kind}.jsonl"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            with self.client.files.with_streaming_response.content(file_id) as resp:
                resp.stream_to_file(tmp)
            os.replace(tmp, path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def _collect(self, job: dict, b: Any) -> None:
        keys = self._job_keys(job)
        ok: set[str] = set()
        errors: dict[str, str] = {}
        usage = self.state["usage"]
        cfg = self.llm_cfg
        if b.output_file_id:
            for line in self._lines(job, b.output_file_id, "output"):
                cid = line.get("custom_id")
                resp = line.get("response") or {}
                body = resp.get("body") or {}
                try:
                    choice = body["choices"][0]
                    text = choice["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    text, choice = None, {}
                if resp.get("status_code") == 200 and text is not None:
                    u = body.get("usage") or {}
                    pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
                    if self.cache.get(cid) is None:
                        self.cache.put(cid, self.llm_cfg.model, text, pt, ct, choice.get("finish_reason"))
                    usage["prompt_tokens"] += pt
                    usage["completion_tokens"] += ct
                    price = (pt * cfg.price_prompt_per_1m + ct * cfg.price_completion_per_1m) / 1e6
                    usage["cost_usd"] = round(usage["cost_usd"] + price * self.cfg.price_factor, 6)
                    self.ledger.add_batch_cost(price * self.cfg.price_factor)  # the run's budget counts it
                    ok.add(cid)
                    if cid in self.state["failures"]:
                        self.state["failures"][cid]["resolved"] = True
                else:
                    errors[cid] = (
                        _describe_error(line) if resp.get("status_code") != 200 else "no content in reply"
                    )
        if b.error_file_id:
            for line in self._lines(job, b.error_file_id, "errors"):
                errors.setdefault(line.get("custom_id"), _describe_error(line))
        batch_errors = getattr(b, "errors", None)
        default = f"no result (batch {b.status})"
        if batch_errors is not None and getattr(batch_errors, "data", None):
            default += ": " + "; ".join(f"{e.code}: {e.message}" for e in batch_errors.data)
        failed = 0
        for k in keys:
            if k in ok:
                continue
            failed += 1
            f = self.state["failures"].setdefault(k, {"n": 0, "error": None})
            f["n"] += 1
            f["error"] = errors.get(k, default)
            f["resolved"] = False
        job["succeeded"], job["failed"] = len(ok & set(keys)), failed
        self.log(f"batch {job['id']} {b.status}: {job['succeeded']} succeeded, {failed} failed or expired")


__all__ = ["BatchRunner", "BatchBudgetError", "TERMINAL"]
