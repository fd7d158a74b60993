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
    1. Requests already in the LLM cache are skipped. The rest, shaped to the model (capabilities.Shaper, as the
       live path sends them), are written as JSON Lines request files (``{"custom_id": <cache key>, "method":
       "POST", "url": "/v1/chat/completions", "body": {...}}``), at most ``max_requests_per_job`` lines,
       ``max_bytes_per_job`` bytes and ``max_enqueued_tokens`` tokens each: a job is "queued".
    2. Queued jobs are uploaded (purpose "batch") and created with ``batches.create`` oldest first, while the jobs
       in flight hold at most ``max_enqueued_tokens`` tokens (prompt + max_tokens, as OpenAI counts its per-model
       batch queue limit) and their estimated cost fits ``llm.budget_usd``; the rest wait for jobs to finish.
    3. ``batches.retrieve`` is polled every ``poll_s`` seconds. When a job reaches a terminal status (completed,
       expired, failed, cancelled) its output file (successes) and error file (failed or expired requests) are
       downloaded; every successful reply goes into the LLM cache under its custom_id (= the cache key).
    4. A job the provider refused for its queue limit (status failed, error ``token_limit_exceeded``) is queued
       again, with the limit lowered to what was in flight; this is no round. Requests that failed or expired
       are resubmitted in a new job, at most ``max_rounds`` submissions per request in all; one refused with a
       client error (HTTP 4xx) is given up at once, as the same body would be refused again, except a 400 on the
       response_format, which is asked again in the next weaker mode (capabilities.Shaper.refused).
    5. Requests the Batch API gave up on fail in ``LLM.chat_many`` (see ``leftover_error``), unless
       ``batch.live_fallback`` sends them live.

State (``<state_dir>/state.json``, rewritten atomically after every change) holds each job's request file, input
file id, batch id, status and counts, per-request failure counts and the token usage. A collector that is stopped
(``max_wait_s``, a killed kernel) and started again polls the same batch ids; a job that was uploaded but whose
batch id was never saved is matched to its batch by input_file_id before anything is created again. Jobs still
queued (never created at the provider) belong to the session that made them: the next one drops them, and its
caller submits again what it still wants.

The API key comes from the environment variable named in ``llm.api_key_env``, never from a file.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mathscale_utils.core.io import read_json, write_json, write_jsonl
from mathscale_utils.core.llm_config import BatchConfig, LLMConfig
from mathscale_utils.inference.batch_lines import (
    chunk_lines,
    completion,
    describe_error,
    line_tokens,
    read_lines,
    refusal,
)
from mathscale_utils.inference.cache import ReplyCache, model_id
from mathscale_utils.inference.capabilities import MODES, Shaper
from mathscale_utils.inference.chat import LOCAL_API_KEY, ChatRequest, estimate_prompt_tokens, response_mode
from mathscale_utils.inference.ledger import SpendLedger

TERMINAL = ("completed", "failed", "expired", "cancelled")
# a job the provider refused for the organisation's queue limit (not for its requests)
LIMIT_CODES = ("token_limit_exceeded",)


class BatchBudgetError(RuntimeError):
    """The estimated cost of a submission, added to what the run spent (SpendLedger.spent_usd), would pass llm.budget_usd."""


class BatchRunner:
    """Submit, poll, collect and resubmit Batch API jobs for a list of ChatRequests; state in state_dir. Replies go
    into `cache` under their request keys (made by `shaper`, default one for llm_cfg and model_id `answering`);
    `ledger` counts their price against llm_cfg.budget_usd."""

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
        shaper: Shaper | None = None,
    ):
        self.cache, self.ledger, self.llm_cfg = cache, ledger, llm_cfg
        self.model_id = answering or model_id(llm_cfg)
        self.shaper = shaper or Shaper(llm_cfg, self.model_id)
        self.cfg, self.stage, self.sleep, self.log = cfg or BatchConfig(), stage, sleep, log
        # tokens in flight at most: batch.max_enqueued_tokens, lowered for the session if the provider refuses within it
        self.limit = self.cfg.max_enqueued_tokens
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.state = self._load()
        self._client: Any = None
        self._keys_cache: dict[str, list[str]] = {}
        # requests with a response_format, by key, and the keys refused for it: asked again in a weaker mode
        self._asked: dict[str, ChatRequest] = {}
        self._reshape: set[str] = set()

    # ---- state -----------------------------------------------------------------------------------------------
    def _load(self) -> dict:
        if self.state_path.exists():
            st = read_json(self.state_path)
            if st.get("model") != self.llm_cfg.model:
                warnings.warn(
                    f"{self.state_path}: jobs were made for model {st.get('model')!r}, not {self.llm_cfg.model!r}",
                    stacklevel=3,
                )
            for job in st["jobs"]:  # queued by an earlier session, never created: its caller submits again
                if job.get("status") == "queued" and not job.get("collected"):
                    job.update(status="dropped", collected=True)
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

    def _in_flight(self) -> list[dict]:
        """Jobs created at the provider (or being created) and not collected yet."""
        return [j for j in self._active() if j.get("status") != "queued"]

    def _job_keys(self, job: dict) -> list[str]:
        if job["id"] not in self._keys_cache:
            self._keys_cache[job["id"]] = [line["custom_id"] for line in self._job_lines(job)]
        return self._keys_cache[job["id"]]

    def _job_lines(self, job: dict) -> Iterator[dict]:
        return read_lines(self.dir / job["request_file"])

    def _failures(self, key: str) -> int:
        return self.state["failures"].get(key, {}).get("n", 0)

    def _fail(self, key: str, error: str, give_up: bool = False) -> None:
        """Count a failed submission of a request (or give it up at once: the same body would fail again)."""
        f = self.state["failures"].setdefault(key, {"n": 0, "error": None})
        f["n"] = max(f["n"] + 1, self.cfg.max_rounds if give_up else 0)
        f["error"], f["resolved"] = error, False

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
        requests = list(requests)
        cached_before = len({k for k in map(self.key, requests) if self.cache.get(k) is not None})
        self.submit(requests, desc)
        self.wait()
        return self.report({self.key(r): r for r in requests}, cached_before)

    def key(self, request: ChatRequest) -> str:
        """The cache key (= custom_id) of a request as it is sent now."""
        return self.shaper.shape(request).key

    def submit(self, requests: Sequence[ChatRequest], desc: str = "") -> int:
        """Queue (and send, as far as the queue limit and the budget allow) the requests that are not cached, not
        in an unfinished job and not given up; requests the model cannot take (Shaped.error) are left out.

        Request files are the record of what was asked, so callers may submit in parts and drop the requests."""
        pending = self.pending()
        lines: dict[str, dict] = {}
        for r in requests:
            s = self.shaper.shape(r)
            k = s.key
            if s.error or k in lines or k in pending or self._failures(k) >= self.cfg.max_rounds:
                continue
            if self.cache.get(k) is not None:
                continue
            if s.mode != "text":
                self._asked[k] = r
            lines[k] = {"custom_id": k, "method": "POST", "url": self.cfg.endpoint, "body": s.body}
        if lines:
            self._enqueue(list(lines.values()), desc)
            self._launch()
        return len(lines)

    def wait(self) -> None:
        """Poll unfinished jobs, collect finished ones, resubmit their failed or expired requests (up to max_rounds
        submissions each), send queued jobs as the queue limit allows; return when no job is unfinished or after
        max_wait_s (state kept; call again later)."""
        t0 = time.monotonic()
        while True:
            for job in self._in_flight():
                self._poll(job)
            self._resubmit_failures()
            self._launch()
            if not self._active():
                return
            if self.cfg.max_wait_s is not None and time.monotonic() - t0 >= self.cfg.max_wait_s:
                return
            self.sleep(self.cfg.poll_s)

    def unfinished(self) -> list[dict]:
        """Jobs not yet collected (queued, submitted, or still running at the provider)."""
        return self._active()

    def pending(self) -> set[str]:
        """Keys of the requests in unfinished jobs."""
        return {k for j in self._active() for k in self._job_keys(j)}

    def leftover_error(self, key: str) -> str:
        """Why a request that is neither cached nor pending has no answer (what LLM.chat_many reports for it)."""
        f = self.state["failures"].get(key)
        why = f"after {f['n']} submission(s): {f['error']}" if f else "it was not submitted"
        return (
            f"the Batch API gave up on this request {why}; set llm.batch.live_fallback: true to send such requests "
            "live, at the live price"
        )

    def _resubmit_failures(self) -> None:
        """Failed/expired requests go out again, their lines read back from the request files they came from; those
        refused for the response_format, in a weaker mode."""
        if self._reshape:
            again = [self._asked[k] for k in self._reshape if k in self._asked]
            self._reshape.clear()
            self.submit(again, "weaker response_format")
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
            for line in self._job_lines(job):
                if line["custom_id"] in retry and line["custom_id"] not in lines:
                    lines[line["custom_id"]] = line
        if lines:
            self._enqueue(list(lines.values()), "resubmission")

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

    # ---- queueing and submission -----------------------------------------------------------------------------
    def _estimate_usd(self, lines: Sequence[dict]) -> float:
        """The most the lines may cost: every prompt token (estimated generously) and every allowed output token."""
        cfg = self.llm_cfg
        prompt = sum(
            estimate_prompt_tokens(ln["body"].get("messages"), ln["body"].get("prompt")) for ln in lines
        )
        out = sum(int(line["body"].get("max_tokens") or 0) for line in lines)
        price = prompt * cfg.price_prompt_per_1m + out * cfg.price_completion_per_1m
        return price / 1e6 * self.cfg.price_factor

    def _enqueue(self, lines: Sequence[dict], desc: str) -> None:
        """Write the lines as queued jobs (nothing is sent here: see _launch)."""
        cap = self.limit
        if cap is not None:
            too_big = [ln for ln in lines if line_tokens(ln["body"]) > cap]
            for line in too_big:
                self._fail(
                    line["custom_id"],
                    f"about {line_tokens(line['body']):,} tokens, more than the Batch API queue takes ({cap:,}: "
                    "batch.max_enqueued_tokens, or less where the provider refused a job)",
                    give_up=True,
                )
            lines = [ln for ln in lines if line_tokens(ln["body"]) <= cap] if too_big else lines
        cfg = self.cfg
        for chunk in chunk_lines(lines, cfg.max_requests_per_job, cfg.max_bytes_per_job, self.limit):
            n = len(self.jobs) + 1
            job = {
                "id": f"job-{n:04d}",
                "request_file": f"requests-{n:04d}.jsonl",
                "n": len(chunk),
                "round": 1 + max(self._failures(line["custom_id"]) for line in chunk),
                "tokens": sum(line_tokens(line["body"]) for line in chunk),
                "est_usd": round(self._estimate_usd(chunk), 6),
                "mode": max(
                    (response_mode(ln["body"].get("response_format")) for ln in chunk), key=MODES.index
                ),
                "desc": desc,
                "status": "queued",
                "collected": False,
                "input_file_id": None,
                "batch_id": None,
                "refused": [],
                "created": time.time(),
            }
            write_jsonl(self.dir / job["request_file"], chunk)
            self._keys_cache[job["id"]] = [line["custom_id"] for line in chunk]
            self.jobs.append(job)
        self._save()

    def _launch(self) -> None:
        """Create queued jobs at the provider, oldest first, while the jobs in flight stay within the queue limit
        and the budget. A job that does not fit the budget waits for the jobs in flight (collected replies cost
        less than their estimate); with none in flight it never will, and BatchBudgetError says so."""
        for job in [j for j in self._active() if j.get("status") == "queued"]:
            if job.get("not_before", 0.0) > time.time():
                continue
            if MODES.index(job.get("mode", "text")) > MODES.index(self.shaper.ceiling):
                job.update(status="dropped", collected=True)  # its response_format was refused meanwhile:
                self._reshape.update(k for k in self._job_keys(job) if k in self._asked)  # ask again so
                continue
            flying = self._in_flight()
            held = sum(j.get("tokens", 0) for j in flying)
            if self.limit is not None and flying and held + job["tokens"] > self.limit:
                return
            budget = self.llm_cfg.budget_usd
            if budget is not None:
                # the run's spend (every stage and session: usage files), at least what these jobs cost so far, and
                # the estimate of every job submitted but not collected yet
                spent = max(self.ledger.spent_usd(), self.state["usage"]["cost_usd"])
                out = sum(j.get("est_usd", 0.0) for j in flying)
                if spent + out + job["est_usd"] > budget:
                    if flying:
                        return
                    waiting = [j for j in self._active() if j.get("status") == "queued"]
                    raise BatchBudgetError(
                        f"{self.stage}: submitting {job['n']} request(s) may cost up to ${job['est_usd']:.2f}, and "
                        f"llm.budget_usd = ${budget:g} leaves ${max(0.0, budget - spent - out):.2f} (spent "
                        f"${spent:.2f}, ${out:.2f} in jobs not collected yet): not submitted, nor "
                        f"{sum(j['n'] for j in waiting)} request(s) in {len(waiting)} queued job(s). Raise the "
                        "budget or ask for fewer requests, then run the stage again."
                    )
            self._create(job)
            self.log(
                f"batch {job['id']} ({job['desc'] or self.stage}, round {job['round']}): {job['n']} request(s), "
                f"~{job['tokens']:,} tokens, as {job['batch_id']}"
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
        b = self._find_batch(job["input_file_id"], job.get("refused", ())) if resumed else None
        if b is None:
            job["status"] = "uploaded"
            self._save()
            b = self.client.batches.create(
                input_file_id=job["input_file_id"],
                endpoint=self.cfg.endpoint,
                completion_window=self.cfg.completion_window,
                metadata={"stage": self.stage, "job": job["id"]},
            )
        job["batch_id"], job["status"] = b.id, b.status
        self._save()

    def _find_batch(self, input_file_id: str, refused: Sequence[str] = ()) -> Any:
        seen = 0
        for b in self.client.batches.list(limit=100):
            if b.input_file_id == input_file_id and b.id not in refused:
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
            if not self._refused_for_limit(job, b):
                self._collect(job, b)
                job["collected"] = True
            changed = True
        if changed:
            self._save()

    def _refused_for_limit(self, job: dict, b: Any) -> bool:
        """A job the provider failed for its queue limit is sent again later, and its requests lose no round. The
        limit this session keeps falls to what fitted: beside other jobs, it waits until fewer are in flight; alone,
        the queue holds less than the job, which is cut in two (a single request that big is given up)."""
        errors = getattr(getattr(b, "errors", None), "data", None) or []
        hit = [e for e in errors if getattr(e, "code", None) in LIMIT_CODES]
        if b.status != "failed" or not hit:
            return False
        others = sum(j.get("tokens", 0) for j in self._in_flight() if j is not job)
        tokens = job.get("tokens", 0)
        if others == 0 and job["n"] == 1:
            self._fail(self._job_keys(job)[0], f"{hit[0].code}: {hit[0].message}", give_up=True)
            job.update(collected=True, succeeded=0, failed=1)
            return True
        fits = max(others, tokens) if others else tokens // 2
        self.limit = fits if self.limit is None else min(self.limit, fits)
        self.log(
            f"batch {job['id']} refused by the provider's queue limit ({hit[0].message}); sent again later, at "
            f"most {self.limit:,} tokens in flight from now on (batch.max_enqueued_tokens: "
            f"{self.cfg.max_enqueued_tokens})"
        )
        if others == 0:  # alone and still too big: its requests go out again in smaller jobs
            job.update(status="split", collected=True, succeeded=0, failed=0)
            self._enqueue(list(self._job_lines(job)), job["desc"])
            return True
        job["refused"] = [*job.get("refused", []), b.id]
        job.update(status="queued", batch_id=None, not_before=time.time() + self.cfg.poll_s)
        return True

    def _lines(self, job: dict, file_id: str, kind: str) -> Iterator[dict]:
        path = self.dir / f"{job['id']}-{kind}.jsonl"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            with self.client.files.with_streaming_response.content(file_id) as resp:
                resp.stream_to_file(tmp)
            os.replace(tmp, path)
        return read_lines(path)

    def _add_usage(self, pt: int, ct: int) -> None:
        usage, cfg = self.state["usage"], self.llm_cfg
        usage["prompt_tokens"] += pt
        usage["completion_tokens"] += ct
        price = (
            (pt * cfg.price_prompt_per_1m + ct * cfg.price_completion_per_1m) / 1e6 * self.cfg.price_factor
        )
        usage["cost_usd"] = round(usage["cost_usd"] + price, 6)
        self.ledger.add_batch_cost(price)  # the run's budget counts it

    def _collect(self, job: dict, b: Any) -> None:
        keys = self._job_keys(job)
        ok: set[str] = set()
        errors: dict[str, str] = {}
        client_errors: set[str] = set()
        format_refused: dict[str, str] = {}  # custom_id -> error, for a 400 on the response_format
        if b.output_file_id:
            for line in self._lines(job, b.output_file_id, "output"):
                cid = line.get("custom_id")
                if (answer := completion(line)) is None:
                    errors[cid] = describe_error(line)
                    continue
                text, finish, pt, ct = answer
                if self.cache.get(cid) is None:
                    self.cache.put(cid, self.llm_cfg.model, text, pt, ct, finish)
                self._add_usage(pt, ct)
                ok.add(cid)
                if cid in self.state["failures"]:
                    self.state["failures"][cid]["resolved"] = True
        if b.error_file_id:
            for line in self._lines(job, b.error_file_id, "errors"):
                cid = line.get("custom_id")
                errors.setdefault(cid, describe_error(line))
                client, about_format = refusal(line)
                if client:
                    client_errors.add(cid)
                if about_format:
                    format_refused[cid] = describe_error(line)
        if format_refused:
            self._format_refused(job, format_refused)
        batch_errors = getattr(b, "errors", None)
        default = f"no result (batch {b.status})"
        if batch_errors is not None and getattr(batch_errors, "data", None):
            default += ": " + "; ".join(f"{e.code}: {e.message}" for e in batch_errors.data)
        failed = 0
        for k in keys:
            if k in ok:
                continue
            failed += 1
            if k not in self._reshape:  # asked again in a weaker mode, under another key: no failure
                self._fail(k, errors.get(k, default), give_up=k in client_errors)
        job["succeeded"], job["failed"] = len(ok & set(keys)), failed
        self.log(f"batch {job['id']} {b.status}: {job['succeeded']} succeeded, {failed} failed or expired")

    def _format_refused(self, job: dict, refused: dict[str, str]) -> None:
        """Request lines refused for their response_format: step the model down a mode, and ask them again so."""
        modes = {
            ln["custom_id"]: response_mode(ln["body"].get("response_format")) for ln in self._job_lines(job)
        }
        for key, error in refused.items():
            if self.shaper.refused(modes.get(key, "text"), error) and key in self._asked:
                self._reshape.add(key)


__all__ = ["BatchRunner", "BatchBudgetError", "TERMINAL"]
