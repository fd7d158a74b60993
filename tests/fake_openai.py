"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, with scripted answers and faults.

In-process (tests):  with FakeOpenAI(answer=lambda body: "hi") as fake: ... fake.base_url ...
As a process (bench): python tests/fake_openai.py --latency 0.2 --fault-rate 0.1   (prints "PORT <n>" when ready)

Faults are chosen per request by `fault(prompt, attempt)` (attempt = 1 for the first time a prompt is seen) and
can be: "429" (with Retry-After), "500", "400", "401", "timeout" (hang, then close without answering), "drop"
(close the socket halfway through the body), "malformed" (200 with a broken JSON body), "stall" (hang until the
server stops; never completes). `prompt` is the content of the last message.

With ``provider=True`` it checks every body as api.openai.com does (openai_rules.py: the model exists, its
response_format, JSON mode's "json" word, roles, stop strings, max_tokens, the context window, ...) and answers a
refused one with the provider's status and error JSON; usage counts tokens as openai_rules.prompt_tokens does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai_rules
from aiohttp import web

EXTRACTION_REPLY = json.dumps(
    {
        "topics": ["Arithmetic - Fractions", "Algebra - Linear equations"],
        "knowledge_points": [
            "Adding fractions with unlike denominators",
            "Solving a one-step linear equation",
            "Converting a word problem into an equation",
        ],
    }
)

Answer = Callable[[dict], "str | dict"] | dict[str, str] | list[str] | None
Fault = Callable[[str, int], "str | None"] | None


def prompt_of(body: dict) -> str:
    """The text the counters are keyed by: the content of the last message, or a text completion's prompt."""
    if "prompt" in body:
        return str(body["prompt"])
    msgs = body.get("messages") or [{}]
    content = msgs[-1].get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


def fail_first(
    kind: str, times: int = 1, prompts: set[str] | None = None
) -> Callable[[str, int], str | None]:
    """A fault plan: the first `times` attempts of each prompt (or only of `prompts`) fail with `kind`."""
    return lambda p, n: kind if n <= times and (prompts is None or p in prompts) else None


def random_faults(
    rate: float, kinds: tuple[str, ...] = ("429", "500"), seed: int = 0
) -> Callable[[str, int], str | None]:
    """A fault plan: each request independently fails with probability `rate`, kind drawn from `kinds`."""
    rng = random.Random(seed)
    return lambda p, n: rng.choice(kinds) if rng.random() < rate else None


class FakeOpenAI:
    """POST /v1/chat/completions and /v1/completions, GET /v1/models and GET /stats, from a background thread.

    answer: None (reply "echo: <prompt>"), a callable(request body) -> text or {"content", "usage",
    "finish_reason"}, a dict prompt -> text, or a list of texts consumed in order. All attributes can be
    changed while the server runs.
    """

    def __init__(
        self,
        answer: Answer = None,
        fault: Fault = None,
        latency_s: float | Callable[[str], float] = 0.0,
        retry_after: str | None = "0",
        hang_s: float = 30.0,
        stall_after: int | None = None,  # admit this many requests, then hang all later ones
        model: str = "fake-model",
        provider: bool = False,  # refuse what api.openai.com refuses (openai_rules.py), as it does
    ):
        self.answer, self.fault, self.latency_s = answer, fault, latency_s
        self.retry_after, self.hang_s, self.stall_after, self.model = retry_after, hang_s, stall_after, model
        self.provider = provider
        self.refused: Counter[str] = Counter()  # provider mode: refusals by error code (or param)
        self.received: Counter[str] = Counter()  # requests seen, per prompt
        self.completed: Counter[str] = Counter()  # full 200 responses written, per prompt
        self.faults_sent: Counter[str] = Counter()  # per fault kind
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = self._admitted = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def total_completed(self) -> int:
        return sum(self.completed.values())

    def reset_counters(self) -> None:
        for c in (self.received, self.completed, self.faults_sent, self.bodies, self.headers, self.refused):
            c.clear()
        self.max_in_flight = self.in_flight

    # ---- answers -------------------------------------------------------------------------------------------
    def _reply(self, body: dict) -> dict:
        p = prompt_of(body)
        a = self.answer
        if a is None:
            out: Any = f"echo: {p}"
        elif callable(a):
            out = a(body)
        elif isinstance(a, dict):
            out = a.get(p, f"echo: {p}")
        else:
            out = a.pop(0) if a else f"echo: {p}"
        if isinstance(out, str):
            out = {"content": out}
        content = out.get("content")
        if self.provider:
            n_prompt = openai_rules.prompt_tokens(body)
        else:
            n_prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])) + 3
            n_prompt += len(str(body.get("prompt", "")).split())
        n_completion = len((content or "").split()) + 1
        usage = dict(out.get("usage") or {"prompt_tokens": n_prompt, "completion_tokens": n_completion})
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        if "prompt" in body:  # POST /v1/completions
            choice = {"index": 0, "text": content, "finish_reason": out.get("finish_reason", "stop")}
            return {
                "id": f"cmpl-{self.total_completed}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [choice],
                "usage": usage,
            }
        return {
            "id": f"chatcmpl-{self.total_completed}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": out.get("finish_reason", "stop"),
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }

    # ---- handlers ------------------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "received": sum(self.received.values()),
                "completed": self.total_completed,
                "faults": dict(self.faults_sent),
                "max_in_flight": self.max_in_flight,
                "distinct_completed": len(self.completed),
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat_inner(request)
        finally:
            self.in_flight -= 1

    async def _hang(self, request: web.Request, seconds: float | None) -> web.Response:
        assert self._release is not None
        try:
            await asyncio.wait_for(self._release.wait(), seconds)
        except TimeoutError:
            pass
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)

    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        """Provider mode: the answer api.openai.com gives to a request it refuses, or None."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer") or not auth[len("Bearer") :].strip():
            err = {
                "message": "You didn't provide an API key.",
                "type": "invalid_request_error",
                "param": None,
            }
            return web.json_response({"error": {**err, "code": None}}, status=401)
        try:
            if request.path.endswith("/chat/completions"):
                openai_rules.check_chat(body)
            else:
                openai_rules.check_completion(body)
        except openai_rules.Refusal as r:
            self.refused[r.error["code"] or r.error["param"] or "refused"] += 1
            return web.json_response(r.body(), status=r.status)
        return None

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        p = prompt_of(body)
        self.received[p] += 1
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.provider and (refused := self._refusal(request, body)) is not None:
            return refused
        latency = self.latency_s(p) if callable(self.latency_s) else self.latency_s
        if latency:
            await asyncio.sleep(latency)
        if self.stall_after is not None:
            if self._admitted >= self.stall_after:
                return await self._hang(request, None)
            self._admitted += 1
        kind = self.fault(p, self.received[p]) if self.fault else None
        if kind:
            self.faults_sent[kind] += 1
        if kind == "429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            err = {
                "error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit"}
            }
            return web.json_response(err, status=429, headers=headers)
        if kind in ("500", "400", "401", "404"):
            msg = f"injected {kind}"
            if kind == "401":  # like api.openai.com, echo the key that was sent (clients must not log it)
                msg = f"Incorrect API key provided: {request.headers.get('Authorization', '').removeprefix('Bearer ')}"
            err = {"error": {"message": msg, "type": "fake_error", "code": None}}
            return web.json_response(err, status=int(kind))
        if kind == "timeout":
            return await self._hang(request, self.hang_s)
        if kind == "stall":
            return await self._hang(request, None)
        if kind == "malformed":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        data = json.dumps(self._reply(body)).encode()
        if kind == "drop":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.01)
            if request.transport is not None:
                request.transport.abort()
            return resp
        resp = web.Response(body=data, content_type="application/json")
        await resp.prepare(request)
        await resp.write_eof()
        self.completed[p] += 1
        return resp

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def _serve(self, port: int) -> None:
        self._stop, self._release = asyncio.Event(), asyncio.Event()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        self._release.set()
        await runner.cleanup()

    def start(self, port: int = 0) -> FakeOpenAI:
        """Serve from a background thread on `port` (0: any free port)."""

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve(port))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def release_stalled(self) -> None:
        """Let every hanging request (stall/timeout faults, stall_after) close its connection now."""
        if self._loop and self._release:
            self._loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        if self._loop and self._stop and self._thread:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--json-reply", action="store_true", help="answer every prompt with an extraction-shaped JSON"
    )
    a = ap.parse_args()
    fault = random_faults(a.fault_rate, seed=a.seed) if a.fault_rate else None
    fake = FakeOpenAI(
        answer=(lambda body: EXTRACTION_REPLY) if a.json_reply else None, latency_s=a.latency, fault=fault
    )

    async def run() -> None:
        task = asyncio.create_task(fake._serve(a.port))
        while not fake._ready.is_set():
            await asyncio.sleep(0.01)
        print(f"PORT {fake.port}", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
