"""The six stages of MathScale, each a function ``run(P) -> summary`` that does the stage's work and writes its files.

    from mathscale_utils.runs import stages
    from mathscale_utils.core.params import load_params
    P = load_params("params/smoke.yaml")
    stages.run(P, "01")                  # or stages.extract(P): the same function the notebook and the chain call

The chain executes each stage's notebook with papermill, and the notebook calls its function here in one cell, then
shows what it wrote; ``python -m mathscale_utils.runs.chain PARAMS --engine python`` calls the functions directly. Either
way the same code runs and the same files come out: ``artifacts.STAGES`` names each stage's notebook, outputs and
the summary it writes last, which is also what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from mathscale_utils.core.artifacts import stage
from mathscale_utils.core.io import DataError, read_json, read_jsonl, write_json, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.params import Params, resolve_path
from mathscale_utils.data.benchmarks import availability, read_fresh_gaokao
from mathscale_utils.data.seeds import load_seeds
from mathscale_utils.evaluation import answer_review, baseline, mwpbench, paper_tables
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import compose, concepts, dataset_card, filters
from mathscale_utils.method import generate as gen
from mathscale_utils.method import graph as cg
from mathscale_utils.reporting import dataset_stats, views
from mathscale_utils.reporting import scaling as sc
from mathscale_utils.training import finetune as ft
from mathscale_utils.training import served
from mathscale_utils.training.serve import (
    can_convert,
    compare,
    convert_adapter_to_gguf,
    request_kind,
    serve_mode,
    serving,
    student_id,
)

Log = Callable[[str], None]


class StageError(RuntimeError):
    """The stage's work failed (too many requests failed, or the budget stopped it); what it finished is saved."""


def requests_counts(errors: Iterable[str | None]) -> dict[str, int]:
    """Items of a stage by the fate of their request: answered, failed, or never sent because of llm.budget_usd."""
    errors = list(errors)
    budget = sum(1 for e in errors if e and "budget" in e)
    failed = sum(1 for e in errors if e) - budget
    return {"ok": len(errors) - failed - budget, "failed": failed, "budget_stopped": budget}


def check_requests(P: Params, sid: str, counts: dict[str, int], example: str | None, log: Log) -> None:
    """Say the stage's counts; fail it when failures pass llm.allowed_failures, saying why and how to resume."""
    total, bad = sum(counts.values()), counts["failed"] + counts["budget_stopped"]
    log(
        f"requests: {counts['ok']} ok, {counts['failed']} failed, {counts['budget_stopped']} stopped by budget"
    )
    if not bad or bad <= P.llm.allowed_failures * total:
        return
    why = [
        f"{counts['failed']} of {total} request(s) failed" if counts["failed"] else "",
        f"{counts['budget_stopped']} were not sent: llm.budget_usd ({P.llm.budget_usd}) is spent"
        if counts["budget_stopped"]
        else "",
    ]
    raise StageError(
        f"stage {sid}: {'; '.join(w for w in why if w)} (first error: {example}). Answers received are cached and "
        f"the files written so far are kept: fix the cause, then run the stage again "
        f"(python -m mathscale_utils.runs.chain {P.source_file or 'PARAMS'} --only {sid}); only the missing requests "
        "are sent. To accept some failures, set llm.allowed_failures (a share, e.g. 0.05)."
    )


COMPARED_MODELS = ["MathScale-7B", "MetaMath-7B", "LLaMA-2 7B base", "Mistral 7B base", "MathScale-Mistral"]


def _save(fig: Any, path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _official(P: Params):
    """The official MWPBench full_test.json (params mwpbench_test_file), for decontamination and evaluation alike."""
    return resolve_path(P.mwpbench_test_file) if P.mwpbench_test_file else None


def extract(P: Params, log: Log = print) -> dict:
    """01 (§3.1): the teacher names the topics and knowledge points of every seed question; concepts seen in fewer
    than extract.min_count seeds are dropped. Also extracts a sample of test questions, for stage 06's coverage."""
    cfg, run = P.extract, P.run
    seeds, warnings = load_seeds(cfg.seeds, P.data_dir)
    for w in warnings:
        log(f"warning: {w}")
    test = _coverage_sample(P, log)
    with LLM.for_stage(P, stage("01").label) as llm:
        extractions, test_extractions = concepts.extract_sets([seeds, test], llm, cfg)
        usage = llm.usage()
    if test:
        write_jsonl(run.test_concepts, concepts.to_rows(test_extractions, min_count=1))
    write_jsonl(run.concepts, concepts.to_rows(extractions, cfg.min_count))
    table = concepts.frequency_table(extractions, cfg.min_count)
    pd.DataFrame(table, columns=["type", "concept", "count", "kept"]).to_csv(
        run.concept_frequencies, index=False
    )
    _save(concepts.plot_top_concepts(table, cfg.min_count), run.top_concepts_png)
    errors = [e.error if e.failed else None for e in extractions + test_extractions]
    counts = requests_counts(errors)
    summary = concepts.write_summary(
        run, extractions, cfg.min_count, len(test), warnings, usage, requests=counts
    )
    log(
        f"{summary['ok']}/{summary['seeds']} seeds extracted; {summary['topics_after_filter']} topics and "
        f"{summary['knowledge_points_after_filter']} knowledge points kept"
    )
    check_requests(P, "01", counts, next((e for e in errors if e), None), log)
    return summary


def _coverage_sample(P: Params, log: Log) -> list:
    """The first extract.coverage_sample items stage 05 will score (none without the benchmark files)."""
    if not P.extract.coverage_sample:
        return []
    try:
        records, _ = mwpbench.select_records(P.evaluate, P.data_dir, P.seed, _official(P))
    except (DataError, OSError, ValueError) as e:
        log(f"coverage sample skipped: {e}")
        return []
    return records[: P.extract.coverage_sample]


def graph(P: Params, log: Log = print) -> dict:
    """02 (§3.2): the concept graph from co-occurrence, its views, and random walks that compose concept sets."""
    run = P.run
    if not run.concepts.exists():
        raise DataError(f"{run.concepts}: file not found; run stage 01 first")
    rows = read_jsonl(run.concepts)
    G = cg.build_graph(rows, P.graph)
    cg.save_graph(G, run)
    comps = compose.compose(G, P.compose, seed=P.seed)
    compose.write_compositions(comps, run)
    view_seed = P.views.seed if P.views.seed is not None else P.seed
    walk = comps.record(0) if len(comps) else None
    written = views.write_views(G, run, cg.question_index(rows), walk, P.views, view_seed)
    _save(cg.degree_distribution_figure(G), run.degree_png)
    _save(cg.topic_kp_heatmap(cg.topic_kp_matrix(G, n_topics=15, n_kps=25)), run.heatmap_png)
    summary = {**cg.graph_summary(G), "compositions": comps.stats, "views": sorted(written)}
    write_json(run.graph_summary, summary)
    if short := comps.stats["short_of_target"]:
        log(
            f"warning: the walk stopped after {P.compose.epochs} epochs, {short} short of compose.n_compositions: "
            "raise compose.epochs, or the graph has fewer distinct combinations than asked for"
        )
    counts = cg.type_counts(G)
    log(f"graph: {counts['nodes']} nodes, {counts['edges']} edges; {len(comps)} compositions")
    return summary


def generate(P: Params, log: Log = print) -> dict:
    """03 (§3.3): the teacher writes a question and solution for each composition, with the two seeds nearest in
    knowledge points as examples; look-alikes of MWPBench test questions and near-duplicates are removed."""
    cfg, run = P.generate, P.run
    t0 = time.perf_counter()
    seeds, comps = gen.load_inputs(run)
    comps = gen.select_compositions(comps, cfg)
    index = gen.FewShotIndex(seeds)
    est = gen.estimate_cost(cfg, P.llm, len(comps), gen.mean_prompt_chars(comps, index, cfg, P.seed))
    log(
        f"estimate: {est['calls']} calls, {est['prompt_tokens']:,} prompt + {est['completion_tokens']:,} "
        f"completion tokens, ${est['cost_usd']}"
    )
    with LLM.for_stage(P, stage("03").label) as llm:
        raw = gen.generate_shards(run, comps, index, llm, cfg, seed=P.seed, log=log)
        checks = filters.check_answers(raw, llm, cfg, P.seed) if cfg.answer_check else None
        usage, out_of_budget = llm.usage(), llm.ledger.budget_exhausted
    unreached = len(comps) - len(raw)  # shards not started: the budget ran out, or Batch API jobs still run
    errors = [r["reason"] if r["status"] == "error" else None for r in raw]
    errors += [c["error"] for c in (checks or {}).values()]
    counts = requests_counts(errors + ["budget exceeded" if out_of_budget else None] * unreached)
    items, notes = (
        filters.load_test_questions(P.data_dir, _official(P), cfg.decontam_datasets)
        if cfg.decontaminate
        else ([], [])
    )
    asm = filters.filter_and_assemble(
        raw, seeds, cfg, P.llm.model, items, notes, checks, log=log, n_compositions=len(comps)
    )
    _save(dataset_stats.plot_funnel(asm.funnel), run.funnel_png)
    pending = 0 if out_of_budget else unreached
    extra = {
        "seconds": round(time.perf_counter() - t0, 2),
        "requests": counts,
        "batch_pending": pending,
        **dataset_card.batch_summary(run),
    }
    summary = dataset_card.export(run, asm, cfg, P.llm, seeds, P.seed, est, usage, extra)
    for step, kept, removed in asm.funnel:
        log(f"{step:<45} kept {kept:>8}  removed {removed:>8}")
    if pending:
        raise StageError(
            f"stage 03: {pending} composition(s) wait for Batch API jobs still running at the provider "
            f"(see {run.batches}); run the stage again later to collect them"
        )
    check_requests(P, "03", counts, next((e for e in errors if e), None), log)
    return summary


def finetune(P: Params, log: Log = print, callbacks: list | None = None) -> dict:
    """04 (§4.1): LoRA (CPU) or QLoRA (GPU) on MathScaleQA; then the adapter in llama.cpp's form and the held-out
    questions answered before and after, through the embedded server, when the base is an embedded model."""
    cfg, run = P.finetune, P.run
    card = ft.train(cfg, run, callbacks=callbacks, log=log)
    log(
        f"loss {card['initial_loss']} -> {card['final_loss']} in {card['steps']} steps, {card['wall_time_s']} s"
    )
    if cfg.method != "full" and can_convert(cfg.base_model):  # a fully fine-tuned model has no adapter
        if not run.adapter_gguf.exists():  # training removes it, so one that exists belongs to this adapter
            convert_adapter_to_gguf(run.adapter, cfg.base_model)
        rows = compare(P)
        log(f"{run.adapter_gguf.name} written; {len(rows)} held-out questions answered before and after")
        errors = [e for r in rows for e in r["errors"]]
        card = {**card, "requests": requests_counts(errors + [None] * (2 * len(rows) - len(errors)))}
        write_json(run.training_card, card)
        check_requests(P, "04", card["requests"], next(iter(errors), None), log)
    else:
        log(
            "no llama.cpp form of the adapter (needs an embedded base and `python -m mathscale_utils.training.serve "
            "setup-converter`): stage 05 serves it with vLLM (evaluate.serve: auto or vllm; serve: off asks the server "
            "at evaluate.base_url, which it checks against this training)"
        )
    return card


def _answers(
    P: Params, llm_cfg: LLMConfig, label: str, records: list, path, kind: str
) -> tuple[list, dict, str]:
    """Ask one model every item (mwpbench.run_eval, resumable): its rows, its session's usage and its identity."""
    with LLM.for_stage(P, label, llm_cfg) as llm:
        rows = mwpbench.run_eval(records, llm, P.evaluate, path, kind=kind, desc=label)
        return rows, llm.usage(), llm.model_id


def evaluate(P: Params, log: Log = print) -> dict:
    """05 (§2, §4.2): the student answers MWPBench; the paper's judge and the strict judge score each answer. The
    untrained base student answers the same items with the same prompt (metrics.json: baseline), and every answer
    is flagged when it loops, hits max_tokens or declares no final answer. A server you run (serve: off) is checked
    to serve the student before anything is asked (training/served.py)."""
    cfg, run = P.evaluate, P.run
    official = _official(P)
    avail = availability(
        "test", P.data_dir, official, include_fresh=True, extra_keywords=cfg.mc_extra_keywords
    )
    records, warnings = mwpbench.select_records(cfg, P.data_dir, P.seed, official)
    for w in warnings:
        log(f"warning: {w}")
    student = student_id(P) if cfg.use_adapter else None  # the trained student behind the answers, if any
    kind, mode = request_kind(P, student is not None), serve_mode(P, student)
    label, base_label = stage("05").label, f"{stage('05').label}_baseline"
    base: tuple | None = None
    with serving(P) as (llm_cfg, why):
        check = (
            served.check_served(P, llm_cfg, student)
            if mode == "off"
            else {"verified": True, "how": f"started by this stage ({mode})"}
        )
        log(f"model: {llm_cfg.identity or llm_cfg.model} ({why}; {kind} requests; {check['how']})")
        rows, usage, identity = _answers(P, llm_cfg, label, records, run.predictions, kind)
        if cfg.baseline and student and (base_cfg := served.base_on_server(P, llm_cfg, mode)):
            base = _answers(P, base_cfg, base_label, records, run.baseline_predictions, kind)
    if cfg.baseline and student and base is None:
        with served.base_server(P, mode) as base_cfg:
            base = _answers(P, base_cfg, base_label, records, run.baseline_predictions, kind)
    metrics = mwpbench.compute_metrics(rows, availability_rows=avail)
    base_rows = base[0] if base else []
    counts = requests_counts(r["error"] for r in rows + base_rows)
    _save(
        paper_tables.plot_comparison(paper_tables.comparison_frame(metrics, models=COMPARED_MODELS).iloc[:4]),
        run.accuracy_png,
    )
    try:
        fresh = read_fresh_gaokao(P.data_dir)
    except DataError:
        fresh = []
    answer_review.write_fresh_gaokao_check(rows, run.fresh_gaokao_check, records=fresh)
    adapter = llm_cfg.lora_path or (str(run.adapter) if student else None)
    if base:
        diff = baseline.compare(rows, base_rows, metrics["datasets_evaluated"])
        base_block = baseline.baseline_block(base[2], mwpbench.compute_metrics(base_rows), diff, llm=base[1])
        note = f"the untrained {P.finetune.base_model} on the same items ({base[2]})"
    else:
        base_block = None
        note = "no trained student to compare" if not student else "evaluate.baseline is false"
    out = mwpbench.write_metrics(
        run,
        metrics,
        cfg,
        llm_cfg.model,
        adapter,
        why,
        warnings,
        usage,
        requests=counts,
        identity=identity,
        served=check,
        baseline=base_block,
        baseline_note=note,
    )
    flags = metrics["degenerate"]
    log(
        f"{metrics['n_items']} items: paper judge micro {metrics['paper']['micro']}, strict micro "
        f"{metrics['strict']['micro']} ({metrics['n_errors']} failed requests); degenerate answers: "
        f"{flags['loop']} loops, {flags['length']} at max_tokens, {flags['no_answer']} without a final answer"
    )
    if base_block:
        d = base_block["difference"]["paper"]["micro"]
        log(
            f"baseline {base[2]}: paper judge micro {base_block['paper']['micro']}; fine-tuned - base "
            f"{d['difference']} points ({int(baseline.LEVEL * 100)}% paired interval {d['low']} to {d['high']})"
        )
    first_error = next((r["error"] for r in rows + base_rows if r["error"]), None)
    check_requests(P, "05", counts, first_error, log)
    return out


def scaling(P: Params, log: Log = print) -> dict:
    """06 (§5): accuracy against training pairs over every run found, the Table 6 ablations, how the concept
    vocabulary grows with the seeds, how much of the test questions' concepts the data covers, and the cost."""
    run = P.run
    runs_dir = resolve_path(P.scaling.runs_dir or P.outputs_dir)
    runs = sc.collect_runs(runs_dir)
    evaluated = sc.curve_runs(runs)
    _save(sc.plot_curves(evaluated), run.scaling_png)
    curve = sc.scaling_frame(evaluated, "paper")
    ablation = sc.ablation_table(runs)
    growth = sc.concept_growth(run.concepts, seed=P.seed, min_count=P.extract.min_count)
    _save(sc.plot_growth(growth), run.concept_growth_png)
    coverage = {}
    if run.test_concepts.exists() and run.mathscaleqa.exists():
        train = [r for r in read_jsonl(run.mathscaleqa) if r.get("source") == "generated"]
        coverage = sc.concept_coverage(read_jsonl(run.test_concepts), train)
    cost = sc.cost_table(runs, target_pairs=P.scaling.target_pairs)
    cost = cost[cost["calls_03"].fillna(0) > 0] if not cost.empty else cost
    summary = {
        "runs_dir": str(runs_dir),
        "runs": runs[[c for c in sc.RUN_COLUMNS if c in runs]].to_dict(orient="records"),
        "curve": curve.to_dict(orient="records"),
        "ablation": ablation.reset_index().to_dict(orient="records") if not ablation.empty else [],
        "concept_growth": growth.to_dict(orient="records"),
        "coverage": coverage,
        "cost": cost.to_dict(orient="records") if not cost.empty else [],
    }
    write_json(run.scaling_summary, summary)
    log(f"{len(runs)} run(s) under {runs_dir}, {len(evaluated)} on the curve")
    return summary


def run(P: Params, stage_id: str, log: Log = print) -> dict:
    """Run one stage by id ("01" ... "06"); returns its summary."""
    return globals()[stage(stage_id).name](P, log=log)


def summary_of(P: Params, stage_id: str) -> dict:
    """The summary a stage wrote last (its return value), read back from the run directory."""
    return read_json(getattr(P.run, stage(stage_id).summary))
