"""A fake OpenAI-compatible Batch API (/v1/files, /v1/batches) on loopback, for tests: upload, create, status
transitions one per retrieve, output and error files, and a plan deciding each request's fate.

It enforces the Batch API's documented rules (openai_rules.py) as the provider does: a request file that breaks them
(a duplicate custom_id, a method other than POST, a url other than the batch's endpoint, two models, more than
50,000 requests, an empty file) fails its batch at validation with the provider's error codes; a file over 200 MB is
refused with 400; with ``enqueued_limit`` a batch whose tokens (prompt + max_tokens) would bring the model's queue of
unfinished batches past it fails with ``token_limit_exceeded``. With ``provider=True`` every request body is checked
as api.openai.com checks it (openai_rules.check_chat), and a refused one comes back in the error file with the status
and error JSON the live API would give."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import openai_rules
from aiohttp import web

Plan = Callable[[str, dict, int], str]  # (custom_id, body, submission number) -> "ok" | "fail" | "expire"


def echo(body: dict) -> str:
    return "reply to " + body["messages"][-1]["content"]


class FakeBatchAPI:
    """OpenAI-compatible Files + Batches endpoints. A batch advances one status per retrieve (validating ->
    in_progress -> finalizing -> terminal) unless `hold` is set; `plan` decides each request's fate."""

    def __init__(
        self,
        plan: Plan | None = None,
        answer: Callable[[dict], str | dict] = echo,
        fail_first_batch: bool = False,
        provider: bool = False,
        enqueued_limit: int | None = None,
        max_file_bytes: int = openai_rules.MAX_BATCH_BYTES,
        store: str | Path | None = None,
    ):
        self.plan = plan or (lambda cid, body, n: "ok")
        self.store = Path(store) if store else None  # file contents on disk, not in memory (bench_scale: GBs)
        self.answer, self.fail_first_batch = answer, fail_first_batch
        self.provider, self.enqueued_limit, self.max_file_bytes = provider, enqueued_limit, max_file_bytes
        self.peak_enqueued: dict[str, int] = {}  # model -> most tokens in unfinished batches at once
        self.refused: Counter[str] = Counter()  # error code -> batches failed at validation, or request lines
        self.hold = False
        self.files: dict[str, tuple[bytes, str, str]] = {}
        self.batches: dict[str, dict] = {}
        self.submissions: Counter[str] = Counter()  # custom_id -> times submitted in a created batch
        self.calls: Counter[str] = Counter()  # endpoint -> requests
        self.port = 0
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _file(self, data: bytes, purpose: str, name: str) -> dict:
        fid = f"file-{len(self.files) + 1:03d}"
        if self.store is not None:
            (self.store / fid).write_bytes(data)
        self.files[fid] = (b"" if self.store else data, purpose, name)
        return {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }

    async def upload(self, request: web.Request) -> web.Response:
        self.calls["files.create"] += 1
        form = await request.post()
        f = form["file"]
        if form.get("purpose") != "batch":
            return self._error(400, f"Invalid value: '{form.get('purpose')}'.", "purpose", "invalid_value")
        return web.json_response(self._file(f.file.read(), "batch", f.filename))

    def _error(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> web.Response:
        self.refused[code or param or str(status)] += 1
        err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        return web.json_response({"error": err}, status=status)

    async def content(self, request: web.Request) -> web.Response:
        self.calls["files.content"] += 1
        fid = request.match_info["fid"]
        if self.store is not None:
            return web.FileResponse(self.store / fid, headers={"Content-Type": "application/octet-stream"})
        return web.Response(body=self.files[fid][0], content_type="application/octet-stream")

    def _data(self, fid: str) -> bytes:
        return (self.store / fid).read_bytes() if self.store is not None else self.files[fid][0]

    async def create(self, request: web.Request) -> web.Response:
        self.calls["batches.create"] += 1
        body = await request.json()
        if body.get("endpoint") not in openai_rules.BATCH_ENDPOINTS:
            return self._error(400, f"Invalid value: '{body.get('endpoint')}'.", "endpoint", "invalid_value")
        if body.get("completion_window") != "24h":
            return self._error(400, "Invalid value: completion_window must be '24h'.", "completion_window")
        if body.get("input_file_id") not in self.files:
            return self._error(404, f"No such File object: {body.get('input_file_id')}", "input_file_id")
        data = self._data(body["input_file_id"])
        if len(data) > self.max_file_bytes:
            return self._error(400, "File is too large.", None, None)
        lines = []
        for x in data.decode().splitlines():
            if x.strip():
                try:
                    lines.append(json.loads(x))
                except ValueError:
                    lines.append(None)
        for line in lines:
            if isinstance(line, dict):
                self.submissions[line.get("custom_id")] += 1
        bid = f"batch_{len(self.batches) + 1:03d}"
        b = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        self.batches[bid] = {
            "obj": b,
            "lines": None if self.store else lines,  # with a store: read again from the input file when done
            "polls": 0,
            "rounds": [self.submissions[x.get("custom_id")] if isinstance(x, dict) else 0 for x in lines],
            "tokens": sum(
                openai_rules.prompt_tokens(x["body"]) + int(x["body"].get("max_tokens") or 0)
                for x in lines
                if isinstance(x, dict) and isinstance(x.get("body"), dict)
            ),
            "model": next(
                (x["body"].get("model") for x in lines if isinstance(x, dict) and "body" in x), None
            ),
        }
        return web.json_response(b)

    def _fail(self, st: dict, errors: list[dict]) -> None:
        b = st["obj"]
        b["status"], b["failed_at"] = "failed", int(time.time())
        b["errors"] = {"object": "list", "data": [{"param": None, **e} for e in errors]}
        self.refused.update(e["code"] for e in errors[:1])

    def _validate(self, st: dict) -> bool:
        """validating -> in_progress, or failed: the file's rules, then the model's queue of enqueued tokens."""
        errors = openai_rules.check_batch_file(st["lines"], st["obj"]["endpoint"])
        if errors:
            self._fail(st, errors)
            return False
        model = st["model"]
        queued = sum(
            o["tokens"]
            for o in self.batches.values()
            if o is not st and o["model"] == model and o["obj"]["status"] in ("in_progress", "finalizing")
        )
        if self.enqueued_limit is not None and queued + st["tokens"] > self.enqueued_limit:
            msg = (
                f"Enqueued token limit reached for {model} in organization org-fake. Limit: "
                f"{self.enqueued_limit:,} enqueued tokens. Please try again once some in_progress batches have "
                "been completed."
            )
            self._fail(st, [{"code": "token_limit_exceeded", "message": msg, "line": None}])
            return False
        self.peak_enqueued[model] = max(self.peak_enqueued.get(model, 0), queued + st["tokens"])
        return True

    def _request_error(self, cid: str, body: dict, endpoint: str) -> dict | None:
        """Provider mode: the error line of a request body the live API would refuse, else None."""
        try:
            (
                openai_rules.check_chat
                if endpoint == "/v1/chat/completions"
                else openai_rules.check_completion
            )(body)
        except openai_rules.Refusal as r:
            self.refused[r.error["code"] or r.error["param"] or "refused"] += 1
            resp = {"status_code": r.status, "request_id": "r", "body": r.body()}
            return {"id": f"batch_req_{cid[:8]}", "custom_id": cid, "response": resp, "error": None}
        return None

    def _finish(self, st: dict) -> None:
        b = st["obj"]
        if self.fail_first_batch and b["id"] == "batch_001":
            b["status"] = "failed"
            b["errors"] = {
                "object": "list",
                "data": [{"code": "invalid_file", "message": "injected validation failure"}],
            }
            return
        out, err, expired = [], [], False
        lines = st["lines"]
        if lines is None:
            lines = [json.loads(x) for x in self._data(b["input_file_id"]).decode().splitlines() if x.strip()]
        for line, n in zip(lines, st["rounds"], strict=True):
            cid, body = line["custom_id"], line["body"]
            if self.provider and (refusal := self._request_error(cid, body, b["endpoint"])) is not None:
                err.append(refusal)
                continue
            fate = self.plan(cid, body, n)
            if fate == "ok":
                a = self.answer(body)
                a = {"content": a} if isinstance(a, str) else a
                comp = {
                    "id": f"chatcmpl-{cid[:8]}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": a["content"]},
                            "finish_reason": a.get("finish_reason", "stop"),
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                out.append(
                    {
                        "id": f"batch_req_{cid[:8]}",
                        "custom_id": cid,
                        "response": {"status_code": 200, "request_id": "r", "body": comp},
                        "error": None,
                    }
                )
            elif fate == "fail":
                err.append(
                    {
                        "id": f"batch_req_{cid[:8]}",
                        "custom_id": cid,
                        "error": None,
                        "response": {
                            "status_code": 500,
                            "request_id": "r",
                            "body": {"error": {"message": "injected server error", "type": "server_error"}},
                        },
                    }
                )
            else:
                expired = True
                err.append(
                    {
                        "id": f"batch_req_{cid[:8]}",
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "not executed before the completion window expired",
                        },
                    }
                )
        b["status"] = "expired" if expired else "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if out:
            b["output_file_id"] = self._file(
                "".join(json.dumps(x) + "\n" for x in out).encode(), "batch_output", "out.jsonl"
            )["id"]
        if err:
            b["error_file_id"] = self._file(
                "".join(json.dumps(x) + "\n" for x in err).encode(), "batch_output", "err.jsonl"
            )["id"]

    async def retrieve(self, request: web.Request) -> web.Response:
        self.calls["batches.retrieve"] += 1
        st = self.batches[request.match_info["bid"]]
        b = st["obj"]
        if b["status"] in ("completed", "expired", "failed", "cancelled") or self.hold:
            return web.json_response(b)
        st["polls"] += 1
        if st["polls"] == 1:
            if self._validate(st):
                b["status"] = "in_progress"
        elif st["polls"] == 2:
            b["status"] = "finalizing"
        else:
            self._finish(st)
        return web.json_response(b)

    async def list(self, request: web.Request) -> web.Response:
        self.calls["batches.list"] += 1
        data = [st["obj"] for st in reversed(self.batches.values())]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def chat(self, request: web.Request) -> web.Response:
        self.calls["chat"] += 1  # the batch path must never get here
        return web.json_response({"error": {"message": "live calls are not expected"}}, status=400)

    def __enter__(self) -> FakeBatchAPI:
        def run() -> None:
            async def serve() -> None:
                app = web.Application(client_max_size=64 * 1024**2)
                app.router.add_post("/v1/files", self.upload)
                app.router.add_get("/v1/files/{fid}/content", self.content)
                app.router.add_post("/v1/batches", self.create)
                app.router.add_get("/v1/batches", self.list)
                app.router.add_get("/v1/batches/{bid}", self.retrieve)
                app.router.add_post("/v1/chat/completions", self.chat)
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self.port = runner.addresses[0][1]
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()
                await runner.cleanup()

            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
