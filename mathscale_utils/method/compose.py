"""Random-walk concept composition (MathScale §3.2, METHOD.md §4): walks over the concept graph of ``graph.py``
collect a few related topics and KPs, one composition per new question.

Walk (Eq. 2)
    p(v | u) = exp(weight(u, v)) / sum over unvisited neighbours v' of u *in the sub-graph of the current step*,
    i.e. proportional to count + epsilon. One walk: a start topic (all topics enumerated per epoch, shuffled),
    1–2 steps on the topic graph, one step topic -> KP from the last topic, 0–4 steps on the KP graph. The step
    counts are drawn uniformly per walk; a node without an unvisited neighbour ends its phase early; compositions
    without a KP are dropped; duplicates (as unordered sets of topics and KPs) are dropped.

The walk is vectorised: every walker of a chunk advances one step at a time with numpy (CSR arrays per
sub-graph, cumulative weights, ``searchsorted``), so paper scale (2M unique compositions from ~2K topics and ~9K
KPs) takes seconds, not hours.

Artifacts (in the run directory)
    ``compositions.jsonl``      one composition per line::

        {"id": "c0000000", "topics": [label, ...], "knowledge_points": [label, ...],
         "start_topic": label, "epoch": int}

    ``topics`` and ``knowledge_points`` are listed in walk order. ``compositions_stats.json`` holds the drop
    counts of :func:`compose`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from mathscale_utils.core.artifacts import CompositionRow, RunDir
from mathscale_utils.core.io import read_jsonl, write_json, write_jsonl
from mathscale_utils.core.method_config import ComposeConfig
from mathscale_utils.method.composition_file import write_walk
from mathscale_utils.method.graph import EDGE_KINDS, KP, TOPIC, nodes_of_type

# ----------------------------------------------------------------------------------------------------------------
# Random walk: CSR arrays
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _CSR:
    """One sub-graph as compressed sparse rows. ``cum`` is the running sum of the transition weights
    exp(weight) = count + epsilon over *all* rows, so row r's weights are cum0[indptr[r]:indptr[r+1]] differences
    and one ``searchsorted`` samples many rows at once."""

    indptr: np.ndarray  # (n_rows + 1,) int64
    indices: np.ndarray  # (nnz,) int32, column node index
    w: np.ndarray  # (nnz,) float64, exp(weight)
    cum: np.ndarray  # (nnz,) float64, cumsum of w
    cum0: np.ndarray  # (nnz + 1,) float64, [0, *cum]

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)


def _csr(n_rows: int, rows: np.ndarray, cols: np.ndarray, w: np.ndarray) -> _CSR:
    order = np.lexsort((cols, rows))
    rows, cols, w = rows[order], cols[order], w[order]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    cum = np.cumsum(w)
    return _CSR(indptr, cols.astype(np.int32), w, cum, np.concatenate([[0.0], cum]))


@dataclass
class WalkGraph:
    """The graph as index arrays for the vectorised walk: topics 0..n_topics-1, KPs 0..n_kps-1."""

    topic_ids: list[str]
    kp_ids: list[str]
    topic_labels: list[str]
    kp_labels: list[str]
    tt: _CSR  # topic -> topic
    tk: _CSR  # topic -> kp
    kk: _CSR  # kp -> kp

    @property
    def n_topics(self) -> int:
        return len(self.topic_ids)

    @property
    def n_kps(self) -> int:
        return len(self.kp_ids)


def walk_graph(G: nx.Graph) -> WalkGraph:
    """Turn the networkx graph into per-sub-graph CSR arrays with transition weights exp(weight)."""
    topics = nodes_of_type(G, TOPIC)
    kps = nodes_of_type(G, KP)
    t_index = {n: i for i, n in enumerate(topics)}
    k_index = {n: i for i, n in enumerate(kps)}
    parts: dict[str, tuple[list[int], list[int], list[float]]] = {k: ([], [], []) for k in EDGE_KINDS}
    for a, b, d in G.edges(data=True):
        kind = d["kind"]
        p = math.exp(d["weight"])
        r, c, w = parts[kind]
        if kind == "topic-topic":
            r += [t_index[a], t_index[b]]
            c += [t_index[b], t_index[a]]
            w += [p, p]
        elif kind == "kp-kp":
            r += [k_index[a], k_index[b]]
            c += [k_index[b], k_index[a]]
            w += [p, p]
        else:
            t, k = (a, b) if a in t_index else (b, a)
            r.append(t_index[t])
            c.append(k_index[k])
            w.append(p)

    def _arrays(kind: str, n_rows: int) -> _CSR:
        r, c, w = parts[kind]
        return _csr(n_rows, np.asarray(r, np.int64), np.asarray(c, np.int64), np.asarray(w, np.float64))

    return WalkGraph(
        topic_ids=topics,
        kp_ids=kps,
        topic_labels=[G.nodes[n]["label"] for n in topics],
        kp_labels=[G.nodes[n]["label"] for n in kps],
        tt=_arrays("topic-topic", len(topics)),
        tk=_arrays("topic-kp", len(topics)),
        kk=_arrays("kp-kp", len(kps)),
    )


def _draw(csr: _CSR, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One neighbour per row, with probability proportional to w. Rows must have degree > 0."""
    lo = csr.indptr[rows]
    hi = csr.indptr[rows + 1]
    base = csr.cum0[lo]
    u = base + rng.random(rows.size) * (csr.cum0[hi] - base)
    pos = np.searchsorted(csr.cum, u, side="right")
    np.clip(pos, lo, hi - 1, out=pos)  # guard the float edge u == row total
    return csr.indices[pos]


def _draw_masked(csr: _CSR, rows: np.ndarray, visited: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact sampling among the neighbours not in ``visited`` (one row of ids per walker, -1 = empty); -1 where
    every neighbour is visited. Expands each walker's row, so it is used only for the few walkers that rejection
    sampling could not serve."""
    out = np.full(rows.size, -1, dtype=np.int64)
    lo = csr.indptr[rows]
    lengths = csr.indptr[rows + 1] - lo
    total = int(lengths.sum())
    if total == 0:
        return out
    walker = np.repeat(np.arange(rows.size), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = lo[walker] + (np.arange(total) - starts[walker])
    nbr = csr.indices[pos]
    w = csr.w[pos].copy()
    w[(nbr[:, None] == visited[walker]).any(axis=1)] = 0.0
    cum = np.cumsum(w)
    cum0 = np.concatenate([[0.0], cum])
    seg_lo = cum0[starts]
    seg_tot = cum0[starts + lengths] - seg_lo
    ok = seg_tot > 0
    u = seg_lo[ok] + rng.random(int(ok.sum())) * seg_tot[ok]
    p = np.searchsorted(cum, u, side="right")
    # never pick a zero-weight (visited) entry, even at float edges
    p = np.minimum(p, (starts + lengths - 1)[ok])
    while True:
        bad = w[p] == 0
        if not bad.any():
            break
        p[bad] -= 1
    out[ok] = nbr[p]
    return out


def _step(
    csr: _CSR,
    cur: np.ndarray,
    visited: np.ndarray | None,
    rng: np.random.Generator,
    max_rejections: int,
) -> np.ndarray:
    """Advance each walker from ``cur`` one step in ``csr``; -1 for a dead end. With ``visited`` (walkers x slots,
    -1 = empty) a visited neighbour is rejected and redrawn up to ``max_rejections`` times, then the remaining
    walkers sample exactly among unvisited neighbours. Rejection keeps the exact conditional distribution."""
    out = np.full(cur.size, -1, dtype=np.int64)
    todo = np.flatnonzero(csr.degree[cur] > 0)
    if visited is None:
        out[todo] = _draw(csr, cur[todo], rng)
        return out
    for _ in range(max_rejections + 1):
        if todo.size == 0:
            return out
        nxt = _draw(csr, cur[todo], rng)
        bad = (visited[todo] == nxt[:, None]).any(axis=1)
        out[todo[~bad]] = nxt[~bad]
        todo = todo[bad]
    if todo.size:
        out[todo] = _draw_masked(csr, cur[todo], visited[todo], rng)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Random walk: compositions
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Compositions:
    """The result of :func:`compose`: walk-ordered node indices (-1 padded) and bookkeeping.

    ``topics[i]`` are topic indices and ``kps[i]`` KP indices into ``wg.topic_labels`` / ``wg.kp_labels``.
    Iterate (or call :meth:`records`) for the JSON-ready dicts.
    """

    wg: WalkGraph
    topics: np.ndarray  # (n, topic_slots) int32
    kps: np.ndarray  # (n, kp_slots) int32
    start: np.ndarray  # (n,) int32 start topic index
    epoch: np.ndarray  # (n,) int32
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.start.size)

    def record(self, i: int) -> dict[str, Any]:
        tl, kl = self.wg.topic_labels, self.wg.kp_labels
        return {
            "id": f"c{i:07d}",
            "topics": [tl[t] for t in self.topics[i] if t >= 0],
            "knowledge_points": [kl[k] for k in self.kps[i] if k >= 0],
            "start_topic": tl[self.start[i]],
            "epoch": int(self.epoch[i]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Convert block by block: plain lists are much faster than numpy scalars, and short-lived blocks keep
        # millions of small lists from piling up in the garbage collector's old generation.
        tl, kl = self.wg.topic_labels, self.wg.kp_labels
        for b in range(0, len(self), 8192):
            block = slice(b, b + 8192)
            rows = zip(
                self.topics[block].tolist(),
                self.kps[block].tolist(),
                self.start[block].tolist(),
                self.epoch[block].tolist(),
                strict=True,
            )
            for i, (ts, ks, s, e) in enumerate(rows, start=b):
                yield {
                    "id": f"c{i:07d}",
                    "topics": [tl[t] for t in ts if t >= 0],
                    "knowledge_points": [kl[k] for k in ks if k >= 0],
                    "start_topic": tl[s],
                    "epoch": e,
                }

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        return list(itertools.islice(iter(self), limit))


def _walk_chunk(
    wg: WalkGraph, start: np.ndarray, cfg: ComposeConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Walk every start topic once. Returns (topics, kps, per-walker dead-end flags); slots not reached hold -1."""
    n = start.size
    s0 = 1 if cfg.include_start_topic else 0
    t_lo, t_hi = cfg.n_topic_steps
    k_lo, k_hi = cfg.n_kp_steps
    revisit = not cfg.allow_revisits
    flags = {
        k: np.zeros(n, dtype=bool) for k in ("topic_phase_dead_end", "hybrid_dead_end", "kp_phase_dead_end")
    }

    # Topic phase. `path` always holds the start topic (for no-revisit checks); the output drops it if asked.
    path = np.full((n, 1 + t_hi), -1, dtype=np.int64)
    path[:, 0] = start
    n_steps = rng.integers(t_lo, t_hi + 1, size=n)
    cur = start.astype(np.int64)
    alive = np.arange(n)
    for s in range(t_hi):
        alive = alive[n_steps[alive] > s]
        if alive.size == 0:
            break
        vis = path[alive, : s + 1] if revisit else None
        nxt = _step(wg.tt, cur[alive], vis, rng, cfg.max_rejections)
        dead = nxt < 0
        flags["topic_phase_dead_end"][alive[dead]] = True
        alive = alive[~dead]
        path[alive, s + 1] = nxt[~dead]
        cur[alive] = nxt[~dead]

    # Hybrid step: one topic -> KP step, from the last topic reached (or a random collected one).
    if cfg.hybrid_from == "last":
        src = cur
    else:
        n_have = (path >= 0).sum(axis=1)
        if not cfg.include_start_topic:
            n_have = n_have - 1
        pick = (rng.random(n) * np.maximum(n_have, 1)).astype(np.int64) + (1 - s0)
        src = path[np.arange(n), np.minimum(pick, path.shape[1] - 1)]
        src = np.where(src >= 0, src, cur)
    kpath = np.full((n, 1 + k_hi), -1, dtype=np.int64)
    first = _step(wg.tk, src, None, rng, 0)
    flags["hybrid_dead_end"] = first < 0
    kpath[:, 0] = first

    # KP phase.
    k_steps = rng.integers(k_lo, k_hi + 1, size=n)
    kcur = first.copy()
    alive = np.flatnonzero(first >= 0)
    for s in range(k_hi):
        alive = alive[k_steps[alive] > s]
        if alive.size == 0:
            break
        vis = kpath[alive, : s + 1] if revisit else None
        nxt = _step(wg.kk, kcur[alive], vis, rng, cfg.max_rejections)
        dead = nxt < 0
        flags["kp_phase_dead_end"][alive[dead]] = True
        alive = alive[~dead]
        kpath[alive, s + 1] = nxt[~dead]
        kcur[alive] = nxt[~dead]

    topics = path[:, 1 - s0 :]
    if cfg.allow_revisits:
        topics = _blank_repeats(topics)
        kpath = _blank_repeats(kpath)
    return topics.astype(np.int32), kpath.astype(np.int32), flags


def _blank_repeats(a: np.ndarray) -> np.ndarray:
    """With revisits allowed, a set keeps a node once: later repeats in a row become -1 (order kept)."""
    a = a.copy()
    for j in range(1, a.shape[1]):
        rep = (a[:, :j] == a[:, j : j + 1]).any(axis=1) & (a[:, j] >= 0)
        a[rep, j] = -1
    return a


def _set_rows(topics: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """One int32 row per composition that is equal iff the (topic set, KP set) pair is equal: each part sorted
    (so walk order does not matter), -1 padding first."""
    return np.ascontiguousarray(np.concatenate([np.sort(topics, axis=1), np.sort(kps, axis=1)], axis=1))


def _hash_rows(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row (multiply-xorshift over the columns; uint64 arithmetic wraps)."""
    h = np.full(rows.shape[0], 0x243F6A8885A308D3, dtype=np.uint64)
    for j in range(rows.shape[1]):
        h ^= rows[:, j].astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


def _void(rows: np.ndarray) -> np.ndarray:
    """Rows as fixed-width byte strings (exact keys for np.unique / np.isin)."""
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


class _Dedup:
    """Remembers the compositions kept so far and finds first occurrences of new ones.

    Fast path: sort and compare 64-bit hashes of the set rows, confirming every hash match on the full rows.
    If two different rows ever share a hash, it switches for good to exact byte-string keys (slower), so a
    collision can never drop a new composition."""

    def __init__(self, width: int):
        self.width = width
        self.exact = False
        self.h = np.empty(0, np.uint64)  # sorted hashes of kept rows
        self.rows = np.empty((0, width), np.int32)  # kept rows, aligned with self.h
        self._pending: np.ndarray | None = None

    def _to_exact(self) -> None:
        self.exact = True
        self.seen = np.unique(_void(self.rows))

    def new(self, rows: np.ndarray) -> np.ndarray:
        """Indices (ascending) of rows that are first occurrences and not yet kept."""
        if not self.exact:
            h = _hash_rows(rows)
            uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
            if (rows != rows[first[inv.ravel()]]).any():
                self._to_exact()
            else:
                cand, hc = first, uh
                if self.h.size and cand.size:
                    pos = np.minimum(np.searchsorted(self.h, hc), self.h.size - 1)
                    hit = self.h[pos] == hc
                    if (self.rows[pos[hit]] != rows[cand[hit]]).any():
                        self._to_exact()
                    else:
                        cand = cand[~hit]
                if not self.exact:
                    order = np.argsort(cand)
                    self._pending = h
                    return cand[order]
        keys = _void(rows)
        _, first = np.unique(keys, return_index=True)
        if self.seen.size:
            first = first[~np.isin(keys[first], self.seen, assume_unique=True)]
        self._pending = keys
        return np.sort(first)

    def add(self, rows: np.ndarray, idx: np.ndarray) -> None:
        """Remember rows[idx] (a subset of what :meth:`new` returned for the same rows)."""
        if self.exact:
            self.seen = np.union1d(self.seen, self._pending[idx])
            return
        hn = self._pending[idx]
        order = np.argsort(hn)
        pos = np.searchsorted(self.h, hn[order])  # merge into the sorted arrays: O(n), no full re-sort
        self.h = np.insert(self.h, pos, hn[order])
        self.rows = np.insert(self.rows, pos, rows[idx][order], axis=0)


def compose(G: nx.Graph | WalkGraph, config: ComposeConfig | None = None, seed: int = 0) -> Compositions:
    """Walk from every topic, epoch after epoch, keeping unique compositions until there are
    ``config.n_compositions`` of them (or, without a target, for ``config.epochs`` epochs; with one, epochs is a cap
    and ``stats["short_of_target"]`` says how many are missing when the graph ran out of new combinations first).

    Seeded: the same graph, config and seed give the same compositions in the same order. Drop counts per rule
    are in ``result.stats``; ``walks = kept + dropped_no_topic + dropped_no_kp + dropped_duplicate``, counted up to
    the walk that reached the target.
    """
    cfg = config or ComposeConfig()
    t0 = time.perf_counter()
    wg = G if isinstance(G, WalkGraph) else walk_graph(G)
    rng = np.random.default_rng(seed)
    nT = wg.n_topics
    s0 = 1 if cfg.include_start_topic else 0
    t_slots = s0 + cfg.n_topic_steps[1]
    k_slots = 1 + cfg.n_kp_steps[1]
    stats: dict[str, Any] = {
        "n_topics": nT,
        "n_kps": wg.n_kps,
        "target": cfg.n_compositions,
        "epochs_requested": cfg.epochs,
        "epochs_run": 0,
        "walks": 0,
        "kept": 0,
        "dropped_no_topic": 0,
        "dropped_no_kp": 0,
        "dropped_duplicate": 0,
        "topic_phase_dead_end": 0,
        "hybrid_dead_end": 0,
        "kp_phase_dead_end": 0,
        "reached_target": False,
    }
    out_t: list[np.ndarray] = []
    out_k: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    out_e: list[np.ndarray] = []
    dedup = _Dedup(t_slots + k_slots)
    kept = 0
    cap = cfg.n_compositions
    epochs_per_chunk = max(1, cfg.chunk_walkers // max(nT, 1))
    epoch = 0
    while nT and epoch < cfg.epochs and (cap is None or kept < cap):
        e1 = min(cfg.epochs, epoch + epochs_per_chunk)
        starts, epochs = [], []
        for e in range(epoch, e1):
            order = rng.permutation(nT) if cfg.shuffle_topics else np.arange(nT)
            starts.append(order)
            epochs.append(np.full(nT, e, dtype=np.int32))
        start = np.concatenate(starts)
        ep = np.concatenate(epochs)
        topics, kps, flags = _walk_chunk(wg, start, cfg, rng)

        has_t = (topics >= 0).any(axis=1)
        has_k = (kps >= 0).any(axis=1)
        valid = has_t & (has_k | (not cfg.drop_without_kp))
        vidx = np.flatnonzero(valid)
        if cfg.dedup:
            rows = _set_rows(topics[vidx], kps[vidx])
            sel = dedup.new(rows)
            keep_idx = vidx[sel]
        else:
            keep_idx = vidx

        # Stop at the cap: count walks only up to the one that produced the last kept composition.
        n_walks = start.size
        if cap is not None and kept + keep_idx.size >= cap:
            keep_idx = keep_idx[: cap - kept]
            if cfg.dedup:
                sel = sel[: cap - kept]
            n_walks = int(keep_idx[-1]) + 1
            stats["reached_target"] = True
        stats["walks"] += n_walks
        used = slice(0, n_walks)
        stats["dropped_no_topic"] += int((~has_t[used]).sum())
        stats["dropped_no_kp"] += int((has_t[used] & ~has_k[used]).sum()) if cfg.drop_without_kp else 0
        stats["dropped_duplicate"] += int(valid[used].sum()) - keep_idx.size
        for k, f in flags.items():
            stats[k] += int(f[used].sum())
        stats["epochs_run"] = int(ep[n_walks - 1]) + 1
        out_t.append(topics[keep_idx])
        out_k.append(kps[keep_idx])
        out_s.append(start[keep_idx].astype(np.int32))
        out_e.append(ep[keep_idx])
        if cfg.dedup and keep_idx.size:
            dedup.add(rows, sel)
        kept += keep_idx.size
        epoch = e1

    res = Compositions(
        wg=wg,
        topics=np.concatenate(out_t) if out_t else np.empty((0, t_slots), np.int32),
        kps=np.concatenate(out_k) if out_k else np.empty((0, k_slots), np.int32),
        start=np.concatenate(out_s) if out_s else np.empty(0, np.int32),
        epoch=np.concatenate(out_e) if out_e else np.empty(0, np.int32),
    )
    stats["kept"] = len(res)
    stats["short_of_target"] = max(0, cap - len(res)) if cap is not None else 0
    n_t = (res.topics >= 0).sum(axis=1)
    n_k = (res.kps >= 0).sum(axis=1)
    stats["topics_per_composition"] = {
        int(v): int(c) for v, c in zip(*np.unique(n_t, return_counts=True), strict=True)
    }
    stats["kps_per_composition"] = {
        int(v): int(c) for v, c in zip(*np.unique(n_k, return_counts=True), strict=True)
    }
    stats["distinct_start_topics"] = int(np.unique(res.start).size)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    res.stats = stats
    return res


def write_compositions(comps: Compositions | Iterable[dict], run_dir: str | Path) -> Path:
    """Write ``compositions.jsonl`` (atomically) and, for a :class:`Compositions`, ``compositions_stats.json``."""
    run = RunDir(run_dir)
    if not isinstance(comps, Compositions):
        return write_jsonl(run.compositions, iter(comps))
    wg = comps.wg
    path = write_walk(
        run.compositions, comps.topics, comps.kps, comps.start, comps.epoch, wg.topic_labels, wg.kp_labels
    )
    write_json(run.compositions_stats, comps.stats)
    return path


def read_compositions(run_dir: str | Path) -> list[CompositionRow]:
    """Read ``compositions.jsonl`` back (a run directory or the file itself)."""
    path = Path(run_dir)
    return read_jsonl(RunDir(path).compositions if path.is_dir() else path)  # type: ignore[return-value]


def step_probabilities(wg: WalkGraph, phase: str, node: int, visited: Iterable[int] = ()) -> dict[int, float]:
    """Eq. 2 for one step from ``node`` in a phase's sub-graph (``"tt"``, ``"tk"`` or ``"kk"``): {neighbour index:
    p(v | u)} over the unvisited neighbours, from the weights the walk samples (for notebooks and the explorer)."""
    csr, skip = getattr(wg, phase), set(visited)
    lo, hi = csr.indptr[node], csr.indptr[node + 1]
    w = {
        int(v): float(x) for v, x in zip(csr.indices[lo:hi], csr.w[lo:hi], strict=True) if int(v) not in skip
    }
    total = sum(w.values())
    return {v: x / total for v, x in w.items()} if total else {}


def walks_from(
    wg: WalkGraph, topic: int, n: int, config: ComposeConfig, rng: np.random.Generator
) -> Compositions:
    """``n`` walks of the stage's walk from one start topic, nothing dropped or de-duplicated (for exploring)."""
    topics, kps, _ = _walk_chunk(wg, np.full(n, topic, dtype=np.int64), config, rng)
    return Compositions(wg, topics, kps, np.full(n, topic, np.int32), np.zeros(n, np.int32))


def drop_table(stats: dict[str, Any]) -> list[tuple[str, int]]:
    """(rule, count) rows for display: walks, each drop rule, kept."""
    return [
        ("walks", stats.get("walks", 0)),
        ("dropped: no topic", stats.get("dropped_no_topic", 0)),
        ("dropped: no knowledge point", stats.get("dropped_no_kp", 0)),
        ("dropped: duplicate composition", stats.get("dropped_duplicate", 0)),
        ("kept", stats.get("kept", 0)),
    ]


__all__ = [
    "Compositions",
    "WalkGraph",
    "walk_graph",
    "compose",
    "write_compositions",
    "read_compositions",
    "drop_table",
    "step_probabilities",
    "walks_from",
]
