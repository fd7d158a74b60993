"""What a run will ask, pay, take and write, before it starts: ``python -m mathscale_utils.runs.chain PARAMS --plan``.

Nothing is sent and nothing is spent. For each stage: requests, prompt and completion tokens, cost live and through
the Batch API (live x batch.price_factor), wall time, disk and GPU-hours, and whether ``llm.budget_usd`` covers the
whole. Counts come from the params and the data they name (the seeds and the benchmark items are read, as the stages
would read them); sizes of replies, speeds and byte counts are the ASSUMPTIONS below, each printed with its source.
Stage 03's own estimate (``method.generate.estimate_cost``) is reused as it is, with real prompt lengths once stages
01-02 have run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathscale_utils.core.io import DataError, read_jsonl
from mathscale_utils.core.method_config import PAPER_PAIRS
from mathscale_utils.core.params import ROOT, Params, resolve_path
from mathscale_utils.core.templates import fill_template
from mathscale_utils.data.seeds import load_seeds
from mathscale_utils.evaluation.mwpbench import select_records
from mathscale_utils.inference.capabilities import capabilities_for
from mathscale_utils.inference.chat import estimate_text_tokens
from mathscale_utils.inference.weights import REGISTRY
from mathscale_utils.method import concepts
from mathscale_utils.method import generate as gen

PAPER_SEEDS = 20_857  # MWPBench train (paper §4.1), when the data cannot be read


@dataclass(frozen=True)
class Assumption:
    value: float
    what: str
    source: str


ASSUMPTIONS: dict[str, Assumption] = {
    "extract_reply_tokens": Assumption(
        70,
        "tokens per extraction reply",
        "a JSON object of 1-2 topics and 1-5 knowledge points: ~280 characters",
    ),
    "extract_retry_rate": Assumption(
        0.02,
        "extraction replies retried",
        "JSON mode; BACKENDS.md: 10/10 replies parsed even from a 1.5B model",
    ),
    "keep_rate": Assumption(
        0.9,
        "compositions that end as training pairs",
        "parse failures, decontamination, MinHash dedup; a finished stage 03's funnel gives yours",
    ),
    "template_tokens": Assumption(
        45, "Alpaca template tokens per training example", "core/templates.py, 4 chars/token"
    ),
    "eval_reply_tokens": Assumption(300, "tokens per student answer", "about a training solution's length"),
    "live_tokens_per_s": Assumption(
        60, "tokens/s one hosted request decodes", "gpt-3.5-class models; + 0.5 s each"
    ),
    "batch_window_h": Assumption(
        24,
        "hours per wave of Batch API jobs, at most",
        "OpenAI's completion window (jobs often finish sooner)",
    ),
    "embedded_extract_s": Assumption(
        3.5, "s per extraction on the embedded 1.5B", "BACKENDS.md, one at a time"
    ),
    "slot_speedup": Assumption(
        1.5, "llama-server's 4 slots vs one at a time", "bench/results/server.json: 1.3x-1.9x by stage"
    ),
    "gpu_peak_tflops": Assumption(
        312, "bf16 dense TFLOPS of one GPU", "NVIDIA A100 datasheet (H100 SXM: 989)"
    ),
    "gpu_mfu": Assumption(
        0.25,
        "share of peak reached by (Q)LoRA training",
        "assumed (4-bit dequantisation); calibrate on your GPU",
    ),
    "gpu_mfu_full": Assumption(0.4, "share of peak reached by full fine-tuning (FSDP)", "assumed; calibrate"),
    "vllm_tokens_per_s": Assumption(
        2000, "tokens/s vLLM decodes for a 7B student on one GPU", "assumed, batched decoding; measure yours"
    ),
    "cpu_lora_tokens_per_s": Assumption(
        50,
        "tokens/s of CPU LoRA on the 0.5B (17 on 1.5B, 117 on 135M)",
        "FinetuneConfig, BACKENDS.md (2 cores)",
    ),
    "cache_bytes": Assumption(
        1200, "bytes per LLM cache entry", "issue 23: 232 MiB for 200K generation replies"
    ),
    "row_bytes": Assumption(
        1100, "bytes per pair in mathscaleqa.jsonl (and its HF copy)", "question + solution"
    ),
    "shard_bytes": Assumption(1600, "bytes per row of generation/shard-*.jsonl", "a pair + its provenance"),
    "composition_bytes": Assumption(250, "bytes per line of compositions.jsonl", "2-3 topics, 1-5 KPs, ids"),
    "batch_out_bytes": Assumption(
        700, "bytes per Batch API output line besides the reply", "ids, usage, JSON"
    ),
}


def _a(name: str) -> float:
    return ASSUMPTIONS[name].value


def _cost(P: Params, prompt: float, completion: float) -> float:
    """Live price of so many tokens (llm.price_*_per_1m)."""
    return (prompt * P.llm.price_prompt_per_1m + completion * P.llm.price_completion_per_1m) / 1e6


def _model_params(name: str) -> float | None:
    """Parameters of a model from its name ("Mistral-7B-v0.1" -> 7e9, "smollm2-135m-instruct" -> 1.35e8)."""
    m = re.search(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", name.lower().split("/")[-1])
    return float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6) if m else None


def _llm_stage(
    P: Params, requests: float, prompt: float, completion: float, enqueued: float, kind: str
) -> dict:
    """Cost and wall time of one stage's teacher calls on the configured backend."""
    cfg, live = P.llm, _cost(P, prompt, completion)
    row = {
        "requests": round(requests),
        "prompt_tokens": round(prompt),
        "completion_tokens": round(completion),
        "cost_live_usd": round(live, 2),
        "cost_batch_usd": round(live * cfg.batch.price_factor, 2),
    }
    if cfg.base_url is None:  # the embedded server
        per_call = _a("embedded_extract_s") if kind == "extract" else P.generate.est_seconds_per_call
        row["wall_h"] = requests * per_call / _a("slot_speedup") / 3600
        row["wall_note"] = "embedded server"
    elif cfg.backend == "batch":
        waves = (
            max(1, math.ceil(enqueued / cfg.batch.max_enqueued_tokens))
            if cfg.batch.max_enqueued_tokens
            else 1
        )
        row["wall_h"] = waves * _a("batch_window_h")
        queue = (
            f"a {cfg.batch.max_enqueued_tokens:,}-token" if cfg.batch.max_enqueued_tokens else "an unlimited"
        )
        row["wall_note"] = f"at most: {waves} wave(s) of {queue} queue, 24 h each"
        row["enqueued_tokens"] = round(enqueued)
    else:
        per = completion / max(requests, 1) / _a("live_tokens_per_s") + 0.5
        row["wall_h"] = requests * per / cfg.concurrency / 3600
        row["wall_note"] = f"{cfg.concurrency} in flight"
    return row


def _seeds(P: Params, notes: list[str]) -> tuple[int, float, float]:
    """(seed questions stage 01 will read, their mean length in characters, the client's token estimate per
    character of their text: what the Batch API queue limit is held to)."""
    try:
        seeds, _ = load_seeds(P.extract.seeds, P.data_dir)
        text = [s.question + " " + (s.solution or s.answer or "") for s in seeds]
        ratio = sum(map(estimate_text_tokens, text)) / max(sum(map(len, text)), 1)
        return len(seeds), sum(len(s.question) for s in seeds) / max(len(seeds), 1), ratio
    except (DataError, OSError) as e:
        n = min(P.extract.seeds.limit or PAPER_SEEDS, PAPER_SEEDS)
        notes.append(f"01: seeds not readable ({e}); assumed {n} of ~300 characters")
        return n, 300.0, 1 / 3


def plan_extract(P: Params, seeds: int, chars: float, ratio: float) -> dict:
    """01: one request per seed and per coverage test question, JSON replies."""
    n = seeds + P.extract.coverage_sample
    asked = n * (1 + _a("extract_retry_rate"))
    prompt_chars = len(concepts.PROMPT) + chars
    prompt = asked * (prompt_chars / P.generate.chars_per_token + 7)
    completion = asked * min(_a("extract_reply_tokens"), P.extract.max_tokens)
    enqueued = asked * (prompt_chars * ratio + 7 + P.extract.max_tokens)
    row = _llm_stage(P, asked, prompt, completion, enqueued, "extract")
    row["disk_gb"] = (
        n * (_a("cache_bytes") / 2 + (prompt_chars + 400 if P.llm.backend == "batch" else 0)) / 1e9
    )
    return row


def _compositions(P: Params, notes: list[str]) -> int:
    sizes = [x for x in (P.compose.n_compositions, P.generate.n_questions) if x]
    if not sizes:
        notes.append("03: compose.n_compositions and generate.n_questions are null: 0 compositions planned")
    return min(sizes) if sizes else 0


def plan_generate(P: Params, n: int, ratio: float) -> dict:
    """03: stage 03's own estimate (estimate_cost), priced live; prompts measured once stages 01-02 have run."""
    cfg, run = P.generate, P.run
    chars = None
    if run.concepts.exists() and run.compositions.exists():
        comps = read_jsonl(run.compositions)[:50]
        chars = gen.mean_prompt_chars(comps, gen.FewShotIndex(read_jsonl(run.concepts)), cfg, P.seed)
    est = gen.estimate_cost(cfg, P.llm.model_copy(update={"backend": "chat"}), n, chars)
    enqueued = est["calls"] * (est["prompt_chars_per_call"] * ratio + 7 + cfg.max_tokens)
    row = _llm_stage(P, est["calls"], est["prompt_tokens"], est["completion_tokens"], enqueued, "generate")
    row["prompt_chars"] = est["prompt_chars_per_call"]
    per_call = _a("cache_bytes") + _a("shard_bytes")
    if P.llm.backend == "batch":
        per_call += est["prompt_chars_per_call"] + 400 + cfg.est_completion_tokens * 4 + _a("batch_out_bytes")
    pairs = n * _a("keep_rate")
    row["disk_gb"] = (est["calls"] * per_call + pairs * _a("row_bytes") * (2 if cfg.export_hf else 1)) / 1e9
    return row


def plan_compose(P: Params, n: int) -> dict:
    """02: the walk; no requests (bench/results/walk.json: 2M compositions in ~10 s + ~40 s of writing)."""
    return {
        "wall_h": n * 25e-6 / 3600,
        "disk_gb": n * _a("composition_bytes") / 1e9,
        "wall_note": "walk + write",
    }


def plan_finetune(P: Params, n: int, seeds: int, notes: list[str]) -> dict:
    """04: tokens trained, and their GPU-hours (6 N FLOPs a token for (Q)LoRA with checkpointing, 8 N full)."""
    f, g = P.finetune, P.generate
    examples = n * _a("keep_rate") + (seeds if g.include_seed_train else 0)
    if f.train_file and "03" not in P.stages:  # another run's training set
        path = resolve_path(f.train_file)
        if path.exists():
            with open(path, "rb") as fh:
                examples = sum(1 for _ in fh)
        else:
            examples = PAPER_PAIRS + PAPER_SEEDS
            notes.append(f"04: {path} not found: assumed the paper's {examples:,} training examples")
    examples = min(examples, f.max_examples or examples) - f.eval_holdout
    per = min(g.est_completion_tokens + _a("template_tokens"), f.max_length)
    tokens = f.max_steps * f.effective_batch * per if f.max_steps else f.epochs * examples * per
    size = _model_params(f.base_model)
    row: dict[str, Any] = {"examples": round(max(examples, 0)), "train_tokens": round(tokens)}
    gpu = f.bf16 or f.method == "qlora"
    if size is None:
        notes.append(f"04: the size of {f.base_model} is not in its name: no GPU-hours")
        return row
    if gpu:
        k = (
            8 if f.method == "full" else 6 if f.gradient_checkpointing else 4
        )  # full: FSDP's own checkpointing
        mfu = _a("gpu_mfu_full") if f.method == "full" else _a("gpu_mfu")
        rate = _a("gpu_peak_tflops") * 1e12 * mfu / (k * size)
        row["gpu_h"] = tokens / rate / 3600
        row["wall_h"] = row["gpu_h"] / f.num_processes
        row["wall_note"] = f"{f.num_processes} GPU(s), {rate:,.0f} tokens/s each"
    else:
        rate = {135e6: 117.0, 1.5e9: 17.5}.get(size, _a("cpu_lora_tokens_per_s") * 0.5e9 / size)
        row["wall_h"] = tokens / rate / 3600
        row["wall_note"] = f"CPU, {rate:,.0f} tokens/s"
    hidden_layers = (
        19 * 128 * (size / 196_608) ** (2 / 3)
    )  # LoRA on all linear layers: ~19 h L params per rank
    adapter = size * 2 if f.method == "full" else f.lora_r * hidden_layers * 4
    ckpt = size * 16 if f.method == "full" else adapter * 3
    row["disk_gb"] = (adapter + ckpt * f.save_total_limit) / 1e9
    return row


def plan_evaluate(P: Params, notes: list[str]) -> dict:
    """05: the student answers the benchmark (paid only when it is the hosted teacher itself)."""
    cfg = P.evaluate
    try:
        records, _ = select_records(cfg, P.data_dir, P.seed)
        n = len(records)
        chars = sum(len(fill_template(cfg.template, r.question)) for r in records) / max(n, 1)
    except (DataError, OSError) as e:
        notes.append(f"05: benchmark not readable ({e}): 0 items planned")
        n, chars = 0, 0.0
    reply = min(_a("eval_reply_tokens"), cfg.max_tokens)
    prompt, completion = n * chars / P.generate.chars_per_token, n * reply
    row: dict[str, Any] = {
        "requests": n,
        "prompt_tokens": round(prompt),
        "completion_tokens": round(completion),
    }
    hosted = cfg.serve == "off" and (cfg.base_url or P.llm.base_url) == P.llm.base_url and P.llm.base_url
    on_gpu = cfg.serve == "vllm" or (cfg.serve != "llama_cpp" and P.finetune.base_model not in REGISTRY)
    if hosted:
        row["cost_live_usd"] = round(_cost(P, prompt, completion), 2)
        row["cost_batch_usd"] = row["cost_live_usd"]  # asked live: the Batch API is the teacher stages' only
    elif on_gpu:
        row["gpu_h"] = completion / _a("vllm_tokens_per_s") / 3600
        row["wall_h"] = row["gpu_h"]
        row["wall_note"] = "vLLM on one GPU" + (" (served by you)" if cfg.serve != "vllm" else "")
    else:
        size = _model_params(P.finetune.base_model) or 0.5e9
        rate = 36 * 0.5e9 / size * _a("slot_speedup")  # BACKENDS.md: 36 tokens/s on the 0.5B, one at a time
        row["wall_h"], row["wall_note"] = completion / rate / 3600, f"llama.cpp on CPU, ~{rate:.0f} tokens/s"
    return row


def plan(P: Params) -> dict:
    """The plan of run P: one row per stage it runs, the totals, the budget check, the notes and the assumptions."""
    notes: list[str] = []
    caps = capabilities_for(
        P.llm.model, "llama_cpp" if P.llm.base_url is None else "openai", P.llm.capabilities
    )
    if caps.unsupported:
        notes.append(f"llm.model {P.llm.model}: {caps.unsupported}")
    n, (seeds, chars, ratio) = _compositions(P, notes), _seeds(P, notes)
    rows: dict[str, dict] = {}
    if "01" in P.stages:
        rows["01 extract"] = plan_extract(P, seeds, chars, ratio)
    if "02" in P.stages:
        rows["02 graph + walk"] = plan_compose(P, n)
    if "03" in P.stages:
        rows["03 generate"] = plan_generate(P, n, ratio)
    if "04" in P.stages:
        rows["04 finetune"] = plan_finetune(P, n, seeds, notes)
    if "05" in P.stages:
        rows["05 evaluate"] = plan_evaluate(P, notes)
    if "06" in P.stages:
        rows["06 scaling"] = {"wall_h": 0.0}
    total = {k: sum(r.get(k, 0) for r in rows.values()) for k in _SUMMED}
    cost = total["cost_batch_usd"] if P.llm.backend == "batch" else total["cost_live_usd"]
    budget = P.llm.budget_usd
    return {
        "run_name": P.run_name,
        "params_file": _shown_path(P.source_file),
        "model": P.llm.model,
        "backend": P.llm.backend if P.llm.base_url else "embedded",
        "stages": rows,
        "total": {k: round(v, 2) for k, v in total.items()},
        "cost_usd": round(cost, 2),
        "budget_usd": budget,
        "budget_covers": budget is None or budget >= cost,
        "notes": notes,
        "assumptions": {
            k: {"value": a.value, "what": a.what, "source": a.source} for k, a in ASSUMPTIONS.items()
        },
    }


def _shown_path(path: str | None) -> str | None:
    """A params file as a plan shows it: relative to the repository when inside it (a plan is a record in docs/)."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


_SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cost_live_usd", "cost_batch_usd", "wall_h")
_SUMMED += ("disk_gb", "gpu_h")


def _n(x: float) -> str:
    """A count, short: 2,200,000 -> 2.2M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _duration(hours: float) -> str:
    """Hours, readable: 0.05 -> "3 min", 30 -> "1.2 d"."""
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def format_plan(p: dict) -> str:
    """The plan as a table and its notes: what --plan prints."""
    head = f"{'stage':<17}{'requests':>9}{'prompt tok':>11}{'compl. tok':>11}{'live $':>10}{'batch $':>10}"
    head += f"{'wall':>9}{'disk GB':>9}{'GPU-h':>8}  wall time: how"
    out = [
        f"Plan of {p['params_file'] or p['run_name']}: teacher {p['model']} ({p['backend']}); nothing is sent, "
        "nothing is spent.",
        head,
    ]
    for name, r in [*p["stages"].items(), ("total", p["total"])]:
        out.append(
            f"{name:<17}{_n(r.get('requests', 0)):>9}{_n(r.get('prompt_tokens', 0)):>11}"
            f"{_n(r.get('completion_tokens', 0)):>11}{r.get('cost_live_usd', 0):>10,.2f}"
            f"{r.get('cost_batch_usd', 0):>10,.2f}{_duration(r.get('wall_h', 0)):>9}{r.get('disk_gb', 0):>9,.2f}"
            f"{r.get('gpu_h', 0):>8,.1f}  {r.get('wall_note', '')}"
        )
    budget = p["budget_usd"]
    verdict = "yes" if p["budget_covers"] else "NO: stage 03 would stop when it is spent"
    left = f", ${budget - p['cost_usd']:,.2f} to spare" if budget is not None and p["budget_covers"] else ""
    out.append(
        f"cost as configured ({p['backend']}): ${p['cost_usd']:,.2f}; llm.budget_usd: "
        f"{'no cap' if budget is None else f'${budget:,.2f}'}; covered: {verdict}{left}"
    )
    out += [f"note: {n}" for n in p["notes"]]
    out.append("assumptions (runs/plan.py ASSUMPTIONS; stage 03's own in generate.chars_per_token, est_*):")
    out += [f"  {k} = {a['value']:g}: {a['what']} ({a['source']})" for k, a in p["assumptions"].items()]
    return "\n".join(out)


__all__ = ["ASSUMPTIONS", "plan", "format_plan"]
