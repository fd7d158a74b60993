"""Loopback stand-ins for the model servers stage 05 asks, answering what they serve as the real ones do:

- vLLM (`vllm serve MODEL [--served-model-name N] [--enable-lora --lora-modules NAME=PATH ...]`): GET /v1/models
  lists the model (its "root" the path it was started with) and each LoRA module (its "root" the adapter's path,
  its "parent" the base's name); a request naming any other model gets vLLM's 404 ("The model `x` does not exist.").
- llama.cpp's llama-server (`--alias NAME --lora PATH`): GET /v1/models lists the alias (no "root"), GET
  /lora-adapters the adapters with their scale; it answers whatever model a request names.

Each model answers a fixed text, so a test can tell who answered. In-process: `with FakeServed.vllm([...]) as s:`;
as a process (the `vllm serve` stand-in): python tests/fake_served.py MODEL ... --host H --port N, which also writes
its arguments to $VLLM_SHIM_ARGS when set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

BASE_ANSWER = " Let me think. " + "Maybe it is 7. " * 6  # the untrained base loops and declares nothing
STUDENT_ANSWER = " The answer is 18."


class FakeServed:
    """An OpenAI-compatible server that knows what it serves (see the module docstring)."""

    def __init__(self, kind: str, models: list[dict], adapters: list[dict] | None = None):
        self.kind, self.models, self.adapters = kind, models, adapters or []
        self.asked: list[str] = []  # the model named by each request answered
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @classmethod
    def vllm(cls, argv: list[str]) -> FakeServed:
        """What `vllm serve ARGV` serves."""
        model = argv[0]
        name = argv[argv.index("--served-model-name") + 1] if "--served-model-name" in argv else model
        models = [
            {
                "id": name,
                "root": model,
                "parent": None,
                "answer": STUDENT_ANSWER if "student" in name else BASE_ANSWER,
            }
        ]
        if "--lora-modules" in argv:
            for spec in argv[argv.index("--lora-modules") + 1 :]:
                if spec.startswith("--"):
                    break
                lora, path = spec.split("=", 1)
                models.append({"id": lora, "root": path, "parent": name, "answer": STUDENT_ANSWER})
        return cls("vllm", models)

    @classmethod
    def llama_cpp(cls, alias: str, lora: str | None = None) -> FakeServed:
        """What `llama-server --alias ALIAS [--lora LORA]` serves."""
        adapters = [{"id": 0, "path": lora, "scale": 1.0}] if lora else []
        return cls("llama_cpp", [{"id": alias, "answer": STUDENT_ANSWER if lora else BASE_ANSWER}], adapters)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _models(self, request: web.Request) -> web.Response:
        data = []
        for m in self.models:
            card = {"id": m["id"], "object": "model", "created": int(time.time())}
            if self.kind == "vllm":
                card.update(owned_by="vllm", root=m["root"], parent=m["parent"], max_model_len=4096)
            else:
                card.update(owned_by="llamacpp", meta={"n_params": 135_000_000})
            data.append(card)
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _lora(self, request: web.Request) -> web.Response:
        if self.kind != "llama_cpp":
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response(self.adapters)

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("model")
        model = next((m for m in self.models if m["id"] == name), None)
        if model is None and self.kind == "vllm":
            err = {
                "object": "error",
                "message": f"The model `{name}` does not exist.",
                "type": "NotFoundError",
            }
            return web.json_response({**err, "param": None, "code": 404}, status=404)
        model = model or self.models[0]  # llama-server answers with its one model, whatever the name
        self.asked.append(model["id"])
        usage = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
        if "prompt" in body:
            choice = {"index": 0, "text": model["answer"], "finish_reason": "stop"}
        else:
            msg = {"role": "assistant", "content": model["answer"]}
            choice = {"index": 0, "message": msg, "finish_reason": "stop"}
        return web.json_response(
            {"id": "x", "object": "completion", "model": name, "choices": [choice], "usage": usage}
        )

    async def serve(self, port: int = 0) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/lora-adapters", self._lora)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> FakeServed:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop and self._thread:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


def main(argv: list[str]) -> None:
    """`vllm serve` stand-in: serve what ARGV asks for on its --port."""
    if path := os.environ.get("VLLM_SHIM_ARGS"):
        Path(path).write_text(json.dumps(argv))
    port = int(argv[argv.index("--port") + 1])
    args = argv[: argv.index("--host")] if "--host" in argv else argv
    asyncio.run(FakeServed.vllm(args).serve(port))


if __name__ == "__main__":
    main(sys.argv[1:])
