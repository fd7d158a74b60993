"""Scaling curves and run comparison (paper §5.1-5.2): read every run under outputs/ into one table.

The paper's claim is that MWPBench accuracy grows about logarithmically with the number of generated training pairs,
and its ablations (Table 6) say knowledge points matter most. This module gathers what the chain wrote for each run
(manifest, extraction and generation summaries, training card, metrics) so notebook 06 can draw those curves.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, read_json, read_jsonl
from mathscale_utils.core.method_config import PAPER_PAIRS
from mathscale_utils.evaluation.paper_tables import TABLE6, TABLE7, paper_row
from mathscale_utils.grading.judges import JUDGES

# Table 6's settings, as the sweep tags them (see params/scaling_cpu.yaml), and their rows in paper_tables.TABLE6.
TABLE6_SETTINGS = {
    "full": "MathScale (all 20K seeds, all concepts)",
    "seeds50": "Remove 50% of seed questions",
    "gsm8k_math": "Seeds from GSM8K + MATH train only",
    "topics50": "Remove 50% of topics",
    "kps50": "Remove 50% of knowledge points",
}
PAPER_TABLE6 = {setting: TABLE6[row][0] for setting, row in TABLE6_SETTINGS.items()}  # setting -> macro %
_TABLE7_GPT35 = TABLE7["100% GPT-3.5 (original)"]  # (micro %, macro %)
_MATHSCALE_7B = paper_row("MathScale-7B")
# Reference points on MWPBench with LLaMA-2 7B (METHOD.md §9.3-9.5): training examples -> macro / micro accuracy.
# The paper's sizes count every training example (the 2M point is 2M generated pairs + the 20,857 MWPBench train).
PAPER_POINTS = [
    {
        "examples": 5_000,
        "macro": _TABLE7_GPT35[1],
        "micro": _TABLE7_GPT35[0],
        "source": "Table 7 (5K, GPT-3.5 solutions)",
    },
    {
        "examples": 25_000,
        "macro": PAPER_TABLE6["full"],
        "micro": None,
        "source": "Table 6 (25K, all seeds and concepts)",
    },
    {
        "examples": 2_020_857,
        "macro": _MATHSCALE_7B["macro"],
        "micro": _MATHSCALE_7B["micro"],
        "source": "Table 5 (MathScale-7B)",
    },
]


X = "train_rows"  # the curves' x: examples the student trained on (stage 04's card), generated and seed rows alike

# the columns of a run that notebook 06 and scaling_summary.json show
RUN_COLUMNS = [
    "run",
    "status",
    "setting",
    "seeds",
    "topics",
    "knowledge_points",
    "generated_pairs",
    "train_rows",
    "train_steps",
    "eval_items",
    "paper_micro",
    "paper_macro",
    "strict_micro",
    "strict_macro",
    "base_paper_micro",
    "base_strict_micro",
]
BASE = "base"  # the zero-example point's run name: the untrained base student (stage 05's baseline)


def _read(path: Path) -> dict:
    try:
        return read_json(path) if path.exists() else {}
    except DataError:
        return {}


def _count_lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def collect_runs(outputs_dir: str | Path) -> pd.DataFrame:
    """One row per run directory: any folder under outputs_dir whose manifest.json the chain wrote (other manifests,
    such as the generation shards' own, are not runs). Its `curve` is its sweep, or the run itself when alone."""
    rows = []
    for manifest_path in sorted(Path(outputs_dir).rglob(RunDir("").manifest.name)):
        run = RunDir(manifest_path.parent)
        run_dir = run.root
        m = _read(manifest_path)
        if not {"run_name", "stages"} <= m.keys():
            continue
        extract = _read(run.extract_summary)
        gen = _read(run.generate_summary)
        card = _read(run.training_card)
        metrics = _read(run.metrics)
        tags = m.get("params", {}).get("tags", {}) or {}
        row = {
            "run": m.get("run_name", run_dir.name),
            "run_dir": str(run_dir),
            "status": m.get("status"),
            "sweep": tags.get("sweep"),
            "setting": tags.get("setting"),
            "curve": tags.get("sweep") or m.get("run_name", run_dir.name),
            "seeds": extract.get("seeds"),
            "topics": extract.get("topics_after_filter"),
            "knowledge_points": extract.get("knowledge_points_after_filter"),
            "generated_pairs": gen.get("counts", {}).get("generated_kept"),
            "train_rows": card.get("n_examples", _count_lines(run.mathscaleqa)),
            "train_steps": card.get("steps"),
            "eval_model": metrics.get("model"),
            "eval_items": metrics.get("n_items"),
        }
        for judge in JUDGES:
            j = metrics.get(judge, {})
            row[f"{judge}_micro"] = j.get("micro")
            row[f"{judge}_macro"] = j.get("macro")
            for dataset, d in (j.get("datasets") or {}).items():
                row[f"{judge}:{dataset}"] = d.get("accuracy") if isinstance(d, dict) else d
        row.update(_baseline_columns(metrics.get("baseline") or {}))
        for stage, s in (m.get("stages") or {}).items():
            row[f"wall_s_{stage}"] = s.get("wall_s")
            total = (s.get("llm") or {}).get("total") or {}
            row[f"calls_{stage}"] = total.get("attempts")
            row[f"tokens_{stage}"] = (total.get("prompt_tokens") or 0) + (total.get("completion_tokens") or 0)
            row[f"cost_usd_{stage}"] = total.get("cost_usd")
        row.update({f"tag:{k}": v for k, v in tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _baseline_columns(base: dict) -> dict:
    """A run's baseline (metrics.json "baseline": the untrained base student on the same items) as columns
    base_identity, base_items, base_<judge>_micro / _macro and base_<judge>:<dataset>."""
    row = {"base_identity": base.get("identity"), "base_items": base.get("n_items")}
    for judge in JUDGES:
        j = base.get(judge) or {}
        row[f"base_{judge}_micro"] = j.get("micro")
        row[f"base_{judge}_macro"] = j.get("macro")
        for dataset, d in (j.get("datasets") or {}).items():
            row[f"base_{judge}:{dataset}"] = d.get("accuracy") if isinstance(d, dict) else d
    return row


def _melt(runs: pd.DataFrame, judge: str, prefix: str) -> pd.DataFrame:
    """(run, curve, metric, accuracy) rows from the columns <prefix><judge>:<dataset> and <prefix><judge>_micro/_macro."""
    names = {f"{prefix}{judge}_micro": "micro", f"{prefix}{judge}_macro": "macro"}
    names.update({c: c.split(":", 1)[1] for c in runs.columns if c.startswith(f"{prefix}{judge}:")})
    cols = [c for c in runs.columns if c in names]
    ids = [c for c in ("run", "curve", X) if c in runs]
    long = runs.melt(id_vars=ids, value_vars=cols, var_name="metric", value_name="accuracy")
    long["metric"] = long["metric"].map(names)
    return long.dropna(subset=["accuracy"])


def scaling_frame(runs: pd.DataFrame, judge: str = "paper") -> pd.DataFrame:
    """Long table for curves: one row per (run, metric) with its curve and its number of training examples (what
    the student trained on: generated pairs plus seed rows, as the paper's sizes count them). Each curve starts at
    0 examples with its runs' baseline (the untrained base student on the same items; run "base", averaged over the
    curve's runs should they hold different ones)."""
    if runs.empty:
        return pd.DataFrame(columns=["run", "examples", "metric", "accuracy"])
    long = _melt(runs, judge, "").dropna(subset=[X])
    if f"base_{judge}_micro" in runs:
        base = _melt(runs, judge, "base_")
        keys = ["curve", "metric"] if "curve" in base else ["metric"]
        base = base.groupby(keys, as_index=False, sort=False)["accuracy"].mean().assign(run=BASE, **{X: 0})
        long = pd.concat([base, long], ignore_index=True) if not base.empty else long
    return long.rename(columns={X: "examples"})


def micro_interval(runs: pd.DataFrame, judge: str = "paper", z: float = 1.96) -> pd.DataFrame:
    """Per size, the micro accuracy's normal-approximation interval over the evaluated items (percent): with a few
    dozen items it spans tens of points, which is what a CPU-sized curve must be read against. Size 0 is the base
    student (its items counted once: every run of a curve asks it the same items)."""
    cols = ["examples", "micro", "n", "low", "high"]
    if runs.empty or f"{judge}_micro" not in runs or "eval_items" not in runs:
        return pd.DataFrame(columns=cols)
    d = runs.dropna(subset=[f"{judge}_micro", X, "eval_items"])
    d = d.groupby(X, as_index=False).agg(micro=(f"{judge}_micro", "mean"), n=("eval_items", "sum"))
    if f"base_{judge}_micro" in runs and runs[f"base_{judge}_micro"].notna().any():  # the zero-example point
        b = runs.dropna(subset=[f"base_{judge}_micro", "base_items"])
        zero = {X: 0, "micro": b[f"base_{judge}_micro"].mean(), "n": b["base_items"].max()}
        d = pd.concat([pd.DataFrame([zero]), d], ignore_index=True)
    half = z * (d["micro"] * (100 - d["micro"]) / d["n"].clip(lower=1)) ** 0.5
    d["low"], d["high"] = (d["micro"] - half).clip(lower=0), (d["micro"] + half).clip(upper=100)
    return d.rename(columns={X: "examples"}).sort_values("examples")[cols]


def curve_runs(runs: pd.DataFrame, judge: str = "paper") -> pd.DataFrame:
    """Evaluated runs that measure data size: every run with an accuracy and a training size, except the Table 6
    variants (a sweep's `seeds50`, `kps50`, ... change the concepts, not the size; their `full` setting stays)."""
    need = {f"{judge}_macro", X}
    if runs.empty or not need <= set(runs.columns):
        return runs.iloc[0:0]
    variant = (
        runs["setting"].isin([s for s in TABLE6_SETTINGS if s != "full"]) if "setting" in runs else False
    )
    return runs[~variant].dropna(subset=list(need))


def plot_scaling(runs: pd.DataFrame, judge: str = "paper", ax=None, paper_points: bool = True):
    """Accuracy against training examples (log x); paper points as stars. One curve (sweep or lone run): a thin line
    per dataset, thick micro/macro and the micro's 95% band. Several: micro and macro per curve, so different sweeps
    or students are never averaged together. Each curve starts at its base student (0 examples, no training), which
    the log axis draws at x = 1, labelled "0 (base)"."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    groups = list(runs.groupby("curve", sort=False)) if "curve" in runs and not runs.empty else []
    has_base = False
    for i, (name, g_runs) in enumerate(groups):
        long = scaling_frame(g_runs, judge)
        for metric, g in long.groupby("metric"):
            if len(groups) > 1 and metric not in ("micro", "macro"):
                continue
            g = g.groupby("examples", as_index=False)["accuracy"].mean().sort_values("examples")
            if len(groups) == 1:
                label = metric
                style = (
                    {"linewidth": 3, "color": "black" if metric == "macro" else "dimgray"}
                    if metric in ("micro", "macro")
                    else {"alpha": 0.6}
                )
            else:
                label = f"{metric} · {name}"
                style = {
                    "linewidth": 2,
                    "color": f"C{i % 10}",
                    "linestyle": "-" if metric == "macro" else ":",
                }
            ax.plot(g["examples"].clip(lower=1), g["accuracy"], marker="o", label=label, **style)
            zero = g[g["examples"] == 0]
            if not zero.empty and metric in ("micro", "macro"):
                has_base = True
                ax.scatter(
                    [1] * len(zero), zero["accuracy"], marker="s", s=70, color=style.get("color"), zorder=4
                )
    band = micro_interval(runs, judge) if len(groups) == 1 else pd.DataFrame()
    if not band.empty:
        ax.fill_between(
            band["examples"].clip(lower=1),
            band["low"],
            band["high"],
            color="dimgray",
            alpha=0.15,
            label="micro, 95% interval (items)",
        )
    if paper_points:
        for p in PAPER_POINTS:
            ax.scatter([p["examples"]], [p["macro"]], marker="*", s=160, color="tab:red", zorder=5)
        ax.scatter([], [], marker="*", s=160, color="tab:red", label="paper macro (LLaMA-2 7B)")
    ax.set_xscale("log")
    xlabel = "training examples: generated pairs + seed rows (log scale)"
    if has_base:
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "0 (base)" if x == 1 else f"{x:,.0f}"))
        ax.scatter([], [], marker="s", s=70, color="dimgray", label="base student, untrained (0 examples)")
        xlabel += "; the untrained base student at 0"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"accuracy, % ({judge} judge)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    return ax


def ablation_table(runs: pd.DataFrame, judge: str = "paper", full: str = "full") -> pd.DataFrame:
    """The paper's Table 6 form: macro per Table 6 setting and its relative change against the same sweep's `full`
    setting, next to the paper's. Indexed by setting for one sweep, by (sweep, setting) when several hold them."""
    if runs.empty or "setting" not in runs:
        return pd.DataFrame()
    d = runs[runs["setting"].isin(list(TABLE6_SETTINGS))]
    if d.empty:
        return pd.DataFrame()
    d = d.assign(
        sweep=d["sweep"].fillna(""), setting=pd.Categorical(d["setting"], categories=list(TABLE6_SETTINGS))
    )
    t = d.groupby(["sweep", "setting"], observed=True)[f"{judge}_macro"].mean().to_frame("macro")
    base = {sw: m for (sw, st), m in t["macro"].items() if st == full}
    t["relative_change_%"] = [
        (m / base[sw] - 1) * 100 if base.get(sw) else None for (sw, _), m in t["macro"].items()
    ]
    settings = [st for _, st in t.index]
    t["paper_macro"] = [PAPER_TABLE6[st] for st in settings]
    t["paper_relative_change_%"] = [(PAPER_TABLE6[st] / PAPER_TABLE6[full] - 1) * 100 for st in settings]
    if t.index.get_level_values("sweep").nunique() == 1:
        t = t.droplevel("sweep")
        t.index = t.index.astype(str)
    return t


def concept_growth(
    concepts_file: str | Path, seed: int = 0, min_count: int = 2, points: int = 20
) -> pd.DataFrame:
    """Unique topics and KPs (raw, and surviving the frequency filter) as seed questions are added in random order."""
    rows = [r for r in read_jsonl(concepts_file) if r.get("status") == "ok"]
    random.Random(seed).shuffle(rows)
    n = len(rows)
    marks = sorted({max(1, round(n * (i + 1) / points)) for i in range(points)})
    out, topics, kps = [], {}, {}
    for i, r in enumerate(rows, 1):
        for t in set(r["raw_topics"]):
            topics[t] = topics.get(t, 0) + 1
        for k in set(r["raw_knowledge_points"]):
            kps[k] = kps.get(k, 0) + 1
        if i in marks:
            out.append(
                {
                    "seeds": i,
                    "topics": len(topics),
                    "knowledge_points": len(kps),
                    f"topics (seen >= {min_count})": sum(v >= min_count for v in topics.values()),
                    f"knowledge_points (seen >= {min_count})": sum(v >= min_count for v in kps.values()),
                }
            )
    return pd.DataFrame(out)


_STOPWORDS = frozenset("a an and as at by for from in into of on or the to with using".split())


def concept_words(concept: str) -> frozenset[str]:
    """Content words of a concept name, lower-cased and with a plural 's' dropped, for near matching."""
    words = re.findall(r"[a-z0-9]+", concept.casefold())
    return frozenset(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words
        if w not in _STOPWORDS
    )


def _near_covered(wanted: set[str], have: set[str], threshold: float) -> int:
    have_words = [concept_words(h) for h in have]
    n = 0
    for w in wanted:
        ws = concept_words(w)
        n += any(ws and hw and len(ws & hw) / len(ws | hw) >= threshold for hw in have_words)
    return n


def concept_coverage(test_concepts: list[dict], train_rows: list[dict], near: float = 0.5) -> dict:
    """Share of the test questions' topics and KPs found in the generated training data: exactly (case-folded) and
    nearly (content-word Jaccard >= `near`, so "Solving linear equations" meets "Linear equation solving")."""
    have_t = {t.casefold() for r in train_rows for t in r.get("topics") or []}
    have_k = {k.casefold() for r in train_rows for k in r.get("knowledge_points") or []}
    test_t = {t.casefold() for r in test_concepts for t in r.get("raw_topics") or []}
    test_k = {k.casefold() for r in test_concepts for k in r.get("raw_knowledge_points") or []}

    def pct(n: int, of: set[str]) -> float | None:
        return 100 * n / len(of) if of else None

    return {
        "test_topics": len(test_t),
        "test_knowledge_points": len(test_k),
        "topics_covered_%": pct(len(test_t & have_t), test_t),
        "knowledge_points_covered_%": pct(len(test_k & have_k), test_k),
        "topics_near_%": pct(_near_covered(test_t, have_t, near), test_t),
        "knowledge_points_near_%": pct(_near_covered(test_k, have_k, near), test_k),
    }


def cost_table(runs: pd.DataFrame, stage: str = "03", target_pairs: int = PAPER_PAIRS) -> pd.DataFrame:
    """Calls, tokens and wall time per generated pair for each run, extrapolated linearly to `target_pairs`."""
    need = {"generated_pairs", f"calls_{stage}", f"tokens_{stage}", f"wall_s_{stage}"}
    if runs.empty or not need <= set(runs.columns):
        return pd.DataFrame()
    t = runs[
        [
            "run",
            "generated_pairs",
            f"calls_{stage}",
            f"tokens_{stage}",
            f"wall_s_{stage}",
            f"cost_usd_{stage}",
        ]
    ]
    t = t[t["generated_pairs"].fillna(0) > 0].copy()
    pairs = t["generated_pairs"]
    t["calls_per_pair"] = t[f"calls_{stage}"] / pairs
    t["tokens_per_pair"] = t[f"tokens_{stage}"] / pairs
    t["seconds_per_pair"] = t[f"wall_s_{stage}"] / pairs
    t[f"calls_for_{target_pairs:,}"] = t["calls_per_pair"] * target_pairs
    t[f"tokens_for_{target_pairs:,}"] = t["tokens_per_pair"] * target_pairs
    t[f"days_for_{target_pairs:,}_one_worker"] = t["seconds_per_pair"] * target_pairs / 86400
    return t


def plot_curves(evaluated: pd.DataFrame):
    """Both judges side by side: accuracy against generated pairs for the evaluated runs (see plot_scaling)."""
    import matplotlib.pyplot as plt

    n_curves = evaluated["curve"].nunique() if not evaluated.empty else 0
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, judge in zip(axes, JUDGES, strict=True):
        plot_scaling(evaluated, judge, ax=ax)
        ax.set_title(f"{judge} judge: {len(evaluated)} evaluated run(s) on {n_curves} curve(s)")
    fig.tight_layout()
    return fig


def plot_growth(growth: pd.DataFrame):
    """Unique concepts against seed questions (solid: all; dashed: those that survive the frequency filter)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if not growth.empty:
        growth.plot(x="seeds", y=["topics", "knowledge_points"], marker="o", ax=ax)
        growth.plot(x="seeds", y=[c for c in growth.columns if "seen" in c], style="--", ax=ax)
    ax.set_ylabel("unique concepts")
    fig.tight_layout()
    return fig
