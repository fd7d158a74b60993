"""The paper's answer-validation experiment (§3.4, §5.3, Table 7), run: a sweep whose settings generate pairs for the
same compositions with the answer check off and on (``generate.answer_check``; params/validation_*.yaml), each run
through to stage 05, lined up with the paper's three rows.

The paper had GPT-4 re-solve 5K GPT-3.5 questions, flagged 26% of the GPT-3.5 solutions as wrong, replaced them with
GPT-4's, and found training on the corrected data no better (Table 7). The check here is ``filters.check_answers``:
the teacher re-solves each generated question and, with ``answer_check_action: drop``, a pair whose answers disagree
is dropped rather than replaced. So the "on" setting is the analogue of the paper's middle row, not a copy of it; the
share of pairs the check flags is the analogue of the paper's 26%.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pandas as pd

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, read_json
from mathscale_utils.evaluation.paper_tables import TABLE7, TABLE7_EXAMPLES, TABLE7_FLAGGED_PCT

# Our setting -> the paper's row it stands beside (the paper's "100% GPT-4" has no counterpart: one teacher here).
PAPER_ROW = {"off": "100% GPT-3.5 (original)", "on": "74% GPT-3.5 + 26% GPT-4-corrected"}
COLUMNS = [
    "validation",
    "paper_row",
    "compositions",
    "same_compositions",
    "checked",
    "flagged_%",
    "train_rows",
    "micro",
    "macro",
    "macro_change",
    "paper_micro",
    "paper_macro",
    "paper_flagged_%",
    "paper_macro_change",
]


def _summary(run_dir: str | Path) -> dict:
    path = RunDir(run_dir).generate_summary
    try:
        return read_json(path) if path.exists() else {}
    except DataError:
        return {}


def compositions_digest(run_dir: str | Path, n: int) -> str | None:
    """sha256 of the first n lines of a run's compositions.jsonl, the compositions stage 03 took (file order)."""
    path = RunDir(run_dir).compositions
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            h.update(line.rstrip(b"\r\n") + b"\n")
    return h.hexdigest()


def validation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of every sweep that holds answer validation both off and on (read from what stage 03 recorded, not
    from setting names): one row per run with "validation" ("off", or "on" with its action), the compositions it
    took and their digest, and the check's counts."""
    if runs.empty or "run_dir" not in runs:
        return pd.DataFrame()
    rows = []
    for r in runs.to_dict(orient="records"):
        s = _summary(r["run_dir"])
        check = s.get("answer_check")
        if not check:
            continue
        funnel = s.get("funnel") or [{}]
        n = funnel[0].get("kept")
        on = bool(check.get("enabled"))
        checked, disagree = check.get("checked"), check.get("disagree")
        rows.append(
            {
                **r,
                "group": r.get("sweep") or r.get("curve") or r["run"],
                "validation": f"on ({check.get('action')})" if on else "off",
                "compositions": n,
                "compositions_sha256": compositions_digest(r["run_dir"], n) if n else None,
                "checked": checked if on else None,
                "flagged_%": 100 * disagree / checked if on and checked else None,
            }
        )
    d = pd.DataFrame(rows)
    if d.empty:
        return d
    both = d.groupby("group")["validation"].agg(lambda v: "off" in set(v) and any(x != "off" for x in v))
    return d[d["group"].isin(both[both].index)].reset_index(drop=True)


def validation_table(runs: pd.DataFrame, judge: str = "paper") -> pd.DataFrame:
    """Table 7 beside this project's runs: per sweep, its validation-off and -on runs (micro, macro, the pairs the
    check flagged, the training rows, whether the compositions are the same as the off run's) next to the paper's
    rows, and each macro's change against the off setting, ours against ours and the paper's against its original.
    Indexed by (sweep, validation); the paper's rows, sweep "paper", come last."""
    v = validation_runs(runs)
    out = []
    for group, g in v.groupby("group", sort=True) if not v.empty else []:
        off = g[g["validation"] == "off"]
        off_macro = off[f"{judge}_macro"].mean() if f"{judge}_macro" in off else math.nan
        off_sha = set(off["compositions_sha256"].dropna())
        for r in g.sort_values("validation").to_dict(orient="records"):
            setting = "off" if r["validation"] == "off" else "on"
            macro = r.get(f"{judge}_macro")
            paper = TABLE7[PAPER_ROW[setting]]
            out.append(
                {
                    "sweep": group,
                    "validation": r["validation"],
                    "paper_row": PAPER_ROW[setting],
                    "compositions": r["compositions"],
                    "same_compositions": bool(r["compositions_sha256"])
                    and off_sha == {r["compositions_sha256"]},
                    "checked": r["checked"],
                    "flagged_%": r["flagged_%"],
                    "train_rows": r.get("train_rows"),
                    "micro": r.get(f"{judge}_micro"),
                    "macro": macro,
                    "macro_change": None if macro is None or math.isnan(off_macro) else macro - off_macro,
                    "paper_micro": paper[0],
                    "paper_macro": paper[1],
                    "paper_flagged_%": TABLE7_FLAGGED_PCT if setting == "on" else None,
                    "paper_macro_change": paper[1] - TABLE7[PAPER_ROW["off"]][1],
                }
            )
    original = TABLE7[PAPER_ROW["off"]][1]
    for name, (micro, macro) in TABLE7.items():
        out.append(
            {
                "sweep": "paper",
                "validation": name,
                "paper_row": name,
                "train_rows": TABLE7_EXAMPLES,
                "paper_micro": micro,
                "paper_macro": macro,
                "paper_flagged_%": TABLE7_FLAGGED_PCT if name == PAPER_ROW["on"] else None,
                "paper_macro_change": macro - original,
            }
        )
    return pd.DataFrame(out, columns=["sweep", *COLUMNS]).set_index(["sweep", "validation"])
