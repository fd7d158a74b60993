"""The MWPBench evaluation run (MathScale §4.2, METHOD.md §8): items, inference, metrics and error analysis.
The prompt templates and both judges are in ``judges.py``; the paper's reported numbers in ``paper_tables.py``.

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

Evaluation in one picture::

    records (data.load_mwpbench) -> cap_per_task (first 2000 per data_topic, file order) -> stratified_subset
      -> fill_template("alpaca", question) -> ONE user message, greedy, paper stop strings, max_tokens
      -> completion -> paper_judge (the number the paper reports) + strict_judge (math-verify), side by side
      -> predictions.jsonl (appended per chunk; a killed run resumes) -> compute_metrics -> metrics.json

predictions.jsonl rows (one per item; on resume a re-tried item appends a newer row, the last row of an id wins)::

    {"id", "dataset", "data_topic", "question", "prompt", "completion" (str; "" when the request failed),
     "gold" (the reference answer), "extracted" (the paper judge's candidate or null), "paper_correct" (bool),
     "paper_method" (boxed | last_number | answer_phrase | last_is | none | reference_error),
     "paper_rule" (numeric | inline_math | pred_in_ref | ref_in_pred | exact | raw_fallback | missing | ...),
     "clean_prediction", "clean_reference", "reference_error" (str|null), "strict_correct" (bool),
     "strict_extracted", "strict_method" (exact | choice | restated | parts | structure | numeric | text | symbolic |
     long_form | no_answer | none | error), "strict_source" (declared | last), "strict_error", "error" (request error
     or null),
     "cached" (bool), "template", "model" (name, + "+lora:<hash>" with an adapter), "max_tokens"}

metrics.json (``compute_metrics``): accuracies in percent, per judge ("paper", "strict"): per task (data_topic),
per dataset (MATH and college_math as size-weighted means of their subjects), micro (item-weighted over the
evaluated datasets) and macro (unweighted mean over the evaluated datasets), plus item and error counts, the
Fresh-GaokaoMath-2023 score kept apart, and which datasets are missing or approximate.

Driver behaviours not reproduced: ``--target_tasks`` kept a task when its name was a *substring* of the option
string (``EvalConfig.datasets`` matches names exactly); the driver's exception handler skipped a whole task on any
error (see ``judges.paper_judge``); prompts went out in batches of 60 to vLLM (here: chunks through the project's
LLM client).
"""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mathscale_utils.answers import normalise
from mathscale_utils.data import (
    FRESH_GAOKAO,
    MWPBENCH_DATASETS,
    Record,
    availability,
    cap_per_task,
    load_mwpbench,
    read_fresh_gaokao,
    stratified_subset,
)
from mathscale_utils.io import DataError, append_jsonl, read_jsonl, write_jsonl, write_text
from mathscale_utils.judges import JUDGES, PAPER_MAX_TOKENS, STOP_STRINGS, TemplateName, fill_template, judge

# ================================================================================================================
# configuration (the ``evaluate:`` params section)


class EvalConfig(BaseModel):
    """Stage 05: MWPBench evaluation. Defaults reproduce the paper's protocol on whatever data is available."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] | None = Field(
        None,
        description="MWPBench datasets to evaluate (default: all available); names as in data.MWPBENCH_DATASETS",
    )
    n_per_dataset: int | None = Field(
        None, ge=1, description="stratified subset size per dataset; null = all"
    )
    template: TemplateName = Field(
        "alpaca", description="prompt template (paper: alpaca; OpenAI models: alpaca_force_ans)"
    )
    max_tokens: int = Field(PAPER_MAX_TOKENS, ge=1, description="max new tokens (paper: 2048)")
    stop: list[str] | None = Field(
        default_factory=lambda: list(STOP_STRINGS),
        description="stop strings (paper's vLLM driver); null for the OpenAI API, which takes at most 4",
    )
    cap_per_task: int | None = Field(
        2000, description="first N items per data_topic in file order (paper: 2000); null or -1 = no cap"
    )
    official_test_file: str | None = Field(
        None, description="the official MWPBench full_test.json (makes every dataset exact)"
    )
    include_fresh_gaokao: bool = Field(
        False, description="also evaluate Fresh-GaokaoMath-2023 (30 items, scored apart)"
    )
    model: str | None = Field(
        None, description="override the llm section's model for this stage (e.g. a fine-tuned one)"
    )
    base_url: str | None = Field(
        None,
        description="the endpoint serving evaluate.model (e.g. vLLM with the LoRA); default: llm.base_url",
    )
    use_adapter: bool = Field(
        True, description="use run_dir/adapter when it exists (wired by the fine-tuning stage)"
    )
    chunk_size: int = Field(
        32, ge=1, description="requests per chat_many call; predictions are saved after each"
    )
    mc_extra_keywords: list[str] = Field(
        default_factory=list,
        description="extra multiple-choice filter keywords for TAL / SAT (the paper's 6th is unknown)",
    )


def eval_llm_config(P: Any) -> tuple[Any, str]:
    """Which model stage 05 asks, as an llm section, and a line saying why.

    1. `evaluate.model` names one: that model, no adapter, at `evaluate.base_url` when given (e.g. vLLM serving the
       student with its LoRA), else at llm.base_url.
    2. Else, with `evaluate.use_adapter` and the LoRA GGUF that stage 04 wrote (run_dir/adapter/adapter.gguf): the
       student, `finetune.base_model` on the embedded server with that adapter.
    3. Else the llm section's model itself (evaluating the teacher, or any endpoint model). A peft adapter without
       its llama.cpp form (a GPU run) is an error here rather than a silent evaluation of the teacher.
    """
    cfg: EvalConfig = P.evaluate
    if cfg.model:
        update = {"model": cfg.model, "lora_path": None}
        if cfg.base_url:
            update["base_url"] = cfg.base_url
        where = f" at {cfg.base_url}" if cfg.base_url else ""
        return P.llm.model_copy(update=update), f"evaluate.model = {cfg.model}{where}"
    adapter = P.run_dir / "adapter" / "adapter.gguf"
    if cfg.use_adapter and not adapter.exists() and (adapter.parent / "adapter_config.json").exists():
        raise ValueError(
            f"stage 04 wrote a LoRA adapter ({adapter.parent}) but no llama.cpp form of it, so the embedded server "
            "cannot serve the student: serve it (e.g. vllm serve BASE --enable-lora --lora-modules "
            f"student={adapter.parent}) and set evaluate.model: student and evaluate.base_url, or set "
            "evaluate.use_adapter: false to evaluate the llm section's model"
        )
    if cfg.use_adapter and adapter.exists():
        student = P.finetune.base_model
        update = {"model": student, "base_url": None, "lora_path": str(adapter), "concurrency": 1}
        return P.llm.model_copy(update=update), f"the fine-tuned student: {student} + LoRA {adapter}"
    return P.llm, f"the llm section's model {P.llm.model} (no adapter found at {adapter})"


def select_records(cfg: EvalConfig, data_dir: str | Path | None, seed: int) -> tuple[list[Record], list[str]]:
    """The items to evaluate: available datasets (cfg.datasets or all), the per-task cap in file order, then the
    stratified subset; Fresh-Gaokao (all 30, never capped or sub-sampled) appended when asked. Returns warnings for
    datasets asked for but missing."""
    from mathscale_utils.params import resolve_path

    official = resolve_path(cfg.official_test_file) if cfg.official_test_file else None
    avail = {
        row["dataset"]: row
        for row in availability(
            "test", data_dir, official, include_fresh=False, extra_keywords=cfg.mc_extra_keywords
        )
    }
    wanted = list(cfg.datasets) if cfg.datasets else list(MWPBENCH_DATASETS)
    warnings = []
    usable = []
    for d in wanted:
        if d not in avail:
            raise ValueError(f"evaluate.datasets: unknown dataset {d!r}; known: {list(MWPBENCH_DATASETS)}")
        if avail[d]["status"] == "missing":
            warnings.append(f"{d}: missing ({avail[d]['note']}); skipped")
        else:
            usable.append(d)
    recs = (
        load_mwpbench("test", data_dir, official, usable, extra_keywords=cfg.mc_extra_keywords)
        if usable
        else []
    )
    recs = cap_per_task(recs, cfg.cap_per_task)
    recs = stratified_subset(recs, cfg.n_per_dataset, seed)
    if cfg.include_fresh_gaokao:
        recs += read_fresh_gaokao(data_dir) if data_dir is not None else []
    return recs, warnings


# ================================================================================================================
# inference


def load_predictions(path: str | Path) -> list[dict]:
    """predictions.jsonl rows, the last row per id winning, in first-seen order (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[str, dict] = {}
    for row in read_jsonl(path, tolerate_torn_tail=True):
        rows[row["id"]] = row
    return list(rows.values())


def _repair_torn_tail(path: Path) -> None:
    """A crash mid-append leaves a partial last line; rewrite the file without it before appending again."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            last = f.read(1)
        if last != b"\n":
            write_jsonl(path, read_jsonl(path, tolerate_torn_tail=True))


def prediction_row(
    rec: Record, prompt: str, completion: str | None, error: str | None, **extra: Any
) -> dict[str, Any]:
    """One predictions.jsonl row: the item, the completion, both judges' verdicts (a failed request is wrong)."""
    row = {
        "id": rec.id,
        "dataset": rec.dataset,
        "data_topic": rec.data_topic,
        "question": rec.question,
        "prompt": prompt,
        "completion": completion or "",
        "gold": rec.answer,
    }
    row.update(judge(completion, rec.answer))
    if error is not None:
        row["paper_correct"] = row["strict_correct"] = False
    row["error"] = error
    row.update(extra)
    return row


def run_eval(
    records: Sequence[Record],
    llm: Any,
    cfg: EvalConfig,
    out_path: str | Path,
    *,
    retry_errors: bool = True,
    desc: str = "eval",
) -> list[dict]:
    """Ask ``llm`` every record's filled template as ONE user message (greedy, cfg.max_tokens, cfg.stop), judge each
    answer with both judges, and append rows to ``out_path`` after every chunk of ``cfg.chunk_size``.

    Resumable: ids already in ``out_path`` are skipped (those whose request failed are asked again when
    ``retry_errors``, and those another student answered, e.g. a retrained adapter, are asked again: rows record
    the model with its adapter's hash, and the newer row wins). A row made with a different prompt (another
    template) is an error: use a fresh file. A failed request (result.error set or no text) is saved with ``error``
    and scored wrong, as upstream scores an empty completion. Returns the rows of ``records``, in their order.
    """
    from mathscale_utils.llm import ChatRequest

    out_path = Path(out_path)
    _repair_torn_tail(out_path)
    done = {r["id"]: r for r in load_predictions(out_path)}
    model = getattr(llm, "model_id", None)  # the model name, + the LoRA's content hash (llm.model_id)
    prompts = {r.id: fill_template(cfg.template, r.question) for r in records}
    if len(prompts) != len(records):
        dup = [k for k, v in Counter(r.id for r in records).items() if v > 1]
        raise ValueError(f"record ids must be unique; duplicated: {dup[:5]}")
    for r in records:
        old = done.get(r.id)
        if old is not None and old.get("prompt") != prompts[r.id]:
            raise DataError(
                f"{out_path}: item {r.id!r} was evaluated with a different prompt (template {old.get('template')!r}); "
                "use a fresh predictions file for a different template"
            )
    todo = [
        r
        for r in records
        if r.id not in done or done[r.id].get("model") != model or (retry_errors and done[r.id].get("error"))
    ]
    stop = list(cfg.stop) if cfg.stop else None
    for start in range(0, len(todo), cfg.chunk_size):
        chunk = todo[start : start + cfg.chunk_size]
        reqs = [
            ChatRequest(
                messages=[{"role": "user", "content": prompts[r.id]}],
                temperature=0.0,
                max_tokens=cfg.max_tokens,
                stop=stop,
            )
            for r in chunk
        ]
        results = llm.chat_many(reqs, desc=f"{desc} {start + len(chunk)}/{len(todo)}")
        rows = []
        for rec, res in zip(chunk, results, strict=True):
            text = getattr(res, "text", None)
            err = getattr(res, "error", None)
            if err is None and text is None:
                err = "no text in the response"
            rows.append(
                prediction_row(
                    rec,
                    prompts[rec.id],
                    text if err is None else None,
                    err,
                    cached=bool(getattr(res, "cached", False)),
                    template=cfg.template,
                    model=model,
                    max_tokens=cfg.max_tokens,
                )
            )
        append_jsonl(out_path, rows)
        for row in rows:
            done[row["id"]] = row
    return [done[r.id] for r in records]


def rejudge(rows: Iterable[dict], golds: dict[str, str] | None = None) -> list[dict]:
    """Recompute both verdicts of saved rows from their completions (after a judge change); request errors stay wrong."""
    out = []
    for row in rows:
        new = dict(row)
        gold = (golds or {}).get(row["id"], row["gold"])
        new.update(judge(row.get("completion") if not row.get("error") else None, gold))
        if row.get("error"):
            new["paper_correct"] = new["strict_correct"] = False
        new["gold"] = gold
        out.append(new)
    return out


# ================================================================================================================
# metrics (METHOD.md §8.7)

_SUBSET_DATASETS = ("MATH", "college_math")


def _pct(correct: float, n: int) -> float | None:
    return 100.0 * correct / n if n else None


def compute_metrics(
    predictions: Iterable[dict],
    availability_rows: Sequence[dict] | None = None,
    cap: int | None = None,
) -> dict[str, Any]:
    """Accuracies (percent) for both judges: per task, per dataset, micro and macro; counts; data status.

    * per task (data_topic): mean verdict over its items; with ``cap``, only its first ``cap`` rows count (the
      driver's per-task cap, normally applied at selection already);
    * MATH and college_math: the size-weighted mean of their subjects (= pooled accuracy);
    * micro: item-weighted mean over the evaluated datasets among the ten (= pooled accuracy over them);
    * macro: unweighted mean over the evaluated datasets among the ten only. ``macro_upstream`` reproduces the
      driver's quirk of always adding MATH and college_math entries (accuracy 0, size 0) even when they were not
      evaluated, which lowers the macro average of a run without them (micro is unaffected);
    * Fresh-GaokaoMath-2023 is scored apart (``fresh_gaokao_math_2023``), never in micro/macro, as in the paper.

    Rows are deduplicated by id (the last wins). Request errors and reference errors are counted (they are judged
    wrong). ``availability_rows`` (from data.availability) adds which datasets are missing / approximate.
    """
    rows: dict[str, dict] = {}
    for r in predictions:
        rows[r["id"]] = r
    items = list(rows.values())
    if cap is not None and cap >= 0:
        seen: Counter[str] = Counter()
        kept = []
        for r in items:
            seen[r["data_topic"]] += 1
            if seen[r["data_topic"]] <= cap:
                kept.append(r)
        items = kept
    main = [r for r in items if r["dataset"] in MWPBENCH_DATASETS]
    fresh = [r for r in items if r["dataset"] == FRESH_GAOKAO]
    out: dict[str, Any] = {
        "n_items": len(main),
        "n_errors": sum(1 for r in main if r.get("error")),
        "n_reference_errors": sum(1 for r in main if r.get("reference_error")),
        "reference_error_ids": [r["id"] for r in main if r.get("reference_error")],
        "n_strict_errors": sum(1 for r in main if r.get("strict_error")),
        "n_disagreements": sum(
            1 for r in main if bool(r.get("paper_correct")) != bool(r.get("strict_correct"))
        ),
    }
    evaluated = [d for d in MWPBENCH_DATASETS if any(r["dataset"] == d for r in main)]
    for j in JUDGES:
        key = f"{j}_correct"
        tasks: dict[str, dict] = {}
        by_task: dict[str, list[dict]] = defaultdict(list)
        for r in main:
            by_task[r["data_topic"]].append(r)
        for t, rs in by_task.items():
            c = sum(1 for r in rs if r.get(key))
            tasks[t] = {
                "dataset": rs[0]["dataset"],
                "n": len(rs),
                "correct": c,
                "accuracy": _pct(c, len(rs)),
                "errors": sum(1 for r in rs if r.get("error")),
                "reference_errors": sum(1 for r in rs if r.get("reference_error")),
            }
        datasets: dict[str, dict] = {}
        for d in evaluated:
            sub = {t: m for t, m in tasks.items() if m["dataset"] == d}
            n = sum(m["n"] for m in sub.values())
            # size-weighted mean of the subjects' accuracies (equal to the pooled accuracy)
            acc = sum(m["accuracy"] * m["n"] for m in sub.values()) / n if n else None
            datasets[d] = {"n": n, "correct": sum(m["correct"] for m in sub.values()), "accuracy": acc}
            if d in _SUBSET_DATASETS:
                datasets[d]["subsets"] = {t: sub[t] for t in sorted(sub)}
        n_all = sum(m["n"] for m in datasets.values())
        micro = sum(m["accuracy"] * m["n"] for m in datasets.values()) / n_all if n_all else None
        accs = [m["accuracy"] for m in datasets.values()]
        macro = sum(accs) / len(accs) if accs else None
        quirk_extra = [d for d in _SUBSET_DATASETS if d not in datasets]
        macro_up = sum(accs) / (len(accs) + len(quirk_extra)) if accs or quirk_extra else None
        fc = sum(1 for r in fresh if r.get(key))
        out[j] = {
            "tasks": {t: tasks[t] for t in sorted(tasks)},
            "datasets": datasets,
            "micro": micro,
            "macro": macro,
            "macro_upstream": macro_up,
            "n_datasets": len(datasets),
            "fresh_gaokao_math_2023": {"n": len(fresh), "correct": fc, "accuracy": _pct(fc, len(fresh))},
        }
    out["datasets_evaluated"] = evaluated
    out["datasets_not_evaluated"] = [d for d in MWPBENCH_DATASETS if d not in evaluated]
    if availability_rows is not None:
        st = {row["dataset"]: row["status"] for row in availability_rows}
        out["datasets_missing"] = [d for d in MWPBENCH_DATASETS if st.get(d) == "missing"]
        out["datasets_approximate"] = [d for d in evaluated if st.get(d) == "approximate"]
        out["datasets_exact"] = [d for d in evaluated if st.get(d) == "exact"]
    return out


# ================================================================================================================
# looking at the answers


def disagreements(rows: Iterable[dict]) -> list[dict]:
    """Items where the paper judge and the strict judge disagree, with what each extracted."""
    keys = (
        "dataset",
        "id",
        "gold",
        "extracted",
        "paper_correct",
        "paper_rule",
        "strict_extracted",
        "strict_correct",
    )
    return [
        {k: r.get(k) for k in keys}
        for r in rows
        if bool(r.get("paper_correct")) != bool(r.get("strict_correct"))
    ]


_CHOICE_GOLD = re.compile(r"^\s*\(?\s*(?:\\text(?:bf)?\{\s*\(?)?[A-E]\)?\s*\}?\s*\)?\s*$")
_STRICT_RULE_KINDS = {
    "choice": "choice letter in another form",
    "structure": "matrix / vector / tuple / interval in another bracket style",
    "restated": "answer restated in another form",
    "parts": "list of values (order, 'and' / 'or', extra or missing value)",
    "text": "textual answer",
    "symbolic": "expression of equal value",
    "exact": "same answer after normalisation (LaTeX forms, spacing, wrappers)",
    "long_form": "long answer over several sentences",
}


def disagreement_kind(row: dict) -> str:
    """Why the two judges disagree on one predictions row, in a few words (the first rule that applies).

    Rows where only the paper judge says correct are named after the paper rule that accepted them (a substring
    match, the last number, the text after "is"); rows where only the strict judge does, after what the strict
    judge read (a declared answer followed by other numbers, a number in words, units, an option letter, ...).
    """
    extracted = str(row.get("strict_extracted") or "")
    if row.get("paper_correct") and not row.get("strict_correct"):
        if row.get("paper_rule") in ("inline_math", "pred_in_ref", "ref_in_pred"):
            return "paper only: substring match"
        if row.get("strict_method") in ("error", "no_answer"):
            return f"paper only: strict judge {row.get('strict_method')}"
        if row.get("paper_method") == "last_number" and row.get("strict_source") == "declared":
            return "paper only: last number, not the declared answer"
        if row.get("paper_method") == "last_is":
            return "paper only: text after the last 'is'"
        return "paper only: other"
    method = row.get("strict_method")
    if _CHOICE_GOLD.match(str(row.get("gold") or "")):
        return "strict only: choice letter in another form"
    if method in ("structure", "text", "restated", "parts", "long_form"):
        return f"strict only: {_STRICT_RULE_KINDS[method]}"
    if method == "numeric":
        plain = re.sub(r"\\[a-zA-Z]+", " ", extracted)  # "\\frac" is not a unit
        for pattern, kind in _NUMERIC_KINDS:
            if re.search(pattern, extracted if kind in ("thousands separator", "money") else plain):
                return f"strict only: {kind}"
    paper_read = normalise(str(row.get("extracted") or ""))
    completion = str(row.get("completion") or "")
    after = completion[completion.rfind(extracted) + len(extracted) :] if extracted in completion else ""
    if (
        row.get("strict_source") == "declared"
        and paper_read != normalise(extracted)
        and re.search(r"\w{2}", after)
    ):
        return "strict only: declared answer, then more text"
    if method == "numeric":
        return "strict only: fraction / decimal / other number form"
    if method in _STRICT_RULE_KINDS:
        return f"strict only: {_STRICT_RULE_KINDS[method]}"
    return "strict only: other"


_NUMERIC_KINDS = (  # what the strict judge read, when it read one number
    (r"(?i)\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fifteen|twenty|thirty"
     r"|forty|fifty|sixty|seventy|eighty|ninety|hundred)\b", "number in words"),
    (r"\d(?:,|\{,\}|\\,|\\!)+\d{3}", "thousands separator"),
    (r"%|percent", "percent"),
    (r"\$|dollar", "money"),
    (r"(?i)[a-z]{2,}", "units or words with the number"),
)  # fmt: skip


def disagreement_kinds(rows: Iterable[dict]) -> list[dict]:
    """The items where the judges disagree, each with its ``kind`` (``disagreement_kind``) and what each judge
    read; plain dicts, sorted by kind then id (for a table in notebook 05)."""
    out = []
    for r in rows:
        if bool(r.get("paper_correct")) == bool(r.get("strict_correct")):
            continue
        out.append(
            {
                "kind": disagreement_kind(r),
                "correct_by": "paper" if r.get("paper_correct") else "strict",
                "dataset": r.get("dataset"),
                "id": r.get("id"),
                "gold": r.get("gold"),
                "paper_extracted": r.get("extracted"),
                "paper_rule": r.get("paper_rule"),
                "strict_extracted": r.get("strict_extracted"),
                "strict_method": r.get("strict_method"),
            }
        )
    return sorted(out, key=lambda d: (d["kind"], str(d["id"])))


def disagreement_summary(rows: Iterable[dict]) -> list[dict]:
    """``disagreement_kinds`` grouped: one dict per kind with its count, the datasets and up to three example ids,
    largest kind first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for d in disagreement_kinds(rows):
        groups[d["kind"]].append(d)
    summary = [
        {
            "kind": kind,
            "n": len(ds),
            "correct_by": ds[0]["correct_by"],
            "datasets": dict(Counter(str(d["dataset"]) for d in ds)),
            "examples": [d["id"] for d in ds[:3]],
        }
        for kind, ds in groups.items()
    ]
    return sorted(summary, key=lambda g: (-g["n"], g["kind"]))


def error_examples(
    rows: Iterable[dict], per_dataset: int = 2, judge_name: str = "paper", tail_chars: int = 300
) -> dict[str, list[dict]]:
    """Up to ``per_dataset`` wrong answers per dataset (first in file order), with the completion's end."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get(f"{judge_name}_correct") or len(out[r["dataset"]]) >= per_dataset:
            continue
        out[r["dataset"]].append(
            {
                "id": r["id"],
                "question": r.get("question", "")[:300],
                "gold": r["gold"],
                "extracted": r.get("extracted"),
                "error": r.get("error"),
                "completion_end": (r.get("completion") or "")[-tail_chars:],
            }
        )
    return dict(out)


def write_fresh_gaokao_check(rows: Iterable[dict], path: str | Path, records: Sequence[Record] = ()) -> Path:
    """An HTML page to check Fresh-GaokaoMath-2023 answers by eye (the MWPBench README asks for a manual check).

    One row per question: question, gold, both judges' extraction and verdict, the end of the completion, and a
    checkbox. ``records`` (the 30 questions) fills rows without a completion, so the page is useful before a run.
    """
    by_id = {r["id"]: r for r in rows if r.get("dataset") == FRESH_GAOKAO}
    items = [(rec.id, rec.question, rec.answer) for rec in records] or [
        (i, r["question"], r["gold"]) for i, r in by_id.items()
    ]
    esc = html.escape
    body = []
    for n, (rid, q, gold) in enumerate(items, start=1):
        r = by_id.get(rid, {})
        tail = (r.get("completion") or "")[-600:]

        def verdict(key: str, r: dict = r) -> str:
            return "" if not r else ("&#10003;" if r.get(key) else "&#10007;")

        body.append(
            "<tr>"
            f"<td>{n}</td><td>{esc(q)}</td><td><code>{esc(gold)}</code></td>"
            f"<td><code>{esc(str(r.get('extracted') or ''))}</code> {verdict('paper_correct')}</td>"
            f"<td><code>{esc(str(r.get('strict_extracted') or ''))}</code> {verdict('strict_correct')}</td>"
            f"<td><pre>{esc(tail) if r else '<i>not evaluated</i>'}</pre></td>"
            "<td><input type='checkbox'></td></tr>"
        )
    n_eval = sum(1 for rid, _, _ in items if rid in by_id)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Fresh-GaokaoMath-2023 check</title><style>"
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:4px;vertical-align:top}pre{white-space:pre-wrap;max-width:40em;margin:0}</style></head><body>"
        "<h3>Fresh-GaokaoMath-2023: check the answers by eye</h3>"
        f"<p>{n_eval} of {len(items)} questions evaluated. Columns: the gold answer, what each judge extracted and its "
        "verdict (&#10003; / &#10007;), the end of the completion, and a box to tick when you judge it correct.</p>"
        "<table><tr><th>#</th><th>question</th><th>gold</th><th>paper judge</th><th>strict judge</th>"
        "<th>completion (end)</th><th>correct?</th></tr>" + "".join(body) + "</table></body></html>"
    )
    return write_text(path, page)
