"""The reply cache: every answer a model gave, appended to ``<cache_dir>/llm_cache.jsonl`` as it arrives, so that a
re-run or a resumed run repeats no call. One line per answer::

    {"key": <ChatRequest.key(model_id)>, "model": ..., "text": ..., "usage": {"prompt_tokens", "completion_tokens"},
     "finish_reason": ...}

The key hashes everything that shapes the answer, the model's identity included (``model_id``): a retrained student
or another adapter never reads an earlier one's answers. Stages and runs may share one cache (a sweep does).

Only an index lives in memory: per line, a 64-bit hash of its key, its byte offset and its length (20 bytes; at 2M
answers 40 MB instead of the ~9 GB the parsed lines took). ``get`` reads the one line it needs. The file is the
record: the last line of a key wins, as before, and a line torn by a crash is cut off when the cache is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from array import array
from pathlib import Path
from typing import IO

import numpy as np

from mathscale_utils.core.io import DataError
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.inference.chat import ChatResult

CACHE_FILE = "llm_cache.jsonl"
_READ = 16 << 20  # bytes read at a time while indexing
_MERGE = 1 << 16  # appended lines kept in a dict before they join the sorted arrays


def model_id(cfg: LLMConfig) -> str:
    """What answers, for cache keys: cfg.identity when set (a served student: its base, the content hash of what
    stage 04 trained, how it is served), else the model name, plus the adapter's content hash with a LoRA."""
    if cfg.identity:
        return cfg.identity
    if not cfg.lora_path:
        return cfg.model
    digest = hashlib.sha256(Path(cfg.lora_path).read_bytes()).hexdigest()[:16]
    return f"{cfg.model}+lora:{digest}"


def _cut_torn_tail(path: Path) -> None:
    """A last line without its newline was cut by a crash: drop it, so later appends start on a fresh line."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        if not size or (f.seek(size - 1), f.read(1))[1] == b"\n":
            return
        keep, pos = 0, size
        while pos > 0:  # the last newline, reading backwards
            start = max(0, pos - (1 << 20))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        warnings.warn(f"{path}: dropping a torn last line ({size - keep} B)", stacklevel=4)
        f.truncate(keep)


def _line_key(path: Path, line: bytes, lineno: int) -> str | None:
    """The key of a line put() did not write (another writer's key order): parsed in full; None for a blank line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        raise DataError(f"{path}:{lineno}: expected a JSON object with a string 'key'")
    return obj["key"]


def _scan(path: Path) -> tuple[array, array, array]:
    """(key hashes, byte offsets, lengths) of every line, in file order, without parsing the lines: the key is read
    where put() writes it (first); another line is parsed in full."""
    hashes, offsets, lengths = array("q"), array("q"), array("q")
    base, lineno, rest = 0, 0, b""
    with open(path, "rb") as f:
        while block := f.read(_READ):
            data = rest + block
            end = data.rfind(b"\n") + 1
            data, rest = data[:end], data[end:]
            for line in data.split(b"\n")[:-1]:
                lineno += 1
                n = len(line) + 1
                q = line.find(b'"', 9) if line.startswith(b'{"key": "') else -1
                if q > 0 and b"\\" not in line[9:q]:
                    key: str | None = line[9:q].decode()
                else:
                    key = _line_key(path, line, lineno)
                if key is not None:
                    hashes.append(hash(key))
                    offsets.append(base)
                    lengths.append(n)
                base += n
    return hashes, offsets, lengths


class ReplyCache:
    """The answers in cache_dir/llm_cache.jsonl by request key; put() appends new ones (fsync: after every write)."""

    def __init__(self, cache_dir: Path, fsync: bool = False):
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        if self.path.exists():
            _cut_torn_tail(self.path)
            h, off, n = _scan(self.path)
        else:
            h, off, n = array("q"), array("q"), array("q")
        # sorted by key hash; equal hashes stay in file order, so the last line of a key is found first from the end
        order = np.argsort(np.frombuffer(h, np.int64), kind="stable")
        self._h = np.frombuffer(h, np.int64)[order]
        self._off = np.frombuffer(off, np.int64)[order]
        self._len = np.frombuffer(n, np.int64)[order].astype(np.int32)
        self._recent: dict[
            int, tuple[int, int]
        ] = {}  # lines appended since the last merge: hash -> (offset, len)
        self._unsaved: list[dict] = []  # answers received but not appended yet
        self._unsaved_keys: dict[str, dict] = {}
        self._file: IO[bytes] | None = None  # open for appending while answers arrive
        self._reader: int | None = None  # a read-only descriptor for get()

    def get(self, key: str) -> ChatResult | None:
        """The cached answer for a request key (ChatRequest.key(model_id)), or None."""
        hit = self._unsaved_keys.get(key) or self._find(key)
        if hit is None:
            return None
        pt, ct = hit["usage"]["prompt_tokens"], hit["usage"]["completion_tokens"]
        return ChatResult(key, hit["text"], None, True, pt, ct, hit["finish_reason"])

    def _find(self, key: str) -> dict | None:
        h = hash(key)
        if (recent := self._recent.get(h)) is not None and (e := self._read(*recent)).get("key") == key:
            return e
        lo = hi = int(self._h.searchsorted(h))
        while hi < len(self._h) and self._h[hi] == h:
            hi += 1
        for i in range(hi - 1, lo - 1, -1):  # newest first
            e = self._read(int(self._off[i]), int(self._len[i]))
            if e.get("key") == key:
                return e
        return None

    def _read(self, offset: int, length: int) -> dict:
        if self._reader is None:
            self._reader = os.open(self.path, os.O_RDONLY)
        raw = os.pread(self._reader, length, offset)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{self.path}: the line at byte {offset} is not valid JSON ({e.msg} at column {e.colno})"
            ) from None

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
        self._unsaved.append(entry)
        self._unsaved_keys[key] = entry
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
        if not rows:
            return
        lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in rows]
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        self._file.write(b"".join(lines))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        pos = self._file.tell() - sum(map(len, lines))  # O_APPEND: where this write began
        for r, line in zip(rows, lines, strict=True):
            self._recent[hash(r["key"])] = (pos, len(line))
            pos += len(line)
            self._unsaved_keys.pop(r["key"], None)
        if len(self._recent) >= _MERGE:
            self._merge()

    def _merge(self) -> None:
        """Move the recent lines into the sorted arrays (newer after older for equal hashes)."""
        items = sorted(self._recent.items())
        h = np.fromiter((k for k, _ in items), np.int64, len(items))
        pos = np.searchsorted(self._h, h, side="right")
        self._h = np.insert(self._h, pos, h)
        self._off = np.insert(self._off, pos, np.fromiter((v[0] for _, v in items), np.int64, len(items)))
        self._len = np.insert(self._len, pos, np.fromiter((v[1] for _, v in items), np.int32, len(items)))
        self._recent = {}

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None
