"""What stage 03 writes about MathScaleQA (paper §4.1): mathscaleqa.jsonl, its Hugging Face copy, the lists of
removed questions, generate_summary.json and dataset_card.md. Statistics for the notebook are in dataset_stats.py."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mathscale_utils.core.artifacts import RunDir, stage
from mathscale_utils.core.io import DataError, iter_jsonl, read_json, write_json, write_jsonl, write_text
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.method.filters import AssembledRows, Assembly, funnel_adds_up
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


def verification(rows: Sequence[dict], cfg: GenerateConfig) -> dict[str, Any]:
    """How many generated pairs an answer check backs: {"generated", "verified" (the teacher re-solved the question
    and agrees), "disagree" (kept with answer_check_action flag), "unverified" (never re-solved: the check is
    off), "check"}. Seed rows are the benchmark's own and not counted."""
    gen = [r for r in rows if r.get("source") == "generated"]
    verified = sum(1 for r in gen if r.get("check_agrees") is True)
    disagree = sum(1 for r in gen if r.get("check_agrees") is False)
    return {
        "generated": len(gen),
        "verified": verified,
        "disagree": disagree,
        "unverified": len(gen) - verified - disagree,
        "check": f"on ({cfg.answer_check_action})" if cfg.answer_check else "off",
    }


def verification_line(v: dict[str, Any]) -> str:
    """One sentence for the card and notebook 03: how many pairs are verified, and how many are not."""
    if not v["generated"]:
        return "No generated pair was kept, so there is nothing to verify."
    if v["check"] == "off":
        return (
            f"**{v['unverified']} of {v['generated']} generated pairs are unverified**: the answer check "
            "(`generate.answer_check`: the teacher re-solves each question and must agree) did not run, so a "
            "solution may state a wrong answer."
        )
    return (
        f"{v['verified']} of {v['generated']} generated pairs are verified (the teacher re-solved the question and "
        f"agrees); {v['disagree']} disagree and are kept flagged; {v['unverified']} unverified."
    )


_GROUP = {True: 0, None: 1, False: 2}  # check_agrees -> the order pairs are shown in: verified first


def _pick(groups: Sequence[Sequence[int]], n: int, seed: int) -> list[int]:
    """Positions of ``n`` pairs: a seeded sample of the first group, then of the next while too few."""
    rng = random.Random(seed)
    picks: list[int] = []
    for g in groups:
        picks += rng.sample(g, min(n - len(picks), len(g)))
    return picks


def _groups(rows: Iterable[dict]) -> list[array]:
    """Positions of the generated rows by their verification (verified, unverified, disagreeing)."""
    groups = [array("q"), array("q"), array("q")]
    for i, r in enumerate(rows):
        if r.get("source") == "generated":
            groups[_GROUP[r.get("check_agrees")]].append(i)
    return groups


def pairs_to_show(rows: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` generated pairs to show, verified ones first (a seeded sample within each group), so that the first
    example a reader sees is one whose answer was checked whenever any was. Positions are sampled and only the rows
    shown are read: a stage's training set with no answer check (every pair unverified) is not read at all."""
    if isinstance(rows, AssembledRows) and rows.checks is None:  # generated rows first, all unverified
        groups: list[Sequence[int]] = [[], range(rows.n_generated), []]
    else:
        groups = _groups(rows)
    return [rows[i] for i in _pick(groups, n, seed)]


def pairs_in_file(path: str | Path, n: int, seed: int = 0) -> list[dict]:
    """pairs_to_show for a mathscaleqa.jsonl on disk, in two passes that hold only positions (a notebook at 2M rows)."""
    picks = _pick(_groups(r for _, r in iter_jsonl(path)), n, seed)
    want = {p: k for k, p in enumerate(picks)}
    got = {want[i]: r for i, (_, r) in enumerate(iter_jsonl(path)) if i in want}
    return [got[k] for k in range(len(picks))]


def check_label(row: dict) -> str:
    """A pair's verification, in words."""
    return {True: "verified: the teacher's re-solve agrees", False: "the teacher's re-solve disagrees"}.get(
        row.get("check_agrees"), "unverified: no answer check ran"
    )


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
        "verification": verification(asm.rows, cfg),
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
    examples = pairs_to_show(asm.rows, cfg.card_examples, seed)
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
    out += [verification_line(summary["verification"]), ""]
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
            f"**{r['id']}** ({check_label(r)}): topics {', '.join(r['topics'])}; knowledge points "
            f"{', '.join(r['knowledge_points'])}",
            "",
            f"> **Question.** {r['question']}".replace("\n", "\n> "),
            ">",
            f"> **Solution.** {r['solution']}".replace("\n", "\n> "),
            "",
        ]
    out += [
        "## Caveats",
        "",
        f"Solutions are the teacher's; {summary['verification']['unverified']} of "
        f"{summary['verification']['generated']} generated pairs were never re-solved (the paper's final pipeline "
        "validated none): expect arithmetic slips, especially from a small local teacher. Check the licences of the "
        "seed data and the teacher's terms of use before sharing this set.",
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
    "verification",
    "verification_line",
    "pairs_in_file",
    "pairs_to_show",
    "check_label",
    "export",
    "export_hf",
    "build_summary",
    "batch_summary",
    "dataset_card",
    "sample_jsonl",
]
