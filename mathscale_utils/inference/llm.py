"""One chat client for every stage: OpenAI-compatible endpoints, the embedded llama.cpp server, the Batch API.

    with LLM.for_stage(P, "01_extract") as llm:            # this run's `llm:` section, cache and usage files
    with LLM(cfg, cache_dir=run_dir / "cache", stage="01_extract", usage_dir=run_dir / "usage") as llm:
        results = llm.chat_many([ChatRequest(messages=[...], temperature=0.0, max_tokens=256,
                                             response_format={"type": "json_object"}), ...], desc="extract")
        # results[i] is a ChatResult for requests[i]: .text, .error, .cached, .prompt_tokens, ...
        u = llm.usage()   # u["ok"], u["failed"], u["budget_stopped"] (this session); u["total"][...] (all sessions)

The client is the transport; it holds a ``ReplyCache`` (``cache.py``: each answer is appended to
cache_dir/llm_cache.jsonl when it arrives, so a re-run or a resumed run repeats no call) and a ``SpendLedger``
(``ledger.py``: counts, spend, the budget, the usage files). With ``backend: batch`` the requests that are not cached
go to the provider's Batch API first (``batch.py``, which takes the same cache and ledger); its replies land in the
cache, so the rest of the stage reads them as cache hits. Requests are posted with one
aiohttp session (the openai SDK costs about 1 ms more client CPU per request; see bench/bench_client.py). The API
key is read from os.environ[cfg.api_key_env] when requests are sent; it is never logged or written.

``llm.budget_usd`` caps what one run pays over all its stages and sessions (rules in ``ledger.py``); a refused
connection fails at once with "cannot connect to HOST:PORT", and after ``llm.max_connect_failures`` in a row the
rest of the batch fails with that message instead of being retried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import threading
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

from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.params import Params
from mathscale_utils.inference.batch import BatchRunner
from mathscale_utils.inference.cache import ReplyCache, model_id
from mathscale_utils.inference.capabilities import MODES_FILE, Shaped, Shaper
from mathscale_utils.inference.chat import LOCAL_API_KEY, ChatRequest, ChatResult, HTTPError, reply_text
from mathscale_utils.inference.ledger import BUDGET_ERROR, SpendLedger
from mathscale_utils.inference.server import LocalServer
from mathscale_utils.inference.weights import ensure_model

PENDING_ERROR = "Batch API job still running: run the stage again later"
_CONNECT_TIMEOUT_S = 30.0  # a host that does not accept the connection within this is counted as unreachable


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
        self.cache = ReplyCache(Path(cache_dir), fsync=cfg.cache_fsync)
        self.shaper = Shaper(cfg, self.model_id, Path(cache_dir) / MODES_FILE)  # requests valid for the model
        self.ledger = SpendLedger(
            cfg, stage, Path(usage_dir) / f"{stage}.json" if usage_dir is not None else None
        )
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
        self.cache.close()
        self.ledger.write(closing=True)
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
        after batch.max_wait_s come back with an error, and those the Batch API gave up on fail too (or, with
        batch.live_fallback, are sent live)."""
        requests = list(requests)
        if self.cfg.backend == "batch":
            self.prefetch(requests, desc)
        results, groups, todo = self._split(requests)
        if todo and self._batch is not None:
            pending = self._batch.pending()
            for key, _ in todo:
                if key in pending or not self.cfg.batch.live_fallback:
                    error = PENDING_ERROR if key in pending else self._batch.leftover_error(key)
                    for i in groups.pop(key):
                        results[i] = ChatResult(key, error=error)
            todo = [t for t in todo if t[0] in groups]
        if todo:
            future = self._submit(self._run(results, groups, todo, desc))
            try:
                future.result()
            except BaseException:  # e.g. KeyboardInterrupt in a notebook: stop the batch; answers are saved
                future.cancel()
                raise
        self.ledger.tally(results)
        if todo:
            self.ledger.write()
        return results

    async def achat_many(self, requests: Iterable[ChatRequest], desc: str = "") -> list[ChatResult]:
        results, groups, todo = self._split(requests)
        if todo:
            await asyncio.wrap_future(self._submit(self._run(results, groups, todo, desc)))
        self.ledger.tally(results)
        if todo:
            await asyncio.to_thread(self.ledger.write)
        return results

    def prefetch(self, requests: Iterable[ChatRequest], desc: str = "") -> bool:
        """Backend "batch": submit the uncached requests to the provider's Batch API and wait for them (at most
        batch.max_wait_s); replies land in the cache. True when none is still running. Backend "chat": True.

        The requests are taken batch.max_requests_per_job at a time (an iterator of 2M is never held at once)."""
        if self.cfg.backend != "batch":
            return True
        if self._batch is None:
            self._batch = BatchRunner(
                self.cache,
                self.ledger,
                self.cfg,
                self.batch_dir,
                self.cfg.batch,
                self.model_id,
                self.stage,
                shaper=self.shaper,
            )
        it = iter(requests)
        while part := list(itertools.islice(it, self.cfg.batch.max_requests_per_job)):
            self._batch.submit(part, desc)
        self._batch.wait()
        return not self._batch.unfinished()

    def usage(self) -> dict:
        """This session's counts and spend, the stage's total and the run's spend (see SpendLedger.usage)."""
        return self.ledger.usage()

    def key(self, request: ChatRequest) -> str:
        """The cache key of a request as this client sends it to its model (see capabilities.Shaper)."""
        return self.shaper.shape(request).key

    # ---- batch machinery -----------------------------------------------------------------------------------
    def _split(self, requests: Iterable[ChatRequest]) -> tuple[list, dict[str, list[int]], list]:
        """Answer cache hits now, and requests the model cannot take (shaped with an error) with that error; group
        the rest by key so that duplicates within a batch cost one call."""
        requests = list(requests)
        results: list[Any] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        todo: list[tuple[str, Shaped]] = []
        for i, req in enumerate(requests):
            shaped = self.shaper.shape(req)
            k = shaped.key
            if (hit := self.cache.get(k)) is not None:
                results[i] = hit
                self.ledger.count("cache_hits")
            elif shaped.error is not None:
                results[i] = ChatResult(k, error=shaped.error)
            elif k in groups:
                groups[k].append(i)
            else:
                groups[k] = [i]
                todo.append((k, shaped))
        return results, groups, todo

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
                log = self.cache.path.parent / f"llama_server.{self.stage}.log"
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
        self.ledger.refresh()  # other stages may have spent since
        n, pending = len(results), iter(todo)
        done = n - sum(map(len, groups.values()))
        bar = tqdm(total=n, initial=done, desc=desc or self.stage, unit="req", disable=not self.progress)

        def postfix() -> None:
            c = self.ledger.n
            bar.set_postfix(tok_in=c["prompt_tokens"], tok_out=c["completion_tokens"], fail=c["failures"])

        async def worker() -> None:
            for key, shaped in pending:  # one shared iterator: each request is taken by exactly one worker
                res = await self._one(key, shaped)
                first, *dups = groups[key]
                results[first] = res
                for j in dups:
                    results[j] = replace(res, cached=res.ok)
                self.ledger.count("cache_hits", len(dups) if res.ok else 0)
                if bar.update(1 + len(dups)):  # True only when the bar redraws (at most 10 times a second)
                    postfix()

        try:  # 2x workers: a request sleeping in backoff holds no slot, so another one can use it
            await asyncio.gather(*(worker() for _ in range(min(len(todo), 2 * self.cfg.concurrency))))
        finally:
            self.cache.flush()
            postfix()
            bar.close()

    async def _one(self, key: str, shaped: Shaped) -> ChatResult:
        """One request with retries -> ChatResult. Never raises: failures come back as ChatResult.error. A 400 that
        refuses the response_format is asked again once in the next weaker mode (see capabilities.Shaper)."""
        req = shaped.request
        est, url = self.ledger.estimate_usd(req), self._urls[req.path]
        body, weaker = json.dumps(shaped.body).encode(), None
        assert self._sem is not None  # down and budget are checked once a slot is free: waiting costs nothing
        async with self._sem:
            if self._down is not None:
                return ChatResult(key, error=self._down)
            stale = self.shaper.current(shaped)  # its response_format mode was refused while it waited
            if stale is shaped:
                if not self.ledger.reserve(est):
                    return ChatResult(key, error=BUDGET_ERROR)
                self.ledger.count("requests")
                try:  # the first attempt skips tenacity, whose async machinery costs ~50 us of CPU per request
                    data, error = await self._post(url, body, retry=False), None
                except ServerDied:
                    self.ledger.release(est)
                    raise
                except Exception as e:
                    data, error = None, e
        if stale is not shaped:
            return await self._again(stale, 0)
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
            if not (
                isinstance(e, HTTPError)
                and e.about_response_format
                and self.shaper.refused(shaped.mode, e.message)
            ):
                self.ledger.count("failures")
                return ChatResult(key, error=self._describe(e, attempts), attempts=attempts)
            weaker = self.shaper.shape(req)
        finally:
            self.ledger.release(est)
            self.ledger.count("retries", attempts - 1)
        if weaker is not None:
            return await self._again(weaker, attempts)
        return self._answer(key, data, attempts)

    async def _again(self, shaped: Shaped, attempts: int) -> ChatResult:
        """Ask a request again in a weaker response_format mode (its own key: maybe cached already)."""
        if shaped.error is not None:
            return ChatResult(shaped.key, error=shaped.error, attempts=attempts)
        if (hit := self.cache.get(shaped.key)) is not None:  # another request of this batch asked it already
            self.ledger.count("cache_hits")
            return replace(hit, attempts=attempts)
        res = await self._one(shaped.key, shaped)
        return replace(res, attempts=res.attempts + attempts)

    def _answer(self, key: str, data: dict, attempts: int) -> ChatResult:
        """Count a completion's tokens and cache its text (appended to the file at the end of this loop pass)."""
        choice = data["choices"][0]
        text, finish = reply_text(choice), choice.get("finish_reason")
        u = data.get("usage") or {}
        pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        self.ledger.count("prompt_tokens", pt)
        self.ledger.count("completion_tokens", ct)
        self.ledger.write_if_due()
        if text is None:
            self.ledger.count("failures")
            return ChatResult(key, error=f"reply has no content (finish_reason={finish})", attempts=attempts)
        if not self.cache.unsaved:  # answers that arrive in the same event-loop pass are appended together
            asyncio.get_running_loop().call_soon(self.cache.flush)
        self.cache.put(key, self.cfg.model, text, pt, ct, finish, flush=False)
        return ChatResult(key, text, None, False, pt, ct, finish, attempts)

    async def _post(self, url: URL, body: bytes, retry: bool) -> dict:
        """One HTTP attempt (the caller holds a slot) -> the parsed completion. Raises on HTTP errors, unusable
        bodies and transport errors (a failed connection as CannotConnect)."""
        assert self._http is not None
        self.ledger.count("attempts")
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

    def _delay(self, e: BaseException | None, attempt: int) -> float:
        """Wait after failed attempt number `attempt`: the server's Retry-After (capped at retry_max_wait_s), else
        "full jitter": uniform in [0, retry_initial_s * 2^(attempt-1)], the bound capped at retry_max_wait_s."""
        cap = self.cfg.retry_max_wait_s
        ra = e.retry_after if isinstance(e, HTTPError) else None
        if ra is not None:
            return min(max(ra, 0.0), cap)
        return random.uniform(0, min(cap, self.cfg.retry_initial_s * 2 ** (attempt - 1)))

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
