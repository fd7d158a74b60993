"""The JSON Lines of the Batch API (batch.py): request lines and how they are cut into jobs, and the output and error
lines a finished job comes back with.

    {"custom_id": <cache key>, "method": "POST", "url": "/v1/chat/completions", "body": {...}}     a request line
    {"custom_id": ..., "response": {"status_code": 200, "body": <chat completion>}, "error": null}   an answer
    {"custom_id": ..., "response": {"status_code": 400, "body": {"error": {...}}}, "error": null}   refused
    {"custom_id": ..., "response": null, "error": {"code": "batch_expired", "message": ...}}        never ran
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from mathscale_utils.inference.chat import estimate_prompt_tokens

RETRYABLE = (408, 409, 429)  # and 5xx: a request line that failed so is resubmitted; other 4xx are given up


def read_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)


def line_tokens(body: dict) -> int:
    """A request's tokens as the provider's queue limit counts them: the prompt (estimated generously) + max_tokens."""
    return estimate_prompt_tokens(body.get("messages"), body.get("prompt")) + int(body.get("max_tokens") or 0)


def chunk_lines(
    lines: Sequence[dict], max_requests: int, max_bytes: int, max_tokens: int | None
) -> Iterator[list[dict]]:
    """Request lines cut into jobs within the per-batch limits: requests, bytes of the file and queued tokens."""
    chunk: list[dict] = []
    size = tokens = 0
    for line in lines:
        n, t = len(json.dumps(line, ensure_ascii=False).encode()) + 1, line_tokens(line["body"])
        if chunk and (
            len(chunk) >= max_requests
            or size + n > max_bytes
            or (max_tokens is not None and tokens + t > max_tokens)
        ):
            yield chunk
            chunk, size, tokens = [], 0, 0
        chunk.append(line)
        size, tokens = size + n, tokens + t
    if chunk:
        yield chunk


def completion(line: dict) -> tuple[str, str | None, int, int] | None:
    """(text, finish_reason, prompt_tokens, completion_tokens) of an answered line, or None."""
    resp = line.get("response") or {}
    body = resp.get("body") or {}
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if resp.get("status_code") != 200 or text is None:
        return None
    u = body.get("usage") or {}
    return (
        text,
        choice.get("finish_reason"),
        int(u.get("prompt_tokens") or 0),
        int(u.get("completion_tokens") or 0),
    )


def line_error(line: dict) -> tuple[int | None, dict]:
    """(HTTP status, OpenAI error object) of a failed line; status None for a line that never ran."""
    err = line.get("error")
    if isinstance(err, dict):
        return None, err
    resp = line.get("response") or {}
    body = resp.get("body") or {}
    e = body.get("error") if isinstance(body, dict) else None
    return resp.get("status_code"), e if isinstance(e, dict) else {}


def describe_error(line: dict) -> str:
    status, err = line_error(line)
    if status is None:
        return f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip()
    if status == 200:
        return "no content in reply"
    return f"HTTP {status}: {err.get('message') or 'no message'}"


def refusal(line: dict) -> tuple[bool, bool]:
    """(a client error: the same body would be refused again, the error is about the response_format)."""
    status, err = line_error(line)
    client = status is not None and 400 <= status < 500 and status not in RETRYABLE
    about_format = status == 400 and (err.get("param") == "response_format" or "response_format" in str(err))
    return client, about_format
