"""One chat client for every stage: OpenAI-compatible endpoints, the embedded llama.cpp server, the Batch API.

    with LLM.for_stage(P, "01_extract") as llm:            # this run's `llm:` section, cache and usage files
    with LLM(cfg, cache_dir=run_dir / "cache", stage="01_extract", usage_dir=run_dir / "usage") as llm:
        results = llm.chat_many([ChatRequest(messages=[...], temperature=0.0, max_tokens=256,
                                             response_format={"type": "json_object"}), ...], desc="extract")
        # results[i] is a ChatResult for requests[i]: .text, .error, .cached, .prompt_tokens, ...

Each answer is appended to cache_dir/llm_cache.jsonl when it arrives: a re-run or a resumed run repeats no call.
With ``backend: batch`` the requests that are not cached go to the provider's Batch API first (``batch.py``); its
replies land in the same cache, so the rest of the stage reads them as cache hits. The API key is read from os.environ[cfg.api_key_env] when requests are sent; it is never logged or written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import random
import threading
import warnings
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import tenacity as tn
from tqdm.auto import tqdm

from mathscale_utils.batch import BatchRunner
from mathscale_utils.chat import LOCAL_API_KEY, ChatRequest, ChatResult, reply_text, request_body
from mathscale_utils.io import DataError, append_jsonl, read_json, read_jsonl, write_json
from mathscale_utils.models import LocalServer, ensure_model
from mathscale_utils.params import LLMConfig, Params

CACHE_FILE = "llm_cache.jsonl"
_SDK_TELEMETRY = ("lang", "package-version", "os", "arch", "runtime", "runtime-version", "async")
_COUNTERS = (
    "requests",
    "attempts",
    "retries",
    "cache_hits",
    "failures",
    "prompt_tokens",
    "completion_tokens",
)


class BudgetExceeded(UserWarning):
    """Warned once when cfg.budget_usd stops new requests; those get error "budget exceeded"."""


class _BadResponse(Exception):
    """A 200 whose body is not a usable chat completion (retried: usually a proxy or transport glitch)."""


class ServerDied(RuntimeError):
    """The embedded llama.cpp server exited during a batch: retrying is pointless, so the batch stops."""


def _retryable(e: BaseException | None) -> bool:
    if isinstance(e, openai.APIStatusError):
        return e.status_code in (408, 409, 429) or e.status_code >= 500
    return isinstance(e, openai.APIConnectionError | _BadResponse)  # timeouts are connection errors


def _retry_after(e: BaseException | None) -> float | None:
    """Seconds asked for by a Retry-After(-ms) header, if the error carries one in seconds."""
    if not isinstance(e, openai.APIStatusError):
        return None
    h = e.response.headers
    try:
        return float(h["retry-after-ms"]) / 1000 if "retry-after-ms" in h else float(h["retry-after"])
    except (KeyError, ValueError):  # absent, or an HTTP date (rare for LLM APIs): use our own backoff
        return None


def _load_cache(path: Path) -> dict[str, dict]:
    """key -> cache entry. A line torn by a crash is cut off first, so later appends start on a fresh line."""
    if not path.exists():
        return {}
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            warnings.warn(f"{path}: dropping a torn last line ({len(data) - keep} B)", stacklevel=3)
            f.truncate(keep)
    return {r["key"]: r for r in read_jsonl(path, tolerate_torn_tail=True)}


def model_id(cfg: LLMConfig) -> str:
    """What answers, for cache keys: the model name, plus the adapter's content hash when a LoRA is loaded."""
    if not cfg.lora_path:
        return cfg.model
    digest = hashlib.sha256(Path(cfg.lora_path).read_bytes()).hexdigest()[:16]
    return f"{cfg.model}+lora:{digest}"


class LLM:
    """Cached, retried, concurrent chat completions for one stage. Use as a context manager (or call close())."""

    def __init__(
        self,
        cfg: LLMConfig,
        cache_dir: Path,
        stage: str,
        usage_dir: Path | None = None,
        progress: bool = True,
        batch_dir: Path | None = None,
    ):
        """cache_dir may be shared by stages; usage_dir/<stage>.json gets the counts; progress shows a tqdm bar;
        batch_dir keeps the Batch API jobs of backend "batch" (default: <cache_dir>/../batches/<stage>)."""
        self.cfg, self.stage, self.progress = cfg, stage, progress
        self.batch_dir = Path(batch_dir) if batch_dir else Path(cache_dir).parent / "batches" / stage
        self._batch: Any = None  # the BatchRunner, made on first need
        self.model_id = model_id(cfg)
        self.cache_path = Path(cache_dir) / CACHE_FILE
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.usage_path = Path(usage_dir) / f"{stage}.json" if usage_dir is not None else None
        self._cache = _load_cache(self.cache_path)
        self._unsaved: list[dict] = []  # answers received but not appended yet (for at most one loop pass)
        self._n: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        try:
            self._prior = read_json(self.usage_path).get("total", {}) if self.usage_path else {}
        except (DataError, AttributeError):
            self._prior = {}
        self._inflight_usd = 0.0
        self.budget_exhausted = False
        self._server: Any = None  # the embedded LocalServer, started on first need
        self._loop: asyncio.AbstractEventLoop | None = None  # our loop thread, with one client for all calls
        self._thread: threading.Thread | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._sem: asyncio.Semaphore | None = None

    @classmethod
    def for_stage(cls, P: Params, stage: str, cfg: LLMConfig | None = None, progress: bool = True) -> LLM:
        """The client a stage of run P uses: P's `llm:` section (or cfg, e.g. the student in stage 05), the run's
        (or the sweep's shared) cache, usage in run_dir/usage/<stage>.json, Batch API jobs in run_dir/batches/."""
        run = P.run
        return cls(cfg or P.llm, P.llm_cache_dir, stage, run.usage, progress, run.batches / stage)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the usage file, close the HTTP client and its loop, stop the embedded server if we started it."""
        if self._loop is not None and self._thread is not None:
            if self._client is not None:
                asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
            self._loop = self._thread = self._client = self._sem = None
        self._flush_cache()
        self._write_usage()
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ---- public API ----------------------------------------------------------------------------------------
    def chat(self, request: ChatRequest) -> ChatResult:
        return self.chat_many([request])[0]

    def chat_many(self, requests: Iterable[ChatRequest], desc: str = "") -> list[ChatResult]:
        """Results in input order. Works the same inside a running event loop (a notebook cell).

        The usage file is rewritten after each call that sent requests; cache-only calls are counted in
        memory and written with the next one or on close, so that a cache hit stays cheap. With backend "batch"
        the uncached requests go through the Batch API first (see prefetch); those still running after
        batch.max_wait_s come back with an error, and those the Batch API gave up on are sent live."""
        requests = list(requests)
        if self.cfg.backend == "batch":
            self.prefetch(requests, desc)
        results, groups, todo = self._split(requests)
        if todo and self._batch is not None:
            pending = self._batch.pending()
            for key, _ in [t for t in todo if t[0] in pending]:
                for i in groups.pop(key):
                    results[i] = ChatResult(
                        key, error="Batch API job still running: run the stage again later"
                    )
            todo = [t for t in todo if t[0] not in pending]
        if todo:
            future = self._submit(self._run(results, groups, todo, desc))
            try:
                future.result()
            except BaseException:  # e.g. KeyboardInterrupt in a notebook: stop the batch; answers are saved
                future.cancel()
                raise
            self._write_usage()
        return results

    async def achat_many(self, requests: Iterable[ChatRequest], desc: str = "") -> list[ChatResult]:
        results, groups, todo = self._split(requests)
        if todo:
            await asyncio.wrap_future(self._submit(self._run(results, groups, todo, desc)))
            await asyncio.to_thread(self._write_usage)
        return results

    def prefetch(self, requests: Iterable[ChatRequest], desc: str = "") -> bool:
        """Backend "batch": submit the uncached requests to the provider's Batch API and wait for them (at most
        batch.max_wait_s); replies land in the cache. True when none is still running. Backend "chat": True."""
        if self.cfg.backend != "batch":
            return True
        if self._batch is None:
            self._batch = BatchRunner(self, self.batch_dir, self.cfg.batch, stage=self.stage)
        self._batch.submit(list(requests), desc)
        self._batch.wait()
        return not self._batch.unfinished()

    def cache_get(self, key: str) -> ChatResult | None:
        """The cached answer for a request key (ChatRequest.key(llm.model_id)), or None."""
        hit = self._cache.get(key)
        if hit is None:
            return None
        pt, ct = hit["usage"]["prompt_tokens"], hit["usage"]["completion_tokens"]
        return ChatResult(key, hit["text"], None, True, pt, ct, hit["finish_reason"])

    def cache_put(
        self,
        key: str,
        text: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        finish_reason: str | None = None,
    ) -> None:
        """Store an answer obtained elsewhere (e.g. a provider's batch API): chat_many will then find it."""
        self._cache[key] = entry = self._entry(key, text, prompt_tokens, completion_tokens, finish_reason)
        append_jsonl(self.cache_path, [entry], fsync=self.cfg.cache_fsync)

    def usage(self) -> dict:
        """This session's counts: requests sent, HTTP attempts, retries, cache hits, failures, tokens, cost."""
        cost = self._cost(self._n["prompt_tokens"], self._n["completion_tokens"])
        return {**self._n, "cost_usd": round(cost, 6), "budget_exhausted": self.budget_exhausted}

    # ---- batch machinery -----------------------------------------------------------------------------------
    def _split(self, requests: Iterable[ChatRequest]) -> tuple[list, dict[str, list[int]], list]:
        """Answer cache hits now; group the rest by key so that duplicates within a batch cost one call."""
        requests = list(requests)
        results: list[Any] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        todo: list[tuple[str, ChatRequest]] = []
        for i, req in enumerate(requests):
            k = req.key(self.model_id)
            if (hit := self.cache_get(k)) is not None:
                results[i] = hit
                self._n["cache_hits"] += 1
            elif k in groups:
                groups[k].append(i)
            else:
                groups[k] = [i]
                todo.append((k, req))
        return results, groups, todo

    def _submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Run `coro` on this LLM's own event-loop thread: the same path whether or not the caller has a
        running loop (a notebook cell does), and one HTTP client with its open connections serves every call."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="llm-loop", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _endpoint(self) -> tuple[str, str]:
        """(base_url, api_key), starting the embedded server on first use."""
        cfg = self.cfg
        if cfg.base_url is None:
            if self._server is None:
                log = self.cache_path.parent / f"llama_server.{self.stage}.log"
                path = ensure_model(cfg.model)
                self._server = LocalServer(
                    path, cfg.model, cfg.n_ctx, cfg.n_threads, cfg.lora_path, log, parallel=cfg.concurrency
                ).start()
            return self._server.base_url, LOCAL_API_KEY
        key = os.environ.get(cfg.api_key_env)
        if not key and urlparse(cfg.base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"set the {cfg.api_key_env} environment variable to use {cfg.base_url}")
        return cfg.base_url, key or LOCAL_API_KEY

    async def _run(self, results: list, groups: dict[str, list[int]], todo: list, desc: str) -> None:
        """Send `todo` with at most cfg.concurrency requests in flight; fill `results` as answers arrive."""
        if self._client is None:
            base_url, api_key = await asyncio.to_thread(self._endpoint)
            no_telemetry = {f"x-stainless-{h}": openai.Omit() for h in _SDK_TELEMETRY}  # ~10% less client CPU
            self._client = openai.AsyncOpenAI(
                base_url=base_url,
                api_key=api_key,
                max_retries=0,  # retries are ours (tenacity), so that they are counted and bounded per request
                timeout=self.cfg.timeout_s,
                http_client=openai.DefaultAioHttpClient(),  # aiohttp transport: less client CPU than httpx
                default_headers=no_telemetry,
            )
            self._sem = asyncio.Semaphore(max(1, self.cfg.concurrency))  # shared by concurrent calls
        n, pending = len(results), iter(todo)
        done = n - sum(map(len, groups.values()))
        bar = tqdm(total=n, initial=done, desc=desc or self.stage, unit="req", disable=not self.progress)

        def postfix() -> None:
            c = self._n
            bar.set_postfix(tok_in=c["prompt_tokens"], tok_out=c["completion_tokens"], fail=c["failures"])

        async def worker() -> None:
            for key, req in pending:  # one shared iterator: each request is taken by exactly one worker
                res = await self._one(key, req)
                first, *dups = groups[key]
                results[first] = res
                for j in dups:
                    results[j] = replace(res, cached=res.ok)
                self._n["cache_hits"] += len(dups) if res.ok else 0
                if bar.update(1 + len(dups)):  # True only when the bar redraws (at most 10 times a second)
                    postfix()

        try:  # 2x workers: a request sleeping in backoff holds no slot, so another one can use it
            await asyncio.gather(*(worker() for _ in range(min(len(todo), 2 * max(1, self.cfg.concurrency)))))
        finally:
            self._flush_cache()
            postfix()
            bar.close()

    async def _one(self, key: str, req: ChatRequest) -> ChatResult:
        """One request with retries -> ChatResult. Never raises: failures come back as ChatResult.error."""
        est = self._estimate_usd(req)
        if not self._reserve(est):
            return ChatResult(key, error="budget exceeded")
        body, attempts = self._body(req), 1
        self._n["requests"] += 1
        try:
            try:  # the first attempt skips tenacity, whose async machinery costs ~50 us of CPU per request
                data = await self._send(req.path, body)
            except Exception as e:
                if not _retryable(e) or self.cfg.max_retries < 2:
                    raise
                await asyncio.sleep(self._delay(e, 1))
                retry = tn.AsyncRetrying(
                    stop=tn.stop_after_attempt(self.cfg.max_retries - 1),
                    wait=lambda rs: self._delay(rs.outcome and rs.outcome.exception(), rs.attempt_number + 1),
                    retry=tn.retry_if_exception(_retryable),
                    reraise=True,
                )
                async for attempt in retry:
                    with attempt:
                        attempts += 1
                        data = await self._send(req.path, body)
        except ServerDied:
            raise
        except Exception as e:  # every failure is reported per request; the batch goes on
            self._n["failures"] += 1
            return ChatResult(key, error=self._describe(e, attempts), attempts=attempts)
        finally:
            self._inflight_usd -= est
            self._n["retries"] += attempts - 1
        choice = data["choices"][0]
        text, finish = reply_text(choice), choice.get("finish_reason")
        if text is None:
            self._n["failures"] += 1
            return ChatResult(key, error=f"reply has no content (finish_reason={finish})", attempts=attempts)
        u = data.get("usage") or {}
        pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        self._n["prompt_tokens"] += pt
        self._n["completion_tokens"] += ct
        self._cache[key] = entry = self._entry(key, text, pt, ct, finish)
        if not self._unsaved:  # answers that arrive in the same event-loop pass are appended together
            asyncio.get_running_loop().call_soon(self._flush_cache)
        self._unsaved.append(entry)
        return ChatResult(key, text, None, False, pt, ct, finish, attempts)

    async def _send(self, path: str, body: dict) -> dict:
        """One HTTP attempt -> the parsed completion. Raises on HTTP errors and on unusable bodies."""
        assert self._client is not None and self._sem is not None
        async with self._sem:
            self._n["attempts"] += 1
            # client.post skips the SDK's per-request params transform and response models, which cost more
            # client CPU than the HTTP exchange itself (see bench/bench_client.py)
            try:
                raw = await self._client.post(path, body=body, cast_to=bytes)
            except openai.APIConnectionError:
                self._check_server()
                raise
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            if not isinstance(choice.get("message", {}), dict) or (
                "message" not in choice and "text" not in choice
            ):
                raise TypeError("the choice has neither a message object nor a text")
            return data
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _BadResponse(f"malformed response body ({type(e).__name__}: {e})") from None

    def _check_server(self) -> None:
        """Raise ServerDied when the embedded server we started has exited (a crash, or killed from outside)."""
        proc = self._server.proc if self._server is not None else None
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            hint = " (SIGSEGV: see README, 'llama.cpp crashes')" if code == -11 else ""
            raise ServerDied(
                f"the embedded llama.cpp server exited with code {code}{hint}; answers so far are cached. "
                + self._server.log_tail()
            )

    def _entry(self, key: str, text: str, pt: int, ct: int, finish: str | None) -> dict:
        """One line of llm_cache.jsonl."""
        usage = {"prompt_tokens": pt, "completion_tokens": ct}
        return {"key": key, "model": self.cfg.model, "text": text, "usage": usage, "finish_reason": finish}

    def _flush_cache(self) -> None:
        """Append the answers received since the last flush to the cache file (one write, flushed to the OS)."""
        rows, self._unsaved = self._unsaved, []
        if rows:
            append_jsonl(self.cache_path, rows, fsync=self.cfg.cache_fsync)

    def _delay(self, e: BaseException | None, attempt: int) -> float:
        """Wait after failed attempt number `attempt`: the server's Retry-After (capped), else exponential + jitter."""
        cap, first, ra = self.cfg.retry_max_wait_s, self.cfg.retry_initial_s, _retry_after(e)
        if ra is not None:
            return min(max(ra, 0.0), cap)
        return min(cap, first * 2 ** (attempt - 1)) + random.uniform(0, first)

    def _body(self, req: ChatRequest) -> dict:
        style = self.cfg.response_format_style
        if style == "auto":
            style = "llama_cpp" if self.cfg.base_url is None else "openai"
        return request_body(req, self.cfg.model, style)

    def _describe(self, e: BaseException, attempts: int) -> str:
        """A readable error for ChatResult.error, with the API key masked should the server echo it."""
        if isinstance(e, openai.APIStatusError):
            err = e.body.get("error", e.body) if isinstance(e.body, dict) else None
            msg = f"HTTP {e.status_code}: {(err.get('message') if isinstance(err, dict) else None) or e.message}"
        elif isinstance(e, openai.APITimeoutError):
            msg = f"timed out after {self.cfg.timeout_s:g} s"
        else:
            msg = f"{type(e).__name__}: {e}"
        if _retryable(e):
            msg = f"gave up after {attempts} attempts; last error: {msg}"
        key = os.environ.get(self.cfg.api_key_env)
        return msg.replace(key, "***") if key and len(key) >= 8 else msg

    # ---- usage and budget ----------------------------------------------------------------------------------
    def _cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        p, c = self.cfg.price_prompt_per_1m, self.cfg.price_completion_per_1m
        return (prompt_tokens * p + completion_tokens * c) / 1e6

    def _estimate_usd(self, req: ChatRequest) -> float:
        """A conservative guess before sending: 3 characters per prompt token, every allowed output token."""
        return self._cost(sum(len(str(m.get("content", ""))) + 16 for m in req.messages) / 3, req.max_tokens)

    def _reserve(self, est: float) -> bool:
        """True if the request may go out under cfg.budget_usd (spent + in flight + this one)."""
        budget = self.cfg.budget_usd
        if budget is not None and not self.budget_exhausted:
            spent = self._cost(self._n["prompt_tokens"], self._n["completion_tokens"])
            if spent + self._inflight_usd + est > budget:
                self.budget_exhausted = True
                msg = f"{self.stage}: budget ${budget:g} reached (spent ${spent:.4f}); no more requests"
                warnings.warn(BudgetExceeded(msg), stacklevel=2)
        if self.budget_exhausted:
            return False
        self._inflight_usd += est
        return True

    def _write_usage(self) -> None:
        """usage_dir/<stage>.json: "session" = this LLM object; "total" = summed over every session of the stage."""
        if self.usage_path is None:
            return
        session, prior = self.usage(), self._prior
        total: dict[str, Any] = {k: prior.get(k, 0) + self._n[k] for k in _COUNTERS}
        total.update(cost_usd=round(prior.get("cost_usd", 0.0) + session["cost_usd"], 6))
        total.update(sessions=prior.get("sessions", 0) + 1)
        doc = {"stage": self.stage, "model": self.cfg.model, "base_url": self.cfg.base_url, "total": total}
        write_json(self.usage_path, {**doc, "session": session})
