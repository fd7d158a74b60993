"""Step 3b of MathScale: concept compositions -> new question/solution pairs -> filters -> MathScaleQA (paper §3.3, §4.1).

For every concept composition (a few topics and knowledge points (KPs) collected by the random walk of stage 02) the
teacher LLM writes one new question with its solution. The prompt follows the paper's Table 4 in our own words: a
math teacher creates a question that stays within the given topics and needs the combined use of the given KPs,
shown the k seed questions whose KP sets are closest (smallest Jaccard distance) to the composition's, each with its
solution. The paper leaves the output format, k, temperature and max tokens open; METHOD.md §5 and §11 give the
fill-ins used here (see :class:`mathscale_utils.generate_config.GenerateConfig`).

Pipeline and the funnel it reports (every step says how many it kept and removed)::

    compositions -> teacher replied (transport errors removed) -> parsed (unparsable replies removed after one
    retry) -> [answer check: teacher re-solves, disagreeing pairs dropped or flagged; off by default, as in the
    paper's final pipeline] -> decontamination against MWPBench test (exact + 13-gram) -> near-duplicate removal
    (MinHash LSH) -> + the seed set (the paper appends MWPBench train) -> mathscaleqa.jsonl

Reply format asked of the teacher (parsed by :func:`mathscale_utils.method.reply_format.parse_generation`)::

    Question: <the new question>
    Solution: <a step-by-step solution>
    The answer is <final answer>

``\\boxed{}`` answers are accepted too. Kept solutions always end in a line MWPBench's extractor parses
(METHOD.md §8.4): "The answer is X." is appended (or replaces an "Answer: X" line) when the reply lacks it.

Artifacts in the run directory
    ``generation/shard-NNNNN.jsonl``  one row per composition of a shard, written atomically when the shard is done
        {composition_id, shard, shard_fp, topics, knowledge_points, shot_ids, prompt_hash, status ("ok" |
         "rejected" | "error"), reason, first_reason, attempts, question, solution, answer, finish_reason,
         reply (only when not ok), request_keys, prompt_tokens, completion_tokens}
    ``mathscaleqa.jsonl``             the training set, one row per pair
        {id, question, solution, answer, topics, knowledge_points, composition_id, teacher_model, prompt_hash,
         source ("generated" | "seed"), check_agrees (bool, or null when not checked)}
    ``mathscaleqa_hf/``                the same rows as a Hugging Face ``datasets`` copy (``load_from_disk``)
    ``generation/decontamination.jsonl``, ``generation/duplicates.jsonl``  every removed question and why
    ``generate_summary.json``          funnel, rejections by reason, decontamination and dedup hits, usage, estimate
    ``dataset_card.md``                teacher, seeds, prompt, parameters, counts at every filter, examples

Resuming: compositions are processed in shards of ``shard_size``; a shard file is written only when all its
calls are done, and every reply is in the LLM cache the moment it arrives. A killed run, started again, skips
finished shards and finds the calls of a half-done shard in the cache, so no call is lost or repeated. Prompts are
deterministic (few-shot ties are broken by an RNG seeded with the run seed and the composition id), which is what
makes the cache keys of a resumed run equal to the first run's.

Where the code lives: this module reads the inputs, chooses the few-shot seeds, builds the requests, runs the
sharded generation, estimates the cost and runs the whole stage (``run``, ``python -m mathscale_utils.method.generate``).
The settings and file names are in :mod:`mathscale_utils.generate_config`, the prompt wording and reply parsing in
:mod:`mathscale_utils.method.reply_format`, the answer check, decontamination, near-duplicate removal and the funnel in
:mod:`mathscale_utils.method.filters`, and the export, summary, dataset card and notebook views in
:mod:`mathscale_utils.method.dataset_card`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mathscale_utils.core.artifacts import ConceptRow, GeneratedRow, RunDir, stage
from mathscale_utils.core.io import DataError, read_json, read_jsonl, write_json, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.inference.chat import ChatRequest, ChatResult, Unusable, ask_validated
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method.composition_file import CompositionTable
from mathscale_utils.method.reply_format import (
    CHECK_PROMPT,
    EXAMPLE,
    EXAMPLES_HEADER,
    PROMPT,
    REASONS,
    RETRY,
    SHORTER,
    SOLVE,
    Parsed,
    parse_generation,
    parse_retry,
    seed_solution,
    template_hash,
)
from mathscale_utils.method.shards import RawRows, load_raw, shard_status

STAGE = stage("03").label

# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def load_inputs(run_dir: str | Path) -> tuple[list[ConceptRow], CompositionTable]:
    """(seed rows from concepts.jsonl, compositions from compositions.jsonl as a compact table: 2M of them as dicts
    would take ~2 GB); clear errors when a stage is missing or a line is malformed."""
    run = RunDir(run_dir)
    for path, sid in ((run.concepts, "01"), (run.compositions, "02")):
        if not path.exists():
            raise DataError(f"{path}: file not found; run stage {sid} first")
    seeds: list = read_jsonl(run.concepts)
    return seeds, CompositionTable.read(run.compositions)


def select_compositions(comps: Sequence[dict], cfg: GenerateConfig) -> Sequence[dict]:
    """The first n_questions compositions (file order is the walk's order, so a larger n extends a smaller one)."""
    return comps if cfg.n_questions is None else comps[: cfg.n_questions]


# ----------------------------------------------------------------------------------------------------------------
# Few-shot choice: smallest Jaccard distance between KP sets, random ties (seeded)
# ----------------------------------------------------------------------------------------------------------------


def jaccard_distance(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return 1.0 - len(sa & sb) / len(sa | sb)


def composition_rng(seed: int, composition_id: str) -> np.random.Generator:
    """A generator that depends only on (run seed, composition id): the same shots in any run, shard or order."""
    digest = hashlib.sha256(f"{seed}:{composition_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class FewShotIndex:
    """Seeds indexed by knowledge point, for nearest-KP-set few-shot choice at any scale.

    A seed's KP set is its ``knowledge_points`` after the frequency filter (the graph's vocabulary, so the same
    strings the compositions use). Only seeds with a question and a solution or answer are eligible."""

    def __init__(self, seeds: Sequence[dict]):
        self.seeds = [
            s for s in seeds if (s.get("question") or "").strip() and (s.get("solution") or s.get("answer"))
        ]
        vocab: dict[str, int] = {}
        postings: list[list[int]] = []
        self.sizes = np.zeros(len(self.seeds), dtype=np.int32)
        for i, s in enumerate(self.seeds):
            kps = set(s.get("knowledge_points") or [])
            self.sizes[i] = len(kps)
            for k in kps:
                j = vocab.setdefault(k, len(vocab))
                if j == len(postings):
                    postings.append([])
                postings[j].append(i)
        self.vocab = vocab
        self.postings = [np.asarray(p, dtype=np.int32) for p in postings]
        self.sizes_list = self.sizes.tolist()
        self._shown: dict[
            int, tuple[str, str]
        ] = {}  # seed index -> (question, solution) as a prompt shows them

    def example(self, i: int) -> tuple[str, str]:
        """Seed i's question and solution as a prompt shows them (worked out once: 2M prompts show ~20K seeds)."""
        if i not in self._shown:
            s = self.seeds[i]
            self._shown[i] = (s["question"].strip(), seed_solution(s))
        return self._shown[i]

    def __len__(self) -> int:
        return len(self.seeds)

    def nearest(self, kps: Sequence[str], k: int, rng: np.random.Generator) -> list[tuple[int, float]]:
        """(seed index, Jaccard distance) of the k nearest seeds; equal distances are ordered at random by rng."""
        n = len(self.seeds)
        k = min(k, n)
        if k <= 0:
            return []
        comp = set(kps)
        cols = [self.postings[self.vocab[x]] for x in comp if x in self.vocab]
        chosen: list[tuple[int, float]] = []
        if cols:  # seeds sharing a KP (ascending) and how many they share
            both = np.concatenate(cols)
            if len(both) <= 256:  # few: plain Python is faster than numpy's fixed costs (the same floats)
                count: dict[int, int] = {}
                for i in both.tolist():
                    count[i] = count.get(i, 0) + 1
                items, sizes, m = sorted(count.items()), self.sizes_list, len(comp)
                ties = rng.random(len(items)).tolist()
                scored = [
                    (1.0 - c / (m + sizes[i] - c), t, j)
                    for j, ((i, c), t) in enumerate(zip(items, ties, strict=True))
                ]
                chosen = [(items[j][0], d) for d, _, j in heapq.nsmallest(k, scored)]  # (dist, tie), stable
            else:
                inter = np.bincount(both, minlength=n)
                cand = np.flatnonzero(inter)
                dist = 1.0 - inter[cand] / (len(comp) + self.sizes[cand] - inter[cand])
                ties = rng.random(len(cand))
                order = np.lexsort((ties, dist))[:k]
                chosen = [(int(cand[o]), float(dist[o])) for o in order]
        if len(chosen) < k:  # everything else is at distance 1: fill at random
            taken = {i for i, _ in chosen}
            rest = np.setdiff1d(np.arange(n), np.fromiter(taken, dtype=np.int64, count=len(taken)))
            for i in rng.permutation(rest)[: k - len(chosen)]:
                chosen.append((int(i), 1.0))
        return chosen

    def choose(self, kps: Sequence[str], k: int, rng: np.random.Generator) -> list[dict]:
        """The seed rows of :meth:`nearest`."""
        return [self.seeds[i] for i, _ in self.nearest(kps, k, rng)]


# ----------------------------------------------------------------------------------------------------------------
# Building requests
# ----------------------------------------------------------------------------------------------------------------


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {x}" for x in items) if items else "- (none)"


def build_prompt(comp: dict, shots: Sequence[dict]) -> str:
    return _prompt(comp, [(s["question"].strip(), seed_solution(s)) for s in shots])


def _prompt(comp: dict, shown: Sequence[tuple[str, str]]) -> str:
    examples = ""
    if shown:
        examples = EXAMPLES_HEADER + "".join(
            EXAMPLE.format(i=i, question=q, solution=sol) for i, (q, sol) in enumerate(shown, 1)
        )
    return PROMPT.format(
        examples=examples,
        topics=_bullets(comp["topics"]),
        knowledge_points=_bullets(comp["knowledge_points"]),
    )


@dataclass
class Planned:
    """The first request for one composition and what went into it."""

    composition: dict
    request: ChatRequest
    shot_ids: list[str]
    prompt_hash: str


def plan_request(comp: dict, index: FewShotIndex, cfg: GenerateConfig, seed: int) -> Planned:
    """Composition -> few-shot seeds -> prompt -> ChatRequest (deterministic for a given run seed)."""
    near = index.nearest(comp["knowledge_points"], cfg.shots, composition_rng(seed, str(comp["id"])))
    shots = [index.seeds[i] for i, _ in near]
    prompt = _prompt(comp, [index.example(i) for i, _ in near])
    req = ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        seed=seed,
    )
    return Planned(comp, req, [str(s.get("seed_id")) for s in shots], _text_hash(prompt))


def retry_request(first: ChatRequest, reply: str | None, reason: str, cfg: GenerateConfig) -> ChatRequest:
    """The one retry for an unusable reply; always a different cache key from the first request.

    Truncated: the same prompt asking for a shorter reply, with seed + 1 (the cut-off reply is not sent back).
    A question without a solution: the reply and a request to solve that question (see :func:`parse_retry`).
    Otherwise: the reply and a corrective message naming the problem."""
    seed = (first.seed or 0) + 1
    if reason == "truncated":
        words = max(50, int(cfg.max_tokens * 0.5))
        msgs = [{"role": "user", "content": first.messages[0]["content"] + SHORTER.format(words=words)}]
        return ChatRequest(
            messages=msgs, temperature=first.temperature, max_tokens=first.max_tokens, seed=seed
        )
    follow_up = SOLVE if reason == "no_solution" else RETRY.format(problem=REASONS.get(reason, reason))
    msgs = [
        *first.messages,
        {"role": "assistant", "content": reply or ""},
        {"role": "user", "content": follow_up},
    ]
    return ChatRequest(
        messages=msgs, temperature=first.temperature, max_tokens=first.max_tokens, seed=first.seed
    )


# ----------------------------------------------------------------------------------------------------------------
# Generation: sharded, resumable
# ----------------------------------------------------------------------------------------------------------------


def _fingerprint(cfg: GenerateConfig, model: str, seed: int, seeds_fp: str, comps: Sequence[dict]) -> str:
    """What a shard's rows depend on: settings, model, seed, prompt wording, the seed set and its compositions."""
    blob = json.dumps(
        [
            model,
            seed,
            cfg.shots,
            cfg.temperature,
            cfg.max_tokens,
            template_hash(),
            seeds_fp,
            [(c["id"], c["topics"], c["knowledge_points"]) for c in comps],
        ],
        sort_keys=True,
        ensure_ascii=False,
    )
    return _text_hash(blob)


def seeds_fingerprint(index: FewShotIndex) -> str:
    return _text_hash(
        json.dumps(
            [(s.get("seed_id"), s.get("question"), s.get("knowledge_points")) for s in index.seeds],
            ensure_ascii=False,
        )
    )


def _result_row(p: Planned, shard: int, fp: str) -> dict:
    c = p.composition
    return {
        "composition_id": str(c["id"]),
        "shard": shard,
        "shard_fp": fp,
        "topics": list(c["topics"]),
        "knowledge_points": list(c["knowledge_points"]),
        "shot_ids": p.shot_ids,
        "prompt_hash": p.prompt_hash,
        "status": None,
        "reason": None,
        "first_reason": None,
        "attempts": 0,
        "question": None,
        "solution": None,
        "answer": None,
        "finish_reason": None,
        "reply": None,
        "request_keys": [],
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


def _parse(res: ChatResult, first: ChatResult | None) -> Parsed:
    """A usable reply, parsed (a retry's reply may lean on the first one: see parse_retry); else Unusable."""
    if first is None:
        parsed = parse_generation(res.text, res.finish_reason)
    else:
        first_reason = parse_generation(first.text, first.finish_reason).reason
        parsed = parse_retry(res.text, res.finish_reason, first_reason, first.text)
    if not parsed.ok:
        raise Unusable(parsed.reason or "unusable")
    return parsed


def generate_shard(
    planned: Sequence[Planned], llm: LLM, cfg: GenerateConfig, shard: int, fp: str
) -> list[GeneratedRow]:
    """One shard: first requests, then one retry (with a different request) for each unusable reply."""

    def fix(req: ChatRequest, res: ChatResult, problem: str) -> ChatRequest:
        return retry_request(req, res.text, problem, cfg)

    asked = ask_validated(llm, [p.request for p in planned], _parse, fix, desc=f"{STAGE} shard {shard}")
    rows = []
    for p, a in zip(planned, asked, strict=True):
        row = _result_row(p, shard, fp)
        last = a.results[-1]
        row.update(
            attempts=len(a.results),
            request_keys=[r.key for r in a.results],
            first_reason=a.first_problem,
            prompt_tokens=sum(r.prompt_tokens for r in a.results),
            finish_reason=last.finish_reason,
            completion_tokens=sum(r.completion_tokens for r in a.results),
        )
        if a.ok:
            q = a.value
            row.update(status="ok", question=q.question, solution=q.solution, answer=q.answer)
        elif a.failed:
            row.update(status="error", reason=f"error: {last.error}")
        else:
            row.update(status="rejected", reason=a.problem, reply=last.text)
        rows.append(row)
    return rows


def generate_shards(
    run_dir: str | Path,
    comps: Sequence[dict],
    index: FewShotIndex,
    llm: LLM,
    cfg: GenerateConfig,
    seed: int = 0,
    log: Any = print,
) -> RawRows:
    """Generate (or resume) every composition, shard by shard; returns the raw rows in composition order (read
    from the shard files, see RawRows).

    With the Batch API backend (``llm.backend: batch``), the first requests of every unfinished shard (and then
    their retries) go through the provider's Batch API first, built and submitted in bounded chunks (a run of 2M
    never holds them all); the shard loop below then finds them in the cache (requests the Batch API gave up on
    after batch.max_rounds go out as live calls). While jobs are still running after batch.max_wait_s, only the
    finished shards are returned and no live call is made. The manifest remembers the shards whose Batch API
    work is done (``batch_collected``: their fingerprints), so a resumed run goes straight to their shard loop."""
    run = RunDir(run_dir)
    sfp = seeds_fingerprint(index)
    bounds = [(a, min(a + cfg.shard_size, len(comps))) for a in range(0, len(comps), cfg.shard_size)]
    fps = [_fingerprint(cfg, llm.cfg.model, seed, sfp, comps[a:b]) for a, b in bounds]
    sizes = [b - a for a, b in bounds]
    done = shard_status(run, len(bounds), fps, sizes)
    old = read_json(run.generation_manifest) if run.generation_manifest.exists() else {}
    collected = set(old.get("batch_collected", [])) & set(
        fps
    )  # shards whose Batch API work is all in the cache
    man = {"n_shards": len(bounds), "shard_size": cfg.shard_size, "fingerprints": fps}
    write_json(run.generation_manifest, {**man, "batch_collected": sorted(collected)})
    if any(done):
        log(f"resuming: {sum(done)} of {len(bounds)} shard(s) already done")
    todo = [i for i, d in enumerate(done) if not d and fps[i] not in collected]
    if todo and not _prefetch([comps[slice(*bounds[i])] for i in todo], index, llm, cfg, seed, log):
        log(
            f"Batch API jobs are still running (see {llm.batch_dir}): run this stage again later to collect them"
        )
        return RawRows(
            run, [i for i, d in enumerate(done) if d], [s for s, d in zip(sizes, done, strict=True) if d]
        )
    if (
        todo and llm.cfg.backend == "batch"
    ):  # a resumed run need not build these requests again to find them cached
        collected |= {fps[i] for i in todo}
        write_json(run.generation_manifest, {**man, "batch_collected": sorted(collected)})
    finished = []
    for i, (a, b) in enumerate(bounds):
        if not done[i]:
            if llm.ledger.budget_exhausted:
                log(f"budget exhausted: stopping before shard {i}")
                break
            planned = [plan_request(c, index, cfg, seed) for c in comps[a:b]]  # one shard's prompts at a time
            rows = generate_shard(planned, llm, cfg, i, fps[i])
            write_jsonl(run.shard(i), rows)
            n_ok = sum(r["status"] == "ok" for r in rows)
            log(f"shard {i + 1}/{len(bounds)}: {n_ok}/{len(rows)} usable")
        finished.append(i)
    return RawRows(run, finished, [sizes[i] for i in finished])


def first_requests(shards: Iterable[Sequence[dict]], index: FewShotIndex, cfg: GenerateConfig, seed: int):
    """The first request of every composition of the shards, made one at a time (for the Batch API)."""
    for shard in shards:
        for c in shard:
            yield plan_request(c, index, cfg, seed).request


def retry_requests(
    shards: Iterable[Sequence[dict]], index: FewShotIndex, llm: LLM, cfg: GenerateConfig, seed: int
) -> Iterator[ChatRequest]:
    """The retries the cached first replies need (what the shard loop will ask), made one at a time."""
    for req in first_requests(shards, index, cfg, seed):
        hit = llm.cache.get(req.key(llm.model_id))
        parsed = parse_generation(hit.text, hit.finish_reason) if hit is not None else None
        if parsed is not None and not parsed.ok:
            yield retry_request(req, hit.text, parsed.reason or "", cfg)


def _prefetch(
    shards: Sequence[Sequence[dict]], index: FewShotIndex, llm: LLM, cfg: GenerateConfig, seed: int, log: Any
) -> bool:
    """Batch API backend: all first requests, then the retries their replies need, each as one submission (the
    client takes them in bounded chunks and cuts them into jobs); every reply lands in the LLM cache. Returns False
    while jobs are unfinished (after batch.max_wait_s). Nothing to do, and True, for the live backend."""
    if llm.cfg.backend != "batch":
        return True
    n = sum(len(s) for s in shards)
    log(f"batch: {n} first request(s); waiting for the Batch API")
    if not llm.prefetch(first_requests(shards, index, cfg, seed), "first requests"):
        return False
    return llm.prefetch(retry_requests(shards, index, llm, cfg, seed), "retries")


# ----------------------------------------------------------------------------------------------------------------
# Cost estimate
# ----------------------------------------------------------------------------------------------------------------


def mean_prompt_chars(
    comps: Sequence[dict], index: FewShotIndex, cfg: GenerateConfig, seed: int = 0, sample: int = 50
) -> float:
    """Average prompt length in characters over the first `sample` compositions (what the estimate uses)."""
    reqs = [plan_request(c, index, cfg, seed).request for c in comps[:sample]]
    return float(np.mean([len(r.messages[0]["content"]) for r in reqs])) if reqs else 0.0


def estimate_cost(cfg: GenerateConfig, llm_cfg: LLMConfig, n: int, prompt_chars: float | None = None) -> dict:
    """Calls, tokens and cost before a run. Prompt tokens = characters / cfg.chars_per_token (about 4 for English
    with GPT-style tokenizers); completion tokens = cfg.est_completion_tokens per reply; a share cfg.est_retry_rate
    of the replies is retried with about the same size. Prices come from the llm section (USD per 1M tokens); the
    Batch API backend multiplies them by batch.price_factor (OpenAI: half price)."""
    if prompt_chars is None:
        prompt_chars = (
            len(PROMPT) + cfg.shots * 700 + 300
        )  # ~700 characters per shown seed, ~300 for the composition
    p_tok = prompt_chars / cfg.chars_per_token
    gen_calls = n * (1 + cfg.est_retry_rate)
    prompt_tokens = gen_calls * p_tok
    completion_tokens = gen_calls * cfg.est_completion_tokens
    check_calls = n if cfg.answer_check else 0
    prompt_tokens += check_calls * (len(CHECK_PROMPT) + 400) / cfg.chars_per_token
    completion_tokens += check_calls * cfg.est_completion_tokens
    factor = llm_cfg.batch.price_factor if llm_cfg.backend == "batch" else 1.0
    cost = (
        (prompt_tokens * llm_cfg.price_prompt_per_1m + completion_tokens * llm_cfg.price_completion_per_1m)
        / 1e6
        * factor
    )
    calls = gen_calls + check_calls
    est = {
        "compositions": n,
        "calls": round(calls),
        "generation_calls": round(gen_calls),
        "check_calls": check_calls,
        "prompt_chars_per_call": round(prompt_chars),
        "prompt_tokens": round(prompt_tokens),
        "completion_tokens": round(completion_tokens),
        "cost_usd": round(cost, 4),
        "price_factor": factor,
        "budget_usd": llm_cfg.budget_usd,
        "within_budget": llm_cfg.budget_usd is None or cost <= llm_cfg.budget_usd,
        "method": f"prompt tokens = chars / {cfg.chars_per_token:g}; completion = {cfg.est_completion_tokens} tokens per reply; "
        f"{cfg.est_retry_rate:.0%} retried",
    }
    if llm_cfg.base_url is None:
        est["hours_on_embedded_server"] = round(calls * cfg.est_seconds_per_call / 3600, 2)
    return est


__all__ = [
    "FewShotIndex",
    "Planned",
    "load_inputs",
    "select_compositions",
    "jaccard_distance",
    "composition_rng",
    "build_prompt",
    "plan_request",
    "retry_request",
    "generate_shards",
    "generate_shard",
    "shard_status",
    "load_raw",
    "RawRows",
    "first_requests",
    "retry_requests",
    "estimate_cost",
    "mean_prompt_chars",
]
