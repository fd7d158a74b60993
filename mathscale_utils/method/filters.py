"""The filters a generated pair passes in stage 03 and the funnel that counts them (paper §3.3, §4.1): the optional
answer check (the teacher re-solves), decontamination against MWPBench test questions, MinHash near-duplicates."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mathscale_utils.core.artifacts import stage
from mathscale_utils.core.io import DataError
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.data.benchmarks import FRESH_GAOKAO, MWPBENCH_DATASETS, load_mwpbench
from mathscale_utils.grading.answers import final_answer, normalise
from mathscale_utils.grading.judges import answers_equivalent
from mathscale_utils.grading.numbers import number_value
from mathscale_utils.grading.paper_judge import paper_judge
from mathscale_utils.inference.chat import ChatRequest
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method.reply_format import CHECK_PROMPT, seed_solution

# ----------------------------------------------------------------------------------------------------------------
# Optional answer check
# ----------------------------------------------------------------------------------------------------------------


def answers_agree(a: str | None, b: str | None) -> bool:
    """Whether two stated answers agree: the same normal form or the same exact number (``answers.py``), else the
    strict judge's comparison (``judges.answers_equivalent``: lists, structures, symbolic) when it is available."""
    if not a or not b:
        return False
    if normalise(a) == normalise(b):
        return True
    xa, xb = number_value(a), number_value(b)
    if xa is not None and xb is not None:
        return xa == xb
    try:
        return bool(answers_equivalent(a, b)[0])
    except Exception:  # noqa: BLE001 - the optional judge must never break a run
        return False


def _paper_judge(completion: str | None, reference: str | None) -> bool:
    """MWPBench's own extraction + equivalence (``judges.paper_judge``) of a whole completion, if available."""
    if not completion or not reference:
        return False
    try:
        return bool(paper_judge(completion, reference).correct)
    except Exception:  # noqa: BLE001
        return False


def check_request(question: str, cfg: GenerateConfig, seed: int) -> ChatRequest:
    """The optional answer check: the teacher solves the generated question on its own (greedy)."""
    return ChatRequest(
        messages=[{"role": "user", "content": CHECK_PROMPT.format(question=question.strip())}],
        temperature=0.0,
        max_tokens=cfg.answer_check_max_tokens,
        seed=seed,
    )


def check_answers(rows: Sequence[dict], llm: LLM, cfg: GenerateConfig, seed: int = 0) -> dict[str, dict]:
    """composition_id -> {teacher_answer, agrees} for every usable row (calls cached, so a re-run is free)."""
    ok = [r for r in rows if r["status"] == "ok"]
    reqs = [check_request(r["question"], cfg, seed) for r in ok]
    llm.prefetch(reqs, "answer check")  # the Batch API backend: one submission for all
    out: dict[str, dict] = {}
    for i in range(0, len(ok), cfg.shard_size):
        chunk = ok[i : i + cfg.shard_size]
        results = llm.chat_many(reqs[i : i + cfg.shard_size], desc=f"{stage('03').label} answer check")
        for r, res in zip(chunk, results, strict=True):
            fa = final_answer(res.text or "") if res.ok else None
            teacher = fa[0] if fa else None
            agrees = answers_agree(r["answer"], teacher) or _paper_judge(res.text, r["answer"])
            out[r["composition_id"]] = {"teacher_answer": teacher, "agrees": agrees, "error": res.error}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Decontamination against MWPBench test questions
# ----------------------------------------------------------------------------------------------------------------

_NONWORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
_BASE = np.uint64(1099511628211)  # FNV prime: odd, large


def normalize_text(s: str) -> str:
    """For matching: NFKC, lower case, every non-alphanumeric character (punctuation, symbols) -> space, collapsed."""
    s = unicodedata.normalize("NFKC", s or "").lower()
    return _SPACES.sub(" ", _NONWORD.sub(" ", s)).strip()


def stable_hash(text: str) -> int:
    """A signed 64-bit hash of a string that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def ngram_hashes(docs: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every doc: (hashes, doc index, start position), vectorised.

    Words are hashed with blake2b (once per distinct word; Python's own string hash changes with every process, which
    made MinHash estimates, and so near-duplicate removal, differ between runs), then combined with a polynomial
    rolling hash over the concatenation of all docs; windows crossing a doc boundary are dropped. Docs shorter than
    n contribute nothing."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    if total < n:
        e = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), e, e
    vocab: dict[str, int] = {}
    words = np.fromiter(
        (vocab[w] if w in vocab else vocab.setdefault(w, stable_hash(w)) for d in docs for w in d),
        dtype=np.int64,
        count=total,
    ).view(np.uint64)
    m = total - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h *= _BASE
        h += words[j : j + m]
    doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    valid = doc_of[:m] == doc_of[n - 1 :]
    idx = np.flatnonzero(valid)
    return h[idx], doc_of[idx], idx - starts[doc_of[idx]]


@dataclass
class TestItem:
    """One benchmark test question."""

    __test__ = False  # not a pytest class

    id: str
    dataset: str
    question: str


class Decontaminator:
    """Exact match (after :func:`normalize_text`) and shared word n-grams against a fixed set of test questions.

    The test side is a sorted array of n-gram hashes with the test item of each; a generated question is looked
    up with one vectorised ``searchsorted``, so 200K generated x 15K test questions take seconds. A hash hit is
    confirmed on the words before it is reported (no false positive from a hash collision)."""

    def __init__(self, items: Sequence[TestItem], n: int = 13):
        self.items, self.n = list(items), n
        self.norm = [normalize_text(t.question) for t in self.items]
        self.exact: dict[str, int] = {}
        for i, s in enumerate(self.norm):
            if s:
                self.exact.setdefault(s, i)
        h, owner, _ = ngram_hashes([s.split() for s in self.norm], n)
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner = h[order], owner[order]

    def check(self, questions: Sequence[str], ids: Sequence[str], chunk: int = 20_000) -> list[dict]:
        """One hit per contaminated question: {id, kind ("exact" | "ngram"), test_id, test_dataset, ngram, question}."""
        hits: list[dict] = []
        for c0 in range(0, len(questions), chunk):
            norm = [normalize_text(q) for q in questions[c0 : c0 + chunk]]
            toks = [s.split() for s in norm]
            flagged: dict[int, dict] = {}
            for j, s in enumerate(norm):
                t = self.exact.get(s) if s else None
                if t is not None:
                    flagged[j] = self._hit(ids[c0 + j], questions[c0 + j], "exact", t, s)
            if len(self.hashes):
                h, doc, pos = ngram_hashes(toks, self.n)
                loc = np.searchsorted(self.hashes, h)
                loc_c = np.minimum(loc, len(self.hashes) - 1)
                found = np.flatnonzero(self.hashes[loc_c] == h)
                for f in found:
                    j = int(doc[f])
                    if j in flagged:
                        continue
                    gram = " ".join(toks[j][int(pos[f]) : int(pos[f]) + self.n])
                    k = int(loc_c[f])
                    while k < len(self.hashes) and self.hashes[k] == h[f]:  # confirm on the words
                        t = int(self.owner[k])
                        if f" {gram} " in f" {self.norm[t]} ":
                            flagged[j] = self._hit(ids[c0 + j], questions[c0 + j], "ngram", t, gram)
                            break
                        k += 1
            hits.extend(flagged[j] for j in sorted(flagged))
        return hits

    def _hit(self, gid: str, question: str, kind: str, t: int, shared: str) -> dict:
        item = self.items[t]
        return {
            "id": gid,
            "kind": kind,
            "test_id": item.id,
            "test_dataset": item.dataset,
            "ngram": shared,
            "question": question,
            "test_question": item.question,
        }


def load_test_questions(
    data_dir: str | Path | None,
    official_file: str | Path | None = None,
    datasets: Sequence[str] | None = None,
) -> tuple[list[TestItem], list[str]]:
    """MWPBench test questions (all ten datasets and Fresh-GaokaoMath-2023 unless narrowed), via
    ``data.load_mwpbench``; returns (items, notes on what is missing). A dataset whose files are absent is noted,
    not fatal: decontamination then covers what is available, and the card says so."""

    names = list(datasets) if datasets else [*MWPBENCH_DATASETS, FRESH_GAOKAO]
    items: list[TestItem] = []
    notes: list[str] = []
    for d in names:
        try:
            recs = load_mwpbench("test", data_dir, official_file=official_file, datasets=[d])
        except (DataError, OSError) as e:
            notes.append(f"{d}: not checked ({str(e).split(' (the shared data folder')[0]})")
            continue
        if not recs:
            notes.append(f"{d}: not available here")
        items.extend(TestItem(r.id, r.dataset, r.question) for r in recs)
    return items, notes


# ----------------------------------------------------------------------------------------------------------------
# Near-duplicate removal (datasketch MinHash LSH)
# ----------------------------------------------------------------------------------------------------------------


def near_duplicates(
    questions: Sequence[str],
    ids: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 3,
    chunk: int = 10_000,
) -> list[dict]:
    """Greedy in input order: a question whose MinHash-estimated Jaccard similarity (word ``shingle``-grams of
    the normalised text) with an earlier *kept* question reaches ``threshold`` is a duplicate of it.
    Returns {id, duplicate_of, similarity} for each removed question. LSH candidates are confirmed on the
    signatures, so a bucket collision alone removes nothing. Texts are tokenised a chunk at a time; what stays
    in memory is the LSH index (kept questions only) and one uint32 signature per question."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(
        threshold=min(threshold, 0.95), num_perm=num_perm
    )  # bands for <= 0.95; hits confirmed below
    template = MinHash(num_perm=num_perm, hashfunc=int)
    sigs = np.zeros((len(questions), num_perm), dtype=template.hashvalues.dtype)
    hits: list[dict] = []
    for c0 in range(0, len(questions), chunk):
        toks = [normalize_text(q).split() for q in questions[c0 : c0 + chunk]]
        h, doc, _ = ngram_hashes(toks, shingle)
        h32 = ((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))).astype(np.uint32)
        bounds = np.searchsorted(doc, np.arange(len(toks) + 1))
        for k, words in enumerate(toks):
            i = c0 + k
            part = h32[bounds[k] : bounds[k + 1]]
            if not len(part):
                if not words:
                    continue
                part = np.array([stable_hash(" ".join(words)) & 0xFFFFFFFF], dtype=np.uint32)  # < one shingle
            m = template.copy()
            m.update_batch(part)
            sigs[i] = m.hashvalues
            best, best_sim = None, 0.0
            for j in lsh.query(m):
                sim = float(np.mean(sigs[j] == sigs[i]))
                if sim >= threshold and (sim > best_sim or (sim == best_sim and j < best)):
                    best, best_sim = j, sim
            if best is None:
                lsh.insert(i, m)
            else:
                hits.append({"id": ids[i], "duplicate_of": ids[best], "similarity": round(best_sim, 4)})
    return hits


# ----------------------------------------------------------------------------------------------------------------
# Funnel and assembly: the filters above in order, then the seed set appended
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Assembly:
    rows: list[dict]  # the final training set (generated kept + seeds)
    funnel: list[tuple[str, int, int]]  # (step, kept, removed)
    rejections: dict[str, int]  # final rejection reasons
    first_attempt_rejections: dict[str, int]  # reasons that triggered a retry
    errors: dict[str, int]
    decontamination: list[dict]
    duplicates: list[dict]
    answer_check: dict[str, Any]
    seed_contamination: list[dict]
    test_set: dict[str, Any]
    n_seed_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _gen_id(cid: str) -> str:
    return f"gen-{cid}"


def seed_rows(seeds: Sequence[dict]) -> list[dict]:
    """The seed set as training rows (the paper appends MWPBench train as it is)."""
    out = []
    for s in seeds:
        q = (s.get("question") or "").strip()
        sol = seed_solution(s)
        if not q or not sol:
            continue
        out.append(
            {
                "id": f"seed-{s.get('seed_id')}",
                "question": q,
                "solution": sol,
                "answer": (s.get("answer") or "").strip() or (final_answer(sol) or ("",))[0],
                "topics": list(s.get("topics") or []),
                "knowledge_points": list(s.get("knowledge_points") or []),
                "composition_id": None,
                "teacher_model": None,
                "prompt_hash": None,
                "source": "seed",
                "check_agrees": None,
            }
        )
    return out


def filter_and_assemble(
    raw: Sequence[dict],
    seeds: Sequence[dict],
    cfg: GenerateConfig,
    teacher_model: str,
    test_items: Sequence[TestItem] | None = None,
    test_notes: Sequence[str] = (),
    checks: dict[str, dict] | None = None,
    log: Any = print,
    n_compositions: int | None = None,
) -> Assembly:
    """Apply the filters in order, count each, and build the final rows. With n_compositions larger than the
    raw rows (a run stopped by the budget), the funnel says how many compositions were never reached."""
    n = max(n_compositions or 0, len(raw))
    funnel: list[tuple[str, int, int]] = [("compositions", n, 0)]
    if n > len(raw):
        funnel.append(("reached (run stopped early)", len(raw), n - len(raw)))
    errors = Counter(r["reason"] for r in raw if r["status"] == "error")
    replied = [r for r in raw if r["status"] != "error"]
    funnel.append(("teacher replied", len(replied), len(raw) - len(replied)))
    ok = [r for r in replied if r["status"] == "ok"]
    rejections = Counter(r["reason"] for r in replied if r["status"] == "rejected")
    first = Counter(r["first_reason"] for r in raw if r.get("first_reason"))
    funnel.append(("parsed (one retry)", len(ok), len(replied) - len(ok)))

    check_stats: dict[str, Any] = {"enabled": cfg.answer_check}
    if cfg.answer_check:
        checks = checks or {}
        agree = sum(1 for r in ok if checks.get(r["composition_id"], {}).get("agrees"))
        check_stats.update(
            action=cfg.answer_check_action,
            checked=len(ok),
            agree=agree,
            disagree=len(ok) - agree,
            agreement_rate=round(agree / len(ok), 4) if ok else None,
        )
        if cfg.answer_check_action == "drop":
            kept = [r for r in ok if checks.get(r["composition_id"], {}).get("agrees")]
            funnel.append(("answer check (teacher re-solve)", len(kept), len(ok) - len(kept)))
            ok = kept

    decon: list[dict] = []
    test_set: dict[str, Any] = {
        "enabled": cfg.decontaminate,
        "n": 0,
        "per_dataset": {},
        "notes": list(test_notes),
        "ngram": cfg.ngram,
    }
    seed_contam: list[dict] = []
    seed_train = seed_rows(seeds) if cfg.include_seed_train else []
    if cfg.decontaminate:
        items = list(test_items or [])
        test_set.update(n=len(items), per_dataset=dict(Counter(t.dataset for t in items)))
        if items:
            dec = Decontaminator(items, cfg.ngram)
            decon = dec.check([r["question"] for r in ok], [_gen_id(r["composition_id"]) for r in ok])
            bad = {h["id"] for h in decon}
            kept = [r for r in ok if _gen_id(r["composition_id"]) not in bad]
            if seed_train:  # reported only: the paper appends the training set as it is
                seed_contam = dec.check([r["question"] for r in seed_train], [r["id"] for r in seed_train])
        else:
            warnings.warn(
                "decontamination: no MWPBench test questions available; nothing was checked", stacklevel=2
            )
            kept = ok
        funnel.append((f"decontamination (exact + {cfg.ngram}-gram)", len(kept), len(ok) - len(kept)))
        ok = kept

    dups: list[dict] = []
    if cfg.dedup:
        dups = near_duplicates(
            [r["question"] for r in ok],
            [_gen_id(r["composition_id"]) for r in ok],
            cfg.dedup_threshold,
            cfg.num_perm,
            cfg.dedup_shingle,
        )
        gone = {d["id"] for d in dups}
        kept = [r for r in ok if _gen_id(r["composition_id"]) not in gone]
        funnel.append(
            (f"near-duplicate removal (MinHash J>={cfg.dedup_threshold:g})", len(kept), len(ok) - len(kept))
        )
        ok = kept

    rows = []
    for r in ok:
        chk = (checks or {}).get(r["composition_id"]) if cfg.answer_check else None
        rows.append(
            {
                "id": _gen_id(r["composition_id"]),
                "question": r["question"],
                "solution": r["solution"],
                "answer": r["answer"],
                "topics": r["topics"],
                "knowledge_points": r["knowledge_points"],
                "composition_id": r["composition_id"],
                "teacher_model": teacher_model,
                "prompt_hash": r["prompt_hash"],
                "source": "generated",
                "check_agrees": None if chk is None else bool(chk.get("agrees")),
            }
        )
    rows += seed_train
    return Assembly(
        rows=rows,
        funnel=funnel,
        rejections=dict(rejections),
        first_attempt_rejections=dict(first),
        errors=dict(errors),
        decontamination=decon,
        duplicates=dups,
        answer_check=check_stats,
        seed_contamination=seed_contam,
        test_set=test_set,
        n_seed_rows=len(seed_train),
    )


def funnel_adds_up(funnel: Sequence[tuple[str, int, int]]) -> bool:
    return all(prev[1] - cur[2] == cur[1] for prev, cur in zip(funnel, funnel[1:], strict=False))


__all__ = [
    "TestItem",
    "Decontaminator",
    "Assembly",
    "check_request",
    "check_answers",
    "answers_agree",
    "normalize_text",
    "ngram_hashes",
    "load_test_questions",
    "near_duplicates",
    "seed_rows",
    "filter_and_assemble",
    "funnel_adds_up",
]
