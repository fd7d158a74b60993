"""Build the held-out, blind labelled set for the strict answer judge: tests/data/judge_heldout.jsonl.

    nice -n 5 python bench/build_judge_heldout.py generate --threads 1 --concurrency 8   # replies (cached, resumable)
    python bench/build_judge_heldout.py assemble    # candidates + bench/data/judge_heldout_labels.jsonl -> the set
    python bench/build_judge_heldout.py --check     # rebuild from the cache, compare bytes (no server starts)

Items. 182 MWPBench test items (question and gold exactly as ``data/benchmarks.py`` loads them from the shared data
folder) picked per dataset (``QUOTAS``: GSM8K, MATH Levels 1-3, CollegeMath, TAL-SCQ, GaokaoBench, AGIEval SAT-Math
and MATH, Fresh-Gaokao-2023), stratified by the surface form of the gold (integer, money, percent, fraction,
radical, interval/set/tuple, equation, expression, text/units; ``gold_form``) with a fixed seed and interleaved
across datasets; then an easy block of 150 more (short MATH Level 1-2 and GSM8K items, ``EASY_QUOTAS``), where the
small models are right often enough to give true rows.

Completions. The embedded models, served by the project's own client (``inference.llm.LLM`` on llama.cpp's
server), answer in nine styles (``STYLES``): MWPBench's raw Alpaca prompt and its "conclude with The answer is"
variant (``/completions`` with MWPBench's stop strings), and chat asking for ``\\boxed{}``, for ``#### <answer>``,
for "The answer is: <answer>", for one sentence, for units, for the answer only, or nothing at all; temperature 0,
or 0.7 with a seed per row; 400 tokens at most (150 and 100 for the one-sentence and answer-only styles). Each
model answers an item in its own style (``plan``); ``MODEL_RANGES`` says which items each model answered: the
replies were asked for in item order, and each range is the prefix that was done when generation stopped. Every reply is in the client's cache (default
/work/heldout_cache, outside the repo; one folder per model), so a re-run or an interrupted run repeats no call.

Labels (bench/data/judge_heldout_labels.jsonl, by hand). Every candidate was read against its question and gold.
``label`` is true when the completion's final declared answer is the gold (the same value or object, units and
formatting aside; a number in words counts); false when it declares another value, when the gold appears only in
the working, among copied options or as an intermediate result, when there is no final answer (cut off at
max_tokens, looping, rambling, restating the question), or when it offers two different final answers; null
(dropped from the set) where careful graders could disagree (a reply cut off just after reaching the right
value but before declaring it; an "answer" that restates the question's own expression or set, equal to the gold
by definition; a wrong first declaration contradicted by a right final one). Each label carries a ``note`` (the
declared answer and why), the sha256 of the completion it was given for (``assemble`` refuses a changed
completion), and a ``kind``, my taxonomy of the answer style and what makes it hard to grade:

    number_cot        numeric gold, worked solution ending in a declared number (The answer is / box / ####)
    number_short      numeric gold, a one-line or one-sentence answer
    money_units_percent  the gold or the declared answer carries currency, a percent or a unit of measure
    latex_value       LaTeX gold value (fraction, radical, pi, complex number)
    equivalent_form   the gold's value written another way (0.4 for 10/25, "one" for 1)
    expression_equation  algebraic expression or equation
    interval_set_tuple   interval, set, ordered pair or list of values
    text_answer       a word (a weekday, odd / even, equally likely)
    truncated         cut off at max_tokens or looping before (or while repeating) an answer
    no_final_answer   ends without committing to an answer
    echo_or_degenerate   the "answer" restates the question, is a tautology or answers another question
    gold_in_working_not_final  the gold is in the working or the copied options; the declared answer is not it
    hedged_multiple   two different final answers

The labels do not depend on any checker: math-verify was run afterwards as a second opinion only; each of the 6
rows where it disagreed was read again and carries ``reviewed`` in the labels file (what it found, what the
reading found). Five labels stood; the sixth, an answer that restates the question's expression (equal in value to
the gold, but nothing simplified), was dropped as ambiguous, with the two rows like it.
``balance`` then keeps every true row and false rows up to MAX_FALSE_SHARE of the set, round-robin over (model,
kind) in sha256(id) order: a choice by label, model, kind and hash only. Labelled rows it leaves out stay in the
labels file.

Blindness. Built without reading the judge or anything tuned with it: nothing under mathscale_utils/grading/ was
opened (benchmarks.py imports its box finder; only that loader was called), nor the judge's tests, its earlier
labelled sets, their builders, benches or results, and the judge was never run. bench/bench_judge_heldout.py,
which scores the judge on this set, was written the same way and not run by the set's author.

Counts. 373 candidates (1.5B model 97, 0.5B 198, 135M 78) were labelled: 85 true, 281 false, 7 dropped; the set
keeps the 85 true rows and 127 false ones. Generation took about 2 h 20 min of wall time (not the 45 minutes
planned): the two shared cores carried a load of 8-20 from other work, at about 1 token/s for the 1.5B model.

Make-up of tests/data/judge_heldout.jsonl (``makeup_text``; tests/test_judge_heldout.py checks it):

    212 rows: 85 true, 127 false (rows/true below).
    model: qwen2.5-coder-0.5b-instruct 92/41, qwen2.5-coder-1.5b-instruct 65/43, smollm2-135m-instruct 55/1.
    dataset: MATH 81/37, agieval.math 10/0, agieval.sat-math 12/2, college_math 11/1, fresh_gaokao_math_2023
    9/0, gaokao_bench_math_en 9/1, gsm8k 67/40, tal 13/4.
    style: alpaca 22/12, alpaca_force 23/6, answer_is_t07 22/6, answer_only 16/2, boxed 30/17, hash 25/15,
    plain_t07 23/12, sentence 25/4, units_t07 26/11.
    kind: echo_or_degenerate 8/0, equivalent_form 2/2, expression_equation 9/1, gold_in_working_not_final 8/0,
    hedged_multiple 1/0, interval_set_tuple 10/3, latex_value 19/4, money_units_percent 28/12, no_final_answer
    7/0, number_cot 73/53, number_short 24/10, text_answer 3/0, truncated 20/0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.artifacts import Record  # noqa: E402
from mathscale_utils.core.io import read_jsonl, write_jsonl, write_text  # noqa: E402
from mathscale_utils.core.llm_config import LLMConfig  # noqa: E402
from mathscale_utils.core.templates import STOP_STRINGS, fill_template  # noqa: E402
from mathscale_utils.data.benchmarks import load_mwpbench  # noqa: E402
from mathscale_utils.inference.cache import ReplyCache  # noqa: E402
from mathscale_utils.inference.chat import ChatRequest  # noqa: E402

SET_PATH = ROOT / "tests" / "data" / "judge_heldout.jsonl"
LABELS_PATH = ROOT / "bench" / "data" / "judge_heldout_labels.jsonl"
DEFAULT_CACHE = Path("/work/heldout_cache")
SEED = 20240305
MAX_FALSE_SHARE = 0.6  # the set keeps every true row and false rows up to this share (see balance)
FIELDS = (
    "id",
    "dataset",
    "source",
    "question",
    "gold",
    "completion",
    "model",
    "style",
    "label",
    "kind",
    "note",
)

# items per dataset (test split); MATH only levels 1-3 (the small models get some of those right)
QUOTAS: dict[str, int] = {
    "gsm8k": 36,
    "MATH": 48,
    "college_math": 24,
    "tal": 20,
    "gaokao_bench_math_en": 20,
    "agieval.sat-math": 12,
    "agieval.math": 14,
    "fresh_gaokao_math_2023": 8,
}
MAX_QUESTION_CHARS = 700
MAX_GOLD_CHARS = 60

MODELS: tuple[str, ...] = (
    "qwen2.5-coder-1.5b-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "smollm2-135m-instruct",
)
# the easy block after the main one: short MATH Level 1-2 and GSM8K items, where the small models are right more often
EASY_QUOTAS: dict[str, int] = {"MATH": 100, "gsm8k": 50}
N_MAIN = sum(QUOTAS.values())
N_ALL = N_MAIN + sum(EASY_QUOTAS.values())
# which items each model answers: [start, stop) ranges of the item list (main block, then easy block)
MODEL_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "qwen2.5-coder-1.5b-instruct": ((0, 12), (N_MAIN, N_MAIN + 85)),
    "qwen2.5-coder-0.5b-instruct": ((0, 48), (N_MAIN, N_ALL)),
    "smollm2-135m-instruct": ((0, 78),),
}
SHORT = {
    "qwen2.5-coder-1.5b-instruct": "q15",
    "qwen2.5-coder-0.5b-instruct": "q05",
    "smollm2-135m-instruct": "s135",
}


@dataclass(frozen=True)
class Style:
    """One way of asking: raw completion of an MWPBench template, or a chat message built from `chat`."""

    raw_template: str | None = None  # an MWPBench template name (core/templates.py): /completions
    chat: str | None = None  # a chat message; {q} is the question
    temperature: float = 0.0
    max_tokens: int = 400


STYLES: dict[str, Style] = {
    "alpaca": Style(raw_template="alpaca"),
    "boxed": Style(chat="{q}\nPlease reason step by step, and put your final answer within \\boxed{{}}."),
    "sentence": Style(chat="{q}\nAnswer in one sentence.", max_tokens=150),
    "hash": Style(
        chat="{q}\nSolve it step by step, then give the final answer on the last line as '#### <answer>'."
    ),
    "plain_t07": Style(chat="{q}", temperature=0.7),
    "answer_only": Style(chat="{q}\nReply with the final answer only.", max_tokens=100),
    "alpaca_force": Style(raw_template="alpaca_force_ans"),
    "units_t07": Style(chat="{q}\nGive the final answer with its units.", temperature=0.7),
    "answer_is_t07": Style(chat="{q}\nEnd your response with 'The answer is: <answer>'.", temperature=0.7),
}
STYLE_ORDER = list(STYLES)


# ---- items ---------------------------------------------------------------------------------------------------


def _bare(answer: str) -> str:
    """The gold without math delimiters, for bucketing only."""
    a = answer.strip()
    for lo, hi in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if a.startswith(lo) and a.endswith(hi) and len(a) > len(lo) + len(hi):
            a = a[len(lo) : -len(hi)].strip()
    return a


def gold_form(rec: Record) -> str:
    """A coarse surface form of the gold, to spread the picked items over answer types (selection only)."""
    a = _bare(rec.answer)
    words = re.sub(r"\\[A-Za-z]+", " ", a)
    if re.search(r"\\\$|^\$\d|dollars?|cents?", a) or (rec.dataset == "gsm8k" and "$" in rec.question):
        return "money"
    if "%" in a or "percent" in a.lower() or (rec.dataset == "gsm8k" and "%" in rec.question):
        return "percent"
    if "=" in a or "<" in a or ">" in a or "\\le" in a or "\\ge" in a:
        return "equation_inequality"
    if "\\infty" in a or re.fullmatch(r"[\[(].*,.*[\])]", a) or "\\{" in a:
        return "interval_set_tuple"
    if re.search(r"[A-Za-z]{3,}", words):
        return "text_units"
    if "\\sqrt" in a or "\\pi" in a or "sqrt" in a:
        return "radical_pi"
    if "frac" in a or "/" in a:
        return "fraction"
    if re.fullmatch(r"-?[\d,]+", a):
        return "integer"
    if re.fullmatch(r"-?\d*\.\d+", a):
        return "decimal"
    if re.search(r"[a-z]", a):
        return "expression"
    return "other"


def _eligible(rec: Record) -> bool:
    if not 20 <= len(rec.question) <= MAX_QUESTION_CHARS or "[asy]" in rec.question:
        return False
    if len(rec.answer) > MAX_GOLD_CHARS or "\n" in rec.answer:
        return False
    return not (rec.dataset == "MATH" and rec.meta.get("level") not in ("Level 1", "Level 2", "Level 3"))


def select_items(data_dir: Path) -> list[Record]:
    """QUOTAS items per dataset: round-robin over the gold forms in a seeded order."""
    recs = load_mwpbench("test", data_dir, datasets=list(QUOTAS))
    by_ds: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        if _eligible(r):
            by_ds[r.dataset].append(r)
    out = []
    for ds, quota in QUOTAS.items():
        rng = random.Random(f"{SEED}|{ds}")
        forms: dict[str, list[Record]] = defaultdict(list)
        for r in by_ds[ds]:
            forms[gold_form(r)].append(r)
        for f in forms.values():
            rng.shuffle(f)
        order = sorted(forms)
        picked: list[Record] = []
        while len(picked) < quota and any(forms.values()):
            for f in order:
                if forms[f] and len(picked) < quota:
                    picked.append(forms[f].pop())
        by_ds[ds] = picked
    # interleaved across datasets, so that any prefix covers them all (the models answer items in this order)
    for k in range(max(QUOTAS.values())):
        out += [by_ds[ds][k] for ds in QUOTAS if k < len(by_ds[ds])]
    return out + _easy_items(recs, {r.id for r in out})


def _easy_items(recs: list[Record], taken: set[str]) -> list[Record]:
    """EASY_QUOTAS more items: MATH Level 1-2 and GSM8K with short questions and golds, seeded, interleaved."""

    def easy(r: Record) -> bool:
        if r.id in taken or len(r.answer) > 30 or "[asy]" in r.question:
            return False
        if r.dataset == "MATH":
            return r.meta.get("level") in ("Level 1", "Level 2") and len(r.question) <= 300
        return r.dataset == "gsm8k" and len(r.question) <= 220

    picks = {}
    for ds, quota in EASY_QUOTAS.items():
        pool = [r for r in recs if r.dataset == ds and easy(r)]
        picks[ds] = random.Random(f"{SEED}|easy|{ds}").sample(pool, quota)
    out, ratio = [], EASY_QUOTAS["MATH"] // EASY_QUOTAS["gsm8k"]
    for k in range(EASY_QUOTAS["gsm8k"]):
        out += picks["MATH"][ratio * k : ratio * (k + 1)] + [picks["gsm8k"][k]]
    return out


# ---- requests ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    item: Record
    model: str
    style: str


def plan(items: list[Record]) -> list[Job]:
    """Which model answers which item in which style: a different style per model on an item (offsets 0, 3, 6 in
    STYLE_ORDER, moving on with the item), each model on its MODEL_RANGES."""
    jobs = []
    for i, rec in enumerate(items):
        for j, model in enumerate(MODELS):
            if not any(lo <= i < hi for lo, hi in MODEL_RANGES[model]):
                continue
            style = STYLE_ORDER[(i + 3 * j) % len(STYLE_ORDER)]
            jobs.append(Job(f"{rec.id}|{SHORT[model]}|{style}", rec, model, style))
    return jobs


def request(job: Job) -> ChatRequest:
    s = STYLES[job.style]
    seed = int(hashlib.sha256(job.id.encode()).hexdigest()[:8], 16) if s.temperature > 0 else None
    if s.raw_template is not None:
        return ChatRequest(
            prompt=fill_template(s.raw_template, job.item.question),
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            stop=list(STOP_STRINGS),
            seed=seed,
        )
    msg = s.chat.format(q=job.item.question)
    return ChatRequest(
        messages=[{"role": "user", "content": msg}],
        temperature=s.temperature,
        max_tokens=s.max_tokens,
        seed=seed,
    )


def generate(
    jobs: list[Job], cache_dir: Path, models: list[str], concurrency: int, threads: int | None
) -> None:
    """Ask every job of `models` not yet cached (the client appends each reply to the cache as it arrives, so an
    interrupted run resumes where it stopped). A long reply of the 1.5B model on two busy cores takes most of an
    hour: hence the long timeout (a timed-out request would be asked again from scratch)."""
    from mathscale_utils.inference.llm import LLM

    for model in models:
        todo = [j for j in jobs if j.model == model]
        cfg = LLMConfig(model=model, concurrency=concurrency, timeout_s=7200, n_threads=threads)
        with LLM(cfg, cache_dir / SHORT[model], "judge_heldout", progress=True) as llm:
            res = llm.chat_many([request(j) for j in todo], desc=model)
            u = llm.usage()
        bad = [(j.id, r.error) for j, r in zip(todo, res, strict=True) if not r.ok]
        print(
            f"{model}: {len(todo)} jobs, {u['requests']} sent, {u['completion_tokens']} tokens",
            file=sys.stderr,
        )
        if bad:
            raise SystemExit(f"{len(bad)} requests of {model} failed, e.g. {bad[0]}; run again to resume")


def candidates(jobs: list[Job], cache_dir: Path, allow_missing: bool = False) -> list[dict]:
    """The unlabelled rows, read from the cache only (no server starts); a reply missing from the cache is an
    error unless allow_missing (then the row is left out)."""
    caches = {m: ReplyCache(cache_dir / SHORT[m]) for m in sorted({j.model for j in jobs})}
    out, missing = [], []
    for j in jobs:
        hit = caches[j.model].get(request(j).key(j.model))
        if hit is None or hit.text is None:
            missing.append(j.id)
            continue
        out.append(
            {
                "id": j.id,
                "dataset": j.item.dataset,
                "source": j.item.id,
                "question": j.item.question,
                "gold": j.item.answer,
                "completion": hit.text,
                "model": j.model,
                "style": j.style,
                "finish_reason": hit.finish_reason,
            }
        )
    for c in caches.values():
        c.close()
    if missing and not allow_missing:
        raise SystemExit(
            f"{len(missing)} of {len(jobs)} replies are not in {cache_dir} (e.g. {missing[0]}): "
            "run `generate` first (or point --cache-dir at the cache the set was built from)"
        )
    return out


# ---- labels and the set ------------------------------------------------------------------------------------


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_labels(path: Path) -> dict[str, dict]:
    """id -> label row; a row lacking a key, with a bad label or a duplicate id fails, naming the line."""
    out: dict[str, dict] = {}
    for n, row in enumerate(read_jsonl(path), start=1):
        for k in ("id", "label", "kind", "note", "sha"):
            if k not in row:
                raise SystemExit(f"{path}:{n}: missing key {k!r}")
        if row["label"] not in (True, False, None):
            raise SystemExit(f"{path}:{n}: label must be true, false or null (dropped), not {row['label']!r}")
        if row["id"] in out:
            raise SystemExit(f"{path}:{n}: duplicate id {row['id']!r}")
        out[row["id"]] = row
    return out


def assemble(cands: list[dict], labels: dict[str, dict]) -> list[dict]:
    """The labelled rows in candidate order with FIELDS only, the dropped ones (label null) left out. Every
    candidate must have a label, given for its exact completion, and every label a candidate."""
    known = {c["id"] for c in cands}
    if stray := sorted(set(labels) - known):
        raise SystemExit(f"{len(stray)} labels name no candidate, e.g. {stray[0]!r}")
    if unlabelled := [c["id"] for c in cands if c["id"] not in labels]:
        raise SystemExit(f"{len(unlabelled)} candidates have no label, e.g. {unlabelled[0]!r}")
    rows = []
    for c in cands:
        lab = labels[c["id"]]
        if lab["sha"] != text_sha(c["completion"]):
            raise SystemExit(f"{c['id']}: the completion changed since it was labelled (sha {lab['sha']})")
        if lab["label"] is None:
            continue
        row = {**c, "label": lab["label"], "kind": lab["kind"], "note": lab["note"]}
        rows.append({k: row[k] for k in FIELDS})
    return rows


def balance(rows: list[dict], max_false_share: float = MAX_FALSE_SHARE) -> list[dict]:
    """Every true row, and false rows up to max_false_share of the result: taken round-robin over the (model,
    kind) strata, each stratum in sha256(id) order, so that the kept ones spread over models and kinds. The
    rows keep their order. A choice made blind to any judge: by label, model, kind and a hash only."""
    n_true = sum(1 for r in rows if r["label"])
    false = [r for r in rows if not r["label"]]
    want = min(len(false), math.floor(n_true * max_false_share / (1 - max_false_share) + 1e-9))
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in sorted(false, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest()):
        strata[(r["model"], r["kind"])].append(r["id"])
    keep: set[str] = set()
    depth = 0
    while len(keep) < want:
        for key in sorted(strata):
            if depth < len(strata[key]) and len(keep) < want:
                keep.add(strata[key][depth])
        depth += 1
    return [r for r in rows if r["label"] or r["id"] in keep]


def make_up(rows: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """(rows, true rows) per model, dataset, style and kind."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for key in ("model", "dataset", "style", "kind"):
        n = Counter(r[key] for r in rows)
        t = Counter(r[key] for r in rows if r["label"])
        out[key] = {k: (n[k], t[k]) for k in sorted(n)}
    return out


def makeup_text(rows: list[dict]) -> str:
    """The make-up as the docstrings show it: one wrapped paragraph per field, "name rows/true"."""
    n_true = sum(1 for r in rows if r["label"])
    lines = [f"{len(rows)} rows: {n_true} true, {len(rows) - n_true} false (rows/true below)."]
    for key, counts in make_up(rows).items():
        text = f"{key}: " + ", ".join(f"{k} {n}/{t}" for k, (n, t) in counts.items()) + "."
        lines += textwrap.wrap(text, width=106, break_on_hyphens=False, break_long_words=False)
    return "\n".join("    " + line for line in lines)


def encode(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def reading_sheet(cands: list[dict]) -> str:
    """The candidates as plain text to read and label."""
    parts = []
    for c in cands:
        parts.append(
            f"=== {c['id']}  [{c['finish_reason']}]\nQ: {c['question']}\nGOLD: {c['gold']}\n"
            f"SHA: {text_sha(c['completion'])}\n--- completion\n{c['completion']}\n"
        )
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", choices=["generate", "assemble"], default="assemble")
    ap.add_argument("--check", action="store_true", help="rebuild the set from the cache and compare bytes")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MATHSCALE_DATA_DIR", "")))
    ap.add_argument("--models", nargs="+", default=list(reversed(MODELS)), choices=MODELS)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="server threads (default: every core)")
    args = ap.parse_args()
    if not (args.data_dir / "PROVENANCE.md").exists():
        raise SystemExit(f"no shared data folder at {args.data_dir!s}: set MATHSCALE_DATA_DIR or --data-dir")
    jobs = plan(select_items(args.data_dir))
    if args.command == "generate" and not args.check:
        generate(jobs, args.cache_dir, args.models, args.concurrency, args.threads)
        cands = candidates(jobs, args.cache_dir, allow_missing=True)
        write_jsonl(args.cache_dir / "candidates.jsonl", cands)
        write_text(args.cache_dir / "reading_sheet.txt", reading_sheet(cands))
        print(f"{len(cands)} of {len(jobs)} candidates in {args.cache_dir / 'candidates.jsonl'}")
        return
    rows = balance(assemble(candidates(jobs, args.cache_dir), read_labels(LABELS_PATH)))
    if args.check:
        ok = SET_PATH.exists() and SET_PATH.read_bytes() == encode(rows)
        print(f"{SET_PATH}: {'identical to' if ok else 'DIFFERS from'} the rebuild ({len(rows)} rows)")
        raise SystemExit(0 if ok else 1)
    SET_PATH.write_bytes(encode(rows))
    print(makeup_text(rows))
    print(f"{len(rows)} rows -> {SET_PATH}")


if __name__ == "__main__":
    main()
