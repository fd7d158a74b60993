"""The fine-tuned student against its untrained base (stage 05's baseline): both answer the same items with the same
prompt, so each item gives a pair of verdicts, and the difference of their accuracies gets a paired interval.

The interval is Newcombe's hybrid score interval for a difference of paired proportions (Newcombe 1998, "Improved
confidence intervals for the difference between binomial proportions based on paired data", Stat. Med. 17:2635,
method 10): the Wilson score interval of each accuracy, combined with the correlation of the two verdicts on the
same items (phi of the 2x2 table of pairs, its numerator AD - BC reduced by n/2 when positive and 0 when
between 0 and n/2, as Newcombe gives it; Altman et al., "Statistics with Confidence", 2000, ch. 6). Why this one: the two students answer the same items, so their verdicts
are correlated (an easy item is easy for both); treating them as independent samples overstates the width, while
the paired Wald interval collapses to zero width when no item changes verdict and undercovers at the few dozen
items a CPU run scores. Newcombe's interval stays inside [-100, 100] and keeps near its nominal coverage there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

from mathscale_utils.grading.judges import JUDGES

LEVEL = 0.95


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n, as fractions; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(tuned: Sequence[bool], base: Sequence[bool], level: float = LEVEL) -> dict[str, Any]:
    """Accuracy of ``tuned`` minus that of ``base`` on the same items (percentage points), with Newcombe's paired
    interval: {"n", "tuned", "base", "difference", "low", "high", "both", "tuned_only", "base_only", "neither"}
    (accuracies in percent; the four counts are the 2x2 table of pairs). None for the numbers when n is 0."""
    if len(tuned) != len(base):
        raise ValueError(f"paired verdicts must have equal length, not {len(tuned)} and {len(base)}")
    n = len(tuned)
    a = sum(1 for t, b in zip(tuned, base, strict=True) if t and b)
    b_ = sum(1 for t, b in zip(tuned, base, strict=True) if t and not b)
    c = sum(1 for t, b in zip(tuned, base, strict=True) if b and not t)
    d = n - a - b_ - c
    table = {"both": a, "tuned_only": b_, "base_only": c, "neither": d}
    if n == 0:
        return {"n": 0, "tuned": None, "base": None, "difference": None, "low": None, "high": None, **table}
    p1, p2 = (a + b_) / n, (a + c) / n
    l1, u1 = wilson(a + b_, n, level)
    l2, u2 = wilson(a + c, n, level)
    denom = (a + b_) * (c + d) * (a + c) * (b_ + d)
    cross = (
        a * d - b_ * c
    )  # phi's numerator, shrunk towards 0 by n/2 when positive, as Newcombe's method 10 does
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / math.sqrt(denom) if denom else 0.0
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return {
        "n": n,
        "tuned": 100 * p1,
        "base": 100 * p2,
        "difference": 100 * diff,
        "low": 100 * max(-1.0, lower),
        "high": 100 * min(1.0, upper),
        **table,
    }


def compare(rows: Iterable[dict], base_rows: Iterable[dict], datasets: Sequence[str]) -> dict[str, Any]:
    """Per judge: the paired difference over all items of ``datasets`` ("micro": the pooled items, as micro
    accuracy pools them) and per dataset; items are paired by id, and only items both answered count."""
    tuned = {r["id"]: r for r in rows if r["dataset"] in datasets}
    base = {r["id"]: r for r in base_rows if r["dataset"] in datasets}
    ids = [i for i in tuned if i in base]
    out: dict[str, Any] = {"level": LEVEL, "n_paired": len(ids)}
    for j in JUDGES:
        key = f"{j}_correct"

        def diff(sub: list[str], key: str = key) -> dict[str, Any]:
            return paired_difference(
                [bool(tuned[i].get(key)) for i in sub], [bool(base[i].get(key)) for i in sub]
            )

        out[j] = {
            "micro": diff(ids),
            "datasets": {d: diff([i for i in ids if tuned[i]["dataset"] == d]) for d in datasets},
        }
    return out


def baseline_block(
    identity: str | None, base_metrics: dict[str, Any], difference: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """metrics.json's "baseline": the base student's identity, item count and both judges' accuracies (the same
    blocks as the fine-tuned student's), its degenerate-answer counts and the paired difference."""
    return {
        "identity": identity,
        "n_items": base_metrics["n_items"],
        "n_errors": base_metrics["n_errors"],
        **{j: base_metrics[j] for j in JUDGES},
        "degenerate": base_metrics.get("degenerate"),
        "difference": difference,
        **extra,
    }


def comparison_rows(metrics: dict[str, Any], judge: str = "paper") -> list[dict[str, Any]]:
    """One row per evaluated dataset and one for micro: items, base and fine-tuned accuracy, the difference and its
    interval (percent), and how many items each side alone got right (for notebook 05's table)."""
    base = metrics.get("baseline") or {}
    diff = (base.get("difference") or {}).get(judge) or {}
    out = []
    for name, d in [*diff.get("datasets", {}).items(), ("micro", diff.get("micro"))]:
        if not d:
            continue
        out.append(
            {
                "dataset": name,
                "items": d["n"],
                "base": d["base"],
                "fine-tuned": d["tuned"],
                "difference": d["difference"],
                f"{int(LEVEL * 100)}% low": d["low"],
                f"{int(LEVEL * 100)}% high": d["high"],
                "only fine-tuned right": d["tuned_only"],
                "only base right": d["base_only"],
            }
        )
    return out


def plot_comparison(metrics: dict[str, Any]):
    """Base against fine-tuned per dataset and micro, for both judges (bars), and the difference with its paired
    interval (points with error bars), one column per judge."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(JUDGES), figsize=(13, 7), sharex="col", squeeze=False)
    for col, judge in enumerate(JUDGES):
        rows = comparison_rows(metrics, judge)
        names = [r["dataset"] for r in rows]
        x = range(len(rows))
        top, bottom = axes[0][col], axes[1][col]
        top.bar([i - 0.2 for i in x], [r["base"] for r in rows], 0.4, label="base", color="silver")
        top.bar(
            [i + 0.2 for i in x], [r["fine-tuned"] for r in rows], 0.4, label="fine-tuned", color="tab:blue"
        )
        top.set_ylabel("accuracy, %")
        top.set_title(f"{judge} judge")
        top.legend(fontsize=8)
        diffs = [r["difference"] for r in rows]
        lows = [r["difference"] - r[f"{int(LEVEL * 100)}% low"] for r in rows]
        highs = [r[f"{int(LEVEL * 100)}% high"] - r["difference"] for r in rows]
        bottom.errorbar(list(x), diffs, yerr=[lows, highs], fmt="o", capsize=4, color="tab:blue")
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.set_ylabel(f"fine-tuned - base, points\n({int(LEVEL * 100)}% paired interval)")
        bottom.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return fig
