"""OpenAI's documented request rules, as the fake servers (fake_openai.py provider mode, fake_batch.py) enforce them:
what api.openai.com refuses, with the status and the error JSON it answers ({"error": {"message", "type", "param",
"code"}}), so that the client is tested against a server that does not accept anything.

Kept apart from the client's own table (mathscale_utils/inference/capabilities.py) on purpose: a mistake there shows
up as a refused request here. Sources (read 2025-06):
  - model pages, platform.openai.com/docs/models: context windows and max output tokens
  - Structured Outputs guide: json_schema only on gpt-4o-mini, gpt-4o-2024-08-06 and later, gpt-4.1; JSON mode on
    gpt-3.5-turbo(-1106 on), gpt-4-turbo, gpt-4o, not gpt-4; "messages must contain the word 'json'" for json_object
  - Chat Completions reference: roles, temperature 0..2, stop up to 4 sequences, max_tokens, seed
  - error bodies as the API returns them (quoted in the openai SDK issues, e.g. openai-node #439, and in
    openai-python #887): "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this
    model.", "This model's maximum context length is N tokens. However, you requested ...", code
    "context_length_exceeded"; "The model `x` does not exist or you do not have access to it.", code
    "model_not_found" (404)
  - Batch API guide and reference: one model per input file, unique custom_id, method POST, url = the batch's
    endpoint, at most 50,000 requests and 200 MB per file, a per-model queue of enqueued tokens (a batch over it
    fails with errors[].code "token_limit_exceeded", "Enqueued token limit reached for <model> in organization
    ...": openai-python #2084)
"""

from __future__ import annotations

import re
from typing import Any

# name: (context window, max output tokens, json_schema, json_object). Exact ids: the API knows no prefixes.
MODELS: dict[str, tuple[int, int, bool, bool]] = {
    "gpt-3.5-turbo": (16_385, 4_096, False, True),
    "gpt-3.5-turbo-0125": (16_385, 4_096, False, True),
    "gpt-3.5-turbo-1106": (16_385, 4_096, False, True),
    "gpt-4": (8_192, 8_192, False, False),
    "gpt-4-turbo": (128_000, 4_096, False, True),
    "gpt-4o": (128_000, 16_384, True, True),
    "gpt-4o-2024-08-06": (128_000, 16_384, True, True),
    "gpt-4o-2024-05-13": (128_000, 4_096, False, True),
    "gpt-4o-mini": (128_000, 16_384, True, True),
    "gpt-4o-mini-2024-07-18": (128_000, 16_384, True, True),
    "gpt-4.1-mini": (1_047_576, 32_768, True, True),
}
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHAT_KEYS = set(
    "model messages temperature top_p n stream stop max_tokens max_completion_tokens presence_penalty "
    "frequency_penalty logit_bias logprobs top_logprobs user seed response_format tools tool_choice "
    "parallel_tool_calls stream_options store metadata".split()
)
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
_TOKEN = re.compile(r"\w{1,4}|[^\w\s]")


class Refusal(Exception):
    """A request the provider refuses: HTTP status and the error object it answers with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}

    def body(self) -> dict:
        return {"error": dict(self.error)}


def count_tokens(text: str) -> int:
    """The fake's tokenizer: words in pieces of up to 4 characters, each other symbol one token (about what
    cl100k does to English prose; no tokenizer ships offline)."""
    return len(_TOKEN.findall(text))


def prompt_tokens(body: dict) -> int:
    """Prompt tokens of a chat body as OpenAI counts them: the content, 3 per message, 3 to prime the reply."""
    if "prompt" in body:
        return count_tokens(str(body["prompt"]))
    msgs = body.get("messages") or []
    return 3 + sum(3 + count_tokens(str(m.get("content") or "")) for m in msgs if isinstance(m, dict))


def _model(body: dict) -> tuple[int, int, bool, bool]:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise Refusal(400, "you must provide a model parameter", None, None)
    if name not in MODELS:
        raise Refusal(
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            None,
            "model_not_found",
        )
    return MODELS[name]


def check_chat(body: Any) -> None:
    """Raise Refusal for a /v1/chat/completions body that api.openai.com would refuse."""
    if not isinstance(body, dict):
        raise Refusal(400, "We could not parse the JSON body of your request.", None, None)
    context, max_out, schema_ok, json_ok = _model(body)
    unknown = sorted(set(body) - CHAT_KEYS)
    if unknown:
        raise Refusal(400, f"Unrecognized request argument supplied: {unknown[0]}", None, None)
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise Refusal(
            400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not msgs:
        raise Refusal(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "
            "instead.",
            "messages",
            "empty_array",
        )
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise Refusal(
                400,
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', "
                "and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if not isinstance(m.get("content"), str | list) and not (role == "assistant" and "tool_calls" in m):
            raise Refusal(
                400,
                f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects, but got "
                f"{type(m.get('content')).__name__} instead.",
                f"messages[{i}].content",
                "invalid_type",
            )
    t = body.get("temperature", 1)
    if not isinstance(t, int | float) or not 0 <= t <= 2:
        raise Refusal(
            400,
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead.",
            "temperature",
            "decimal_above_max_value",
        )
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        raise Refusal(
            400,
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length "
            f"{len(stop)} instead.",
            "stop",
            "array_above_max_length",
        )
    if "seed" in body and not isinstance(body["seed"], int):
        raise Refusal(400, f"Invalid type for 'seed': expected an integer, but got {body['seed']!r}.", "seed")
    _check_format(body, msgs, schema_ok, json_ok)
    mt = body.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or mt < 1):
        raise Refusal(400, f"Invalid 'max_tokens': integer below minimum value. Got {mt}.", "max_tokens")
    if mt is not None and mt > max_out:
        raise Refusal(
            400,
            f"max_tokens is too large: {mt}. This model supports at most {max_out} completion tokens, whereas you "
            f"provided {mt}.",
            "max_tokens",
            "invalid_value",
        )
    asked = prompt_tokens(body)
    if asked + (mt or 0) > context:
        raise Refusal(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested {asked + (mt or 0)} "
            f"tokens ({asked} in the messages, {mt or 0} in the completion). Please reduce the length of the "
            "messages or completion.",
            "messages",
            "context_length_exceeded",
        )


def _check_format(body: dict, msgs: list, schema_ok: bool, json_ok: bool) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise Refusal(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
            "response_format.type",
            "invalid_value",
        )
    extra = sorted(set(rf) - {"type", "json_schema"} if kind == "json_schema" else set(rf) - {"type"})
    if extra:
        raise Refusal(
            400,
            f"Invalid 'response_format': Additional properties are not allowed ('{extra[0]}' was unexpected).",
            "response_format",
            "invalid_value",
        )
    if kind == "json_schema":
        if not schema_ok:
            raise Refusal(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model. Learn "
                "more about supported models at the Structured Outputs guide: "
                "https://platform.openai.com/docs/guides/structured-outputs",
                "response_format",
                None,
            )
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
            raise Refusal(
                400,
                "Missing required parameter: 'response_format.json_schema'.",
                "response_format.json_schema",
                "missing_required_parameter",
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(js.get("name", ""))):
            raise Refusal(
                400,
                "Invalid 'response_format.json_schema.name': string does not match pattern.",
                "response_format.json_schema.name",
                "invalid_value",
            )
    if kind == "json_object":
        if not json_ok:
            raise Refusal(
                400,
                "Invalid parameter: 'response_format' of type 'json_object' is not supported with this model.",
                "response_format",
                None,
            )
        if not any("json" in str(m.get("content") or "").lower() for m in msgs):
            raise Refusal(
                400,
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.",
                "messages",
                None,
            )


def check_completion(body: Any) -> None:
    """/v1/completions: none of the chat models above is served there."""
    _model(body if isinstance(body, dict) else {})
    raise Refusal(
        404,
        "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
        "v1/chat/completions?",
        "model",
        None,
    )


def check_batch_file(lines: list[Any], endpoint: str) -> list[dict]:
    """The errors (OpenAI batch error objects: code, message, line) that fail a batch at validation."""
    errs: list[dict] = []
    if not lines:
        return [{"code": "empty_file", "message": "The batch input file is empty.", "line": None}]
    if len(lines) > MAX_BATCH_REQUESTS:
        return [
            {
                "code": "too_many_tasks",
                "message": f"The batch input file has {len(lines)} requests; at most {MAX_BATCH_REQUESTS} are allowed.",
                "line": None,
            }
        ]
    seen: set[str] = set()
    model = None
    for n, line in enumerate(lines, start=1):
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            errs.append(
                {"code": "invalid_json_line", "message": "This line is not a request object.", "line": n}
            )
            continue
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            errs.append(
                {"code": "missing_required_parameter", "message": "custom_id is required.", "line": n}
            )
        elif cid in seen:
            errs.append(
                {"code": "duplicate_custom_id", "message": f"custom_id {cid} is not unique.", "line": n}
            )
        seen.add(str(cid))
        if line.get("method") != "POST":
            errs.append({"code": "invalid_method", "message": "method must be POST.", "line": n})
        if line.get("url") != endpoint:
            errs.append(
                {
                    "code": "invalid_url",
                    "message": f"url must be {endpoint}, the batch's endpoint.",
                    "line": n,
                }
            )
        m = line["body"].get("model")
        if model is None:
            model = m
        elif m != model:
            errs.append(
                {
                    "code": "mismatched_model",
                    "message": f"every request of a batch must use the same model ({model}), not {m}.",
                    "line": n,
                }
            )
    return errs[:10]
