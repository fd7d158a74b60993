"""The one artifact writer/reader: atomic JSON/JSONL writes, crash-safe appends, line-numbered JSONL errors, and the
lock file that keeps two chains off one run directory."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the problem."""


class Locked(RuntimeError):
    """Another process holds the lock (a second chain on the same run directory or cache)."""


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


FILE_MODE = (
    0o666 & ~_umask()
)  # what open() gives a new file: atomic writes get the same mode, not mkstemp's 0600


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` (temp file + fsync + rename) only when the block ends without an error, so a
    large artifact is written piece by piece and a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text artifact atomically (temp file + rename)."""
    _atomic_write_text(Path(path), text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write one JSON document atomically."""
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write a whole JSON Lines file atomically (rows are encoded and written in blocks: any number of them)."""
    with atomic_writer(path) as f:
        block: list[str] = []
        size = 0
        for r in rows:
            block.append(line := json.dumps(r, ensure_ascii=False, default=str) + "\n")
            size += len(line)
            if size >= 1 << 22:  # ~4 MB at a time
                f.write("".join(block))
                block, size = [], 0
        f.write("".join(block))
    return Path(path)


def append_jsonl(path: str | Path, rows: Iterable[dict], fsync: bool = True) -> int:
    """Append rows to a JSON Lines file (one write, flushed), for stages that save results as they arrive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    if not text:
        return 0
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return text.count("\n")


def iter_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; a bad line raises DataError naming file and line.

    With tolerate_torn_tail, an unparsable *last* line (a write cut by a crash) is skipped instead.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:  # line by line: a file of any size
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if tolerate_torn_tail and not line.endswith("\n"):  # only the last line can lack its newline
                    return
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict]:
    """Read a whole JSON Lines file into a list of dicts (see iter_jsonl for errors)."""
    return [obj for _, obj in iter_jsonl(path, tolerate_torn_tail=tolerate_torn_tail)]


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks (model parts, adapters, training data)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def locked(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` while the block runs; if another process holds it, raise Locked at once
    (naming `what` and the holder's pid) instead of waiting. The kernel drops the lock when its holder dies, even
    by kill -9, so a stale lock file never blocks a later run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise Locked(f"{what} is in use by another process (pid {holder}); wait for it to end") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
