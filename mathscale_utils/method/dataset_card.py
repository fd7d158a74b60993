"""What stage 03 writes about MathScaleQA (paper §4.1): mathscaleqa.jsonl, its Hugging Face copy, the lists of
removed questions, generate_summary.json and dataset_card.md. Statistics for the notebook are in dataset_stats.py."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mathscale_utils.core.artifacts import RunDir, stage
from mathscale_utils.core.io import DataError, iter_jsonl, read_json, write_json, write_jsonl, write_text
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.method.filters import Assembly, funnel_adds_up
from mathscale_utils.method.reply_format import PROMPT, RETRY, template_hash

# ----------------------------------------------------------------------------------------------------------------
# Export: jsonl, HF copy, summary, dataset card
# ----------------------------------------------------------------------------------------------------------------


def _features():
    """The schema of mathscaleqa.jsonl rows for the Hugging Face copy (given, not inferred from a first block)."""
    from datasets import Features, Sequence, Value

    text = Value("string")
    return Features(
        {
            "id": text,
            "question": text,
            "solution": text,
            "answer": text,
            "topics": Sequence(text),
            "knowledge_points": Sequence(text),
            "composition_id": text,
            "teacher_model": text,
            "prompt_hash": text,
            "source": text,
            "check_agrees": Value("bool"),
        }
    )


def export_hf(rows: Iterable[dict], path: str | Path) -> Path:
    """Save a Hugging Face datasets copy (``datasets.load_from_disk(path)``), replacing any previous one. The rows
    are streamed into an Arrow file a block at a time (never held as a list), which datasets then saves."""
    import tempfile

    import datasets
    import pyarrow as pa

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    schema = _features().arrow_schema
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".hf-build-") as build:
        arrow = Path(build) / "rows.arrow"
        with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            it = iter(rows)
            while block := list(itertools.islice(it, 10_000)):
                writer.write_table(pa.Table.from_pylist(block, schema=schema))
        ds = datasets.Dataset.from_file(str(arrow))  # memory-mapped
        ds.save_to_disk(str(tmp))
        del ds
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


STAGE = stage("03").label


def _usage_total(run_dir: Path) -> dict:
    f = RunDir(run_dir).usage_file(STAGE)
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
    gen = asm.n_generated
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
    rng = random.Random(seed)  # sample() draws positions from the count alone: the same rows as from a list
    picks = rng.sample(range(asm.n_generated), min(cfg.card_examples, asm.n_generated))
    examples = [asm.rows[i] for i in picks]
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
        f" (backend: {llm_cfg.backend}); temperature {cfg.temperature}, max tokens {cfg.max_tokens}",
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
            out += [
                "",
                _md_table(
                    ["removed id", "kind", "test item", "shared text"],
                    [(h["id"], h["kind"], h["test_id"], h["ngram"][:80]) for h in asm.decontamination[:20]],
                ),
            ]
        out.append("")
    if cfg.dedup:
        out += [
            f"Near-duplicates (MinHash LSH, {cfg.num_perm} permutations, {cfg.dedup_shingle}-word shingles, "
            f"Jaccard >= {cfg.dedup_threshold}): removed {len(asm.duplicates)}.",
            "",
        ]
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


def sample_jsonl(path: str | Path, k: int, seed: int = 0) -> tuple[int, list[dict]]:
    """(rows in the file, a uniform random sample of k of them in file order), in one pass holding only the sample
    (reservoir sampling): what a notebook shows of a 2M-row file."""
    rng = random.Random(seed)
    keep: list[tuple[int, dict]] = []
    n = 0
    for _, r in iter_jsonl(path):
        if len(keep) < k:
            keep.append((n, r))
        elif (j := rng.randrange(n + 1)) < k:
            keep[j] = (n, r)
        n += 1
    return n, [r for _, r in sorted(keep, key=lambda x: x[0])]


def batch_summary(run_dir: str | Path) -> dict:
    """{"batch": {usage, jobs}} from batches/state.json when the Batch API was used, else {}."""
    path = RunDir(run_dir).batches / STAGE / "state.json"
    if not path.exists():
        return {}
    st = read_json(path)
    jobs = [
        {k: j.get(k) for k in ("id", "batch_id", "status", "n", "round", "succeeded", "failed")}
        for j in st.get("jobs", [])
    ]
    return {"batch": {"usage": st.get("usage"), "jobs": jobs}}


def export(
    run_dir: str | Path,
    asm: Assembly,
    cfg: GenerateConfig,
    llm_cfg: LLMConfig,
    seeds: Sequence[dict],
    seed: int,
    estimate: dict | None = None,
    usage: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write mathscaleqa.jsonl, the HF copy, the hit lists, generate_summary.json and dataset_card.md."""
    run = RunDir(run_dir)
    write_jsonl(run.mathscaleqa, asm.rows)
    write_jsonl(run.decontamination, asm.decontamination)
    write_jsonl(run.duplicates, asm.duplicates)
    if cfg.export_hf:
        export_hf(asm.rows, run.mathscaleqa_hf)
    summary = build_summary(asm, cfg, estimate, usage, run.root, extra)
    write_json(run.generate_summary, summary)
    write_text(run.dataset_card, dataset_card(asm, summary, cfg, llm_cfg, seeds, seed))
    return summary


__all__ = [
    "export",
    "export_hf",
    "build_summary",
    "batch_summary",
    "dataset_card",
    "sample_jsonl",
]
