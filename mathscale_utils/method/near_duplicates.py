"""Near-duplicate removal among generated questions (stage 03): MinHash over word shingles, LSH banding, greedy in
input order. The permutations and the band layout are datasketch's (``MinHash``, ``MinHashLSH``), so signatures,
candidates and results are exactly what ``MinHashLSH`` insert/query per question gives; the work is vectorised over
blocks of questions, which takes 2M questions at paper scale in minutes and about 1 GB instead of hours and ~8 GB
(the in-memory ``MinHashLSH`` keeps a set and a bytes key per band and question)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mathscale_utils.method.text_hashing import Words, stable_hash

_LOW32 = np.uint64(0xFFFFFFFF)  # datasketch's max hash
_SIG_BLOCK = (
    192  # questions whose signatures are computed together (their shingles x permutations fit in cache)
)
_MAX_PAIRS = 4_000_000  # candidate pairs inside one block before it is split
_ROWS = 1 << 13  # kept signatures per storage block (4 MB)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, which datasketch's MinHash (scheme affine32) applies to every input value."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of a uint32 matrix (multiply-xorshift over the columns; uint64 arithmetic wraps)."""
    h = np.full(rows.shape[0], 0x243F6A8885A308D3, dtype=np.uint64)
    for j in range(rows.shape[1]):
        h ^= rows[:, j].astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


class _Runs:
    """A growing set of (key, id) pairs, searchable by key: sorted runs, merged when two neighbours are of similar
    size (so adding n pairs costs O(n log n) in all, and a lookup searches at most log2 runs)."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], ids[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k1, i1), (k2, i2) = self.runs.pop(-2), self.runs.pop()
            keys, ids = np.concatenate([k1, k2]), np.concatenate([i1, i2])
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], ids[order]))

    def pairs(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in keys, id) for every stored pair whose key equals keys[position]."""
        pos, found = [], []
        order = np.argsort(keys)  # sorted keys: searchsorted walks each run in order (cache-friendly)
        sk = keys[order]
        for k, ids in self.runs:
            lo, n = np.empty_like(order), np.empty_like(order)
            lo[order] = np.searchsorted(k, sk, side="left")
            n[order] = np.searchsorted(k, sk, side="right")
            n -= lo
            hit = np.flatnonzero(n)
            if hit.size:
                p = np.repeat(hit, n[hit])
                first = np.repeat(lo[hit], n[hit])
                offset = np.arange(p.size) - np.repeat(np.cumsum(n[hit]) - n[hit], n[hit])
                pos.append(p)
                found.append(ids[first + offset])
        if not pos:
            e = np.empty(0, np.int64)
            return e, e
        return np.concatenate(pos), np.concatenate(found).astype(np.int64)


class NearDuplicates:
    """Greedy in input order: a question whose MinHash-estimated Jaccard similarity (word ``shingle``-grams of the
    normalised text) with an earlier *kept* question reaches ``threshold`` is a duplicate of the most similar one
    (the earliest among equals). Candidates are kept questions sharing an LSH band (exactly equal band values, as
    in MinHashLSH), confirmed on the signatures. Feed questions with :meth:`add`, block by block; what stays in
    memory is the band index, one uint32 signature and the id of every kept question."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3):
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(
            threshold=min(threshold, 0.95), num_perm=num_perm
        )  # bands for <= 0.95; hits confirmed
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.bands = [slice(a, b) for a, b in lsh.hashranges]
        template = MinHash(num_perm=num_perm, hashfunc=int)
        if getattr(template, "scheme", None) != "affine32":
            raise RuntimeError("near-duplicate removal follows datasketch >= 2.0's MinHash (scheme affine32)")
        self._a, self._b = (np.asarray(x, dtype=np.uint32) for x in template.permutations)
        self._index = _Runs()  # band key -> kept row
        self._sigs: list[np.ndarray] = []  # signatures of the kept questions, _ROWS per block
        self._names: list[str] = []  # ids of the kept questions, by kept row

    def signatures(self, words: Words) -> tuple[np.ndarray, np.ndarray]:
        """(rows of toks that get a signature, their MinHash signatures: datasketch's (scheme affine32), the min
        over the shingles of a * fmix32(h) + b mod 2^32 per permutation (a, b)). A question with fewer words than a shingle is hashed whole; one without words gets none
        (it is never a duplicate, nor kept as an original)."""
        h, doc, _ = words.ngrams(self.shingle)
        h32 = (h >> np.uint64(32)) ^ (h & _LOW32)
        n = len(words.lengths)
        counts = np.bincount(doc, minlength=n)
        short = np.flatnonzero((counts == 0) & (words.lengths > 0)).tolist()
        if short:  # < one shingle: the whole text, as one value
            extra = np.array([stable_hash(words.text(i)) & 0xFFFFFFFF for i in short], dtype=np.uint64)
            doc = np.concatenate([doc, np.asarray(short, dtype=np.int64)])
            order = np.argsort(doc, kind="stable")
            h32, doc = np.concatenate([h32, extra])[order], doc[order]
            counts = np.bincount(doc, minlength=n)
        rows = np.flatnonzero(counts)
        sigs = np.empty((rows.size, self.num_perm), dtype=np.uint32)
        hv = _fmix32(h32.astype(np.uint32))
        ends = np.cumsum(counts[rows])
        for s in range(0, rows.size, _SIG_BLOCK):
            e = min(s + _SIG_BLOCK, rows.size)
            lo, hi = (int(ends[s - 1]) if s else 0), int(ends[e - 1])
            x = self._a[:, None] * hv[None, lo:hi]  # uint32 arithmetic wraps: h -> a * h + b mod 2^32
            x += self._b[:, None]  # (permutations, shingles): the min below runs along contiguous memory
            sigs[s:e] = np.minimum.reduceat(x, np.concatenate([[0], ends[s : e - 1] - lo]), axis=1).T
        return rows, sigs

    def add(self, words: Words, ids: Sequence[str]) -> list[dict]:
        """The next block of questions (``Words.of_questions``), in input order -> {id, duplicate_of, similarity} of
        each duplicate."""
        rows, sigs = self.signatures(words)
        hits: list[dict] = []
        self._block(rows, sigs, ids, hits)
        return hits

    def _block(self, rows: np.ndarray, sigs: np.ndarray, ids: Sequence[str], hits: list[dict]) -> None:
        nb, n_kept = len(self.bands), len(self._names)
        keys = np.stack([_mix(sigs[:, b]) + np.uint64(k) for k, b in enumerate(self.bands)], axis=1)
        p, r_old = self._index.pairs(keys.ravel())  # earlier kept questions in a bucket
        i_in, j_in = _bucket_pairs(keys.ravel(), nb)  # earlier questions of this block in a bucket
        if i_in.size > _MAX_PAIRS and len(rows) > 1:  # a huge cluster of equal bands: halve the block
            m = len(rows) // 2
            self._block(rows[:m], sigs[:m], ids, hits)
            self._block(rows[m:], sigs[m:], ids, hits)
            return
        # candidate c: a kept row (c < n_kept) or n_kept + a position in this block
        pairs = np.unique(
            np.stack([np.concatenate([p // nb, i_in]), np.concatenate([r_old, n_kept + j_in])], axis=1),
            axis=0,
        )
        i_all, c_all = pairs[:, 0], pairs[:, 1]
        old = c_all < n_kept
        sig_c = np.empty((c_all.size, self.num_perm), dtype=np.uint32)
        sig_c[old] = self._gather(c_all[old])
        sig_c[~old] = sigs[c_all[~old] - n_kept]
        sig_i = sigs[i_all]
        in_bucket = np.zeros(i_all.size, dtype=bool)  # confirm: some band exactly equal (not a key collision)
        for b in self.bands:
            in_bucket |= (sig_i[:, b] == sig_c[:, b]).all(axis=1)
        sim = (sig_i == sig_c).mean(axis=1)
        good = in_bucket & (sim >= self.threshold) & (c_all != n_kept + i_all)
        cands: dict[int, list[tuple[int, float]]] = {}
        for i, c, s in zip(i_all[good].tolist(), c_all[good].tolist(), sim[good].tolist(), strict=True):
            cands.setdefault(i, []).append((c, s))
        kept = np.ones(len(rows), dtype=bool)
        for i in sorted(cands):
            best, best_sim = -1, 0.0
            for c, s in cands[i]:
                if c >= n_kept and not kept[c - n_kept]:
                    continue  # a duplicate itself: never inserted in the index, never a candidate
                if s > best_sim or (s == best_sim and c < best):
                    best, best_sim = c, s
            if best >= 0:
                kept[i] = False
                dup_of = self._names[best] if best < n_kept else ids[rows[best - n_kept]]
                hits.append({"id": ids[rows[i]], "duplicate_of": dup_of, "similarity": round(best_sim, 4)})
        self._keep(sigs[kept], [ids[r] for r in rows[kept].tolist()], keys[kept])

    def _gather(self, kept_rows: np.ndarray) -> np.ndarray:
        out = np.empty((kept_rows.size, self.num_perm), dtype=np.uint32)
        block = kept_rows // _ROWS
        for b in np.unique(block).tolist():
            m = block == b
            out[m] = self._sigs[b][kept_rows[m] % _ROWS]
        return out

    def _keep(self, sigs: np.ndarray, names: list[str], keys: np.ndarray) -> None:
        start = len(self._names)
        kept_rows = np.arange(start, start + len(names), dtype=np.int64)
        self._index.add(keys.ravel(), np.repeat(kept_rows, keys.shape[1]))
        self._names.extend(names)
        k = 0
        while k < len(names):  # into the signature blocks
            r = start + k
            if r % _ROWS == 0:
                self._sigs.append(np.empty((_ROWS, self.num_perm), dtype=np.uint32))
            n = min(len(names) - k, _ROWS - r % _ROWS)
            self._sigs[r // _ROWS][r % _ROWS : r % _ROWS + n] = sigs[k : k + n]
            k += n


def _bucket_pairs(flat_keys: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """(later, earlier) block positions of every two questions whose band keys (question-major, nb per question)
    are equal."""
    order = np.argsort(flat_keys, kind="stable")
    sk = flat_keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    sizes = np.diff(np.concatenate([starts, [sk.size]]))
    ii, jj = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for st, sz in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
        members = order[st : st + sz] // nb  # ascending: a stable sort keeps question order within a bucket
        a, b = np.triu_indices(sz, k=1)
        ii.append(members[b])
        jj.append(members[a])
    return np.concatenate(ii), np.concatenate(jj)


def near_duplicates(
    questions: Sequence[str],
    ids: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 3,
    chunk: int = 10_000,
) -> list[dict]:
    """{id, duplicate_of, similarity} for each near-duplicate among the questions (see NearDuplicates), which are
    normalised and fed a chunk at a time."""
    nd = NearDuplicates(threshold, num_perm, shingle)
    hits: list[dict] = []
    for c0 in range(0, len(questions), chunk):
        hits += nd.add(Words.of_questions(questions[c0 : c0 + chunk]), ids[c0 : c0 + chunk])
    return hits


__all__ = ["NearDuplicates", "near_duplicates"]
