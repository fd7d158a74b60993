"""What notebook 05 shows about the answers (METHOD.md §8.6): the items where the paper judge and the strict judge
disagree, grouped by kind; a few wrong answers per dataset; the page for checking Fresh-GaokaoMath-2023 by eye."""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.io import write_text
from mathscale_utils.data.benchmarks import FRESH_GAOKAO
from mathscale_utils.grading.answers import normalise


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
    (
        r"(?i)\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fifteen|twenty|thirty"
        r"|forty|fifty|sixty|seventy|eighty|ninety|hundred)\b",
        "number in words",
    ),
    (r"\d(?:,|\{,\}|\\,|\\!)+\d{3}", "thousands separator"),
    (r"%|percent", "percent"),
    (r"\$|dollar", "money"),
    (r"(?i)[a-z]{2,}", "units or words with the number"),
)


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
