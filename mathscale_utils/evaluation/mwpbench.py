"""The MWPBench evaluation run (MathScale §4.2, METHOD.md §8): items, inference, metrics and error analysis.
The prompt templates and both judges are in ``judges.py``; the paper's reported numbers in ``paper_tables.py``.

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

Evaluation in one picture::

    records (data.load_mwpbench) -> cap_per_task (first 2000 per data_topic, file order) -> stratified_subset
      -> fill_template("alpaca", question) -> ONE user message, greedy, paper stop strings, max_tokens
      -> completion -> paper_judge (the number the paper reports) + strict_judge (math-verify), side by side,
         + degenerate-answer flags (degenerate.py: loop, hit max_tokens, no final answer)
      -> predictions.jsonl (appended per chunk; a killed run resumes) -> compute_metrics -> metrics.json

predictions.jsonl rows (one per item; on resume a re-tried item appends a newer row, the last row of an id wins)::

    {"id", "dataset", "data_topic", "question", "prompt", "completion" (str; "" when the request failed),
     "gold" (the reference answer), "extracted" (the paper judge's candidate or null), "paper_correct" (bool),
     "paper_method" (boxed | last_number | answer_phrase | last_is | none | reference_error),
     "paper_rule" (numeric | inline_math | pred_in_ref | ref_in_pred | exact | raw_fallback | missing | ...),
     "clean_prediction", "clean_reference", "reference_error" (str|null), "strict_correct" (bool),
     "strict_extracted", "strict_method" (exact | choice | restated | parts | structure | numeric | text | symbolic |
     long_form | no_answer | none | error), "strict_source" (declared | last), "strict_error", "error" (request error
     or null), "finish_reason" ("stop" | "length" | null), "loop", "length", "no_answer" (bool flags),
     "cached" (bool), "template", "model" (the identity: name, + "+lora:<hash>" with an adapter), "max_tokens",
     "request" (chat | completion), "request_key" (hash of everything that shapes the request: resume key)}

metrics.json (``compute_metrics``): accuracies in percent, per judge ("paper", "strict"): per task (data_topic),
per dataset (MATH and college_math as size-weighted means of their subjects), micro (item-weighted over the
evaluated datasets) and macro (unweighted mean over the evaluated datasets), plus item and error counts, the
degenerate-answer counts per dataset, the Fresh-GaokaoMath-2023 score kept apart, and which datasets are missing or
approximate. Stage 05 adds "baseline" (the untrained base student on the same items: baseline.py) and "served"
(what answered, checked: training/served.py).

Driver behaviours not reproduced: ``--target_tasks`` kept a task when its name was a *substring* of the option
string (``EvalConfig.datasets`` matches names exactly); the driver's exception handler skipped a whole task on any
error (see ``judges.paper_judge``); prompts went out in batches of 60 to vLLM (here: chunks through the project's
LLM client).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mathscale_utils.core.artifacts import Record, RunDir
from mathscale_utils.core.io import append_jsonl, read_jsonl, write_json, write_jsonl
from mathscale_utils.core.params import resolve_path
from mathscale_utils.core.student_config import EvalConfig
from mathscale_utils.core.templates import fill_template
from mathscale_utils.data.benchmarks import (
    FRESH_GAOKAO,
    MWPBENCH_DATASETS,
    availability,
    load_mwpbench,
    read_fresh_gaokao,
)
from mathscale_utils.evaluation import degenerate
from mathscale_utils.grading.judges import JUDGES, judge
from mathscale_utils.inference.chat import ChatRequest


def _largest_remainder(sizes: dict[str, int], n: int) -> dict[str, int]:
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    quotas = {g: n * s / total for g, s in sizes.items()}
    alloc = {g: min(sizes[g], math.floor(q)) for g, q in quotas.items()}
    left = n - sum(alloc.values())
    for g in sorted(sizes, key=lambda g: (-(quotas[g] - math.floor(quotas[g])), g)):
        if left <= 0:
            break
        if alloc[g] < sizes[g]:
            alloc[g] += 1
            left -= 1
    return alloc


def stratified_subset(
    records: Sequence[Record], n_per_dataset: int | None, seed: int, by: str = "data_topic"
) -> list[Record]:
    """A seeded, reproducible subset: ``n_per_dataset`` records per dataset, spread over ``by`` groups in
    proportion to their sizes (largest-remainder rounding), sampled uniformly within each group.

    ``None`` (or more than available) keeps everything. Selected records keep their original order, so a
    per-task cap "in file order" applied before sub-setting still means the same items. Same inputs + same seed ->
    same subset, independent of PYTHONHASHSEED.
    """
    if n_per_dataset is None:
        return list(records)
    if n_per_dataset < 0:
        raise ValueError("n_per_dataset must be >= 0 or None")
    by_ds: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(records):
        key = getattr(r, by) if by in ("data_topic", "dataset") else r.meta.get(by, "")
        by_ds[r.dataset][str(key)].append(i)
    chosen: list[int] = []
    for ds, groups in by_ds.items():
        alloc = _largest_remainder({g: len(ix) for g, ix in groups.items()}, n_per_dataset)
        for g, ix in sorted(groups.items()):
            rng = random.Random(f"{seed}|{ds}|{g}")
            chosen += rng.sample(ix, alloc[g]) if alloc[g] < len(ix) else ix
    return [records[i] for i in sorted(chosen)]


def cap_per_task(records: Sequence[Record], cap: int | None) -> list[Record]:
    """The driver's per-task cap: the first ``cap`` records of each data_topic, in file order (None/-1: no cap)."""
    if cap is None or cap < 0:
        return list(records)
    seen: Counter[str] = Counter()
    out = []
    for r in records:
        seen[r.data_topic] += 1
        if seen[r.data_topic] <= cap:
            out.append(r)
    return out


def select_records(
    cfg: EvalConfig, data_dir: str | Path | None, seed: int, official: str | Path | None = None
) -> tuple[list[Record], list[str]]:
    """The items to evaluate: available datasets (cfg.datasets or all), the per-task cap in file order, then the
    stratified subset; Fresh-Gaokao (all 30, never capped or sub-sampled) appended when asked. ``official``: the
    official full_test.json (params ``mwpbench_test_file``), which makes every dataset exact. Returns warnings for
    datasets asked for but missing."""
    official = resolve_path(official) if official else None
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
    rec: Record,
    prompt: str,
    completion: str | None,
    error: str | None,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One predictions.jsonl row: the item, the completion, both judges' verdicts (a failed request is wrong), how
    the answer ended (finish_reason) and its degenerate-answer flags (``degenerate.flags``)."""
    row = {
        "id": rec.id,
        "dataset": rec.dataset,
        "data_topic": rec.data_topic,
        "question": rec.question,
        "prompt": prompt,
        "completion": completion or "",
        "gold": rec.answer,
    }
    row.update(judge(completion, rec.answer, question=rec.question))  # the strict judge reads what was asked
    if error is not None:
        row["paper_correct"] = row["strict_correct"] = False
    row["error"] = error
    row["finish_reason"] = finish_reason
    row.update(degenerate.flags(completion, finish_reason, error))
    row.update(extra)
    return row


def eval_request(prompt: str, cfg: EvalConfig, kind: str = "chat") -> ChatRequest:
    """The request for one item: the filled template as ONE user message (kind "chat") or as the bare prompt of a
    text completion (kind "completion"), greedy, cfg.max_tokens, cfg.stop."""
    stop = list(cfg.stop) if cfg.stop else None
    if kind == "completion":
        return ChatRequest(prompt=prompt, temperature=0.0, max_tokens=cfg.max_tokens, stop=stop)
    if kind != "chat":
        raise ValueError(f"request kind must be 'chat' or 'completion', not {kind!r}")
    messages = [{"role": "user", "content": prompt}]
    return ChatRequest(messages=messages, temperature=0.0, max_tokens=cfg.max_tokens, stop=stop)


def run_eval(
    records: Sequence[Record],
    llm: Any,
    cfg: EvalConfig,
    out_path: str | Path,
    *,
    retry_errors: bool = True,
    desc: str = "eval",
    kind: str = "chat",
) -> list[dict]:
    """Ask ``llm`` every record's ``eval_request`` (kind "chat": one user message; "completion": the bare prompt,
    for base models, which have no chat template); judge each answer with both judges, and append rows to
    ``out_path`` after every chunk of ``cfg.chunk_size``.

    Resumable, keyed by the request: each row keeps ``request_key``, the hash of everything that shapes the answer
    (the model's identity, with its adapter's hash; the prompt, hence the template; chat or completion; max_tokens;
    the stop strings; greedy decoding), and an item is asked again unless its last row has the key of the request
    it would be sent now (and, with ``retry_errors``, no request error). So a changed setting or another student
    re-asks, and its newer row wins. A failed request (result.error set or no text) is saved with ``error`` and
    scored wrong, as upstream scores an empty completion. Returns the rows of ``records``, in their order.
    """
    out_path = Path(out_path)
    _repair_torn_tail(out_path)
    done = {r["id"]: r for r in load_predictions(out_path)}
    model = getattr(llm, "model_id", None)  # the model name, + the LoRA's content hash (llm.model_id)
    prompts = {r.id: fill_template(cfg.template, r.question) for r in records}
    if len(prompts) != len(records):
        dup = [k for k, v in Counter(r.id for r in records).items() if v > 1]
        raise ValueError(f"record ids must be unique; duplicated: {dup[:5]}")
    requests = {r.id: eval_request(prompts[r.id], cfg, kind) for r in records}
    keys = {i: req.key(model) for i, req in requests.items()}
    todo = [
        r
        for r in records
        if r.id not in done
        or done[r.id].get("request_key") != keys[r.id]
        or (retry_errors and done[r.id].get("error"))
    ]
    for start in range(0, len(todo), cfg.chunk_size):
        chunk = todo[start : start + cfg.chunk_size]
        results = llm.chat_many(
            [requests[r.id] for r in chunk], desc=f"{desc} {start + len(chunk)}/{len(todo)}"
        )
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
                    getattr(res, "finish_reason", None) if err is None else None,
                    cached=bool(getattr(res, "cached", False)),
                    template=cfg.template,
                    model=model,
                    max_tokens=cfg.max_tokens,
                    request=kind,
                    request_key=keys[rec.id],
                )
            )
        append_jsonl(out_path, rows)
        for row in rows:
            done[row["id"]] = row
    return [done[r.id] for r in records]


def rejudge(rows: Iterable[dict], golds: dict[str, str] | None = None) -> list[dict]:
    """Recompute both verdicts and the degenerate-answer flags of saved rows from their completions (after a judge
    change); request errors stay wrong."""
    out = []
    for row in rows:
        new = dict(row)
        gold = (golds or {}).get(row["id"], row["gold"])
        completion = row.get("completion") if not row.get("error") else None
        new.update(judge(completion, gold, question=row.get("question")))
        new.update(degenerate.flags(completion, row.get("finish_reason"), row.get("error")))
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
    wrong); ``degenerate`` counts the answers that loop, hit max_tokens or declare no final answer, per dataset
    (``degenerate.count_flags``). ``availability_rows`` (from data.availability) adds which datasets are missing / approximate.
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
    out["degenerate"] = degenerate.count_flags(main)
    out["datasets_evaluated"] = evaluated
    out["datasets_not_evaluated"] = [d for d in MWPBENCH_DATASETS if d not in evaluated]
    if availability_rows is not None:
        st = {row["dataset"]: row["status"] for row in availability_rows}
        out["datasets_missing"] = [d for d in MWPBENCH_DATASETS if st.get(d) == "missing"]
        out["datasets_approximate"] = [d for d in evaluated if st.get(d) == "approximate"]
        out["datasets_exact"] = [d for d in evaluated if st.get(d) == "exact"]
    return out


def write_metrics(
    run_dir: str | Path,
    metrics: dict[str, Any],
    cfg: EvalConfig,
    model: str | None,
    adapter: str | None = None,
    why: str = "",
    warnings: Sequence[str] = (),
    usage: dict | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write metrics.json (stage 05's summary, which stage 06 reads): the settings, the student that answered (model,
    adapter, why that one), warnings, LLM usage and anything else the stage records, then :func:`compute_metrics`."""
    out = {
        "config": cfg.model_dump(),
        "model": model,
        "adapter": adapter,
        "why": why,
        "warnings": list(warnings),
        **extra,
        "llm": usage or {},
        **metrics,
    }
    write_json(RunDir(run_dir).metrics, out)
    return out
