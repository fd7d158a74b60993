"""The reply cache: every answer a model gave, appended to ``<cache_dir>/llm_cache.jsonl`` as it arrives, so that a
re-run or a resumed run repeats no call. One line per answer::

    {"key": <ChatRequest.key(model_id)>, "model": ..., "text": ..., "usage": {"prompt_tokens", "completion_tokens"},
     "finish_reason": ...}

The key hashes everything that shapes the answer, the model's identity included (``model_id``): a retrained student
or another adapter never reads an earlier one's answers. Stages and runs may share one cache (a sweep does).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import IO

from mathscale_utils.core.io import read_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.inference.chat import ChatResult

CACHE_FILE = "llm_cache.jsonl"


def model_id(cfg: LLMConfig) -> str:
    """What answers, for cache keys: cfg.identity when set (a served student: its base, the content hash of what
    stage 04 trained, how it is served), else the model name, plus the adapter's content hash with a LoRA."""
    if cfg.identity:
        return cfg.identity
    if not cfg.lora_path:
        return cfg.model
    digest = hashlib.sha256(Path(cfg.lora_path).read_bytes()).hexdigest()[:16]
    return f"{cfg.model}+lora:{digest}"


def _load(path: Path) -> dict[str, dict]:
    """key -> cache entry. A line torn by a crash is cut off first, so later appends start on a fresh line."""
    if not path.exists():
        return {}
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            warnings.warn(f"{path}: dropping a torn last line ({len(data) - keep} B)", stacklevel=4)
            f.truncate(keep)
    return {r["key"]: r for r in read_jsonl(path, tolerate_torn_tail=True)}


class ReplyCache:
    """The answers in cache_dir/llm_cache.jsonl by request key; put() appends new ones (fsync: after every write)."""

    def __init__(self, cache_dir: Path, fsync: bool = False):
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._entries = _load(self.path)
        self._unsaved: list[dict] = []  # answers received but not appended yet
        self._file: IO[str] | None = None  # open for appending while answers arrive

    def get(self, key: str) -> ChatResult | None:
        """The cached answer for a request key (ChatRequest.key(model_id)), or None."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        pt, ct = hit["usage"]["prompt_tokens"], hit["usage"]["completion_tokens"]
        return ChatResult(key, hit["text"], None, True, pt, ct, hit["finish_reason"])

    def put(
        self,
        key: str,
        model: str,
        text: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        finish_reason: str | None = None,
        flush: bool = True,
    ) -> None:
        """Store an answer; it is appended to the file now, or with flush=False at the next flush() (the client
        appends the answers that arrive in one pass of its event loop together)."""
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        entry = {"key": key, "model": model, "text": text, "usage": usage, "finish_reason": finish_reason}
        self._entries[key] = entry
        self._unsaved.append(entry)
        if flush:
            self.flush()

    @property
    def unsaved(self) -> int:
        """Answers stored but not appended to the file yet."""
        return len(self._unsaved)

    def flush(self) -> None:
        """Append the answers stored since the last flush: one write, flushed to the OS (the file stays open:
        opening it per write cost about 0.1 ms per answer)."""
        rows, self._unsaved = self._unsaved, []
        if rows:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
