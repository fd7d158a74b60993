"""``compositions.jsonl`` at paper scale (2M lines): stage 02 writes it from the walk's index arrays, stage 03 reads it
into a compact table.

Writing: each line is ``json.dumps(record, ensure_ascii=False)`` of the walk record, byte for byte, but assembled
with numpy from the labels encoded once (a 2M-line file takes seconds, not the 38 s of one json.dumps per line).
Reading: :class:`CompositionTable` interns the labels and keeps ids and concept lists in flat arrays (about 40 bytes
a composition instead of ~1 KB as dicts); items are dicts made on access, and slices share the arrays.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from mathscale_utils.core.io import DataError, atomic_writer

_BLOCK = 1 << 17  # lines assembled at a time


def _list_pieces(idx: np.ndarray, first: int, later: int, empty: int) -> np.ndarray:
    """Piece ids of a JSON list's items in walk order, -1 slots skipped: the encoded label (first + index) for the
    first item, ", " + the label (later + index) for the others; `empty` where a slot holds nothing."""
    valid = idx >= 0
    before = np.cumsum(valid, axis=1) - valid  # items already written in the row
    return np.where(valid, idx.astype(np.int64) + np.where(before > 0, later, first), empty)


def write_walk(
    path: str | Path,
    topics: np.ndarray,
    kps: np.ndarray,
    start: np.ndarray,
    epoch: np.ndarray,
    topic_labels: Sequence[str],
    kp_labels: Sequence[str],
) -> Path:
    """Write compositions.jsonl atomically: line i is the record {"id": f"c{i:07d}", "topics": [...],
    "knowledge_points": [...], "start_topic": ..., "epoch": ...} of row i (-1 slots skipped), as json.dumps writes it.

    The text is cut into pieces that repeat (the id's thousands with the line's start, its last three digits with
    the key after it, a label with or without the ", " before it, the start topic with the keys around it, an epoch
    with the line's end); a block of lines is a matrix of piece ids, turned into text by one fancy index and one
    join."""
    tl = [json.dumps(x, ensure_ascii=False) for x in topic_labels]
    kl = [json.dumps(x, ensure_ascii=False) for x in kp_labels]
    n_rows = len(start)
    if n_rows > 10**7:
        raise ValueError(f"ids c0000000..c9999999 name at most 10^7 compositions, not {n_rows}")
    groups = [
        [""],
        [f'{{"id": "c{k:04d}' for k in range((n_rows + 999) // 1000)],
        [f'{k:03d}", "topics": [' for k in range(1000)],
        tl,
        [", " + x for x in tl],
        ['], "knowledge_points": ['],
        kl,
        [", " + x for x in kl],
        [f'], "start_topic": {x}, "epoch": ' for x in tl],
        [f"{e}}}\n" for e in range(int(epoch.max()) + 1 if n_rows else 0)],
    ]
    empty, thousands, units, t_first, t_later, mid, k_first, k_later, starts, epochs = np.cumsum(
        [0] + [len(g) for g in groups[:-1]]
    )
    pieces = np.array([x for g in groups for x in g], dtype=object)
    with atomic_writer(path) as f:
        for b in range(0, n_rows, _BLOCK):
            i = np.arange(b, min(b + _BLOCK, n_rows))
            rows = np.concatenate(
                [
                    (thousands + i // 1000)[:, None],
                    (units + i % 1000)[:, None],
                    _list_pieces(topics[i], t_first, t_later, empty),
                    np.full((len(i), 1), mid),
                    _list_pieces(kps[i], k_first, k_later, empty),
                    start[i, None].astype(np.int64) + starts,
                    epoch[i, None].astype(np.int64) + epochs,
                ],
                axis=1,
            )
            f.write("".join(pieces[rows].ravel().tolist()))
    return Path(path)


class CompositionTable(Sequence[dict]):
    """Compositions as stage 03 reads them ({"id", "topics", "knowledge_points"}; other keys are not kept), in
    flat arrays: labels interned once, each composition's topic and KP ids in one CSR array each."""

    def __init__(
        self,
        ids: np.ndarray | list,
        labels: list[str],
        t_ptr: np.ndarray,
        t_ids: np.ndarray,
        k_ptr: np.ndarray,
        k_ids: np.ndarray,
        lo: int = 0,
        hi: int | None = None,
    ):
        self._ids, self._labels = ids, labels
        self._t_ptr, self._t_ids, self._k_ptr, self._k_ids = t_ptr, t_ids, k_ptr, k_ids
        self._lo, self._hi = lo, len(ids) if hi is None else hi

    @classmethod
    def read(cls, path: str | Path) -> CompositionTable:
        """Read compositions.jsonl; a line without id, topics (list) or knowledge_points (list) raises DataError."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: file not found")
        vocab: dict[str, int] = {}
        ids: list[Any] = []
        t_ptr, k_ptr, t_ids, k_ids = array("q", [0]), array("q", [0]), array("i"), array("i")
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    c = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
                if (
                    not isinstance(c, dict)
                    or "id" not in c
                    or not isinstance(c.get("topics"), list)
                    or not isinstance(c.get("knowledge_points"), list)
                ):
                    raise DataError(f"{path}:{i}: expected keys id, topics (list), knowledge_points (list)")
                ids.append(c["id"])
                t_ids.extend([vocab.setdefault(x, len(vocab)) for x in c["topics"]])
                k_ids.extend([vocab.setdefault(x, len(vocab)) for x in c["knowledge_points"]])
                t_ptr.append(len(t_ids))
                k_ptr.append(len(k_ids))
        packed = np.array(ids) if ids and all(type(x) is str for x in ids) else ids  # noqa: E721 (exact str)
        arrays = [np.frombuffer(a, dtype=a.typecode) for a in (t_ptr, t_ids, k_ptr, k_ids)]
        return cls(packed, list(vocab), *arrays)

    def __len__(self) -> int:
        return self._hi - self._lo

    def _row(self, i: int) -> dict:
        lab = self._labels
        cid = self._ids[i]
        return {
            "id": str(cid) if isinstance(cid, np.str_) else cid,
            "topics": [lab[j] for j in self._t_ids[self._t_ptr[i] : self._t_ptr[i + 1]].tolist()],
            "knowledge_points": [lab[j] for j in self._k_ids[self._k_ptr[i] : self._k_ptr[i + 1]].tolist()],
        }

    @overload
    def __getitem__(self, i: int) -> dict: ...
    @overload
    def __getitem__(self, i: slice) -> CompositionTable: ...
    def __getitem__(self, i: int | slice) -> dict | CompositionTable:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("CompositionTable slices take every item (step 1)")
            hi = max(lo, hi)
            t = (self._t_ptr, self._t_ids, self._k_ptr, self._k_ids)
            return CompositionTable(self._ids, self._labels, *t, self._lo + lo, self._lo + hi)
        n = len(self)
        if not -n <= i < n:
            raise IndexError("composition index out of range")
        return self._row(self._lo + (i % n))

    def __iter__(self) -> Iterator[dict]:
        for i in range(self._lo, self._hi):
            yield self._row(i)


__all__ = ["CompositionTable", "write_walk"]
