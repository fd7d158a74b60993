"""Stage 03's raw rows on disk: ``generation/shard-NNNNN.jsonl``, one file per shard of compositions, written whole
when the shard is done. Which shards are finished, and the rows of the finished ones, read when needed (2M raw rows
as dicts would take ~6 GB)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, iter_jsonl, read_json, read_jsonl


class RawRows(Sequence[dict]):
    """The raw rows of finished shards, in shard order, read from their files when iterated or indexed (2M rows as
    dicts would take ~6 GB). Indexing reads the one shard that holds the row (the last one read is kept)."""

    def __init__(self, run_dir: str | Path, shards: Sequence[int], sizes: Sequence[int]):
        self.run = RunDir(run_dir)
        self.shards = list(shards)
        self.ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
        self._last: tuple[int, list[dict]] = (-1, [])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __iter__(self) -> Iterator[dict]:
        for i in self.shards:
            for _, row in iter_jsonl(self.run.shard(i)):
                yield row

    def _shard(self, k: int) -> list[dict]:
        if self._last[0] != k:
            self._last = (k, read_jsonl(self.run.shard(self.shards[k])))
        return self._last[1]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("raw row index out of range")
        i %= n
        k = int(np.searchsorted(self.ends, i, side="right"))
        return self._shard(k)[i - (int(self.ends[k - 1]) if k else 0)]


def shard_status(run_dir: str | Path, n_shards: int, fps: Sequence[str], sizes: Sequence[int]) -> list[bool]:
    """Which shards are finished: file present, same fingerprint, all rows, no transport error (read a line at a
    time: one shard's rows are never all in memory)."""
    run, done = RunDir(run_dir), []
    for i in range(n_shards):
        path = run.shard(i)
        ok = False
        if path.exists():
            try:
                n = 0
                for _, r in iter_jsonl(path):
                    n += 1
                    if r.get("shard_fp") != fps[i] or r.get("status") == "error":
                        break
                else:
                    ok = n == sizes[i]
            except DataError:
                ok = False
        done.append(ok)
    return done


def load_raw(run_dir: str | Path) -> RawRows:
    """The rows of the current run's shards written so far, in shard order (generation/manifest.json says which
    shard files belong to the current settings; files left by other settings are ignored)."""
    run = RunDir(run_dir)
    man = read_json(run.generation_manifest) if run.generation_manifest.exists() else None
    if man is None:
        files = sorted(run.generation.glob("shard-*.jsonl"))
        shards = [int(f.stem.split("-")[1]) for f in files]
        return RawRows(run, shards, [sum(1 for _ in iter_jsonl(run.shard(i))) for i in shards])
    shards, sizes = [], []
    for i, fp in enumerate(man["fingerprints"]):
        f = run.shard(i)
        if f.exists():
            rows = [r for _, r in iter_jsonl(f)]
            if rows and all(r.get("shard_fp") == fp for r in rows):
                shards.append(i)
                sizes.append(len(rows))
    return RawRows(run, shards, sizes)


__all__ = ["RawRows", "shard_status", "load_raw"]
