"""What a model accepts, and each request shaped to it, so that what the client sends is valid at a hosted provider
(OpenAI's documented rules) instead of failing there with HTTP 400.

    shaper = Shaper(cfg, model_id, cache_dir / MODES_FILE)
    s = shaper.shape(request)    # s.key: cache key; s.body: what is sent; s.mode; s.error: refused before sending
    # after a 400 about response_format:
    if shaper.refused(s.mode, message):
        s = shaper.shape(request)  # the next weaker mode, from now on (remembered in MODES_FILE)

Structured output (response_format ``json_schema``) is asked for only where the model has it; otherwise JSON mode
(``json_object``, which OpenAI accepts only when a message contains the word "JSON"), otherwise no response_format at
all: the prompt's own instructions, which the parsers read from free text (chat.parse_json_reply). max_tokens is
lowered to the model's maximum output and to what the context window leaves after the prompt; a prompt that does
not fit at all, or more stop strings than the model takes, is refused with a message and never sent.

The cache key is the request's (ChatRequest.key) plus, when the body differs from what the request asks, how
(``delivery``): an answer given in JSON mode never stands in for one under a schema, and keys of requests sent as
asked stay as they were.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from mathscale_utils.core.io import DataError, read_json, write_json
from mathscale_utils.core.llm_config import CapabilityOverrides, LLMConfig
from mathscale_utils.inference.chat import ChatRequest, estimate_prompt_tokens, request_body, response_mode

MODES = ("text", "json_object", "json_schema")  # weakest to strongest
MODES_FILE = (
    "provider_modes.json"  # in the cache dir: the modes an endpoint refused, so a re-run asks right away
)

# Known OpenAI chat models. The longest name or prefix that ends where the model name ends or at a "-" wins
# ("gpt-4o-mini-2024-07-18" -> gpt-4o-mini; "gpt-4-0613" -> gpt-4; "gpt-4.5" matches nothing).
# Sources (read 2025-06; OpenAI changes them, so llm.capabilities overrides any column):
#   context window and max output tokens: the model pages, platform.openai.com/docs/models/<name>
#     (gpt-3.5-turbo = gpt-3.5-turbo-0125 since 2024-02: 16,385 / 4,096; gpt-4o-2024-05-13 kept 4,096 output)
#   schema (json_schema): the Structured Outputs guide, platform.openai.com/docs/guides/structured-outputs
#     ("gpt-4o-mini, gpt-4o-2024-08-06 and later"; gpt-4.1); every other model answers 400 "Invalid parameter:
#     'response_format' of type 'json_schema' is not supported with this model." (param response_format)
#   json (json_object): the JSON mode section of the same guide: gpt-3.5-turbo-1106 and later, gpt-4-turbo and
#     gpt-4-1106-preview on, gpt-4o; not gpt-4(-0613), not the 0613 snapshots
#   stop: the Chat Completions reference, "Up to 4 sequences"; seed: the same reference (beta, every chat model)
_TABLE = """
# name or prefix         context   output  schema  json  stop  seed
gpt-3.5-turbo            16385     4096    no      yes   4     yes
gpt-3.5-turbo-1106       16385     4096    no      yes   4     yes
gpt-3.5-turbo-16k        16385     4096    no      no    4     yes
gpt-4                    8192      8192    no      no    4     yes
gpt-4-turbo              128000    4096    no      yes   4     yes
gpt-4-1106-preview       128000    4096    no      yes   4     yes
gpt-4-0125-preview       128000    4096    no      yes   4     yes
gpt-4o                   128000    16384   yes     yes   4     yes
gpt-4o-2024-05-13        128000    4096    no      yes   4     yes
gpt-4o-mini              128000    16384   yes     yes   4     yes
chatgpt-4o-latest        128000    16384   no      yes   4     yes
gpt-4.1                  1047576   32768   yes     yes   4     yes
"""

# Names this client cannot use, and why (the deprecations page, platform.openai.com/docs/deprecations; the reasoning
# models' reference: they take max_completion_tokens and reject temperature, which every stage sends).
UNSUPPORTED = {
    "gpt-3.5-turbo-0613": "retired by OpenAI on 2024-09-13 (the paper's teacher); use gpt-3.5-turbo (-0125)",
    "gpt-3.5-turbo-0301": "retired by OpenAI on 2024-09-13; use gpt-3.5-turbo (-0125)",
    "gpt-3.5-turbo-16k-0613": "retired by OpenAI on 2024-09-13; use gpt-3.5-turbo (-0125)",
    "o1": "a reasoning model: it rejects temperature and max_tokens, which every request sets",
    "o3": "a reasoning model: it rejects temperature and max_tokens, which every request sets",
    "o4-mini": "a reasoning model: it rejects temperature and max_tokens, which every request sets",
    "gpt-5": "a reasoning model: it rejects temperature and max_tokens, which every request sets",
}


@dataclass(frozen=True)
class Capabilities:
    """What one model accepts. None: not known (the endpoint's own answer decides)."""

    row: str  # the table row that matched, or why these are the defaults
    structured_outputs: bool  # response_format json_schema
    json_mode: bool  # response_format json_object
    context_window: int | None  # prompt + max_tokens
    max_output_tokens: int | None  # max_tokens
    max_stop: int | None  # stop strings per request
    seed: bool
    chat_only: bool = False  # no /v1/completions (OpenAI serves its chat models only at /v1/chat/completions)
    unsupported: str | None = None  # why the client refuses to ask this model at all


def _parse(table: str) -> dict[str, Capabilities]:
    rows = {}
    for line in table.strip().splitlines():
        if line.startswith("#"):
            continue
        name, ctx, out, schema, json_, stop, seed = line.split()
        rows[name] = Capabilities(
            name,
            schema == "yes",
            json_ == "yes",
            int(ctx),
            int(out),
            int(stop),
            seed == "yes",
            chat_only=True,
        )
    return rows


KNOWN = _parse(_TABLE)
# An unknown model (a vLLM or Ollama server, another provider) is not assumed to have structured outputs; JSON mode
# is (vLLM, llama.cpp, Ollama and the large hosted providers accept json_object), and a 400 on it steps down to
# plain text; limits are left to the endpoint, whose 400 names them.
DEFAULT = Capabilities("unknown model: no json_schema assumed", False, True, None, None, None, True)
LLAMA_CPP = Capabilities(
    "llama.cpp server (grammar-constrained JSON schema)", True, True, None, None, None, True
)


def _match(model: str, names) -> str | None:
    hits = [n for n in names if model == n or model.startswith(n + "-")]
    return max(hits, key=len) if hits else None


def lookup(model: str) -> Capabilities:
    """The table's row for a model name (exact, else the longest prefix ending at "-"), else DEFAULT."""
    if (name := _match(model, UNSUPPORTED)) is not None:
        return replace(DEFAULT, row=name, unsupported=UNSUPPORTED[name])
    name = _match(model, KNOWN)
    return KNOWN[name] if name else DEFAULT


def capabilities_for(model: str, style: str, overrides: CapabilityOverrides | None = None) -> Capabilities:
    """A model's capabilities at an endpoint of `style` ("llama_cpp": the embedded or a llama.cpp server), with
    the llm.capabilities overrides on top."""
    caps = LLAMA_CPP if style == "llama_cpp" else lookup(model)
    given = {k: v for k, v in (overrides.model_dump() if overrides else {}).items() if v is not None}
    return replace(caps, row=f"{caps.row} + llm.capabilities", **given) if given else caps


def _mentions_json(messages: list[dict]) -> bool:
    """OpenAI's rule for json_object: "'messages' must contain the word 'json' in some form"."""
    return any("json" in str(m.get("content") or "").lower() for m in messages)


@dataclass(slots=True)
class Shaped:
    """A request as it is sent: its cache key, the response_format mode, and why it cannot be sent (error)."""

    request: ChatRequest
    key: str
    mode: str
    error: str | None = None
    delivery: dict | None = None  # what is sent differently from what the request asks (see ChatRequest.key)
    model: str = ""
    style: str = "openai"

    @property
    def body(self) -> dict | None:
        """The body sent (None when refused); built when needed, as most shaped requests are cache hits."""
        if self.error is not None:
            return None
        body = request_body(self.request, self.model, self.style, self.mode)
        d = self.delivery or {}
        if "max_tokens" in d:
            body["max_tokens"] = d["max_tokens"]
        if "seed" in d:
            del body["seed"]
        return body


class Shaper:
    """Shapes requests to one model at one endpoint: the capability table, the llm.capabilities overrides, and the
    response_format modes the endpoint refused (kept in `memory`, a JSON file, across sessions)."""

    def __init__(self, cfg: LLMConfig, model_id: str, memory: Path | None = None):
        style = cfg.response_format_style
        self.style = ("llama_cpp" if cfg.base_url is None else "openai") if style == "auto" else style
        self.model, self.model_id, self.memory = cfg.model, model_id, memory
        self.caps = capabilities_for(cfg.model, self.style, cfg.capabilities)
        self.endpoint = f"{cfg.base_url or 'embedded'} {model_id}"
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.ceiling = self._load()

    # ---- the modes an endpoint refused ------------------------------------------------------------------------
    def _load(self) -> str:
        """The strongest mode allowed: the table's, lowered by what this endpoint refused before."""
        caps = self.caps
        mode = "json_schema" if caps.structured_outputs else "json_object" if caps.json_mode else "text"
        if self.memory is not None and self.memory.exists():
            try:
                learned = (read_json(self.memory).get(self.endpoint) or {}).get("mode")
            except (DataError, AttributeError) as e:
                warnings.warn(f"{self.memory}: unreadable, ignored ({e})", stacklevel=3)
                learned = None
            if learned in MODES and MODES.index(learned) < MODES.index(mode):
                mode = learned
        return mode

    def refused(self, mode: str, message: str) -> bool:
        """The endpoint refused a response_format sent in `mode` (HTTP 400): allow only weaker modes from now on,
        in this session and (memory) the next. True when a weaker mode is left to ask in."""
        i = MODES.index(mode)
        if i == 0:
            return False
        with self._lock:
            if MODES.index(self.ceiling) >= i:
                self.ceiling = MODES[i - 1]
                warnings.warn(
                    f"{self.model} refused response_format {mode} ({message[:200]}); asking in {self.ceiling} "
                    f"mode from now on" + (f" (remembered in {self.memory})" if self.memory else ""),
                    stacklevel=2,
                )
                if self.memory is not None:
                    doc = read_json(self.memory) if self.memory.exists() else {}
                    doc[self.endpoint] = {
                        "mode": self.ceiling,
                        "refused": mode,
                        "message": message[:500],
                        "when": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                    write_json(self.memory, doc)
        return True

    # ---- shaping ------------------------------------------------------------------------------------------------
    def _warn_once(self, what: str, msg: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(msg, stacklevel=3)

    def shape(self, req: ChatRequest) -> Shaped:
        """The request as it will be sent (see the module docstring), with its cache key."""
        caps, delivery = self.caps, {}
        mode = asked = response_mode(req.response_format)
        if asked != "text":
            mode = MODES[min(MODES.index(asked), MODES.index(self.ceiling))]
            if mode == "json_object" and self.style == "openai" and not _mentions_json(req.messages):
                mode = "text"
            if mode != asked:
                delivery["response_format"] = mode
        error = (
            self._refusal(req) if caps.unsupported or caps.chat_only or caps.max_stop is not None else None
        )
        max_tokens = req.max_tokens
        if caps.max_output_tokens is not None and max_tokens > caps.max_output_tokens:
            max_tokens = caps.max_output_tokens
            self._warn_once(
                "max_output",
                f"max_tokens {req.max_tokens} is above the {max_tokens} output tokens {self.model} allows "
                f"({caps.row}): sent as {max_tokens}",
            )
        if caps.context_window is not None and error is None:
            prompt = estimate_prompt_tokens(req.messages, req.prompt)
            room = caps.context_window - prompt
            if room < 1:
                error = (
                    f"the prompt (about {prompt:,} tokens) does not fit the {caps.context_window:,}-token context "
                    f"of {self.model}: not sent"
                )
            max_tokens = min(max_tokens, max(room, 1))
        if max_tokens != req.max_tokens:
            delivery["max_tokens"] = max_tokens
        if req.seed is not None and not caps.seed:
            delivery["seed"] = None
        if error is None and req.prompt is None and not req.messages:
            error = "a chat request needs at least one message"
        key = req.key(self.model_id, delivery)
        return Shaped(req, key, mode, error, delivery or None, self.model, self.style)

    def current(self, shaped: Shaped) -> Shaped:
        """`shaped` again if the endpoint refused its response_format mode since it was made (so that requests
        shaped before the first refusal do not all meet it too), else `shaped` itself."""
        if MODES.index(shaped.mode) > MODES.index(self.ceiling):
            return self.shape(shaped.request)
        return shaped

    def _refusal(self, req: ChatRequest) -> str | None:
        """Why a request cannot be sent to this model in any form (None: it can)."""
        caps = self.caps
        if caps.unsupported:
            return f"{self.model}: {caps.unsupported}"
        if req.prompt is not None and caps.chat_only:
            return (
                f"{self.model} is a chat model: the provider serves it only at /chat/completions, not as a "
                "text completion (set evaluate.request: chat)"
            )
        if caps.max_stop is not None and req.stop and len(req.stop) > caps.max_stop:
            return (
                f"{len(req.stop)} stop strings, and {self.model} takes at most {caps.max_stop} ({caps.row}): give "
                "fewer (evaluate.stop: null, or at most that many)"
            )
        return None


__all__ = ["Capabilities", "Shaper", "Shaped", "lookup", "capabilities_for", "MODES", "MODES_FILE"]
