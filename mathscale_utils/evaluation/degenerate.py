"""Degenerate answers in stage 05: a completion that loops ("The answer is 44. The answer is 44. ..."), one cut off
at max_tokens (finish_reason "length"), one that declares no final answer. Each predictions row carries the three
flags; ``count_flags`` counts them per dataset for metrics.json and notebook 05. They describe the answers only:
the judges, the template, the stop strings and max_tokens stay the paper's.

A loop is a tail that repeats itself: the completion, split into words and punctuation marks, ends in a unit of
``p`` tokens repeated back to back, at least three times and over at least ``MIN_LOOP_TOKENS`` tokens (a line or a
phrase stuck on repeat), or at least twice when the unit is ``LONG_UNIT`` tokens or more (a whole paragraph written
again, which max_tokens usually cuts before a third copy). The last token may be cut off mid-word (max_tokens stops
anywhere), so it is left out when that finds a longer loop. Whitespace never counts: "44.\\n44." repeats as "44 .".
A loop inside one "word" ("0.000000000000...", "121212...") is found in the characters: a unit of at most
``CHAR_UNIT`` characters repeated ``CHAR_COPIES`` times or more, over ``MIN_LOOP_CHARS`` characters at least.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from mathscale_utils.grading.answers import final_answer

FLAGS = ("loop", "length", "no_answer")  # the row fields, in the order tables show them
FLAG_NAMES = {
    "loop": "repetition loop",
    "length": "hit max_tokens",
    "no_answer": "no final answer",
}
MIN_LOOP_TOKENS = 20  # a short refrain ("The answer is 4. The answer is 4.") is not yet a loop
LONG_UNIT = 15  # a unit this long, repeated once in full, is already a loop
MAX_UNIT = 400  # longest unit looked for, in tokens
CHAR_UNIT, CHAR_COPIES, MIN_LOOP_CHARS = (
    10,
    8,
    40,
)  # a loop within a word: "0.3333333333333333" (16) is not one
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Words and single punctuation marks, whitespace dropped (the units a loop repeats)."""
    return _TOKEN.findall(text)


def _periodic_run(toks: Sequence[str], p: int) -> int:
    """How many tokens (or characters) at the end of ``toks`` equal the one ``p`` before them."""
    n, k = len(toks), 0
    while k < n - p and toks[n - 1 - k] == toks[n - 1 - k - p]:
        k += 1
    return k


def _char_loop(text: str) -> dict[str, Any] | None:
    """A short unit of characters repeated many times at the end (whitespace dropped), or None."""
    chars = re.sub(r"\s+", "", text)[-4 * MIN_LOOP_CHARS * CHAR_UNIT :]
    for p in range(1, CHAR_UNIT + 1):
        span = _periodic_run(chars, p) + p
        if span >= MIN_LOOP_CHARS and span / p >= CHAR_COPIES:
            return {
                "unit": chars[len(chars) - span : len(chars) - span + p],
                "unit_tokens": 0,
                "copies": round(span / p, 2),
                "tokens": 0,
            }
    return None


def loop_tail(text: str) -> dict[str, Any] | None:
    """The loop the completion ends in, or None: {"unit" (the repeated text, tokens joined by spaces), "unit_tokens",
    "copies" (how many times it is repeated, the cut-off last copy as a fraction), "tokens" (the span it covers)};
    a loop within a word has unit_tokens 0 and its unit in characters."""
    toks = tokens(text)
    best: dict[str, Any] | None = _char_loop(text)
    for cut in (0, 1):  # with and without a last token cut off mid-word
        t = toks[: len(toks) - cut] if cut else toks
        for p in range(1, min(MAX_UNIT, len(t) // 2) + 1):
            run = _periodic_run(t, p)
            span = run + p
            copies = span / p
            if not (copies >= 3 and span >= MIN_LOOP_TOKENS or copies >= 2 and p >= LONG_UNIT):
                continue
            if best is None or span > best["tokens"]:
                unit = t[len(t) - span : len(t) - span + p]
                lead = next((i for i, x in enumerate(unit) if x[0].isalnum()), 0)
                unit = (
                    unit[lead:] + unit[:lead]
                )  # read from a word: ". The answer is 18" -> "The answer is 18 ."
                best = {"unit": " ".join(unit), "unit_tokens": p, "copies": round(copies, 2), "tokens": span}
            break  # the shortest unit of a run is the one to report; longer ones (its multiples) repeat it
    return best


def flags(completion: str | None, finish_reason: str | None, error: str | None = None) -> dict[str, bool]:
    """The three flags of one answer. A failed request (``error``) has none: it is counted as a failed request."""
    if error is not None:
        return dict.fromkeys(FLAGS, False)
    text = completion or ""
    return {
        "loop": loop_tail(text) is not None,
        "length": finish_reason == "length",
        "no_answer": final_answer(text) is None,
    }


def count_flags(rows: Iterable[dict]) -> dict[str, Any]:
    """Flag counts over answered rows: {"n", "loop", "length", "no_answer", "any", "datasets": {dataset: {the same}}}.
    Rows without flags (made before they existed) count as answered without flags; failed requests are left out."""
    total: Counter[str] = Counter()
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        if r.get("error"):
            continue
        hit = [f for f in FLAGS if r.get(f)]
        for c in (total, per[str(r.get("dataset"))]):
            c["n"] += 1
            c.update(hit)
            c["any"] += bool(hit)

    def block(c: Counter[str]) -> dict[str, int]:
        return {k: c.get(k, 0) for k in ("n", *FLAGS, "any")}

    return {**block(total), "datasets": {d: block(c) for d, c in sorted(per.items())}}


def flagged_examples(rows: Iterable[dict], flag: str, n: int = 3, tail_chars: int = 240) -> list[dict]:
    """Up to ``n`` answers with ``flag`` set, with the end of the completion (and the loop's unit, for loops)."""
    out = []
    for r in rows:
        if len(out) >= n:
            break
        if r.get(flag) and not r.get("error"):
            text = r.get("completion") or ""
            ex = {"id": r["id"], "dataset": r.get("dataset"), "end": text[-tail_chars:]}
            if flag == "loop" and (tail := loop_tail(text)):
                ex.update(unit=tail["unit"], copies=tail["copies"])
            out.append(ex)
    return out
