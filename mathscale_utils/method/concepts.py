"""Step 1 of MathScale: extract topics and knowledge points (KPs) from each seed question (paper §3.1).

A teacher LLM names 1-2 topics and 1-5 KPs per question as JSON. Replies are validated; a malformed one gets one
corrective retry. Strings are normalised minimally (strip, collapse whitespace, drop a trailing period) and the
paper's frequency filter drops concepts extracted from fewer than `min_count` seed questions (the paper: seen once).

Output schema, one row per seed question in `concepts.jsonl`:
    seed_id, source, question, solution, answer  -- from the seed record
    raw_topics, raw_knowledge_points             -- normalised, before the frequency filter
    topics, knowledge_points                     -- after the frequency filter (what the graph uses)
    status ("ok" | "failed"), error, attempts
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

from mathscale_utils.core.artifacts import Record, RunDir
from mathscale_utils.core.io import write_json
from mathscale_utils.core.method_config import ExtractConfig
from mathscale_utils.inference.chat import ChatRequest, ChatResult, Unusable, ask_validated, parse_json_reply
from mathscale_utils.inference.llm import LLM

PROMPT = """You are a math teacher. Read the question below and work out what it is testing.
First name 1 or 2 general topics it belongs to (a subject or textbook chapter, for example "Ratio and proportion").
Then name 1 to 5 specific knowledge points a student must use to solve it (a definition, theorem, formula or skill, \
for example "Converting percentages to decimals").

Reply with JSON only, in this form:
{{"topics": ["..."], "knowledge_points": ["..."]}}

Question:
{question}"""

RETRY = (
    'Your reply could not be used: {problem}. Reply again with JSON only: an object with a list "topics" '
    '(1 to {max_topics} strings) and a list "knowledge_points" (1 to {max_kps} strings).'
)


def json_schema(cfg: ExtractConfig) -> dict:
    """The JSON schema the reply must follow: grammar-constrained on llama.cpp, response_format json_schema where the
    model has structured outputs. Elsewhere the client asks in JSON mode or with the prompt's instructions alone
    (inference/capabilities.py), and parse_reply checks the shape either way."""
    strings = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    return {
        "type": "object",
        "properties": {
            "topics": {**strings, "maxItems": cfg.max_topics},
            "knowledge_points": {**strings, "maxItems": cfg.max_knowledge_points},
        },
        "required": ["topics", "knowledge_points"],
    }


def build_request(question: str, cfg: ExtractConfig) -> ChatRequest:
    """One extraction call (JSON reply, constrained to the schema where the model supports it). The prompt says
    "JSON", which OpenAI's JSON mode requires of the messages."""
    messages = [{"role": "user", "content": PROMPT.format(question=question.strip())}]
    fmt = {"type": "json_object", "schema": json_schema(cfg)} if cfg.json_schema else {"type": "json_object"}
    return ChatRequest(
        messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens, response_format=fmt
    )


def retry_request(req: ChatRequest, reply: str | None, problem: str, cfg: ExtractConfig) -> ChatRequest:
    """The one corrective retry: the rejected reply and a message naming what was wrong with it."""
    retry = RETRY.format(problem=problem, max_topics=cfg.max_topics, max_kps=cfg.max_knowledge_points)
    history = [{"role": "assistant", "content": reply or ""}, {"role": "user", "content": retry}]
    return replace(req, messages=[*req.messages, *history])


_WS = re.compile(r"\s+")


def normalise(concept: str) -> str:
    """Minimal normalisation (METHOD.md §2): strip, collapse whitespace, drop trailing periods."""
    return _WS.sub(" ", concept).strip().rstrip(".").strip()


def _clean_list(value, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("expected a list of strings")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            continue
        s = normalise(item)
        if s and s.casefold() not in {o.casefold() for o in out}:
            out.append(s)
    return out[:limit]


def parse_reply(text: str | None, cfg: ExtractConfig) -> tuple[list[str], list[str]]:
    """Parse and validate one reply into (topics, knowledge_points); raise ValueError saying what is wrong."""
    obj = parse_json_reply(text or "")
    if obj is None:
        raise ValueError("the reply is not a JSON object")
    missing = [k for k in ("topics", "knowledge_points") if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    topics = _clean_list(obj["topics"], cfg.max_topics)
    kps = _clean_list(obj["knowledge_points"], cfg.max_knowledge_points)
    if not topics or not kps:
        raise ValueError("topics and knowledge_points must each hold at least one non-empty string")
    return topics, kps


@dataclass
class Extraction:
    record: Record
    topics: list[str] = field(default_factory=list)
    knowledge_points: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    failed: bool = False  # the request itself failed (no reply to parse), as opposed to an unusable reply


def extract(records: list[Record], llm: LLM, cfg: ExtractConfig) -> list[Extraction]:
    """Extract concepts for every seed: one batch of calls, then one corrective retry for malformed replies."""
    return extract_sets([records], llm, cfg)[0]


def extract_sets(sets: list[list[Record]], llm: LLM, cfg: ExtractConfig) -> list[list[Extraction]]:
    """extract() for several sets of questions (the seeds, the coverage sample) in ONE batch of calls, so that the
    server's slots stay busy from one set to the next; case variants are merged within each set."""

    def parse(res: ChatResult, first: ChatResult | None) -> tuple[list[str], list[str]]:
        try:
            return parse_reply(res.text, cfg)
        except ValueError as e:
            raise Unusable(f"malformed reply after retry: {e}" if first else str(e)) from None

    def fix(req: ChatRequest, res: ChatResult, problem: str) -> ChatRequest:
        return retry_request(req, res.text, problem, cfg)

    records = [r for group in sets for r in group]
    requests = [build_request(r.question, cfg) for r in records]
    out = []
    for r, a in zip(records, ask_validated(llm, requests, parse, fix, desc="extract concepts"), strict=True):
        ex = Extraction(r, attempts=len(a.results))
        if a.ok:
            ex.topics, ex.knowledge_points = a.value
        elif a.failed:
            ex.error = f"{'retry' if len(a.results) > 1 else 'request'} failed: {a.results[-1].error}"
            ex.failed = True
        else:
            ex.error = a.problem
        out.append(ex)
    bounds = [0, *accumulate(len(g) for g in sets)]
    groups = [out[a:b] for a, b in pairwise(bounds)]
    for group in groups if cfg.case_fold else []:
        merge_case_variants(group)
    return groups


def merge_case_variants(extractions: list[Extraction]) -> None:
    """Rename concepts that differ only in case to their most common surface form (ties: first seen), in place."""
    for attr in ("topics", "knowledge_points"):
        forms: dict[str, Counter] = {}
        for ex in extractions:
            for c in getattr(ex, attr):
                forms.setdefault(c.casefold(), Counter())[c] += 1
        chosen = {k: f.most_common(1)[0][0] for k, f in forms.items()}
        for ex in extractions:
            setattr(ex, attr, list(dict.fromkeys(chosen[c.casefold()] for c in getattr(ex, attr))))


def concept_counts(extractions: list[Extraction]) -> tuple[Counter, Counter]:
    """Number of seed questions each topic and each KP was extracted from."""
    topics, kps = Counter(), Counter()
    for ex in extractions:
        topics.update(set(ex.topics))
        kps.update(set(ex.knowledge_points))
    return topics, kps


def to_rows(extractions: list[Extraction], min_count: int) -> list[dict]:
    """The concepts.jsonl rows, applying the frequency filter (concepts from fewer than min_count seeds dropped)."""
    topic_n, kp_n = concept_counts(extractions)
    rows = []
    for ex in extractions:
        r = ex.record
        rows.append(
            {
                "seed_id": r.id,
                "source": r.dataset,
                "question": r.question,
                "solution": r.solution,
                "answer": r.answer,
                "raw_topics": ex.topics,
                "raw_knowledge_points": ex.knowledge_points,
                "topics": [t for t in ex.topics if topic_n[t] >= min_count],
                "knowledge_points": [k for k in ex.knowledge_points if kp_n[k] >= min_count],
                "status": "failed" if ex.error else "ok",
                "error": ex.error,
                "attempts": ex.attempts,
            }
        )
    return rows


def frequency_table(extractions: list[Extraction], min_count: int) -> list[dict]:
    """One row per distinct concept: type, concept, count, kept (sorted by type, then count descending)."""
    topic_n, kp_n = concept_counts(extractions)
    table = []
    for kind, counts in (("topic", topic_n), ("knowledge_point", kp_n)):
        for concept, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            table.append({"type": kind, "concept": concept, "count": n, "kept": n >= min_count})
    return table


def summary(extractions: list[Extraction], min_count: int) -> dict:
    """Counts the notebook and the manifest report: seeds, failures, retries, vocabulary before and after the filter."""
    topic_n, kp_n = concept_counts(extractions)
    return {
        "seeds": len(extractions),
        "ok": sum(1 for e in extractions if not e.error),
        "failed": sum(1 for e in extractions if e.error),
        "retried": sum(1 for e in extractions if e.attempts > 1),
        "min_count": min_count,
        "topics_before_filter": len(topic_n),
        "knowledge_points_before_filter": len(kp_n),
        "topics_after_filter": sum(1 for n in topic_n.values() if n >= min_count),
        "knowledge_points_after_filter": sum(1 for n in kp_n.values() if n >= min_count),
    }


def write_summary(
    run_dir: str | Path,
    extractions: list[Extraction],
    min_count: int,
    test_questions: int = 0,
    warnings: Sequence[str] = (),
    usage: dict | None = None,
    **extra: Any,
) -> dict:
    """Write extract_summary.json (stage 01's summary, which stage 06 reads): :func:`summary`'s counts, the test
    questions extracted for coverage, the seeds' warnings, the LLM usage and anything else the stage records."""
    out = {
        **summary(extractions, min_count),
        "test_questions": test_questions,
        "warnings": list(warnings),
        **extra,
        "llm": usage or {},
    }
    write_json(RunDir(run_dir).extract_summary, out)
    return out


def plot_top_concepts(table: list[dict], min_count: int, top: int = 15):
    """The most common topics and KPs (bars; grey: dropped by the frequency filter), from frequency_table rows."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, kind in zip(axes, ["topic", "knowledge_point"], strict=True):
        rows = [r for r in table if r["type"] == kind][:top][::-1]
        ax.barh(
            [r["concept"] for r in rows],
            [r["count"] for r in rows],
            color=["tab:blue" if r["kept"] else "tab:gray" for r in rows],
        )
        ax.set_title(f"most common {kind.replace('_', ' ')}s")
        ax.set_xlabel("seed questions")
    fig.suptitle(f"grey: dropped by the frequency filter (fewer than {min_count} seed questions)")
    fig.tight_layout()
    return fig
