"""One chat client for every stage: OpenAI-compatible endpoints, the embedded llama.cpp server, the Batch API.

    with LLM.for_stage(P, "01_extract") as llm:            # this run's `llm:` section, cache and usage files
    with LLM(cfg, cache_dir=run_dir / "cache", stage="01_extract", usage_dir=run_dir / "usage") as llm:
        results = llm.chat_many([ChatRequest(messages=[...], temperature=0.0, max_tokens=256,
                                             response_format={"type": "json_object"}), ...], desc="extract")
        # results[i] is a ChatResult for requests[i]: .text, .error, .cached, .prompt_tokens, ...
        u = llm.usage()   # u["ok"], u["failed"], u["budget_stopped"] (this session); u["total"][...] (all sessions)

Each answer is appended to cache_dir/llm_cache.jsonl when it arrives: a re-run or a resumed run repeats no call.
With ``backend: batch`` the requests that are not cached go to the provider's Batch API first (``batch.py``); its
replies land in the same cache, so the rest of the stage reads them as cache hits. Requests are posted with one
aiohttp session (the openai SDK costs about 1 ms more client CPU per request; see bench/bench_client.py). The API
key is read from os.environ[cfg.api_key_env] when requests are sent; it is never logged or written.

``llm.budget_usd`` caps what one run pays over all its stages and sessions (rules in ``usage.py``); a refused
connection fails at once with "cannot connect to HOST:PORT", and after ``llm.max_connect_failures`` in a row the
rest of the batch fails with that message instead of being retried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import threading
import time
import warnings
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import tenacity as tn
from aiohttp.helpers import get_env_proxy_for_url
from tqdm.auto import tqdm
from yarl import URL

from mathscale_utils.core.config import LLMConfig
from mathscale_utils.core.io import read_jsonl
from mathscale_utils.core.params import Params
from mathscale_utils.inference.batch import BatchRunner
from mathscale_utils.inference.chat import (
    LOCAL_API_KEY,
    ChatRequest,
    ChatResult,
    HTTPError,
    reply_text,
    request_body,
)
from mathscale_utils.inference.models import LocalServer, ensure_model
from mathscale_utils.inference.usage import COUNTERS, UsageFile

CACHE_FILE = "llm_cache.jsonl"
BUDGET_ERROR = "budget exceeded"
PENDING_ERROR = "Batch API job still running: run the stage again later"
_CONNECT_TIMEOUT_S = 30.0  # a host that does not accept the connection within this is counted as unreachable
_USAGE_EVERY_S = 1.0  # while answers arrive, the usage file is rewritten at most this often


class BudgetExceeded(UserWarning):
    """Warned once when cfg.budget_usd stops new requests; those get error "budget exceeded"."""


class CannotConnect(Exception):
    """No connection to the endpoint (refused, unknown host, no answer to connect); the message names host:port."""


class _BadResponse(Exception):
    """A 200 whose body is not a usable chat completion (retried: usually a proxy or transport glitch)."""


class ServerDied(RuntimeError):
    """The embedded llama.cpp server exited during a batch: retrying is pointless, so the batch stops."""


def _retryable(e: BaseException | None) -> bool:
    if isinstance(e, HTTPError):
        return e.status in (408, 409, 429) or e.status >= 500
    return isinstance(e, CannotConnect | TimeoutError | aiohttp.ClientError | _BadResponse)


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
    """What answers, for cache keys: cfg.identity when set (a served student: its base, the content hash of what
    stage 04 trained, how it is served), else the model name, plus the adapter's content hash with a LoRA."""
    if cfg.identity:
        return cfg.identity
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
        """cache_dir may be shared by stages and runs; usage_dir/<stage>.json gets the counts, and every usage file
        in usage_dir counts against cfg.budget_usd; progress shows a tqdm bar; batch_dir keeps the Batch API jobs
        of backend "batch" (default: <cache_dir>/../batches/<stage>)."""
        self.cfg, self.stage, self.progress = cfg, stage, progress
        self.batch_dir = Path(batch_dir) if batch_dir else Path(cache_dir).parent / "batches" / stage
        self._batch: Any = None  # the BatchRunner, made on first need
        self.model_id = model_id(cfg)
        self.cache_path = Path(cache_dir) / CACHE_FILE
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.usage_path = Path(usage_dir) / f"{stage}.json" if usage_dir is not None else None
        self._cache = _load_cache(self.cache_path)
        self._unsaved: list[dict] = []  # answers received but not appended yet (for at most one loop pass)
        self._cache_file: Any = None  # the cache file, open for appending while answers arrive
        self._n: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._batch_cost = 0.0  # Batch API replies collected in this session (batch.py reports them)
        self._usage = UsageFile(self.usage_path)
        self._earlier_usd = self._usage.spent_before()  # earlier sessions of every stage of the run
        self._inflight_usd = 0.0  # estimated cost of the requests in flight now
        self.budget_exhausted = False
        self._down: str | None = None  # why the endpoint is considered down (set after max_connect_failures)
        self._refused = 0  # connection failures in a row
        self._was_down = False  # down in an earlier call: one connection failure is enough to stop this one
        self._server: Any = None  # the embedded LocalServer, started on first need
        self._loop: asyncio.AbstractEventLoop | None = None  # our loop thread, with one session for all calls
        self._thread: threading.Thread | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._down_event: asyncio.Event | None = None
        self._hostport, self._urls = "", {}

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
        """Write the usage file (session closed), close the HTTP session and its loop, stop our embedded server."""
        if self._loop is not None and self._thread is not None:
            if self._http is not None:
                asyncio.run_coroutine_threadsafe(self._http.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
            self._loop = self._thread = self._http = self._sem = self._down_event = None
        self._flush_cache()
        if self._cache_file is not None:
            self._cache_file.close()
            self._cache_file = None
        self._write_usage(closing=True)
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ---- public API ----------------------------------------------------------------------------------------
    def chat(self, request: ChatRequest) -> ChatResult:
        return self.chat_many([request])[0]

    def chat_many(self, requests: Iterable[ChatRequest], desc: str = "") -> list[ChatResult]:
        """Results in input order. Works the same inside a running event loop (a notebook cell).

        The usage file is rewritten as answers arrive and after each call that sent requests; cache-only calls
        are counted in memory and written with the next one or on close, so that a cache hit stays cheap. With
        backend "batch" the uncached requests go through the Batch API first (see prefetch); those still running
        after batch.max_wait_s come back with an error, and those the Batch API gave up on are sent live."""
        requests = list(requests)
        if self.cfg.backend == "batch":
            self.prefetch(requests, desc)
        results, groups, todo = self._split(requests)
        if todo and self._batch is not None:
            pending = self._batch.pending()
            for key, _ in [t for t in todo if t[0] in pending]:
                for i in groups.pop(key):
                    results[i] = ChatResult(key, error=PENDING_ERROR)
            todo = [t for t in todo if t[0] not in pending]
        if todo:
            future = self._submit(self._run(results, groups, todo, desc))
            try:
                future.result()
            except BaseException:  # e.g. KeyboardInterrupt in a notebook: stop the batch; answers are saved
                future.cancel()
                raise
        self._tally(results)
        if todo:
            self._write_usage()
        return results

    async def achat_many(self, requests: Iterable[ChatRequest], desc: str = "") -> list[ChatResult]:
        results, groups, todo = self._split(requests)
        if todo:
            await asyncio.wrap_future(self._submit(self._run(results, groups, todo, desc)))
        self._tally(results)
        if todo:
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

    def cache_put(self, key: str, text: str, prompt_tokens: int = 0, completion_tokens: int = 0,
                  finish_reason: str | None = None) -> None:  # fmt: skip
        """Store an answer obtained elsewhere (e.g. a provider's batch API): chat_many will then find it."""
        self._cache[key] = entry = self._entry(key, text, prompt_tokens, completion_tokens, finish_reason)
        self._unsaved.append(entry)
        self._flush_cache()

    def add_batch_cost(self, usd: float) -> None:
        """Count the price of Batch API replies collected now (batch.py) in this session's spend."""
        self._batch_cost += usd

    def spent_usd(self) -> float:
        """What counts against cfg.budget_usd now: earlier sessions of every stage of this run (the usage dir),
        this session's live and Batch API cost, and the estimated cost of the requests in flight."""
        return self._earlier_usd + self._session_cost() + self._inflight_usd

    def usage(self) -> dict:
        """This session's counts (requests sent, HTTP attempts, retries, cache hits, failures, tokens, cost; ok /
        failed / budget_stopped results), "total" over every session of this stage (sessions, unclosed_usd: the
        in-flight estimates of sessions killed before closing) and run_spent_usd (what the budget counts)."""
        cost = self._cost(self._n["prompt_tokens"], self._n["completion_tokens"])
        session = {**self._n, "cost_usd": round(cost, 6), "batch_cost_usd": round(self._batch_cost, 6)}
        total, run_spent = self._usage.totals(session), round(self.spent_usd(), 6)
        return {
            **session,
            "budget_exhausted": self.budget_exhausted,
            "total": total,
            "run_spent_usd": run_spent,
        }

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

    def _tally(self, results: list[ChatResult]) -> None:
        """Count the results a call returns: ok, stopped by the budget, failed."""
        for r in results:
            kind = "ok" if r.error is None else "budget_stopped" if r.error == BUDGET_ERROR else "failed"
            self._n[kind] += 1

    def _submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Run `coro` on this LLM's own event-loop thread: the same path whether or not the caller has a
        running loop (a notebook cell does), and one HTTP session with its open connections serves every call."""
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

    async def _open(self) -> None:
        """The HTTP session (one for all calls: its connections stay open), on first use."""
        base_url, api_key = await asyncio.to_thread(self._endpoint)
        cfg, u = self.cfg, urlparse(base_url)
        self._hostport = f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"
        self._urls = {p: URL(base_url.rstrip("/") + p) for p in ("/chat/completions", "/completions")}
        try:  # HTTPS_PROXY / NO_PROXY as the openai SDK reads them, once (trust_env would, on every request,
            proxy, proxy_auth = get_env_proxy_for_url(URL(base_url))  # in a thread: ~0.1 ms of CPU each)
        except LookupError:
            proxy = proxy_auth = None
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.concurrency),  # the semaphore bounds requests in flight
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(
                total=cfg.timeout_s, sock_connect=min(cfg.timeout_s, _CONNECT_TIMEOUT_S)
            ),
            proxy=proxy,
            proxy_auth=proxy_auth,
        )
        self._sem = asyncio.Semaphore(cfg.concurrency)  # shared by concurrent calls
        self._down_event = asyncio.Event()

    async def _run(self, results: list, groups: dict[str, list[int]], todo: list, desc: str) -> None:
        """Send `todo` with at most cfg.concurrency requests in flight; fill `results` as answers arrive."""
        if self._http is None:
            await self._open()
        assert self._down_event is not None
        if self._down is not None:  # down in an earlier call: try again, but one connection failure stops it
            self._down, self._was_down = None, True
            self._down_event.clear()
        self._earlier_usd = self._usage.spent_before()  # other stages may have spent since
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
            await asyncio.gather(*(worker() for _ in range(min(len(todo), 2 * self.cfg.concurrency))))
        finally:
            self._flush_cache()
            postfix()
            bar.close()

    async def _one(self, key: str, req: ChatRequest) -> ChatResult:
        """One request with retries -> ChatResult. Never raises: failures come back as ChatResult.error."""
        est, url, body = self._estimate_usd(req), self._urls[req.path], json.dumps(self._body(req)).encode()
        assert self._sem is not None  # down and budget are checked once a slot is free: waiting costs nothing
        async with self._sem:
            if self._down is not None:
                return ChatResult(key, error=self._down)
            if not self._reserve(est):
                return ChatResult(key, error=BUDGET_ERROR)
            self._n["requests"] += 1
            try:  # the first attempt skips tenacity, whose async machinery costs ~50 us of CPU per request
                data, error = await self._post(url, body, retry=False), None
            except ServerDied:
                self._inflight_usd -= est
                raise
            except Exception as e:
                data, error = None, e
        attempts = 1
        try:
            if error is not None:
                if not _retryable(error) or self.cfg.max_retries < 2 or self._down is not None:
                    raise error
                await self._pause(self._delay(error, 1))
                retry = tn.AsyncRetrying(
                    stop=tn.stop_after_attempt(self.cfg.max_retries - 1)
                    | tn.stop_when_event_set(self._down_event),
                    wait=lambda rs: self._delay(rs.outcome and rs.outcome.exception(), rs.attempt_number + 1),
                    sleep=self._pause,  # the slot is free while a request sleeps
                    retry=tn.retry_if_exception(_retryable),
                    reraise=True,
                )
                async for attempt in retry:
                    with attempt:
                        if self._down is not None:
                            raise CannotConnect(self._down) from None
                        attempts += 1
                        async with self._sem:
                            data = await self._post(url, body, retry=True)
        except ServerDied:
            raise
        except Exception as e:  # every failure is reported per request; the batch goes on
            self._n["failures"] += 1
            return ChatResult(key, error=self._describe(e, attempts), attempts=attempts)
        finally:
            self._inflight_usd -= est
            self._n["retries"] += attempts - 1
        return self._answer(key, data, attempts)

    def _answer(self, key: str, data: dict, attempts: int) -> ChatResult:
        """Count a completion's tokens and cache its text (appended to the file at the end of this loop pass)."""
        choice = data["choices"][0]
        text, finish = reply_text(choice), choice.get("finish_reason")
        u = data.get("usage") or {}
        pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        self._n["prompt_tokens"] += pt
        self._n["completion_tokens"] += ct
        if time.monotonic() - self._usage.written_at > _USAGE_EVERY_S:
            self._write_usage()
        if text is None:
            self._n["failures"] += 1
            return ChatResult(key, error=f"reply has no content (finish_reason={finish})", attempts=attempts)
        self._cache[key] = entry = self._entry(key, text, pt, ct, finish)
        if not self._unsaved:  # answers that arrive in the same event-loop pass are appended together
            asyncio.get_running_loop().call_soon(self._flush_cache)
        self._unsaved.append(entry)
        return ChatResult(key, text, None, False, pt, ct, finish, attempts)

    async def _post(self, url: URL, body: bytes, retry: bool) -> dict:
        """One HTTP attempt (the caller holds a slot) -> the parsed completion. Raises on HTTP errors, unusable
        bodies and transport errors (a failed connection as CannotConnect)."""
        assert self._http is not None
        self._n["attempts"] += 1
        try:
            async with self._http.post(url, data=body) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    err = HTTPError.from_answer(resp.status, raw, resp.headers, resp.reason)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            self._check_server()
            raise self._cannot_connect(e, retry) from None
        except (aiohttp.ClientError, TimeoutError):
            self._check_server()
            raise
        self._refused, self._was_down = 0, False
        if resp.status >= 400:
            raise err
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

    def _cannot_connect(self, e: Exception, retry: bool) -> CannotConnect:
        """The error for a failed connection. After cfg.max_connect_failures in a row, one of them a retry (so the
        endpoint stayed unreachable over a backoff), the endpoint is down: the requests not sent yet fail at once
        with the same message, and those waiting to retry stop."""
        why = getattr(e, "os_error", None) or e
        if isinstance(why, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(e, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorDNSError):
            why = "no answer" if isinstance(e, aiohttp.ConnectionTimeoutError) else "unknown host"
        msg = f"cannot connect to {self._hostport} ({why})"
        self._refused += 1
        if self._down is None and (
            self._was_down or retry and self._refused >= self.cfg.max_connect_failures
        ):
            self._down = f"{msg}; the endpoint looks down ({self._refused} failed in a row): batch stopped"
            assert self._down_event is not None
            self._down_event.set()
        return CannotConnect(msg)

    async def _pause(self, seconds: float) -> None:
        """Back off for `seconds`, or less if the endpoint is found down meanwhile."""
        assert self._down_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._down_event.wait(), seconds)

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
        """Append the answers received since the last flush to the cache file: one write, flushed to the OS (the
        file stays open: opening it per write cost ~0.1 ms per answer)."""
        rows, self._unsaved = self._unsaved, []
        if rows:
            if self._cache_file is None:
                self._cache_file = open(self.cache_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._cache_file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._cache_file.flush()
            if self.cfg.cache_fsync:
                os.fsync(self._cache_file.fileno())

    def _delay(self, e: BaseException | None, attempt: int) -> float:
        """Wait after failed attempt number `attempt`: the server's Retry-After (capped at retry_max_wait_s), else
        "full jitter": uniform in [0, retry_initial_s * 2^(attempt-1)], the bound capped at retry_max_wait_s."""
        cap = self.cfg.retry_max_wait_s
        ra = e.retry_after if isinstance(e, HTTPError) else None
        if ra is not None:
            return min(max(ra, 0.0), cap)
        return random.uniform(0, min(cap, self.cfg.retry_initial_s * 2 ** (attempt - 1)))

    def _body(self, req: ChatRequest) -> dict:
        style = self.cfg.response_format_style
        if style == "auto":
            style = "llama_cpp" if self.cfg.base_url is None else "openai"
        return request_body(req, self.cfg.model, style)

    def _describe(self, e: BaseException, attempts: int) -> str:
        """A readable error for ChatResult.error, with the API key masked should the server echo it."""
        if self._down is not None and _retryable(e):  # stopped early: the endpoint is down
            msg = self._down
        elif isinstance(e, TimeoutError):
            msg = f"timed out after {self.cfg.timeout_s:g} s"
        elif isinstance(e, HTTPError | CannotConnect | _BadResponse):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {e}"
        if _retryable(e) and self._down is None and attempts > 1:
            msg = f"gave up after {attempts} attempts; last error: {msg}"
        key = os.environ.get(self.cfg.api_key_env)
        return msg.replace(key, "***") if key and len(key) >= 8 else msg

    # ---- usage and budget ----------------------------------------------------------------------------------
    def _cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        p, c = self.cfg.price_prompt_per_1m, self.cfg.price_completion_per_1m
        return (prompt_tokens * p + completion_tokens * c) / 1e6

    def _session_cost(self) -> float:
        return self._cost(self._n["prompt_tokens"], self._n["completion_tokens"]) + self._batch_cost

    def _estimate_usd(self, req: ChatRequest) -> float:
        """A conservative guess before sending: 3 characters per prompt token, every allowed output token."""
        return self._cost(sum(len(str(m.get("content", ""))) + 16 for m in req.messages) / 3, req.max_tokens)

    def _reserve(self, est: float) -> bool:
        """True if the request may go out under cfg.budget_usd (spent + in flight + this one); the usage file then
        holds its estimate before it is sent."""
        budget = self.cfg.budget_usd
        if budget is not None and not self.budget_exhausted:
            spent = self.spent_usd()
            if spent + est > budget:
                self.budget_exhausted = True
                msg = f"{self.stage}: budget ${budget:g} reached (spent ${spent:.4f} in this run); no more requests"
                warnings.warn(BudgetExceeded(msg), stacklevel=2)
        if self.budget_exhausted:
            return False
        self._inflight_usd += est
        if self._session_cost() + self._inflight_usd > self._usage.covered:
            self._write_usage()  # reserves twice what is in flight: about one write per `concurrency` requests
        return True

    def _write_usage(self, closing: bool = False) -> None:
        """Rewrite usage_dir/<stage>.json (see usage.py); while open, reserve twice the estimated cost in flight
        (at most the budget left), so that requests sent before the next write are covered too."""
        reserved = 2 * self._inflight_usd
        if self.cfg.budget_usd is not None:
            left = self.cfg.budget_usd - self._earlier_usd - self._session_cost()
            reserved = max(self._inflight_usd, min(reserved, left))
        head = {"stage": self.stage, "model": self.cfg.model, "base_url": self.cfg.base_url}
        self._usage.write(head, self.usage(), self._session_cost(), reserved, closing)
