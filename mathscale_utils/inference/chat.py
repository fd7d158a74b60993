"""What an LLM call is: the request, its result, the request body sent over HTTP, the error an HTTP answer makes,
and the one "ask, validate, retry once" loop that stages use to get a reply they can parse.

    asked = ask_validated(llm, requests, parse=lambda res, first: parse_reply(res.text), fix=retry_request)
    asked[i].value        # what parse() returned, or None when the reply stayed unusable or the request failed
    asked[i].problem      # why not (the parser's message, or "request failed: ...")
    asked[i].results      # the ChatResult of each attempt (1 or 2)

The client that sends requests (cache, retries, concurrency, budget, backends) is ``llm.LLM``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

LOCAL_API_KEY = "sk-local"  # the embedded and loopback servers check no key, but the openai client needs one


@dataclass(slots=True)
class ChatRequest:
    """One chat completion, or with ``prompt`` a raw text completion (/completions: base models have no chat
    template, and MWPBench's official driver sends them the bare Alpaca prompt). response_format in llama.cpp form:
    {"type": "json_object"[, "schema": {...}]}."""

    messages: list[dict] = field(default_factory=list)
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = None
    stop: list[str] | None = None
    response_format: dict | None = None
    prompt: str | None = None

    @property
    def path(self) -> str:
        """The endpoint, relative to the base URL."""
        return "/chat/completions" if self.prompt is None else "/completions"

    def key(self, model: str, delivery: dict | None = None) -> str:
        """Cache key: sha256 of the canonical JSON of everything that determines the answer. ``delivery`` holds what
        was sent differently from what the request asks, so that the model allows it (capabilities.Shaper: a
        weaker response_format mode, a lower max_tokens): an answer given under those terms never stands in for
        one given as asked."""
        parts = [
            model,
            self.messages,
            self.temperature,
            self.max_tokens,
            self.seed,
            self.stop,
            self.response_format,
        ]
        if self.prompt is not None:  # chat keys stay as they always were
            parts.append({"prompt": self.prompt})
        if delivery:  # so do the keys of requests sent as asked
            parts.append({"delivery": delivery})
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(slots=True)
class ChatResult:
    """The outcome of one ChatRequest: text on success, error (a readable message) on failure."""

    key: str
    text: str | None = None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    attempts: int = 0  # HTTP attempts made for it by this call (0 when cached)

    @property
    def ok(self) -> bool:
        return self.error is None


def response_mode(response_format: dict | None) -> str:
    """The mode a response_format asks for: "json_schema" (a schema, in llama.cpp's or OpenAI's form),
    "json_object" (any JSON object) or "text" (none)."""
    if not response_format or response_format.get("type") == "text":
        return "text"
    if "schema" in response_format or response_format.get("type") == "json_schema":
        return "json_schema"
    return "json_object"


def request_body(
    req: ChatRequest, model: str, style: Literal["openai", "llama_cpp"] = "openai", mode: str | None = None
) -> dict:
    """The body of a request (for req.path). A JSON schema goes in llama.cpp's form ({"type": "json_object",
    "schema": ...}) to the embedded server and in OpenAI's ({"type": "json_schema", ...}) to everything else.
    ``mode`` sends the response_format in a weaker mode than asked: "json_object" (schema dropped) or "text"
    (no response_format: the prompt's instructions alone)."""
    body: dict[str, Any] = {"model": model}
    body.update({"messages": req.messages} if req.prompt is None else {"prompt": req.prompt})
    body.update(temperature=req.temperature, max_tokens=req.max_tokens)
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = req.stop
    rf, mode = req.response_format, mode or response_mode(req.response_format)
    if rf and mode != "text":
        if mode == "json_object":
            rf = {"type": "json_object"}
        elif style == "openai" and "schema" in rf:
            rf = {"type": "json_schema", "json_schema": {"name": "reply", "schema": rf["schema"]}}
        body["response_format"] = rf
    return body


_LETTERS = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def estimate_text_tokens(text: str) -> int:
    """A generous count of a text's tokens, with no tokenizer (none is available offline): three ASCII letters a
    token, two spaces a token, and every other character (digits, LaTeX symbols, punctuation, other scripts) a token
    of its own. OpenAI's tokenizers give fewer on English prose (about 4 characters a token) and on MATH's LaTeX: on
    6,000 MWPBench train questions with solutions this runs 1.3x the count of tests/openai_rules.py (a harsher
    tokenizer than OpenAI's), under it on 0.1% and by 4% at most."""
    n = len(text)
    letters = n - len(text.translate(_LETTERS))
    spaces = text.count(" ")
    return -(-(2 * letters + 3 * spaces + 6 * (n - letters - spaces)) // 6)


def estimate_prompt_tokens(messages: Sequence[dict] | None = None, prompt: str | None = None) -> int:
    """estimate_text_tokens of a prompt, or of chat messages with 4 tokens of framing each and 3 to prime the reply
    (how OpenAI counts chat messages). Budget checks, the context window and Batch API queue limits rely on it not
    being low."""
    if prompt is not None:
        return estimate_text_tokens(prompt)
    return 3 + sum(estimate_text_tokens(str(m.get("content") or "")) + 4 for m in messages or ())


class HTTPError(Exception):
    """An HTTP error answer: its status, the server's message and the wait it asked for (Retry-After, seconds)."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.retry_after, self.param, self.code = status, retry_after, param, code
        self.message = message

    @property
    def about_response_format(self) -> bool:
        """A 400 that refuses the response_format (OpenAI names it in "param", or at least in the message)."""
        return self.status == 400 and (self.param == "response_format" or "response_format" in self.message)

    @classmethod
    def from_answer(
        cls, status: int, body: bytes, headers: Mapping[str, str], reason: str | None = None
    ) -> HTTPError:
        """The message of an OpenAI-style body ({"error": {"message": ...}}, else the body's start) and the
        Retry-After(-ms) header in seconds (an HTTP date is ignored: the client's own backoff applies)."""
        param = code = None
        try:
            doc = json.loads(body)
            err = doc.get("error", doc) if isinstance(doc, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err
            if isinstance(err, dict):
                param, code = err.get("param"), err.get("code")
        except ValueError:
            msg = None
        msg = str(msg) if msg else body[:300].decode(errors="replace").strip() or reason or "no message"
        try:
            ms, s = headers.get("retry-after-ms"), headers.get("retry-after")
            wait = float(ms) / 1000 if ms is not None else float(s) if s is not None else None
        except ValueError:
            wait = None
        return cls(status, msg, wait, str(param) if param else None, str(code) if code else None)


_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_DECODER = json.JSONDecoder(strict=False)


def reply_text(choice: dict) -> str | None:
    """The text of one choice of a chat or a text completion."""
    if "message" in choice:
        return choice["message"].get("content") if isinstance(choice["message"], dict) else None
    return choice.get("text")


def parse_json_reply(text: str | None) -> dict | None:
    """The first JSON object in a model reply (inside code fences if any), or None. Raw newlines are allowed."""
    if not text:
        return None
    for chunk in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, _ = _DECODER.raw_decode(chunk, i)
                if isinstance(obj, dict):
                    return obj
            except json.JSONDecodeError:
                pass
            i = chunk.find("{", i + 1)
    return None


# ---- ask, validate, retry once --------------------------------------------------------------------------------

T = TypeVar("T")


class Unusable(ValueError):
    """Raised by a parser: the reply arrived but cannot be used; the message says why (it goes into the retry)."""


class Sender(Protocol):
    def chat_many(self, requests: Sequence[ChatRequest], desc: str = "") -> list[ChatResult]: ...


@dataclass
class Asked(Generic[T]):
    """One request's outcome after at most two attempts."""

    value: T | None = None
    problem: str | None = None  # why value is None: the parser's message, or "request failed: ..."
    first_problem: str | None = None  # why the first reply was not used (what triggered the retry)
    results: list[ChatResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def failed(self) -> bool:
        """The last attempt never got a reply (transport error, budget): not the model's fault."""
        return bool(self.results) and not self.results[-1].ok


def ask_validated(
    llm: Sender,
    requests: Sequence[ChatRequest],
    parse: Callable[[ChatResult, ChatResult | None], T],
    fix: Callable[[ChatRequest, ChatResult, str], ChatRequest],
    desc: str = "",
) -> list[Asked[T]]:
    """Ask every request; parse each reply with ``parse(result, first_result)`` (first_result is None on the first
    attempt); a reply the parser rejects with ``Unusable`` is asked again once with ``fix(request, result,
    problem)``. A request that fails (no reply) is not retried here: the client already retried it."""
    out: list[Asked[T]] = [Asked() for _ in requests]
    retry: list[tuple[int, ChatRequest]] = []
    for i, (req, res) in enumerate(zip(requests, llm.chat_many(list(requests), desc=desc), strict=True)):
        _take(out[i], res, None, parse)
        if out[i].problem is not None and res.ok:
            out[i].first_problem = out[i].problem
            retry.append((i, fix(req, res, out[i].problem)))
    if retry:
        again = llm.chat_many([r for _, r in retry], desc=f"{desc} (retry)" if desc else "retry")
        for (i, _), res in zip(retry, again, strict=True):
            _take(out[i], res, out[i].results[0], parse)
    return out


def _take(a: Asked, res: ChatResult, first: ChatResult | None, parse: Callable) -> None:
    a.results.append(res)
    if not res.ok:
        a.value, a.problem = None, f"request failed: {res.error}"
        return
    try:
        a.value, a.problem = parse(res, first), None
    except Unusable as e:
        a.value, a.problem = None, str(e)
