"""README's figures, written from runs (``make docs``): no number a run produced is typed by hand.

Each such number sits in README.md between two markers, ``<!-- docs:NAME -->`` and ``<!-- /docs:NAME -->``, and the
block is rewritten from a record:

- ``docs/results/<run>.json``: what ``record_run`` / ``record_sweep`` took from a run's manifest and summaries (stage
  times, sizes, accuracies). The record is committed, so README can be rebuilt and checked without the run, whose
  outputs/ folder git ignores; a record changes only when a run it comes from changed.
- ``bench/results/<bench>.json``: what a benchmark measured.

    python -m mathscale_utils.reporting.docs            # record the runs found under outputs/, rewrite README's blocks,
                                                         # docs/journey.md, docs/img/ and the quickstart's notebooks
                                                         # as static HTML in docs/gallery/ (what `make docs` runs)
    python -m mathscale_utils.reporting.docs --check    # fail when README's blocks differ from their records

Running it twice on the same runs leaves no diff: a record holds only what the run wrote (its own dates included).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from mathscale_utils.core.artifacts import STAGE_IDS, RunDir
from mathscale_utils.core.io import DataError, read_json, write_json, write_text
from mathscale_utils.core.params import ROOT
from mathscale_utils.reporting import scaling as sc
from mathscale_utils.reporting.gallery import write_gallery
from mathscale_utils.reporting.journey import journey_markdown

RESULTS = Path("docs") / "results"  # the records, relative to the repository root
BLOCK = re.compile(r"(<!-- docs:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /docs:(?P=name) -->)", re.S)


# ---- records: what a run produced ------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def record_run(run_dir: str | Path) -> dict:
    """The figures README quotes from one chain run: its stage times, sizes and results, from the files it wrote."""
    run = RunDir(run_dir)
    manifest = read_json(run.manifest)
    if manifest.get("status") != "ok":
        raise DataError(
            f"{run.manifest}: status {manifest.get('status')!r}; README quotes finished runs only"
        )
    stages = {
        sid: {k: e[k] for k in ("wall_s", "tokens", "tokens_per_s", "requests") if k in e}
        for sid, e in sorted(manifest["stages"].items())
    }
    extract, gen = _json(run.extract_summary), _json(run.generate_summary)
    card, metrics = _json(run.training_card), _json(run.metrics)
    rec = {
        "run": manifest["run_name"],
        "params_file": _relative(manifest.get("params_file")),
        "commit": (manifest.get("git") or {}).get("commit"),
        "started": manifest.get("started"),
        "ended": manifest.get("ended"),
        "cpus": _cpus(manifest),
        "stages": stages,
        "chain_s": round(sum(s.get("wall_s", 0.0) for s in stages.values()), 1),
        "sizes": {
            "seeds": extract.get("seeds"),
            "topics": extract.get("topics_after_filter"),
            "knowledge_points": extract.get("knowledge_points_after_filter"),
            "generated_pairs": (gen.get("counts") or {}).get("generated_kept"),
            "train_rows": card.get("n_examples"),
            "train_steps": card.get("steps"),
            "eval_items": metrics.get("n_items"),
        },
        "loss": [card.get("initial_loss"), card.get("final_loss")] if card else None,
        "accuracy": _accuracy(metrics),
    }
    if baseline := metrics.get("baseline"):
        rec["baseline"] = _accuracy(baseline)
    return rec


def _accuracy(metrics: dict) -> dict | None:
    """Micro and macro accuracy (%) by judge, as metrics.json gives them."""
    if not metrics:
        return None
    return {
        judge: {k: (metrics.get(judge) or {}).get(k) for k in ("micro", "macro")}
        for judge in ("paper", "strict")
    } | {"n_items": metrics.get("n_items")}


def _relative(path: str | None) -> str | None:
    """A params path as README shows it: relative to the repository root when inside it."""
    if not path:
        return path
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return p.name


def _cpus(manifest: dict) -> int | None:
    return manifest.get("cpus")


def record_sweep(sweep_dir: str | Path) -> dict:
    """The figures README quotes from a sweep (outputs/<sweep>/runs/*): one row per setting, with the micro accuracy's
    95% interval, and the sweep's wall time (every stage of every setting)."""
    runs_dir = Path(sweep_dir) / "runs"
    runs = sc.collect_runs(runs_dir)
    if runs.empty:
        raise DataError(f"{runs_dir}: no runs")
    band = sc.micro_interval(runs, "paper")  # one interval per training size
    half = dict(zip(band["examples"], (band["high"] - band["low"]) / 2, strict=True))
    rows = []
    wall = 0.0
    for r in runs.sort_values(sc.X).to_dict(orient="records"):
        manifest = _json(RunDir(runs_dir / r["run"]).manifest)
        wall += sum(e.get("wall_s", 0.0) for e in manifest.get("stages", {}).values())
        row = {k: _plain(r.get(k)) for k in sc.RUN_COLUMNS}
        row["paper_micro_half_interval"] = _plain(half.get(r[sc.X]))
        rows.append(row)
    ablation = sc.ablation_table(runs)
    return {
        "sweep": Path(sweep_dir).name,
        "wall_s": round(wall, 1),
        "runs": rows,
        "ablation": []
        if ablation.empty
        else [_plain_row(x) for x in ablation.reset_index().to_dict("records")],
    }


def _plain(v):
    """JSON-ready scalars: NaN becomes None, numpy numbers Python ones, floats rounded to 2 places."""
    if v is None or v != v:  # NaN
        return None
    if hasattr(v, "item"):
        v = v.item()
    return round(v, 2) if isinstance(v, float) else v


def _plain_row(row: dict) -> dict:
    return {k: _plain(v) for k, v in row.items()}


# ---- the README blocks ------------------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def block_quickstart(rec: dict) -> str:
    """The quickstart's measured time, per stage, its sizes and its student's accuracy."""
    s, sizes = rec["stages"], rec["sizes"]
    per = ", ".join(f"{sid} {s[sid]['wall_s']:.0f} s" for sid in STAGE_IDS if sid in s)
    acc = rec.get("accuracy") or {}
    lines = [
        f"After the set-up, the chain took **{_minutes(rec['chain_s'])}** (run of {rec['started'][:10]}, commit "
        f"`{(rec.get('commit') or '?')[:7]}`, `{rec['params_file']}`{_on_cpus(rec)}); per stage: {per}. Each stage's "
        f"time, requests and tokens are in `outputs/{rec['run']}/manifest.json`.",
        f"It extracted {sizes['topics']} topics and {sizes['knowledge_points']} knowledge points from "
        f"{sizes['seeds']} seed questions, kept {sizes['generated_pairs']} generated pairs, trained "
        f"{sizes['train_steps']} LoRA steps on {sizes['train_rows']} examples"
        + (
            f" (loss {rec['loss'][0]:.2f} → {rec['loss'][1]:.2f})"
            if rec.get("loss") and None not in rec["loss"]
            else ""
        )
        + f" and scored {acc.get('n_items')} MWPBench items: paper judge micro "
        f"{_pct((acc.get('paper') or {}).get('micro'))}, strict judge {_pct((acc.get('strict') or {}).get('micro'))}"
        + _baseline(rec)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _on_cpus(rec: dict) -> str:
    return f", {rec['cpus']} cores" if rec.get("cpus") else ""


def _baseline(rec: dict) -> str:
    base = rec.get("baseline")
    if not base:
        return ""
    return (
        f"; the untrained student on the same items: {_pct((base.get('paper') or {}).get('micro'))} and "
        f"{_pct((base.get('strict') or {}).get('micro'))}"
    )


def block_server(bench: dict) -> str:
    """Decoding speed of the embedded teacher with 4 requests in flight, from bench/results/server.json."""
    rows = [
        r
        for r in bench.get("rows", [])
        if r.get("server") == "cpp"
        and r.get("shape") == "generate"
        and r.get("concurrency") == 4
        and r.get("model") == "qwen2.5-coder-1.5b-instruct"
    ]
    if not rows:
        return "(no llama-server measurement in bench/results/server.json)\n"
    return (
        f"the 1.5B teacher decodes about {rows[0]['tok_s_median']:.0f} completion tokens/s with 4 requests in "
        f"flight on {bench.get('cpus')} cores (`bench/results/server.json`, `bench/bench_server.py`)\n"
    )


def block_scaling(rec: dict) -> str:
    """The scaling figure's caption: sizes and accuracies of each setting, with their intervals."""
    runs = rec["runs"]
    ex = ", ".join(str(r["train_rows"]) for r in runs)
    pairs = ", ".join(str(r["generated_pairs"]) for r in runs)
    paper = ", ".join(_pct(r["paper_micro"]) for r in runs)
    strict = ", ".join(_pct(r["strict_micro"]) for r in runs)
    halves = [r["paper_micro_half_interval"] for r in runs if r.get("paper_micro_half_interval") is not None]
    items = {r["eval_items"] for r in runs}
    band = f"±{min(halves):.0f} to ±{max(halves):.0f} points" if halves else "not computed"
    return (
        f"*The project's own curve, from `params/{rec['sweep']}.yaml` ({_minutes(rec['wall_s'])} of stage time): "
        f"the student trained on {ex} examples ({pairs} kept generated pairs), scored on "
        f"{'/'.join(str(i) for i in sorted(items))} MWPBench items per setting. Paper-judge micro accuracy {paper} "
        f"(strict judge {strict}); the 95% interval (grey) is {band}, so with this few items the curve shows the "
        f"machinery end to end, not the paper's effect, which takes thousands of examples and a GPU (stars: the "
        f"paper's LLaMA-2 7B points).*\n"
    )


def block_ablation(rec: dict) -> str:
    """The CPU Table 6: one row per ablation setting, the change against the full setting next to the paper's."""
    rows = rec.get("ablation") or []
    if not rows:
        return "(the ablation sweep has no evaluated settings yet)\n"
    keys = [k for k in rows[0] if k != "setting"]
    head = "| setting | " + " | ".join(keys) + " |"
    sep = "|---" * (len(keys) + 1) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k in ["setting", *keys]) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def block_judge_heldout(bench: dict) -> str:
    """The strict judge on the blind held-out set (its first and only run), beside math-verify alone."""
    sj, mv = bench["strict_judge"]["overall"], bench["math_verify"]["overall"]
    return (
        f"On `{bench['set']}`, {sj['n']} real completions of the embedded models to MWPBench test items labelled by "
        f"hand without looking at either judge ({sj['true']} correct), the strict judge finds {_pct(100 * sj['recall'])} "
        f"of the correct answers (recall) and {_pct(100 * sj['precision'])} of what it accepts is correct "
        f"(precision): {sj['fn']} misses, {sj['fp']} false positive; math-verify alone scores "
        f"{_pct(100 * mv['recall'])} and {_pct(100 * mv['precision'])} on the same rows "
        f"(`bench/bench_judge_heldout.py`, `bench/results/judge_heldout.json`, every miss listed there). The set is "
        "frozen: this is its first run, and the judge was not changed after it.\n"
    )


def block_plan_paper(p: dict) -> str:
    """The paper-scale plan (``--plan --json`` of params/paper.yaml) as a Markdown table."""
    head = "| stage | requests | prompt tokens | completion tokens | live $ | Batch API $ | wall time | disk GB | GPU-h |"
    out = [head, "|---" * 9 + "|"]
    for name, r in [*p["stages"].items(), ("total", p["total"])]:
        out.append(
            f"| {name} | {r.get('requests', 0):,.0f} | {r.get('prompt_tokens', 0):,.0f} | "
            f"{r.get('completion_tokens', 0):,.0f} | {r.get('cost_live_usd', 0):,.2f} | "
            f"{r.get('cost_batch_usd', 0):,.2f} | {_hours(r.get('wall_h', 0))} | {r.get('disk_gb', 0):,.1f} | "
            f"{r.get('gpu_h', 0):,.1f} |"
        )
    budget = p.get("budget_usd")
    out.append("")
    out.append(
        f"Teacher `{p['model']}` ({p['backend']}): ${p['cost_usd']:,.2f} as configured, against `llm.budget_usd` "
        f"{'(none)' if budget is None else f'${budget:,.2f}'}. Wall times are upper bounds (each Batch API wave "
        "counted at its 24 h window); every assumption is printed with its source by `--plan`.\n"
    )
    return "\n".join(out)


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else (f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d")


def block_scale(bench: dict) -> str:
    """Stages 02-04's data path at each size the scale bench ran: wall and CPU time, peak memory, the checks."""
    sizes = bench.get("sizes") or {}
    if not sizes:
        return "(bench/bench_scale.py has not run)\n"
    names = list(next(iter(sizes.values()))["stages"])
    head = "| step | " + " | ".join(f"{int(n):,} pairs: wall s / CPU s / peak MiB" for n in sizes) + " |"
    out = [head, "|---" * (len(sizes) + 1) + "|"]
    for step in names:
        cells = []
        for v in sizes.values():
            st = v["stages"].get(step)
            cells.append(
                f"{st['seconds']:,.0f} / {st['cpu_seconds']:,.0f} / {st['peak_rss_mib']:,.0f}" if st else ""
            )
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    out.append(
        "| whole path | "
        + " | ".join(
            f"{v['total_seconds']:,.0f} / {v['total_cpu_seconds']:,.0f} / "
            f"{max(st['peak_rss_mib'] for st in v['stages'].values()):,.0f} (largest step)"
            for v in sizes.values()
        )
        + " |"
    )
    loads = sorted(
        {round(st.get("load_average_1m", 0)) for v in sizes.values() for st in v["stages"].values()}
    )
    dates = sorted({v.get("date", "")[:10] for v in sizes.values()})
    out += [
        "",
        f"Measured on {bench.get('machine', {}).get('cores')} shared cores ({', '.join(dates)}; 1-minute load "
        f"{loads[0]} to {loads[-1]} during the steps, so CPU seconds are the steadier figure). "
        "The whole path leaves out the decontamination and dedup rows, which are measured alone and run again "
        "inside assembly.",
    ]
    for n, v in sizes.items():  # a step stopped by hand while another measurement needed the machine
        for pause in v.get("paused", []):
            out.append(
                f"At {int(n):,} pairs the {pause['step']} step was stopped for {pause['seconds']:,.0f} s "
                f"({pause['why']}): its wall time and the whole path's include that, its CPU time does not."
            )
    checks = bench.get("checks") or {}
    if checks:
        out.append("Checks against the targets: " + "; ".join(f"{k} {v}" for k, v in checks.items()) + ".")
    return "\n".join(out) + "\n"


BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    # README block name -> (its record, relative to the repository root; the function that writes it)
    "quickstart": ("docs/results/quickstart.json", block_quickstart),
    "server": ("bench/results/server.json", block_server),
    "scaling_cpu": ("docs/results/scaling_cpu.json", block_scaling),
    "ablation_cpu": ("docs/results/ablation_cpu.json", block_ablation),
    "judge_heldout": ("bench/results/judge_heldout.json", block_judge_heldout),
    "plan_paper": (
        "docs/results/plan_paper.json",
        block_plan_paper,
    ),  # written by `make docs` (--plan --json)
    "scale": ("bench/results/scale.json", block_scale),
}


def render_readme(text: str, root: Path = ROOT) -> str:
    """README text with every docs block rewritten from its record; a block whose record is missing is kept."""

    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise DataError(f"README.md: unknown docs block {name!r}; known: {sorted(BLOCKS)}")
        record, write = BLOCKS[name]
        path = root / record
        body = write(read_json(path)) if path.exists() else m.group("body")
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text)


# ---- make docs -------------------------------------------------------------------------------------------------

SOURCES = {  # record name -> (what it records, where the run lies under outputs/)
    "quickstart": (record_run, "quickstart"),
    "scaling_cpu": (record_sweep, "scaling_cpu"),
    "ablation_cpu": (record_sweep, "ablation_cpu"),
}


def record_all(outputs: Path, root: Path = ROOT, log: Callable[[str], None] = print) -> list[str]:
    """Refresh docs/results/<name>.json from every source run found under outputs/; the others stay as they are."""
    done = []
    for name, (record, where) in SOURCES.items():
        src = outputs / where
        if not src.exists():
            continue
        try:
            rec = record(src)
        except (DataError, OSError, KeyError) as e:
            log(f"docs: {name}: not recorded ({e})")
            continue
        write_json(root / RESULTS / f"{name}.json", rec)
        done.append(name)
    return done


def copy_figures(outputs: Path, root: Path = ROOT) -> list[str]:
    """docs/img/scaling_cpu.png: the scaling figure stage 06 drew in the sweep's last setting."""
    runs = sorted((outputs / "scaling_cpu" / "runs").glob("*/" + RunDir("x").scaling_png.name))
    if not runs:
        return []
    newest = max(runs, key=lambda p: p.stat().st_mtime)
    dest = root / "docs" / "img" / "scaling_cpu.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.read_bytes() != newest.read_bytes():
        shutil.copyfile(newest, dest)
    return [str(dest.relative_to(root))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.reporting.docs", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--outputs", default=str(ROOT / "outputs"), help="where the runs are (default: outputs/)")
    ap.add_argument(
        "--check", action="store_true", help="only check that README's blocks match their records"
    )
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if args.check:
        if render_readme(text) != text:
            print("README.md: its docs blocks differ from their records; run `make docs`", file=sys.stderr)
            return 1
        return 0
    outputs = Path(args.outputs)
    recorded = record_all(outputs)
    figures = copy_figures(outputs)
    write_text(readme, render_readme(text))
    quickstart = outputs / "quickstart"
    gallery = "no gallery (outputs/quickstart/notebooks/ has no executed notebook)"
    if (quickstart / "manifest.json").exists():
        write_text(ROOT / "docs" / "journey.md", journey_markdown(quickstart))
    if list((quickstart / "notebooks").glob("*.ipynb")):
        pages = write_gallery(quickstart, ROOT / "docs" / "gallery")
        gallery = f"docs/gallery/: {len(pages)} files"
    print(
        f"docs: recorded {recorded or 'nothing'}; figures {figures or 'none'}; {gallery}; "
        "README.md and docs/journey.md written"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
