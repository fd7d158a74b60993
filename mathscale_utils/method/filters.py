"""The filters a generated pair passes in stage 03 and the funnel that counts them (paper §3.3, §4.1): the optional
answer check (the teacher re-solves), decontamination against MWPBench test questions (``decontamination.py``),
MinHash near-duplicates (``near_duplicates.py``), then the seed set appended.

The raw rows are read once, a block of usable questions at a time (each normalised once for both filters); what is
kept is a list of row positions, and the training rows are made from the raw rows again when they are written
(``AssembledRows``), so 2M pairs never sit in memory as dicts."""

from __future__ import annotations

import time
import warnings
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mathscale_utils.core.artifacts import stage
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.grading.answers import final_answer, normalise
from mathscale_utils.grading.judges import answers_equivalent
from mathscale_utils.grading.numbers import number_value
from mathscale_utils.grading.paper_judge import paper_judge
from mathscale_utils.inference.chat import ChatRequest
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method.decontamination import Decontaminator, TestItem, load_test_questions
from mathscale_utils.method.near_duplicates import NearDuplicates, near_duplicates
from mathscale_utils.method.reply_format import CHECK_PROMPT, seed_solution
from mathscale_utils.method.text_hashing import Words, ngram_hashes, normalize_text

_BLOCK = 20_000  # usable questions filtered together

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
    """composition_id -> {teacher_answer, agrees} for every usable row (calls cached, so a re-run is free). The rows
    are read twice (requests for the Batch API, then a shard_size of them at a time), never all held."""
    llm.prefetch(  # the Batch API backend: one submission for all, taken in bounded chunks
        (check_request(r["question"], cfg, seed) for r in rows if r["status"] == "ok"), "answer check"
    )
    out: dict[str, dict] = {}
    chunk: list[dict] = []
    for r in [*(r for r in rows if r["status"] == "ok"), None]:
        if r is not None:
            chunk.append(r)
        if chunk and (r is None or len(chunk) == cfg.shard_size):
            reqs = [check_request(x["question"], cfg, seed) for x in chunk]
            results = llm.chat_many(reqs, desc=f"{stage('03').label} answer check")
            for x, res in zip(chunk, results, strict=True):
                fa = final_answer(res.text or "") if res.ok else None
                teacher = fa[0] if fa else None
                agrees = answers_agree(x["answer"], teacher) or _paper_judge(res.text, x["answer"])
                out[x["composition_id"]] = {"teacher_answer": teacher, "agrees": agrees, "error": res.error}
            chunk = []
    return out


# ----------------------------------------------------------------------------------------------------------------
# Funnel and assembly: the filters above in order, then the seed set appended
# ----------------------------------------------------------------------------------------------------------------


def _gen_id(cid: str) -> str:
    return f"gen-{cid}"


def training_row(r: dict, teacher_model: str, check: dict | None) -> dict:
    """A kept raw row as a row of mathscaleqa.jsonl (check: its answer check, when one ran)."""
    return {
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
        "check_agrees": None if check is None else bool(check.get("agrees")),
    }


class AssembledRows(Sequence[dict]):
    """The training set: the kept raw rows (by position) made into training rows when read, then the seed rows."""

    def __init__(
        self,
        raw: Sequence[dict],
        kept: np.ndarray,
        teacher_model: str,
        checks: dict[str, dict] | None,
        seeds: list[dict],
    ):
        self.raw, self.kept, self.seeds = raw, kept, seeds
        self.teacher_model, self.checks = teacher_model, checks
        self.n_generated = len(kept)

    def _row(self, r: dict) -> dict:
        chk = self.checks.get(r["composition_id"]) if self.checks is not None else None
        return training_row(r, self.teacher_model, chk)

    def __len__(self) -> int:
        return self.n_generated + len(self.seeds)

    def __iter__(self) -> Iterator[dict]:
        kept, k = self.kept, 0
        if len(kept):
            for pos, r in enumerate(self.raw):
                if pos == kept[k]:
                    yield self._row(r)
                    k += 1
                    if k == len(kept):
                        break
        yield from self.seeds

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("row index out of range")
        i %= n
        return (
            self._row(self.raw[int(self.kept[i])])
            if i < self.n_generated
            else self.seeds[i - self.n_generated]
        )


@dataclass
class Assembly:
    rows: AssembledRows  # the final training set (generated kept + seeds), made from the raw rows when read
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

    @property
    def n_generated(self) -> int:
        return self.rows.n_generated


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


@dataclass
class _Pass:
    """What one read of the raw rows counts and keeps."""

    n_raw: int = 0
    n_error: int = 0
    n_ok: int = 0
    n_checked_out: int = 0
    n_decontaminated: int = 0
    n_duplicates: int = 0
    errors: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)
    first: Counter = field(default_factory=Counter)
    agree: int = 0
    kept: array = field(default_factory=lambda: array("q"))
    decon: list[dict] = field(default_factory=list)
    dups: list[dict] = field(default_factory=list)
    seconds: Counter = field(default_factory=Counter)


def _filter_block(
    block: list[tuple[int, str, str]], dec: Decontaminator | None, nd: NearDuplicates | None, st: _Pass
) -> None:
    """Decontaminate, then dedup, a block of (raw position, id, question); keep the positions that pass."""
    t0 = time.perf_counter()
    words = Words.of_questions([q for _, _, q in block])
    st.seconds["normalise"] += time.perf_counter() - t0
    if dec is not None:
        t0 = time.perf_counter()
        hits = dec.check_words(words, [q for _, _, q in block], [g for _, g, _ in block])
        st.decon += hits
        st.n_decontaminated += len(hits)
        if hits:
            bad = {h["id"] for h in hits}
            keep = [k for k, (_, g, _) in enumerate(block) if g not in bad]
            block = [block[k] for k in keep]
            words = words.subset(keep)
        st.seconds["decontamination"] += time.perf_counter() - t0
    if nd is not None:
        t0 = time.perf_counter()
        dups = nd.add(words, [g for _, g, _ in block])
        st.dups += dups
        st.n_duplicates += len(dups)
        gone = {d["id"] for d in dups}
        block = [b for b in block if b[1] not in gone]
        st.seconds["dedup"] += time.perf_counter() - t0
    st.kept.extend(pos for pos, _, _ in block)


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
    raw rows (a run stopped by the budget), the funnel says how many compositions were never reached.

    One read of raw: counts, then blocks of usable questions through the answer check, decontamination and
    near-duplicate removal. Assembly.rows reads raw again when it is iterated."""
    seed_train = seed_rows(seeds) if cfg.include_seed_train else []
    items = list(test_items or []) if cfg.decontaminate else []
    if cfg.decontaminate and not items:
        warnings.warn(
            "decontamination: no MWPBench test questions available; nothing was checked", stacklevel=2
        )
    dec = Decontaminator(items, cfg.ngram) if items else None
    nd = NearDuplicates(cfg.dedup_threshold, cfg.num_perm, cfg.dedup_shingle) if cfg.dedup else None
    drop = cfg.answer_check and cfg.answer_check_action == "drop"
    st, block = _Pass(), []
    for pos, r in enumerate(raw):
        st.n_raw += 1
        if r.get("first_reason"):
            st.first[r["first_reason"]] += 1
        if r["status"] == "error":
            st.n_error += 1
            st.errors[r["reason"]] += 1
            continue
        if r["status"] != "ok":
            st.rejections[r["reason"]] += 1
            continue
        st.n_ok += 1
        if cfg.answer_check:
            agrees = (checks or {}).get(r["composition_id"], {}).get("agrees")
            st.agree += bool(agrees)
            if drop and not agrees:
                st.n_checked_out += 1
                continue
        block.append((pos, _gen_id(r["composition_id"]), r["question"]))
        if len(block) == _BLOCK:
            _filter_block(block, dec, nd, st)
            block = []
    if block:
        _filter_block(block, dec, nd, st)

    n = max(n_compositions or 0, st.n_raw)
    funnel: list[tuple[str, int, int]] = [("compositions", n, 0)]
    if n > st.n_raw:
        funnel.append(("reached (run stopped early)", st.n_raw, n - st.n_raw))
    replied = st.n_raw - st.n_error
    funnel.append(("teacher replied", replied, st.n_error))
    funnel.append(("parsed (one retry)", st.n_ok, replied - st.n_ok))
    left = st.n_ok
    check_stats: dict[str, Any] = {"enabled": cfg.answer_check}
    if cfg.answer_check:
        check_stats.update(
            action=cfg.answer_check_action,
            checked=st.n_ok,
            agree=st.agree,
            disagree=st.n_ok - st.agree,
            agreement_rate=round(st.agree / st.n_ok, 4) if st.n_ok else None,
        )
        if drop:
            funnel.append(("answer check (teacher re-solve)", left - st.n_checked_out, st.n_checked_out))
            left -= st.n_checked_out
    test_set: dict[str, Any] = {
        "enabled": cfg.decontaminate,
        "n": len(items),
        "per_dataset": dict(Counter(t.dataset for t in items)),
        "notes": list(test_notes),
        "ngram": cfg.ngram,
    }
    seed_contam: list[dict] = []
    if cfg.decontaminate:
        funnel.append(
            (f"decontamination (exact + {cfg.ngram}-gram)", left - st.n_decontaminated, st.n_decontaminated)
        )
        left -= st.n_decontaminated
        if dec is not None and seed_train:  # reported only: the paper appends the training set as it is
            seed_contam = dec.check([r["question"] for r in seed_train], [r["id"] for r in seed_train])
    if cfg.dedup:
        funnel.append(
            (
                f"near-duplicate removal (MinHash J>={cfg.dedup_threshold:g})",
                left - st.n_duplicates,
                st.n_duplicates,
            )
        )
    kept = np.frombuffer(st.kept, dtype=np.int64) if len(st.kept) else np.empty(0, np.int64)
    rows = AssembledRows(raw, kept, teacher_model, checks if cfg.answer_check else None, seed_train)
    return Assembly(
        rows=rows,
        funnel=funnel,
        rejections=dict(st.rejections),
        first_attempt_rejections=dict(st.first),
        errors=dict(st.errors),
        decontamination=st.decon,
        duplicates=st.dups,
        answer_check=check_stats,
        seed_contamination=seed_contam,
        test_set=test_set,
        n_seed_rows=len(seed_train),
        extra={"filter_seconds": {k: round(v, 2) for k, v in st.seconds.items()}},
    )


def funnel_adds_up(funnel: Sequence[tuple[str, int, int]]) -> bool:
    return all(prev[1] - cur[2] == cur[1] for prev, cur in zip(funnel, funnel[1:], strict=False))


__all__ = [
    "TestItem",
    "Decontaminator",
    "Assembly",
    "AssembledRows",
    "NearDuplicates",
    "check_request",
    "check_answers",
    "answers_agree",
    "normalize_text",
    "ngram_hashes",
    "load_test_questions",
    "near_duplicates",
    "seed_rows",
    "training_row",
    "filter_and_assemble",
    "funnel_adds_up",
]
