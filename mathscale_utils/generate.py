"""Step 3b of MathScale: concept compositions -> new question/solution pairs -> filters -> MathScaleQA (paper §3.3, §4.1).

For every concept composition (a few topics and knowledge points (KPs) collected by the random walk of stage 02) the
teacher LLM writes one new question with its solution. The prompt follows the paper's Table 4 in our own words: a
math teacher creates a question that stays within the given topics and needs the combined use of the given KPs,
shown the k seed questions whose KP sets are closest (smallest Jaccard distance) to the composition's, each with its
solution. The paper leaves the output format, k, temperature and max tokens open; METHOD.md §5 and §11 give the
fill-ins used here (see GenerateConfig).

Pipeline and the funnel it reports (every step says how many it kept and removed)::

    compositions -> teacher replied (transport errors removed) -> parsed (unparsable replies removed after one
    retry) -> [answer check: teacher re-solves, disagreeing pairs dropped or flagged; off by default, as in the
    paper's final pipeline] -> decontamination against MWPBench test (exact + 13-gram) -> near-duplicate removal
    (MinHash LSH) -> + the seed set (the paper appends MWPBench train) -> mathscaleqa.jsonl

Reply format asked of the teacher (parsed by :func:`parse_generation`)::

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
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import sys
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mathscale_utils.batch import BatchConfig
from mathscale_utils.io import DataError, read_json, read_jsonl, write_json, write_jsonl, write_text
from mathscale_utils.llm import LLM, ChatRequest, ChatResult, LLMConfig

if TYPE_CHECKING:
    from mathscale_utils.params import Params

STAGE = "03_generate"
GEN_DIR = "generation"
OUTPUT_FILE = "mathscaleqa.jsonl"
HF_DIR = "mathscaleqa_hf"
CARD_FILE = "dataset_card.md"
SUMMARY_FILE = "generate_summary.json"


class GenerateConfig(BaseModel):
    """The `generate:` section of a params file. Defaults suit the embedded quickstart (about 13 s per question)."""

    model_config = ConfigDict(extra="forbid")

    n_questions: int | None = Field(20, ge=1, description="compositions to use, in file order; null = all")
    shots: int = Field(2, ge=0, le=8, description="few-shot seed examples per prompt (paper: not reported)")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=16)
    shard_size: int = Field(200, ge=1, description="compositions per resumable shard")
    # optional validation (the paper tried GPT-4 validation and dropped it; off by default)
    answer_check: bool = False
    answer_check_action: Literal["drop", "flag"] = "drop"
    answer_check_max_tokens: int = Field(1024, ge=16)
    # decontamination against the MWPBench test questions
    decontaminate: bool = True
    decontam_datasets: list[str] | None = Field(
        None, description="MWPBench datasets to check; null = all available"
    )
    decontam_official_file: str | None = Field(
        None, description="the official MWPBench full_test.json, if you have it"
    )
    ngram: int = Field(13, ge=3, description="word n-gram length for overlap decontamination")
    # near-duplicate removal among generated questions
    dedup: bool = True
    dedup_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="MinHash-estimated Jaccard of word shingles"
    )
    dedup_shingle: int = Field(3, ge=1, description="words per shingle for MinHash (3 suits short questions)")
    num_perm: int = Field(128, ge=16)
    # assembly and export
    include_seed_train: bool = Field(
        True, description="append the seed set, as the paper appends MWPBench train"
    )
    export_hf: bool = True
    card_examples: int = Field(3, ge=0)
    # backend: live chat calls through the LLM client, or the provider's Batch API (then the same cache)
    backend: Literal["chat", "batch"] = "chat"
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # cost estimate (before a run): prompt tokens = prompt characters / chars_per_token
    chars_per_token: float = Field(4.0, gt=0)
    est_completion_tokens: int = Field(300, ge=1, description="expected tokens per reply")
    est_retry_rate: float = Field(0.1, ge=0.0, le=1.0, description="expected share of replies retried")
    est_seconds_per_call: float = Field(13.0, gt=0, description="for the embedded server's time estimate")


# ----------------------------------------------------------------------------------------------------------------
# Prompt (paper Table 4, paraphrased)
# ----------------------------------------------------------------------------------------------------------------

PROMPT = """You are a math teacher. Create one new math question for your students, together with its worked solution.

The new question must:
1. stay within the topics listed under "Topics";
2. require the combined use of all the knowledge points listed under "Knowledge Points";
3. be self-contained and solvable, with one clear final answer, and differ from the examples.

{examples}Topics:
{topics}

Knowledge Points:
{knowledge_points}

Reply in exactly this format, with nothing before or after it:
Question: <the new question>
Solution: <a step-by-step solution>
The answer is <the final answer>"""

EXAMPLES_HEADER = "Here are example questions with their solutions:\n\n"
EXAMPLE = "Example {i}\nQuestion: {question}\nSolution: {solution}\n\n"

RETRY = """Your reply could not be used: {problem}. Write the new question again, in exactly this format:
Question: <the new question>
Solution: <a step-by-step solution>
The answer is <the final answer>"""

SOLVE = """Your reply has the question but no solution. Now solve that question: write "Solution:", then the steps, \
and end with a line of the form "The answer is X"."""

SHORTER = "\n\nKeep the whole reply short: at most about {words} words."

CHECK_PROMPT = """Solve the following math problem step by step. End your reply with a line of the form "The answer is X".

Problem: {question}"""

REASONS = {
    "empty": "it was empty",
    "no_question": "it had no part starting with 'Question:'",
    "no_solution": "it had no part starting with 'Solution:' after the question",
    "no_final_answer": "the solution did not end with a line 'The answer is ...'",
    "truncated": "it was cut off at the token limit",
}


def template_hash() -> str:
    """Identifies the prompt wording (recorded in the card and the shard fingerprints)."""
    return hashlib.sha256((PROMPT + EXAMPLE + RETRY + SHORTER).encode()).hexdigest()[:16]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def load_inputs(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(seed rows from concepts.jsonl, compositions from compositions.jsonl); clear errors when a stage is missing."""
    run_dir = Path(run_dir)
    for name, stage in (("concepts.jsonl", "01"), ("compositions.jsonl", "02")):
        if not (run_dir / name).exists():
            raise DataError(f"{run_dir / name}: file not found; run stage {stage} first")
    seeds = read_jsonl(run_dir / "concepts.jsonl")
    comps = read_jsonl(run_dir / "compositions.jsonl")
    for i, c in enumerate(comps, start=1):
        if (
            "id" not in c
            or not isinstance(c.get("knowledge_points"), list)
            or not isinstance(c.get("topics"), list)
        ):
            raise DataError(
                f"{run_dir / 'compositions.jsonl'}:{i}: expected keys id, topics (list), knowledge_points (list)"
            )
    return seeds, comps


def select_compositions(comps: Sequence[dict], cfg: GenerateConfig) -> list[dict]:
    """The first n_questions compositions (file order is the walk's order, so a larger n extends a smaller one)."""
    return list(comps if cfg.n_questions is None else comps[: cfg.n_questions])


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
        if cols:
            inter = np.bincount(np.concatenate(cols), minlength=n)
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


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {x}" for x in items) if items else "- (none)"


def seed_solution(row: dict) -> str:
    """A seed's solution ending in a final-answer line (GSM8K solutions, for one, have none after loading)."""
    sol = (row.get("solution") or "").strip()
    ans = (row.get("answer") or "").strip()
    if not sol:
        return f"The answer is {ans}." if ans else ""
    return ensure_final_line(sol, ans) if ans and final_answer(sol) is None else sol


def build_prompt(comp: dict, shots: Sequence[dict]) -> str:
    examples = ""
    if shots:
        examples = EXAMPLES_HEADER + "".join(
            EXAMPLE.format(i=i, question=s["question"].strip(), solution=seed_solution(s))
            for i, s in enumerate(shots, 1)
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
    shots = index.choose(comp["knowledge_points"], cfg.shots, composition_rng(seed, str(comp["id"])))
    prompt = build_prompt(comp, shots)
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


def check_request(question: str, cfg: GenerateConfig, seed: int) -> ChatRequest:
    """The optional answer check: the teacher solves the generated question on its own (greedy)."""
    return ChatRequest(
        messages=[{"role": "user", "content": CHECK_PROMPT.format(question=question.strip())}],
        temperature=0.0,
        max_tokens=cfg.answer_check_max_tokens,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------------------
# Parsing a reply
# ----------------------------------------------------------------------------------------------------------------

_DECOR = r"[ \t>#*_]*"
_Q_LABEL = re.compile(
    rf"^{_DECOR}(?:new\s+|generated\s+)?(?:question|problem)(?:\s*\d+)?[ \t*_]*(?:[:：]|$)[ \t*_]*",
    re.I | re.M,
)
_S_LABEL = re.compile(
    rf"^{_DECOR}(?:step[- ]by[- ]step\s+|worked\s+|detailed\s+)?solution[ \t*_]*(?:[:：]|$)[ \t*_]*",
    re.I | re.M,
)
_ANSWER = re.compile(r"(?:final\s+answer|answer)\s*(?:is\b|[:=])\s*[:\s]*", re.I)
_ANSWER_LINE = re.compile(r"^\W*(?:the\s+)?(?:final\s+)?answer\s*[:=]", re.I)
_FENCE_LINE = re.compile(r"^\s*```[A-Za-z]*\s*$", re.M)


@dataclass
class Parsed:
    """A parsed reply: question, solution, answer; or reason (one of REASONS) when it cannot be used."""

    question: str | None = None
    solution: str | None = None
    answer: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def last_boxed(text: str) -> tuple[str, int, int] | None:
    """(content, start, end) of the last balanced ``\\boxed{...}``, as MWPBench's extractor finds it."""
    best = None
    i = text.find("\\boxed{")
    while i != -1:
        j, depth = i + len("\\boxed{"), 1
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            best = (text[i + 7 : j - 1].strip(), i, j)
        i = text.find("\\boxed{", i + 1)
    return best


def _clean_answer(a: str) -> str:
    a = a.strip()
    box = last_boxed(a)
    if box:
        a = box[0]
    a = a.strip().strip("*").strip().rstrip(".").strip()
    if len(a) >= 2 and a.startswith("$") and a.endswith("$") and "$" not in a[1:-1]:
        a = a[1:-1]
    if a.startswith("\\(") and a.endswith("\\)"):
        a = a[2:-2]
    money = re.fullmatch(r"\$\s*(-?[\d,]*\.?\d+)", a.strip())  # "$5" (currency) -> "5"
    if money:
        a = money.group(1)
    a = a.strip().rstrip(".").strip()
    return a


def final_answer(solution: str) -> tuple[str, int] | None:
    """(answer, end of the line that states it): the later of the last "The answer is X" / "Answer: X" phrase and
    the last \\boxed{} (a boxed answer inside the phrase counts as the phrase)."""

    def eol(i: int) -> int:
        j = solution.find("\n", i)
        return len(solution) if j == -1 else j

    phrase = None
    matches = list(_ANSWER.finditer(solution))
    if matches:
        m = matches[-1]
        ans = _clean_answer(solution[m.end() : eol(m.end())])
        if ans:
            phrase = (m.start(), ans, eol(m.end()))
    box = last_boxed(solution)
    boxed = (box[1], _clean_answer(box[0]), eol(box[2])) if box and box[0] else None
    best = max((c for c in (phrase, boxed) if c), key=lambda c: (c[2], c[0]), default=None)
    if best is None:
        return None
    if phrase and boxed and phrase[2] == boxed[2]:  # same line: "The answer is \\boxed{X}"
        best = phrase
    return best[1], best[2]


def ensure_final_line(solution: str, answer: str) -> str:
    """Make the last line "The answer is X." unless it already says "answer is" (what MWPBench's extractor reads)."""
    lines = solution.rstrip().split("\n")
    last = lines[-1] if lines else ""
    if "answer is" in last.lower():
        return solution.rstrip()
    if _ANSWER_LINE.match(last):
        lines[-1] = f"The answer is {answer}."
        return "\n".join(lines).rstrip()
    return solution.rstrip() + f"\nThe answer is {answer}."


def parse_generation(text: str | None, finish_reason: str | None = None) -> Parsed:
    """Reply -> Parsed(question, solution, answer) or Parsed(reason=...): empty, truncated, no_question,
    no_solution, no_final_answer. Labels may carry Markdown (``**Question:**``); the first question/solution pair
    is used; the solution is cut after the line with its final answer, and ends in "The answer is X"."""
    if text is None or not text.strip():
        return Parsed(reason="empty")
    if finish_reason == "length":
        return Parsed(reason="truncated")
    text = _FENCE_LINE.sub("", text.replace("\r\n", "\n"))
    mq = _Q_LABEL.search(text)
    if mq is None:
        return Parsed(reason="no_question")
    ms = _S_LABEL.search(text, mq.end())
    if ms is None:
        return Parsed(reason="no_solution")
    question = text[mq.end() : ms.start()].strip()
    if not question:
        return Parsed(reason="no_question")
    rest = text[ms.end() :]
    nxt = _Q_LABEL.search(rest)
    if nxt:  # the model went on with another question: keep the first pair
        rest = rest[: nxt.start()]
    solution = rest.strip()
    if not solution:
        return Parsed(reason="no_solution")
    fa = final_answer(solution)
    if fa is None:
        return Parsed(reason="no_final_answer")
    answer, eol = fa
    solution = ensure_final_line(solution[:eol].strip(), answer)
    return Parsed(question=question, solution=solution, answer=answer)


def question_part(text: str | None) -> str | None:
    """The text after a "Question:" label, up to a "Solution:" label or the end (None if there is none)."""
    if not text:
        return None
    text = _FENCE_LINE.sub("", text.replace("\r\n", "\n"))
    mq = _Q_LABEL.search(text)
    if mq is None:
        return None
    ms = _S_LABEL.search(text, mq.end())
    q = text[mq.end() : ms.start() if ms else len(text)].strip()
    return q or None


def parse_retry(
    text: str | None, finish_reason: str | None, first_reason: str | None, first_text: str | None
) -> Parsed:
    """Parse the reply to a retry. After a question without a solution the retry asks only for the solution, so
    a reply that does not restate the question is joined to the first reply's question."""
    parsed = parse_generation(text, finish_reason)
    if parsed.ok or first_reason != "no_solution" or not text or finish_reason == "length":
        return parsed
    q = question_part(first_text)
    if q is None or _Q_LABEL.search(text):
        return parsed
    body = text if _S_LABEL.search(text) else "Solution: " + text.strip()
    return parse_generation(f"Question: {q}\n{body}", finish_reason)


# ----------------------------------------------------------------------------------------------------------------
# Generation: sharded, resumable
# ----------------------------------------------------------------------------------------------------------------


def shard_path(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / GEN_DIR / f"shard-{i:05d}.jsonl"


def _fingerprint(cfg: GenerateConfig, model: str, seed: int, seeds_fp: str, comps: Sequence[dict]) -> str:
    """What a shard's rows depend on: settings, model, seed, prompt wording, the seed set and its compositions."""
    blob = json.dumps(
        [model, seed, cfg.shots, cfg.temperature, cfg.max_tokens, template_hash(), seeds_fp,
         [(c["id"], c["topics"], c["knowledge_points"]) for c in comps]],
        sort_keys=True, ensure_ascii=False,
    )  # fmt: skip
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


def _apply(row: dict, res: ChatResult, first_text: str | None = None) -> Parsed:
    row["attempts"] += 1
    row["request_keys"].append(res.key)
    row["prompt_tokens"] += res.prompt_tokens
    row["completion_tokens"] += res.completion_tokens
    row["finish_reason"] = res.finish_reason
    if not res.ok:
        row.update(status="error", reason=f"error: {res.error}", reply=None)
        return Parsed(reason="error")
    if row["attempts"] > 1:
        parsed = parse_retry(res.text, res.finish_reason, row["first_reason"], first_text)
    else:
        parsed = parse_generation(res.text, res.finish_reason)
    if parsed.ok:
        row.update(
            status="ok",
            reason=None,
            question=parsed.question,
            solution=parsed.solution,
            answer=parsed.answer,
            reply=None,
        )
    else:
        row.update(status="rejected", reason=parsed.reason, reply=res.text)
    return parsed


def generate_shard(
    planned: Sequence[Planned], llm: LLM, cfg: GenerateConfig, shard: int, fp: str
) -> list[dict]:
    """One shard: first requests, then one retry (with a different request) for each unusable reply."""
    rows = [_result_row(p, shard, fp) for p in planned]
    results = llm.chat_many([p.request for p in planned], desc=f"{STAGE} shard {shard}")
    retry: list[tuple[int, ChatRequest, str | None]] = []
    for j, (row, res) in enumerate(zip(rows, results, strict=True)):
        parsed = _apply(row, res)
        if not parsed.ok and parsed.reason != "error":
            row["first_reason"] = parsed.reason
            retry.append((j, retry_request(planned[j].request, res.text, parsed.reason, cfg), res.text))
    if retry:
        results2 = llm.chat_many([r for _, r, _ in retry], desc=f"{STAGE} shard {shard} retries")
        for (j, _, first_text), res in zip(retry, results2, strict=True):
            _apply(rows[j], res, first_text)
    return rows


def shard_status(run_dir: str | Path, n_shards: int, fps: Sequence[str], sizes: Sequence[int]) -> list[bool]:
    """Which shards are finished: file present, same fingerprint, all rows, no transport error."""
    done = []
    for i in range(n_shards):
        path = shard_path(run_dir, i)
        ok = False
        if path.exists():
            try:
                rows = read_jsonl(path)
                ok = len(rows) == sizes[i] and all(
                    r.get("shard_fp") == fps[i] and r.get("status") != "error" for r in rows
                )
            except DataError:
                ok = False
        done.append(ok)
    return done


def generate(
    run_dir: str | Path,
    comps: Sequence[dict],
    index: FewShotIndex,
    llm: LLM,
    cfg: GenerateConfig,
    seed: int = 0,
    log: Any = print,
) -> list[dict]:
    """Generate (or resume) every composition, shard by shard; returns the raw rows in composition order.

    With backend "batch", the first requests of every unfinished shard (and then their retries) go through the
    provider's Batch API first (``mathscale_utils.batch``); the shard loop below then finds them in the cache
    (requests the Batch API gave up on after batch.max_rounds go out as live calls). While jobs are still running
    after batch.max_wait_s, only the finished shards are returned and no live call is made."""
    run_dir = Path(run_dir)
    sfp = seeds_fingerprint(index)
    shards = [list(comps[i : i + cfg.shard_size]) for i in range(0, len(comps), cfg.shard_size)]
    fps = [_fingerprint(cfg, llm.cfg.model, seed, sfp, s) for s in shards]
    done = shard_status(run_dir, len(shards), fps, [len(s) for s in shards])
    write_json(
        run_dir / GEN_DIR / "manifest.json",
        {"n_shards": len(shards), "shard_size": cfg.shard_size, "fingerprints": fps},
    )
    if any(done):
        log(f"resuming: {sum(done)} of {len(shards)} shard(s) already done")
    todo = [shards[i] for i in range(len(shards)) if not done[i]]
    if cfg.backend == "batch" and todo and not _prefetch_batch(run_dir, todo, index, llm, cfg, seed, log):
        log(
            "batch jobs are still running (see batches/state.json): run this stage again later to collect them"
        )
        return [r for i in range(len(shards)) if done[i] for r in read_jsonl(shard_path(run_dir, i))]
    out: list[dict] = []
    for i, shard in enumerate(shards):
        if done[i]:
            out.extend(read_jsonl(shard_path(run_dir, i)))
            continue
        if getattr(llm, "budget_exhausted", False):
            log(f"budget exhausted: stopping before shard {i}")
            break
        planned = [plan_request(c, index, cfg, seed) for c in shard]  # prompts exist one shard at a time
        rows = generate_shard(planned, llm, cfg, i, fps[i])
        write_jsonl(shard_path(run_dir, i), rows)
        out.extend(rows)
        n_ok = sum(r["status"] == "ok" for r in rows)
        log(f"shard {i + 1}/{len(shards)}: {n_ok}/{len(rows)} usable")
    return out


def _prefetch_batch(
    run_dir: Path,
    shards: Sequence[Sequence[dict]],
    index: FewShotIndex,
    llm: LLM,
    cfg: GenerateConfig,
    seed: int,
    log: Any,
) -> bool:
    """Batch API path: all first requests, then the retries their replies need; every reply lands in the LLM cache.
    Prompts are built a shard at a time and submitted in jobs of up to max_requests_per_job, so at most one job's
    prompts are held in memory. Returns False while jobs are unfinished (batch.max_wait_s passed)."""
    from mathscale_utils.batch import BatchRunner

    runner = BatchRunner(llm, run_dir / "batches", cfg.batch, stage=STAGE, log=log)
    per_job = cfg.batch.max_requests_per_job

    def submit_all(make: Any, desc: str) -> int:
        """Submit what make(shard) returns, shard by shard, in jobs of up to max_requests_per_job requests."""
        n, buf = 0, []
        for s in shards:
            buf += make(s)
            if len(buf) >= per_job:
                n += runner.submit(buf, desc)
                buf = []
        return n + (runner.submit(buf, desc) if buf else 0)

    def first(s: Sequence[dict]) -> list[ChatRequest]:
        return [plan_request(c, index, cfg, seed).request for c in s]

    def retries(s: Sequence[dict]) -> list[ChatRequest]:
        out = []
        for req in first(s):
            hit = llm.cache_get(req.key(llm.model_id))
            parsed = parse_generation(hit.text, hit.finish_reason) if hit is not None else None
            if parsed is not None and not parsed.ok:
                out.append(retry_request(req, hit.text, parsed.reason or "", cfg))
        return out

    log(f"batch: {submit_all(first, 'first requests')} first request(s) submitted; waiting")
    runner.wait()
    if runner.unfinished():
        return False
    n_retry = submit_all(retries, "retries")
    if n_retry:
        log(f"batch: {n_retry} retry request(s) submitted; waiting")
        runner.wait()
    log(f"batch: {len(runner.jobs)} job(s); usage {runner.state['usage']}")
    return not runner.unfinished()


def load_raw(run_dir: str | Path) -> list[dict]:
    """The rows of the current run's shards written so far, in shard order (generation/manifest.json says which
    shard files belong to the current settings; files left by other settings are ignored)."""
    gdir = Path(run_dir) / GEN_DIR
    man = read_json(gdir / "manifest.json") if (gdir / "manifest.json").exists() else None
    if man is None:
        files = sorted(gdir.glob("shard-*.jsonl"))
        return [r for f in files for r in read_jsonl(f)]
    out = []
    for i, fp in enumerate(man["fingerprints"]):
        f = shard_path(run_dir, i)
        if f.exists():
            out += [r for r in read_jsonl(f) if r.get("shard_fp") == fp]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Optional answer check
# ----------------------------------------------------------------------------------------------------------------

_NUM = re.compile(r"^[-+]?\d*\.?\d+(?:e[-+]?\d+)?$")


def _norm_answer(a: str) -> str:
    a = _clean_answer(a or "").lower()
    a = re.sub(r"\\text\{([^}]*)\}", r"\1", a)
    a = re.sub(r"\\(?:left|right|!|,|;|quad)", "", a)
    a = a.replace("dfrac", "frac").replace("tfrac", "frac").replace("\\%", "%").replace("$", "")
    a = re.sub(r"(?<=\d),(?=\d{3}\b)", "", a)
    a = re.sub(r"\s+", "", a)
    return a.rstrip(".")


def _as_number(a: str) -> float | None:
    a = a.rstrip("%")
    m = re.fullmatch(r"\\frac\{([-+]?[\d.]+)\}\{([-+]?[\d.]+)\}", a) or re.fullmatch(
        r"([-+]?[\d.]+)/([-+]?[\d.]+)", a
    )
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        if _NUM.match(a):
            return float(a)
        lead = re.match(r"^[-+]?\d*\.?\d+(?=[a-z]+$)", a)  # "42dollars" -> 42
        return float(lead.group(0)) if lead else None
    except (ValueError, ZeroDivisionError):
        return None


def answers_agree(a: str | None, b: str | None) -> bool:
    """A simple normalised comparison (case, spaces, $, \\boxed, \\text, thousands commas, fractions, units),
    or MWPBench's equivalence (``mwpbench.is_equiv``) when that module is present."""
    if not a or not b:
        return False
    na, nb = _norm_answer(a), _norm_answer(b)
    if na == nb:
        return True
    xa, xb = _as_number(na), _as_number(nb)
    if xa is not None and xb is not None and math.isclose(xa, xb, rel_tol=1e-6, abs_tol=1e-9):
        return True
    try:
        from mathscale_utils.mwpbench import is_equiv

        return bool(is_equiv(a.lower(), b.lower())[0])
    except Exception:  # noqa: BLE001 - the optional judge must never break a run
        return False


def _paper_judge(completion: str | None, reference: str | None) -> bool:
    """MWPBench's own extraction + equivalence (``mwpbench.paper_judge``) of a whole completion, if available."""
    if not completion or not reference:
        return False
    try:
        from mathscale_utils.mwpbench import paper_judge

        return bool(paper_judge(completion, reference).correct)
    except Exception:  # noqa: BLE001
        return False


def check_answers(
    rows: Sequence[dict], llm: LLM, cfg: GenerateConfig, seed: int = 0, run_dir: str | Path | None = None
) -> dict[str, dict]:
    """composition_id -> {teacher_answer, agrees} for every usable row (calls cached, so a re-run is free)."""
    ok = [r for r in rows if r["status"] == "ok"]
    reqs = [check_request(r["question"], cfg, seed) for r in ok]
    if cfg.backend == "batch" and reqs and run_dir is not None:
        from mathscale_utils.batch import BatchRunner

        BatchRunner(llm, Path(run_dir) / "batches", cfg.batch, stage=STAGE).run(reqs, desc="answer check")
    out: dict[str, dict] = {}
    for i in range(0, len(ok), cfg.shard_size):
        chunk = ok[i : i + cfg.shard_size]
        results = llm.chat_many(reqs[i : i + cfg.shard_size], desc=f"{STAGE} answer check")
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
_MOD = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(1099511628211)  # FNV prime: odd, large


def normalize_text(s: str) -> str:
    """For matching: NFKC, lower case, every non-alphanumeric character (punctuation, symbols) -> space, collapsed."""
    s = unicodedata.normalize("NFKC", s or "").lower()
    return _SPACES.sub(" ", _NONWORD.sub(" ", s)).strip()


def ngram_hashes(docs: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every doc: (hashes, doc index, start position), vectorised.

    Words are hashed with Python's string hash (stable within a process, which is all matching needs), then
    combined with a polynomial rolling hash over the concatenation of all docs; windows crossing a doc boundary
    are dropped. Docs shorter than n contribute nothing."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    if total < n:
        e = np.empty(0, dtype=np.int64)
        return np.empty(0, dtype=np.uint64), e, e
    words = np.fromiter((hash(w) for d in docs for w in d), dtype=np.int64, count=total).view(np.uint64)
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
        return {"id": gid, "kind": kind, "test_id": item.id, "test_dataset": item.dataset, "ngram": shared,
                "question": question, "test_question": item.question}  # fmt: skip


def load_test_questions(
    data_dir: str | Path | None,
    official_file: str | Path | None = None,
    datasets: Sequence[str] | None = None,
) -> tuple[list[TestItem], list[str]]:
    """MWPBench test questions (all ten datasets and Fresh-GaokaoMath-2023 unless narrowed), via
    ``data.load_mwpbench``; returns (items, notes on what is missing). A dataset whose files are absent is noted,
    not fatal: decontamination then covers what is available, and the card says so."""
    from mathscale_utils.data import FRESH_GAOKAO, MWPBENCH_DATASETS, load_mwpbench

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


def mwpbench_test_pairs(P: Params) -> list[tuple[str, str]]:
    """(id, question) of the MWPBench test questions available to a run (the thin contract of the brief)."""
    items, _ = load_test_questions(
        P.data_dir, P.generate.decontam_official_file, P.generate.decontam_datasets
    )
    return [(t.id, t.question) for t in items]


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
                part = np.array(
                    [hash(tuple(words)) & 0xFFFFFFFF], dtype=np.uint32
                )  # shorter than one shingle
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
# Filters, funnel, assembly
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
        check_stats.update(action=cfg.answer_check_action, checked=len(ok), agree=agree, disagree=len(ok) - agree,
                           agreement_rate=round(agree / len(ok), 4) if ok else None)  # fmt: skip
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
        dups = near_duplicates([r["question"] for r in ok], [_gen_id(r["composition_id"]) for r in ok],
                               cfg.dedup_threshold, cfg.num_perm, cfg.dedup_shingle)  # fmt: skip
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
    factor = cfg.batch.price_factor if cfg.backend == "batch" else 1.0
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


# ----------------------------------------------------------------------------------------------------------------
# Views for the notebook: coverage and difficulty proxies
# ----------------------------------------------------------------------------------------------------------------


def graph_vocabulary(run_dir: str | Path, seeds: Sequence[dict] | None = None) -> tuple[set[str], set[str]]:
    """(topics, KPs) of the concept graph (``concept_graph.graphml``), else of the filtered concepts."""
    run_dir = Path(run_dir)
    gpath = run_dir / "concept_graph.graphml"
    if gpath.exists():
        from mathscale_utils.graph import KP, TOPIC, load_graph

        G = load_graph(gpath)
        topics = {d.get("label", n) for n, d in G.nodes(data=True) if d.get("type") == TOPIC}
        kps = {d.get("label", n) for n, d in G.nodes(data=True) if d.get("type") == KP}
        return topics, kps
    seeds = seeds if seeds is not None else read_jsonl(run_dir / "concepts.jsonl")
    return {t for s in seeds for t in s.get("topics") or []}, {
        k for s in seeds for k in s.get("knowledge_points") or []
    }


def coverage(rows: Sequence[dict], topics: set[str], kps: set[str]) -> dict:
    """Share of the graph's topics and KPs that at least one generated question uses."""
    gen = [r for r in rows if r.get("source", "generated") == "generated"]
    used_t = {t for r in gen for t in r["topics"]} & topics
    used_k = {k for r in gen for k in r["knowledge_points"]} & kps
    return {
        "generated_questions": len(gen),
        "graph_topics": len(topics),
        "topics_used": len(used_t),
        "topic_coverage": round(len(used_t) / len(topics), 4) if topics else None,
        "graph_kps": len(kps),
        "kps_used": len(used_k),
        "kp_coverage": round(len(used_k) / len(kps), 4) if kps else None,
    }


def solution_steps(solution: str) -> int:
    """A difficulty proxy: non-empty lines, or sentences when the solution is one paragraph."""
    lines = [x for x in solution.split("\n") if x.strip()]
    if len(lines) > 1:
        return len(lines)
    return max(1, len(re.findall(r"[.!?](?:\s|$)", solution)))


def difficulty_proxies(rows: Sequence[dict]) -> list[dict]:
    """Per row: source, question words, KPs in its composition, solution steps, solution words."""
    return [
        {
            "id": r["id"],
            "source": r["source"],
            "question_words": len(r["question"].split()),
            "n_kps": len(r["knowledge_points"]),
            "n_topics": len(r["topics"]),
            "solution_steps": solution_steps(r["solution"]),
            "solution_words": len(r["solution"].split()),
        }
        for r in rows
    ]


# ----------------------------------------------------------------------------------------------------------------
# Export: jsonl, HF copy, summary, dataset card
# ----------------------------------------------------------------------------------------------------------------


def export_hf(rows: Sequence[dict], path: str | Path) -> Path:
    """Save a Hugging Face datasets copy (``datasets.load_from_disk(path)``), replacing any previous one."""
    import datasets

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    datasets.Dataset.from_list(list(rows)).save_to_disk(str(tmp))
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def _usage_total(run_dir: Path) -> dict:
    f = run_dir / "usage" / f"{STAGE}.json"
    try:
        return read_json(f).get("total", {}) if f.exists() else {}
    except DataError:
        return {}


def build_summary(
    asm: Assembly,
    cfg: GenerateConfig,
    estimate: dict | None,
    usage: dict | None,
    run_dir: Path,
    extra: dict | None = None,
) -> dict:
    gen = sum(r["source"] == "generated" for r in asm.rows)
    return {
        "counts": {"generated_kept": gen, "seed_rows": asm.n_seed_rows, "total_rows": len(asm.rows)},
        "funnel": [{"step": s, "kept": k, "removed": r} for s, k, r in asm.funnel],
        "funnel_adds_up": funnel_adds_up(asm.funnel),
        "rejections": asm.rejections,
        "first_attempt_rejections": asm.first_attempt_rejections,
        "errors": asm.errors,
        "answer_check": asm.answer_check,
        "decontamination": {
            "test_set": asm.test_set,
            "removed": len(asm.decontamination),
            "by_kind": dict(Counter(h["kind"] for h in asm.decontamination)),
            "by_dataset": dict(Counter(h["test_dataset"] for h in asm.decontamination)),
            "hits": [
                {k: h[k] for k in ("id", "kind", "test_id", "test_dataset", "ngram")}
                for h in asm.decontamination
            ],
            "seed_rows_matching_test": len(asm.seed_contamination),
        },
        "dedup": {
            "removed": len(asm.duplicates),
            "threshold": cfg.dedup_threshold,
            "hits": asm.duplicates[:1000],
            "hits_truncated": len(asm.duplicates) > 1000,
        },
        "usage": {"session": usage or {}, "stage_total": _usage_total(run_dir)},
        "estimate": estimate,
        "config": cfg.model_dump(),
        **(extra or {}),
    }


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def dataset_card(
    asm: Assembly, summary: dict, cfg: GenerateConfig, llm_cfg: LLMConfig, seeds: Sequence[dict], seed: int
) -> str:
    """The dataset card as Markdown: how the data was made and what every filter removed."""
    gen_rows = [r for r in asm.rows if r["source"] == "generated"]
    rng = random.Random(seed)
    examples = rng.sample(gen_rows, min(cfg.card_examples, len(gen_rows)))
    src = Counter(str(s.get("source") or "unknown") for s in seeds)
    u = summary["usage"]["stage_total"] or summary["usage"]["session"]
    out = [
        "# MathScaleQA (this run)",
        "",
        "Question/solution pairs generated MathScale-style (arXiv 2403.02884): a random walk over the concept graph "
        "picks a few topics and knowledge points, and a teacher LLM writes a new question that combines them, shown "
        "the seed questions with the closest knowledge-point sets as examples.",
        "",
        "## Source",
        "",
        f"- Teacher: `{llm_cfg.model}` at {llm_cfg.base_url or 'the embedded local llama.cpp server'}"
        f" (backend: {cfg.backend}); temperature {cfg.temperature}, max tokens {cfg.max_tokens}",
        f"- Seeds: {len(seeds)} ({', '.join(f'{k}: {v}' for k, v in src.most_common())}); "
        f"{cfg.shots} nearest seed(s) by knowledge-point Jaccard distance shown per prompt",
        f"- Rows: {summary['counts']['generated_kept']} generated + {summary['counts']['seed_rows']} seed rows "
        f"= {summary['counts']['total_rows']}",
        f"- Tokens: {u.get('prompt_tokens', 0):,} prompt, {u.get('completion_tokens', 0):,} completion; cost ${u.get('cost_usd', 0):.4f}",
        "",
        "## Counts at every filter",
        "",
        _md_table(["step", "kept", "removed"], asm.funnel),
        "",
        f"Rejected replies by reason (after one retry): {asm.rejections or 'none'}. "
        f"Reasons that triggered a retry: {asm.first_attempt_rejections or 'none'}. Transport errors: {asm.errors or 'none'}.",
        "",
    ]
    ac = asm.answer_check
    if ac.get("enabled"):
        out += [
            f"Answer check (teacher re-solves, action `{ac['action']}`): {ac['agree']} of {ac['checked']} agree.",
            "",
        ]
    ts = asm.test_set
    if ts["enabled"]:
        per = ", ".join(f"{k} {v}" for k, v in ts["per_dataset"].items()) or "none"
        out += [
            f"Decontamination against {ts['n']} MWPBench test questions ({per}): exact match after normalisation "
            f"(lower case, punctuation and symbols removed, spaces collapsed) or a shared {ts['ngram']}-word n-gram. "
            f"Removed {len(asm.decontamination)}; {len(asm.seed_contamination)} seed row(s) match a test question "
            "(kept, as the paper keeps its training set).",
        ]
        out += [f"- {n}" for n in ts["notes"]]
        if asm.decontamination:
            out += ["", _md_table(["removed id", "kind", "test item", "shared text"],
                                  [(h["id"], h["kind"], h["test_id"], h["ngram"][:80]) for h in asm.decontamination[:20]])]  # fmt: skip
        out.append("")
    if cfg.dedup:
        out += [f"Near-duplicates (MinHash LSH, {cfg.num_perm} permutations, {cfg.dedup_shingle}-word shingles, "
                f"Jaccard >= {cfg.dedup_threshold}): removed {len(asm.duplicates)}.", ""]  # fmt: skip
    out += [
        "## Prompt",
        "",
        f"Template hash `{template_hash()}`. Generation prompt (our wording of the paper's Table 4):",
        "",
        "```text",
        PROMPT,
        "```",
        "",
        "An unusable reply is retried once with this follow-up (a reply with a question but no solution is asked "
        "to solve it instead, and a cut-off reply gets the same prompt again, asking for a shorter reply, with "
        "seed + 1):",
        "",
        "```text",
        RETRY,
        "```",
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(cfg.model_dump(), indent=2),
        "```",
        "",
        "## Schema of mathscaleqa.jsonl",
        "",
        '`id`, `question`, `solution` (ends with "The answer is X"), `answer`, `topics`, `knowledge_points`, '
        "`composition_id`, `teacher_model`, `prompt_hash`, `source` (`generated` or `seed`), `check_agrees`.",
        "",
        "## Examples",
        "",
    ]
    for r in examples:
        out += [
            f"**{r['id']}**: topics {', '.join(r['topics'])}; knowledge points {', '.join(r['knowledge_points'])}",
            "",
            f"> **Question.** {r['question']}".replace("\n", "\n> "),
            ">",
            f"> **Solution.** {r['solution']}".replace("\n", "\n> "),
            "",
        ]
    out += [
        "## Caveats",
        "",
        "Solutions are the teacher's and unvalidated (as in the paper's final pipeline): expect arithmetic slips, "
        "especially from a small local teacher. Check the licences of the seed data and the teacher's terms of use "
        "before sharing this set.",
    ]
    return "\n".join(out) + "\n"


def batch_summary(run_dir: str | Path) -> dict:
    """{"batch": {usage, jobs}} from batches/state.json when the Batch API was used, else {}."""
    path = Path(run_dir) / "batches" / "state.json"
    if not path.exists():
        return {}
    st = read_json(path)
    jobs = [
        {k: j.get(k) for k in ("id", "batch_id", "status", "n", "round", "succeeded", "failed")}
        for j in st.get("jobs", [])
    ]
    return {"batch": {"usage": st.get("usage"), "jobs": jobs}}


def export(run_dir: str | Path, asm: Assembly, cfg: GenerateConfig, llm_cfg: LLMConfig, seeds: Sequence[dict], seed: int,
           estimate: dict | None = None, usage: dict | None = None, extra: dict | None = None) -> dict:  # fmt: skip
    """Write mathscaleqa.jsonl, the HF copy, the hit lists, generate_summary.json and dataset_card.md."""
    run_dir = Path(run_dir)
    write_jsonl(run_dir / OUTPUT_FILE, asm.rows)
    write_jsonl(run_dir / GEN_DIR / "decontamination.jsonl", asm.decontamination)
    write_jsonl(run_dir / GEN_DIR / "duplicates.jsonl", asm.duplicates)
    if cfg.export_hf:
        export_hf(asm.rows, run_dir / HF_DIR)
    summary = build_summary(asm, cfg, estimate, usage, run_dir, extra)
    write_json(run_dir / SUMMARY_FILE, summary)
    write_text(run_dir / CARD_FILE, dataset_card(asm, summary, cfg, llm_cfg, seeds, seed))
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The whole stage (the CLI and tests; the notebook walks through the same calls)
# ----------------------------------------------------------------------------------------------------------------


def run(P: Params, progress: bool = True, log: Any = print) -> dict:
    """Stage 03 end to end for a params object; returns the summary written to generate_summary.json."""
    cfg, run_dir = P.generate, P.run_dir
    t0 = time.perf_counter()
    seeds, comps = load_inputs(run_dir)
    comps = select_compositions(comps, cfg)
    index = FewShotIndex(seeds)
    est = estimate_cost(cfg, P.llm, len(comps), mean_prompt_chars(comps, index, cfg, P.seed))
    log(
        f"estimate: {est['calls']} calls, {est['prompt_tokens']:,} prompt + {est['completion_tokens']:,} completion tokens, ${est['cost_usd']}"
    )
    with P.llm_client(STAGE, progress=progress) as llm:  # the run's cache (or a sweep's shared one)
        raw = generate(run_dir, comps, index, llm, cfg, seed=P.seed, log=log)
        checks = check_answers(raw, llm, cfg, P.seed, run_dir) if cfg.answer_check else None
        usage = llm.usage()
    items, notes = (
        load_test_questions(P.data_dir, cfg.decontam_official_file, cfg.decontam_datasets)
        if cfg.decontaminate
        else ([], [])
    )
    asm = filter_and_assemble(
        raw, seeds, cfg, P.llm.model, items, notes, checks, log=log, n_compositions=len(comps)
    )
    extra = {"seconds": round(time.perf_counter() - t0, 2), **batch_summary(run_dir)}
    summary = export(run_dir, asm, cfg, P.llm, seeds, P.seed, est, usage, extra)
    for step, kept, removed in asm.funnel:
        log(f"{step:<45} kept {kept:>8}  removed {removed:>8}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mathscale_utils.params import load_params

    ap = argparse.ArgumentParser(
        description="MathScale stage 03: generate questions from concept compositions"
    )
    ap.add_argument("params", help="params file, e.g. params/quickstart.yaml")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    run(load_params(a.params), progress=not a.no_progress, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "GenerateConfig",
    "FewShotIndex",
    "Planned",
    "Parsed",
    "TestItem",
    "Decontaminator",
    "Assembly",
    "load_inputs",
    "select_compositions",
    "jaccard_distance",
    "composition_rng",
    "build_prompt",
    "plan_request",
    "retry_request",
    "check_request",
    "parse_generation",
    "parse_retry",
    "question_part",
    "final_answer",
    "last_boxed",
    "ensure_final_line",
    "seed_solution",
    "generate",
    "generate_shard",
    "shard_status",
    "load_raw",
    "check_answers",
    "answers_agree",
    "normalize_text",
    "ngram_hashes",
    "load_test_questions",
    "mwpbench_test_pairs",
    "near_duplicates",
    "seed_rows",
    "filter_and_assemble",
    "funnel_adds_up",
    "estimate_cost",
    "mean_prompt_chars",
    "graph_vocabulary",
    "coverage",
    "difficulty_proxies",
    "solution_steps",
    "export",
    "export_hf",
    "batch_summary",
    "dataset_card",
    "run",
    "template_hash",
]
