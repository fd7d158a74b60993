"""Build a BLIND labelled set for the strict answer judge: tests/data/judge_blind.jsonl.

Why: ``mathscale_utils.grading.judges.strict_judge`` was built together with its own labelled set. This second set was written
by someone who has not seen how the judge (or its set) works: the judge's module, its tests, its labelled set and its
bench scripts were not opened while this file was written. The judge is treated as a black box.

What: every row is a model-style completion (a few lines of reasoning, then a declared answer, sometimes with trailing
text) for a real GSM8K or MATH test item, labelled with what a careful human grader would decide when comparing the
completion's final declared answer with the gold answer.

    cd /work/main && MATHSCALE_DATA_DIR=/work/shared/data .venv/bin/python bench/build_judge_blind.py

Deterministic: every random choice comes from ``random.Random`` seeded with ``SEED`` and the kind's name, items are
drawn from pools sorted in file order, and the output is byte-identical from run to run (``--check`` verifies that the
file on disk equals a fresh build).

Gold answers
------------
* GSM8K (``gsm8k/test.jsonl``): the text after ``####`` in the reference solution, stripped (kept verbatim, so a few
  golds carry a thousands comma, e.g. ``2,125``).
* MATH (``math/test.jsonl``): the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) of the solution, with
  nested braces matched (``\\boxed{\\frac{9}{2}}`` -> ``\\frac{9}{2}``). Items whose solution has more than one boxed
  answer for a multi-part answer (e.g. algebra/1878, boxed -2 and boxed 1) are not used.

Reasoning text
--------------
* GSM8K: the reference solution's lines without the ``<<calc>>`` annotations and without the ``####`` line. For a
  wrong completion the last occurrence of the gold in the reasoning is replaced by the wrong value (an arithmetic
  slip), unless the row is meant to show the gold somewhere else.
* MATH: the reference solution without ``[asy]`` blocks, cut to its last ~700 characters at a sentence boundary; the
  boxed answer is unboxed (``keep``), replaced by the wrong value (``replace``), or its sentence is dropped (``drop``).
  A few kinds (extraneous roots, self-corrections) use short hand-written reasoning.
* Declared-answer lines rotate over the phrasings models actually use: "The answer is X.", "#### X", "Answer: X",
  "**Answer:** X", "Final Answer: The final answer is $X$. I hope it is correct.", "... is $\\boxed{X}$.", "$$\\boxed{X}$$".

Kinds (label true / label false)
--------------------------------
declared_trailing   a declared answer followed by a check, restatement or other numbers (the declared answer wins) /
                    a wrong declared answer followed by trailing numbers that are not the gold
gold_elsewhere      (false only) a wrong declared answer, the gold appearing AFTER it (a check, a note, a parenthesis)
correct_then_wrong  (false only) the gold is computed in the reasoning, then a wrong extra step gives the declared answer
self_correction     "... so 12. Wait, I made an error ... the answer is 14." (correct after the correction) /
                    the gold declared first, then "corrected" to a wrong value
near_miss           (false only) off by one, a dropped or added digit, a wrong denominator
rounded             (false only) a rounded decimal where the gold is exact (0.33 vs 1/3, 1.414 vs sqrt 2, 78.54 vs 25 pi)
matrix_vector       the gold pmatrix written as bmatrix / respaced / with \\frac entries / as an array; a changed entry,
                    a sign, a transpose, swapped entries
tuple_interval      ordered pairs and intervals written differently (\\left( \\right), spaces, 4.5 for 9/2, "x \\in");
                    swapped coordinates, open vs closed ends, a missing piece of a union
units               a number with units in either answer (``864 \\text{ square inches}`` vs ``864 \\mbox{ inches}^2``,
                    "5 digits", "14 eggs"); a wrong number with the right units
number_words        "nine", "forty-two"; the wrong number in words (fifteen vs 50)
text_answer         "a Sunday" vs ``\\text{Sunday}``, "odd", "a circle", names; the wrong word
choice_letter       "Answer: B" vs ``\\text{(B)}`` in every form; a wrong letter
expr_value          an expression whose value equals the gold (``\\tan 60^\\circ`` vs ``\\sqrt{3}``, ``\\sqrt{12}``,
                    ``2^{10}``); an expression of another value (``\\tan 30^\\circ``)
frac_decimal        exact decimals for fractions and back, a mixed number; a different value
percent             ``44\\%`` vs "44%", "44", "44 percent"; a different percentage
money               ``\\$18.90`` vs "18.9", "$18.00", "18 dollars"; a different amount
thousands_sep       ``15,600`` vs 15600, ``34,\\!650`` vs "34,650", "1{,}500", "1\\,500"; a shifted digit group
latex_forms         \\dfrac / \\tfrac / \\frac 12 / a/b / \\displaystyle / \\left( \\right) / \\sqrt 2 forms; a different value
var_assign          "x = 5" for 5 and 5 for "x=5"; a different value or sign
root_sets           all solutions in another order, with \\pm, with "x =" and "or"; a missing or wrong root
hedged              (false only) two values offered as the answer, one of them the gold ("42 or 43")
extraneous_root     a completion that finds a spurious root, rejects it and declares the gold (true) /
                    one that declares BOTH roots, e.g. "x = 5 or x = 1" for gold ``x=5`` (false, see below)

How labels were checked (the second, independent method)
--------------------------------------------------------
The label of a row is first set by construction (the builder knows whether it wrote the gold's value or not).
``independent_label`` then re-derives every label from the TEXT ONLY (the completion and the gold string), with no
access to the row's kind, note or construction:
  1. find every answer declaration in the completion (``\\boxed{}``/``\\fbox{}`` with nested braces, "answer is",
     "answer:", "Final Answer:", "option/choice is", "####") and take the LAST one (so a self-correction's final
     declaration and not the trailing numbers after a declaration count);
  2. classify the gold by its shape: choice letter, word(s), matrix, interval/tuple, list of roots, or number/expression;
  3. normalise both sides by a written rule (unwrap \\text/\\mbox/\\textbf, drop $ \\$ \\% % "percent", units and
     trailing words, thousands separators ``,`` ``,\\!`` ``{,}`` ``\\,``, a leading ``x =``, \\left/\\right, number words
     to digits, articles, a mixed number ``3\\frac12`` = 3 + 1/2);
  4. compare: letters and words as lower-case token sets; matrices entry by entry; intervals by bracket kind and
     endpoint values; root lists as sets of values (a declared list with a value the gold does not have is wrong);
     numbers and expressions by a sympy parse of the LaTeX (own small converter, decimals as exact rationals, degrees
     inside \\sin/\\cos/\\tan as radians) and ``simplify(a - b) == 0``.
The build stops if the two methods disagree on a row that is not listed in ``HAND_DECISIONS``; every listed row was
read and decided by hand.

Outcome (356 rows): the rule reproduces the construction label on 354 rows and disagrees on none; it cannot decide 2
(blind-hedged-04 and -05, a hedge with a trailing clause it cannot parse), both decided by hand as FALSE (see
``HAND_DECISIONS``). Every label=false row except those two was parsed by the rule and compared on its value (not
rejected for failing to parse). While the rule was written, four parser bugs showed up as disagreements and were fixed
in the RULE, never by changing a label: "Final Answer: The final answer is X" read as one declaration, degrees inside
\\tan/\\sin, "The answer is: X", and "in²". In addition the last lines of every row were read by hand (twice), which
led to wording fixes only: a GSM8K "how many new limbs" unit ("9 new"), a money filter that had caught an hours
question, two doubled \\boxed, a choice line that named the wrong curve, "So she pays" for a man, an arithmetic-slip
offset that made a nonsense equation. No label changed in that review.

History: 344 rows were built and the judge was run once; then 12 rows were added (kind ``hedged`` and six extra
phrasings: "The answer is: X", "Final answer: X.", "one hundred ...", "$1,234.00", "864 in²", "option C"), written as
probes without changing any earlier row. The per-kind report shows them like any other row.

Hand decisions (policy, applied when writing the rows)
------------------------------------------------------
* Extraneous root (gold ``x=5``, declared "x = 5 or x = 1"): FALSE. The question asks for the values that satisfy the
  equation; a grader marks an answer that includes a value that does not satisfy it as wrong, just as a list missing
  a root is wrong. A completion that finds both, rejects the spurious one and declares the gold is TRUE.
* ``\\tan 60^\\circ`` for ``\\sqrt{3}``, ``\\sqrt{12}`` for ``2\\sqrt{3}``, ``2^{10}`` for 1024: TRUE (the brief: an
  expression whose value equals the gold is accepted). Rows were chosen where the question does not ask for a
  particular form (no "rationalize", no "simplest radical form" items among them) so that a careful grader has no
  reason to refuse them.
* A unit in either answer: TRUE when the number and the quantity agree (square inches = inches^2, cubic meters = m^3,
  mph = miles per hour); no row pairs a right number with a wrong unit (that case is left out as ambiguous).
* Percent: "44%", "44", "44 percent" for ``44\\%`` are TRUE; 0.44 for 44% is left out as ambiguous.
* A rounded decimal for an exact gold (0.33 for 1/3) is FALSE; an exact terminating decimal (0.25 for 1/4) is TRUE.
* A choice letter with the option's content ("D. 67.445" for ``\\text{D}``) is TRUE.
* A mixed number ``3\\frac{1}{2}`` for 3.5 is TRUE (school notation; the independent rule reads it as 3 + 1/2).
Rows where the independent rule could not decide or disagreed are listed in ``HAND_DECISIONS`` with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "judge_blind.jsonl"
SEED = 20240917


# ----------------------------------------------------------------------------------------------------------- data


def data_dir() -> Path:
    env = os.environ.get("MATHSCALE_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def brace_span(s: str, j: int) -> int:
    """Index just past the brace group opening at s[j] == '{' (nested braces matched), -1 if unbalanced."""
    depth = 0
    for k in range(j, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    return -1


def boxed_spans(s: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{...} / \\fbox{...} in s, nested braces matched."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", s):
        j = m.end() - 1
        e = brace_span(s, j)
        if e > 0:
            out.append((m.start(), e, s[j + 1 : e - 1]))
    return out


def last_boxed(s: str) -> str | None:
    spans = boxed_spans(s)
    return spans[-1][2] if spans else None


class Data:
    def __init__(self, root: Path):
        self.gsm = read_jsonl(root / "gsm8k" / "test.jsonl")
        self.math = read_jsonl(root / "math" / "test.jsonl")
        self.math_by_id = {r["unique_id"]: r for r in self.math}
        self.math_gold = {r["unique_id"]: last_boxed(r["solution"]) for r in self.math}

    def gsm_gold(self, i: int) -> str:
        return self.gsm[i]["answer"].split("####")[-1].strip()

    def gsm_lines(self, i: int) -> list[str]:
        body = self.gsm[i]["answer"].split("####")[0]
        lines = [re.sub(r"<<[^>]*>>", "", ln).strip() for ln in body.strip().split("\n")]
        return [ln for ln in lines if ln]

    def math_item(self, short: str) -> tuple[str, dict, str]:
        uid = short if short.startswith("test/") else f"test/{short}.json"
        return uid, self.math_by_id[uid], self.math_gold[uid]

    def math_find(self, gold: str, skip: int = 0) -> str:
        """unique_id of the (skip+1)-th MATH test item, in file order, whose gold is exactly `gold`."""
        hits = [uid for uid, g in self.math_gold.items() if g == gold]
        return hits[skip]


# ------------------------------------------------------------------------------------------------ text building

NUM_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
TENS_WORDS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def int_to_words(n: int) -> str:
    if n < 20:
        return NUM_WORDS[n]
    if n < 100:
        t, u = divmod(n, 10)
        return TENS_WORDS[t] + ("" if u == 0 else "-" + NUM_WORDS[u])
    if n < 1000:
        h, r = divmod(n, 100)
        return NUM_WORDS[h] + " hundred" + ("" if r == 0 else " " + int_to_words(r))
    th, r = divmod(n, 1000)
    return int_to_words(th) + " thousand" + ("" if r == 0 else " " + int_to_words(r))


def strip_asy(s: str) -> str:
    return re.sub(r"\[asy\].*?\[/asy\]", "", s, flags=re.S)


def unbox_all(s: str) -> str:
    while True:
        spans = boxed_spans(s)
        if not spans:
            return s
        a, b, c = spans[-1]
        s = s[:a] + c + s[b:]


def tail_at_sentence(s: str, limit: int = 700) -> str:
    s = s.strip()
    if len(s) <= limit:
        return s
    cut = len(s) - limit
    # next sentence / paragraph boundary after `cut`
    m = re.compile(r"(?<=[.!?])\s+(?=[A-Z$\\])|\n\s*\n").search(s, cut)
    return s[m.end() :].strip() if m else s[cut:].strip()


def math_reasoning(sol: str, mode: str = "keep", repl: str | None = None, limit: int = 700) -> str:
    """The MATH solution as reasoning: boxed answer unboxed (keep), replaced by `repl` (replace) or its sentence
    dropped (drop); [asy] removed; cut to the last ~`limit` characters at a sentence boundary."""
    s = strip_asy(sol)
    spans = boxed_spans(s)
    if spans:
        a, b, c = spans[-1]
        if mode == "replace":
            s = s[:a] + (repl if repl is not None else c) + s[b:]
        elif mode == "drop":
            start = max(s.rfind(". ", 0, a), s.rfind("\n", 0, a), s.rfind(".$", 0, a) + 1)
            start = 0 if start < 0 else start + 1
            m = re.compile(r"\.(\$)?(\s|$)|\n").search(s, b)
            end = m.end() if m else len(s)
            s = s[:start] + s[end:]
    s = unbox_all(s)
    return tail_at_sentence(s, limit)


def word_re(tok: str) -> re.Pattern:
    return re.compile(r"(?<![\d.,])" + re.escape(tok) + r"(?![\d]|,\d|\.(?!00\b)\d)")


def alter_last(lines: list[str], gold: str, wrong: str) -> list[str]:
    """Replace the last occurrence of `gold` (as a whole number) in the reasoning by `wrong`; drop the last line if
    the gold does not occur."""
    lines = list(lines)
    pat = word_re(gold)
    for i in range(len(lines) - 1, -1, -1):
        ms = list(pat.finditer(lines[i]))
        if ms:
            m = ms[-1]
            lines[i] = lines[i][: m.start()] + wrong + lines[i][m.end() :]
            return lines
    return lines[:-1]


def is_latex(a: str) -> bool:
    return any(c in a for c in "\\^_{}")


PLAIN_STYLES = ["answer_is", "hash", "minerva", "bold", "answer_colon", "boxed", "so_answer"]
MATH_STYLES = ["answer_is", "boxed", "minerva", "bold", "answer_colon", "so_boxed", "display_boxed"]


def declare(ans: str, style: str, math: bool) -> str:
    if not math:
        return {
            "answer_is": f"The answer is {ans}.",
            "hash": f"#### {ans}",
            "minerva": f"Final Answer: The final answer is {ans}. I hope it is correct.",
            "bold": f"**Answer:** {ans}",
            "answer_colon": f"Answer: {ans}",
            "boxed": f"The final answer is $\\boxed{{{ans}}}$.",
            "so_answer": f"So the answer is {ans}.",
            "so_boxed": f"So the answer is $\\boxed{{{ans}}}$.",
            "display_boxed": f"$$\\boxed{{{ans}}}$$",
        }[style]
    return {
        "answer_is": f"The answer is ${ans}$.",
        "hash": f"#### {ans}",
        "minerva": f"Final Answer: The final answer is ${ans}$. I hope it is correct.",
        "bold": f"**Final Answer:** ${ans}$",
        "answer_colon": f"Answer: ${ans}$",
        "boxed": f"Therefore, the final answer is $\\boxed{{{ans}}}$.",
        "so_answer": f"So the answer is ${ans}$.",
        "so_boxed": f"So the answer is $\\boxed{{{ans}}}$.",
        "display_boxed": f"$$\\boxed{{{ans}}}$$",
    }[style]


def pick_style(rng: random.Random, ans: str, plain_ok: bool = True) -> tuple[str, bool]:
    """A phrasing for `ans`: LaTeX answers get a math style, plain ones a plain style."""
    math = is_latex(ans) or not plain_ok
    return rng.choice(MATH_STYLES if math else PLAIN_STYLES), math


class Builder:
    def __init__(self, data: Data):
        self.d = data
        self.rows: list[dict] = []
        self.used_gsm: set[int] = set()
        self.counter: dict[str, int] = {}

    def rng(self, kind: str) -> random.Random:
        return random.Random(SEED * 1000003 + zlib.crc32(kind.encode()))

    def add(self, kind, dataset, source, gold, completion, label, note):
        n = self.counter.get(kind, 0) + 1
        self.counter[kind] = n
        self.rows.append(
            {
                "id": f"blind-{kind}-{n:02d}",
                "dataset": dataset,
                "source": source,
                "gold": gold,
                "completion": completion.strip(),
                "label": bool(label),
                "kind": kind,
                "note": note,
            }
        )

    # ---- GSM8K pools
    def gsm_pool(self, rng, n, pred=lambda i, g, q: True, max_lines=5):
        pool = []
        for i, item in enumerate(self.d.gsm):
            if i in self.used_gsm:
                continue
            g = self.d.gsm_gold(i)
            lines = self.d.gsm_lines(i)
            if len(lines) > max_lines or len(item["question"]) > 420:
                continue
            if pred(i, g, item["question"]):
                pool.append(i)
        picks = rng.sample(pool, n)
        self.used_gsm.update(picks)
        return picks

    def gsm_completion(self, i, declared_line, lines=None, trailing=None):
        lines = self.d.gsm_lines(i) if lines is None else lines
        parts = ["\n".join(lines), declared_line]
        if trailing:
            parts.append(trailing)
        return "\n".join(parts)

    def math_completion(self, reasoning, declared_line, trailing=None):
        parts = [reasoning, declared_line]
        if trailing:
            parts.append(trailing)
        return "\n\n".join(p for p in parts if p)


def is_int(g: str) -> bool:
    return re.fullmatch(r"\d+", g) is not None


def small_int(lo, hi):
    return lambda i, g, q: is_int(g) and lo <= int(g) <= hi


# ----------------------------------------------------------------------------------------------------- the kinds


def k_declared_trailing(b: Builder):
    kind = "declared_trailing"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 24, small_int(5, 5000))
    trail_forms = [
        lambda g, r: f"Check: {g} + {r} = {int(g) + r}.",
        lambda g, r: (
            f"Let me double-check: {g} - {r} = {int(g) - r}, and {int(g) - r} + {r} = {g}. Correct, so the "
            f"check gives {int(g) - r} + {r} again."
        ),
        lambda g, r: (
            f"This makes sense: it is {r} more than the {int(g) - r} we would get without the last step."
        ),
        lambda g, r: f"(For comparison, twice that would be {2 * int(g)}.)",
        lambda g, r: (
            f"Verification: {int(g) * 2} / 2 = {g}, and adding the {r} from before gives {int(g) + r} in all."
        ),
        lambda g, r: "I hope this helps! Let me know if you have any other questions.",
        lambda g, r: f"Note: the question mentions {r} as well, but that number is not needed here.",
        lambda g, r: f"Step count: 3 steps, {r} numbers used.",
    ]
    # 16 GSM8K positives
    for n, i in enumerate(picks[:16]):
        g = b.d.gsm_gold(i)
        style = PLAIN_STYLES[n % len(PLAIN_STYLES)]
        r = rng.randint(2, max(3, min(60, int(g) - 1)))
        t = trail_forms[n % len(trail_forms)](g, r)
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, declare(g, style, False), trailing=t),
            True,
            f"declared {g} ({style}), then trailing text: {t[:60]}",
        )
    # 6 GSM8K negatives: wrong declared (consistent arithmetic slip), trailing numbers that are not the gold
    for n, i in enumerate(picks[16:22]):
        g = b.d.gsm_gold(i)
        w = str(int(g) + rng.choice([-3, -2, 2, 4, 10]))
        style = PLAIN_STYLES[(n + 3) % len(PLAIN_STYLES)]
        r = rng.randint(2, 30)
        t = f"Check: {w} + {r} = {int(w) + r}."
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(
                i, declare(w, style, False), lines=alter_last(b.d.gsm_lines(i), g, w), trailing=t
            ),
            False,
            f"arithmetic slip gives {w}, declared, then a check with other numbers",
        )
    # 8 MATH positives: boxed / declared answer then more text with numbers
    math_pos = [
        ("algebra/1", "Note that $x^2+x-6$ has 2 roots and the numerator $2$ is never 0."),
        (
            "number_theory/1061",
            "As a check, $64 \\cdot 34 = 2176 = 32 \\cdot 66 + 64$, so $x = 34$ works, and so do "
            "$x = 1$ and $x = 67$.",
        ),
        ("prealgebra/1345", "For comparison, with 6 hats there would be $6! = 720$ orders."),
        ("counting_and_probability/6", "These are the triangles with sides $(2,4,4)$ and $(3,3,4)$."),
        ("algebra/2471", "Indeed, $x = 2, 3, 4, 5$ give $16, 25, 36, 49$."),
        ("number_theory/318", "Check: in base 7, $5 \\cdot 23_7 = 5 \\cdot 17 = 85 = 151_7$."),
        ("geometry/517", "That is about $282.7$ cubic units."),
        ("prealgebra/1718", "In 6 hours they would eat 6 bales, and in 36 hours 36 bales."),
    ]
    for n, (short, t) in enumerate(math_pos):
        uid, item, g = b.d.math_item(short)
        style = MATH_STYLES[n % len(MATH_STYLES)]
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(math_reasoning(item["solution"], "keep"), declare(g, style, True), t),
            True,
            f"declared the gold ({style}), then trailing text with other numbers",
        )
    # 2 more GSM8K negatives with a restatement after the wrong answer
    for i in picks[22:24]:
        g = b.d.gsm_gold(i)
        w = str(int(g) * 2)
        t = f"So the total is {w}, which is {int(w) - 1} + 1."
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(
                i, declare(w, "answer_is", False), lines=alter_last(b.d.gsm_lines(i), g, w), trailing=t
            ),
            False,
            f"doubled by mistake: declared {w}, restated after",
        )


def k_gold_elsewhere(b: Builder):
    kind = "gold_elsewhere"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 10, small_int(6, 3000))
    forms = [
        lambda g, w: f"Check: {int(g) - 1} + 1 = {g}.",
        lambda g, w: f"Note: if we had not subtracted at the end, the answer would have been {g}.",
        lambda g, w: f"(The {g} computed above is the amount before the last step.)",
        lambda g, w: (
            f"Let me verify by working backwards: {w} {'+' if int(g) > int(w) else '-'} "
            f"{abs(int(g) - int(w))} = {g}."
        ),
        lambda g, w: f"Some people might answer {g}, but that ignores the last condition.",
    ]
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        w = str(int(g) + rng.choice([-5, -2, -1, 1, 2, 3]))
        if int(w) <= 0:
            w = str(int(g) + 7)
        style = PLAIN_STYLES[n % len(PLAIN_STYLES)]
        t = forms[n % len(forms)](g, w)
        keep = n % 2 == 0  # half keep the correct reasoning (gold also before), half have the slip
        lines = b.d.gsm_lines(i) if keep else alter_last(b.d.gsm_lines(i), g, w)
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, declare(w, style, False), lines=lines, trailing=t),
            False,
            f"declared {w}; gold {g} appears after it{' and in the reasoning' if keep else ''}",
        )
    # MATH: wrong declared, gold in trailing text
    math_rows = [
        (
            "algebra/2094",
            "10",
            "(If we had counted $n = 11$ teams, there would be 55 games... but we need one fewer.)",
        ),
        ("prealgebra/1345", "720", "Note that $7! = 5040$ would count the hats with one fixed in place."),
        (
            "counting_and_probability/140",
            "512",
            "The sum for row 10 would be $2^{10} = 1024$, but we want row 9.",
        ),
        ("number_theory/103", "7", "Check with $b = 9$: $5 \\cdot 25_9 = 5 \\cdot 23 = 115 = 137_9$. Hmm."),
    ]
    for n, (short, w, t) in enumerate(math_rows):
        uid, item, g = b.d.math_item(short)
        style = MATH_STYLES[(n + 2) % len(MATH_STYLES)]
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(math_reasoning(item["solution"], "drop"), declare(w, style, True), t),
            False,
            f"declared {w}; the gold {g} appears only after it",
        )


def k_correct_then_wrong(b: Builder):
    kind = "correct_then_wrong"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 7, small_int(10, 3000))
    steps = [
        lambda g, k: (
            f"But we still need to take away the {k} from the beginning: {g} - {k} = {int(g) - k}.",
            int(g) - k,
        ),
        lambda g, k: (
            f"Since the question asks about both weeks, we multiply by 2: {g} * 2 = {int(g) * 2}.",
            int(g) * 2,
        ),
        lambda g, k: (
            f"Adding the {k} mentioned in the question, the total is {g} + {k} = {int(g) + k}.",
            int(g) + k,
        ),
        lambda g, k: (f"Half of that goes to the other person, so {g} / 2 = {int(g) / 2:g}.", int(g) / 2),
    ]
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        k = rng.randint(2, 9)
        line, w = steps[n % len(steps)](g, k)
        w = f"{w:g}" if isinstance(w, float) else str(w)
        style = PLAIN_STYLES[(n + 1) % len(PLAIN_STYLES)]
        lines = b.d.gsm_lines(i) + [line]
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, declare(w, style, False), lines=lines),
            False,
            f"reasoning reaches {g}, then a wrong extra step gives {w}",
        )
    math_rows = [
        (
            "algebra/2471",
            "So the values are $x = 2, 3, 4, 5$, that is 4 values. Including $x = 1$, where "
            "$(1+2)^2 = 9$ is just below 10, we get 5.",
            "5",
        ),
        (
            "prealgebra/1718",
            "That is 18 hours for 36 bales with six horses. Since there are 12 bales per 12 hours, "
            "we divide by 2 to get 9 hours.",
            "9",
        ),
        (
            "algebra/430",
            "So she read 128 pages on the first day. Doubling back for the second day gives 256.",
            "256",
        ),
    ]
    for n, (short, extra, w) in enumerate(math_rows):
        uid, item, g = b.d.math_item(short)
        style = MATH_STYLES[(n + 3) % len(MATH_STYLES)]
        r = math_reasoning(item["solution"], "drop", limit=500) + "\n\n" + extra
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(r, declare(w, style, True)),
            False,
            f"gold {g} reached, then a wrong step to {w}",
        )


def k_self_correction(b: Builder):
    kind = "self_correction"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 16, small_int(5, 3000))
    pos_forms = [
        lambda w, g, last: (
            f"So the answer is {w}.\nWait, I made an error in the last step. {last}\nThe answer is {g}."
        ),
        lambda w, g, last: (
            f"That gives {w}.\nHmm, let me recheck that calculation. Actually, {last}\n"
            f"So the final answer is {g}."
        ),
        lambda w, g, last: f"Answer: {w}\n\nCorrection: I miscalculated above. {last}\nAnswer: {g}",
        lambda w, g, last: (
            f"The answer is {w}.\nWait, that's not right. Let me redo the last step: {last}\n"
            f"Final Answer: The final answer is {g}. I hope it is correct."
        ),
    ]
    neg_forms = [
        lambda w, g, k: (
            f"The answer is {g}.\nWait, I made an error: we also need to subtract the {k} extra ones, "
            f"so {g} - {k} = {w}.\nThe answer is {w}."
        ),
        lambda w, g, k: (
            f"So the answer is {g}.\nHmm, actually I think I double counted. Let me fix it: "
            f"{g} + {k} = {w}.\nSo the final answer is {w}."
        ),
        lambda w, g, k: (
            f"Answer: {g}\n\nCorrection: the question asks for the total including the {k} from "
            f"before, so it is {w}.\nAnswer: {w}"
        ),
        lambda w, g, k: (
            f"That gives {g}.\nWait, let me re-read the question... it asks for the difference, so "
            f"{g} - {k} = {w}.\n**Answer:** {w}"
        ),
    ]
    for n, i in enumerate(picks[:8]):
        g = b.d.gsm_gold(i)
        lines = b.d.gsm_lines(i)
        w = str(int(g) + rng.choice([-4, -2, 2, 6, 10]))
        slip = alter_last(lines, g, w)
        last = lines[-1][0].lower() + lines[-1][1:]
        head = slip[:-1] if slip != lines[:-1] else lines[:-1]
        body = "\n".join(head + [slip[-1] if len(slip) == len(lines) else ""]).strip()
        comp = body + "\n" + pos_forms[n % len(pos_forms)](w, g, last)
        b.add(kind, "gsm8k", f"gsm8k/test:{i}", g, comp, True, f"first {w}, corrected to the gold {g}")
    for n, i in enumerate(picks[8:16]):
        g = b.d.gsm_gold(i)
        k = rng.randint(2, 9)
        w = str(int(g) + (k if n % 4 in (1, 2) else -k))
        comp = "\n".join(b.d.gsm_lines(i)) + "\n" + neg_forms[n % len(neg_forms)](w, g, k)
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            comp,
            False,
            f"gold {g} declared first, then 'corrected' to {w}",
        )
    math_rows = [
        (
            "algebra/2036",
            True,
            "Using the distance formula, the distance is $\\sqrt{(2-(-4))^2 + (-6-3)^2} = "
            "\\sqrt{36 + 81} = \\sqrt{117}$.\n\nSo the answer is $\\sqrt{117}$... wait, I should simplify: "
            "$\\sqrt{117} = \\sqrt{9 \\cdot 13} = 3\\sqrt{13}$.\n\nThe answer is $3\\sqrt{13}$.",
        ),
        (
            "algebra/864",
            True,
            "The midpoint is $\\left(\\frac{-5+3}{2}, \\frac{5+7}{2}\\right) = (-1, 5)$.\n\n"
            "Wait, I made an error: $\\frac{5+7}{2} = 6$, not 5. So the midpoint is $(-1, 6)$.\n\n"
            "Final Answer: The final answer is $(-1,6)$. I hope it is correct.",
        ),
        (
            "prealgebra/1345",
            False,
            "The number of orders of 7 different hats is $7! = 5040$.\n\nThe answer is "
            "$5040$.\n\nWait, rotations of the row are the same arrangement, so we divide by 7: $5040 / 7 = 720$.\n\n"
            "The answer is $\\boxed{720}$.",
        ),
        (
            "algebra/1568",
            False,
            "Let the center be $(x, 0)$. Then $(x+3)^2 + 4 = (x+2)^2 + 9$, so $6x + 13 = "
            "4x + 13$ and $x = 0$. The radius is $\\sqrt{9 + 4} = \\sqrt{13}$.\n\nSo the answer is $\\sqrt{13}$.\n\n"
            "Hmm, wait: the radius squared is $13$, so let me recompute... the radius is $\\sqrt{3^2 + 2^2} = 5$.\n\n"
            "So the answer is $\\boxed{5}$.",
        ),
    ]
    for short, label, text in math_rows:
        uid, item, g = b.d.math_item(short)
        b.add(
            kind,
            "math",
            uid,
            g,
            text,
            label,
            "corrected to the gold" if label else "gold declared first, then 'corrected' to a wrong value",
        )


def k_near_miss(b: Builder):
    kind = "near_miss"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 7, small_int(12, 5000))
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        w = [
            str(int(g) - 1),
            str(int(g) + 1),
            g + "0",
            g[:-1] if len(g) > 1 else str(int(g) + 10),
            str(int(g) + 10),
            g[::-1] if g[::-1] != g and not g.endswith("0") else str(int(g) - 2),
            str(int(g) + 2),
        ][n]
        style = PLAIN_STYLES[(n + 2) % len(PLAIN_STYLES)]
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, declare(w, style, False), lines=alter_last(b.d.gsm_lines(i), g, w)),
            False,
            f"near miss {w} for {g}",
        )
    math_rows = [
        (b.d.math_find("\\frac{5}{36}"), "\\frac{5}{32}"),
        ("algebra/1568", "\\sqrt{14}"),
        ("counting_and_probability/575", "15,500"),
    ]
    for n, (short, w) in enumerate(math_rows):
        uid, item, g = b.d.math_item(short)
        style = MATH_STYLES[(n + 1) % len(MATH_STYLES)]
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(math_reasoning(item["solution"], "replace", w), declare(w, style, True)),
            False,
            f"near miss {w} for {g}",
        )


def k_rounded(b: Builder):
    kind = "rounded"
    rows = [
        (b.d.math_find("\\frac{1}{3}"), "0.33", "answer_is"),
        (b.d.math_find("\\frac{2}{3}"), "0.667", "boxed"),
        ("intermediate_algebra/527", "1.414", "minerva"),
        (b.d.math_find("25\\pi"), "78.54", "bold"),
        (b.d.math_find("\\frac{5}{9}"), "0.556", "answer_colon"),
        ("algebra/2708", "6.32", "so_boxed"),
        (b.d.math_find("\\frac{4}{7}"), "0.571", "display_boxed"),
        ("precalculus/892", "1.732", "answer_is"),
        (b.d.math_find("\\frac{1}{9}"), "0.111", "boxed"),
        (b.d.math_find("14\\pi"), "43.98", "minerva"),
    ]
    for short, w, style in rows:
        uid, item, g = b.d.math_item(short)
        r = (
            math_reasoning(item["solution"], "keep", limit=500)
            + f"\n\nNumerically, this is approximately ${w}$."
        )
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(r, declare(w, style, True)),
            False,
            f"rounded decimal {w} declared for the exact gold {g}",
        )


def k_matrix(b: Builder):
    kind = "matrix_vector"
    rng = b.rng(kind)
    pool = [
        uid
        for uid, g in b.d.math_gold.items()
        if g
        and g.startswith("\\begin{pmatrix}")
        and g.endswith("\\end{pmatrix}")
        and "sqrt" not in g
        and "\\frac" not in g
        and "begin" not in g[15:]
    ]
    picks = rng.sample(pool, 20)

    def cells(g):
        body = g[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
        return [
            [c.strip().replace("- ", "-") for c in row.split("&")]
            for row in body.split("\\\\")
            if row.strip()
        ]

    def render(cs, env="bmatrix", sep=" \\\\ ", frac=False):
        def cell(c):
            m = re.fullmatch(r"(-?)(\d+)/(\d+)", c)
            if frac and m:
                return f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
            return c

        body = sep.join(" & ".join(cell(c) for c in row) for row in cs)
        if env == "array":
            return f"\\left[\\begin{{array}}{{{'c' * len(cs[0])}}} {body} \\end{{array}}\\right]"
        return f"\\begin{{{env}}} {body} \\end{{{env}}}"

    def bump(c):
        m = re.fullmatch(r"(-?)(\d+)(/\d+)?", c)
        return f"{m.group(1)}{int(m.group(2)) + 1}{m.group(3) or ''}"

    pos_variants = [
        "bmatrix",
        "bmatrix_frac",
        "pmatrix_spaced",
        "bmatrix",
        "array",
        "bmatrix_frac",
        "pmatrix_spaced",
        "bmatrix",
        "bmatrix",
        "pmatrix_frac",
    ]
    for n, uid in enumerate(picks[:10]):
        g = b.d.math_gold[uid]
        cs = cells(g)
        v = pos_variants[n]
        if v == "bmatrix":
            a = render(cs)
        elif v == "bmatrix_frac":
            a = render(cs, frac=True)
        elif v == "pmatrix_spaced":
            a = render(cs, "pmatrix", sep="\\\\")
        elif v == "pmatrix_frac":
            a = render(cs, "pmatrix", frac=True)
        else:
            a = render(cs, "array")
        style = MATH_STYLES[n % len(MATH_STYLES)]
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(
                math_reasoning(b.d.math_by_id[uid]["solution"], "keep"), declare(a, style, True)
            ),
            True,
            f"same entries as {v}",
        )
    for n, uid in enumerate(picks[10:]):
        g = b.d.math_gold[uid]
        cs = [list(r) for r in cells(g)]
        flat = [(r, c) for r in range(len(cs)) for c in range(len(cs[0]))]
        what = ["bump", "sign", "swap", "transpose_or_bump"][n % 4]
        if what == "transpose_or_bump" and len(cs) == len(cs[0]) and len(cs) > 1 and cs[0][1] != cs[1][0]:
            cs = [list(x) for x in zip(*cs, strict=True)]
            desc = "transposed"
        elif what == "swap" and len({cs[r][c] for r, c in flat}) > 1:
            (r1, c1), (r2, c2) = flat[0], next(p for p in flat if cs[p[0]][p[1]] != cs[0][0])
            cs[r1][c1], cs[r2][c2] = cs[r2][c2], cs[r1][c1]
            desc = "two entries swapped"
        elif what == "sign":
            r, c = next(p for p in flat[::-1] if cs[p[0]][p[1]].lstrip("-") != "0")
            cs[r][c] = cs[r][c][1:] if cs[r][c].startswith("-") else "-" + cs[r][c]
            desc = "one sign flipped"
        else:
            r, c = flat[-1]
            cs[r][c] = bump(cs[r][c])
            desc = "last entry off by one"
        a = render(cs, rng.choice(["bmatrix", "pmatrix"]))
        style = MATH_STYLES[(n + 2) % len(MATH_STYLES)]
        b.add(
            kind,
            "math",
            uid,
            g,
            b.math_completion(
                math_reasoning(b.d.math_by_id[uid]["solution"], "replace", a), declare(a, style, True)
            ),
            False,
            desc,
        )


def curated(b: Builder, kind: str, rows, limit=700):
    """rows: (item, gold_expected or None, answer, label, mode, note). item is a MATH short id; answer is either an
    answer string (styled) or a dict {"line": literal declared line}. mode is the reasoning mode."""
    rng = b.rng(kind)
    for short, expect, ans, label, mode, note in rows:
        uid, item, g = b.d.math_item(short)
        if expect is not None and g != expect:
            raise SystemExit(f"{kind}: {uid} gold {g!r} != expected {expect!r}")
        if isinstance(ans, dict):
            line = ans["line"]
            repl = ans.get("repl", "")
        else:
            style, math = pick_style(rng, ans)
            line = declare(ans, style, math)
            repl = ans if math else ans
        if mode == "replace":
            r = math_reasoning(item["solution"], "replace", repl, limit)
        elif isinstance(mode, str) and mode.startswith("text:"):
            r = mode[5:]
        else:
            r = math_reasoning(item["solution"], mode, limit=limit)
        b.add(kind, "math", uid, g, b.math_completion(r, line), label, note)


def k_tuple_interval(b: Builder):
    T, F = True, False
    curated(
        b,
        "tuple_interval",
        [
            ("algebra/44", "(1,4)", "(1, 4)", T, "keep", "spaces"),
            ("algebra/126", "(15,-11)", "\\left(15, -11\\right)", T, "keep", "\\left( \\right)"),
            ("algebra/1144", "\\left(1,\\frac{9}{2}\\right)", "(1, 4.5)", T, "keep", "4.5 for 9/2"),
            ("algebra/864", "(-1,6)", "(x, y) = (-1, 6)", T, "keep", "(x, y) = prefix"),
            ("algebra/101", "x \\in [-2,7]", "[-2, 7]", T, "keep", "without 'x \\in'"),
            (
                "algebra/318",
                "(-\\infty,0)\\cup (0,\\infty)",
                "(-\\infty, 0) \\cup (0, \\infty)",
                T,
                "keep",
                "spaces",
            ),
            ("algebra/628", "[6,\\infty)", "[6, \\infty)", T, "keep", "spaces"),
            (
                "algebra/1089",
                "(-\\infty,-8)\\cup (8,\\infty)",
                "\\left(-\\infty, -8\\right) \\cup \\left(8, \\infty\\right)",
                T,
                "keep",
                "\\left( \\right) in a union",
            ),
            (
                "algebra/1810",
                "\\left[\\frac{1}{2}, \\frac{4}{3}\\right]",
                "\\left[\\dfrac12, \\dfrac43\\right]",
                T,
                "keep",
                "\\dfrac12 forms",
            ),
            (
                "algebra/2486",
                "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
                "(0.6, \\tfrac{8}{3}]",
                T,
                "keep",
                "0.6 for 3/5, \\tfrac",
            ),
            (
                "algebra/2045",
                "(-\\infty,0]\\cup[4,\\infty)",
                "(-\\infty, 0] \\cup [4, \\infty)",
                T,
                "keep",
                "spaces",
            ),
            (
                "algebra/445",
                "(-\\infty,-4)\\cup(-4,6)\\cup(6,\\infty)",
                "(-\\infty, -4) \\cup (-4, 6) \\cup (6, \\infty)",
                T,
                "keep",
                "spaces",
            ),
            ("algebra/2453", "(1,2)", "(x,y) = \\left( 1, 2 \\right)", T, "keep", "(x,y) = and \\left"),
            ("algebra/44", "(1,4)", "(4, 1)", F, "replace", "coordinates swapped"),
            ("algebra/126", "(15,-11)", "(15, 11)", F, "replace", "sign lost"),
            (
                "algebra/1144",
                "\\left(1,\\frac{9}{2}\\right)",
                "\\left(\\frac{9}{2}, 1\\right)",
                F,
                "replace",
                "coordinates swapped",
            ),
            ("algebra/864", "(-1,6)", "(-1, -6)", F, "replace", "sign"),
            ("algebra/101", "x \\in [-2,7]", "(-2, 7)", F, "replace", "open instead of closed"),
            (
                "algebra/318",
                "(-\\infty,0)\\cup (0,\\infty)",
                "(0, \\infty)",
                F,
                "replace",
                "half of the union",
            ),
            ("algebra/628", "[6,\\infty)", "(6, \\infty)", F, "replace", "open end"),
            ("algebra/1089", "(-\\infty,-8)\\cup (8,\\infty)", "(-8, 8)", F, "replace", "complement"),
            (
                "algebra/1810",
                "\\left[\\frac{1}{2}, \\frac{4}{3}\\right]",
                "\\left[\\frac{1}{2}, \\frac{3}{4}\\right]",
                F,
                "replace",
                "4/3 vs 3/4",
            ),
            (
                "algebra/2486",
                "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
                "\\left[\\frac{3}{5},\\frac{8}{3}\\right)",
                F,
                "replace",
                "brackets swapped",
            ),
            (
                "algebra/2045",
                "(-\\infty,0]\\cup[4,\\infty)",
                "(-\\infty,0)\\cup(4,\\infty)",
                F,
                "drop",
                "open ends",
            ),
            (
                "algebra/445",
                "(-\\infty,-4)\\cup(-4,6)\\cup(6,\\infty)",
                "(-\\infty,-4)\\cup(6,\\infty)",
                F,
                "drop",
                "middle piece missing",
            ),
        ],
    )


def k_units(b: Builder):
    kind = "units"
    T, F = True, False
    curated(
        b,
        kind,
        [
            (
                "geometry/473",
                "864 \\mbox{ inches}^2",
                "864 \\text{ square inches}",
                T,
                "keep",
                "the brief's example: square inches vs inches^2",
            ),
            ("geometry/473", "864 \\mbox{ inches}^2", "864", T, "drop", "units in the gold only"),
            ("number_theory/991", "5\\text{ digits}", "5 digits", T, "keep", "plain words"),
            ("geometry/60", "144 \\mbox{ m}^3", "144 cubic meters", T, "keep", "cubic meters vs m^3"),
            ("algebra/2091", "440\\text{ cm}^2", "440 \\, \\mathrm{cm}^2", T, "keep", "\\mathrm unit"),
            (
                "prealgebra/1154",
                "135\\text{ square feet}",
                "135 \\text{ ft}^2",
                T,
                "keep",
                "ft^2 vs square feet",
            ),
            ("prealgebra/1578", "45\\text{ mph}", "45 miles per hour", T, "keep", "mph spelled out"),
            ("algebra/82", "1599 \\text{ dollars}", "1599", T, "drop", "bare number"),
            (
                "geometry/473",
                "864 \\mbox{ inches}^2",
                "144 \\text{ square inches}",
                F,
                "drop",
                "12^2 instead of 12^2*6",
            ),
            ("number_theory/991", "5\\text{ digits}", "4 digits", F, "drop", "wrong count"),
            ("geometry/60", "144 \\mbox{ m}^3", "72 \\text{ m}^3", F, "drop", "half"),
            ("algebra/2091", "440\\text{ cm}^2", "400\\text{ cm}^2", F, "drop", "wrong"),
            ("prealgebra/1154", "135\\text{ square feet}", "150 square feet", F, "drop", "wrong"),
        ],
    )
    rng = b.rng(kind + "/gsm")

    def how_many(i, g, q):
        m = re.search(r"[Hh]ow many ([a-z]+)\b[^.?]*\?\s*$", q)
        return (
            is_int(g)
            and 2 <= int(g) <= 2000
            and m is not None
            and m.group(1).endswith("s")
            and m.group(1)
            not in (
                "more",
                "of",
                "times",
                "total",
                "in",
                "fewer",
                "less",
                "does",
                "do",
                "did",
                "are",
                "is",
                "were",
                "was",
                "can",
                "will",
                "would",
                "should",
                "has",
                "have",
                "had",
            )
        )

    picks = b.gsm_pool(rng, 11, how_many)
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        unit = re.search(r"[Hh]ow many ([a-z]+)\b[^.?]*\?\s*$", b.d.gsm[i]["question"]).group(1)
        if n < 6:
            a = f"{g} {unit}"
            style = PLAIN_STYLES[n % len(PLAIN_STYLES)]
            if "boxed" in style:
                a = f"{g} \\text{{ {unit}}}"
            b.add(
                kind,
                "gsm8k",
                f"gsm8k/test:{i}",
                g,
                b.gsm_completion(i, declare(a, style, False)),
                T,
                f"'{a}' with the question's unit",
            )
        else:
            w = str(int(g) + rng.choice([-2, -1, 1, 5]))
            a = f"{w} {unit}"
            style = PLAIN_STYLES[(n + 2) % len(PLAIN_STYLES)]
            if "boxed" in style:
                a = f"{w} \\text{{ {unit}}}"
            b.add(
                kind,
                "gsm8k",
                f"gsm8k/test:{i}",
                g,
                b.gsm_completion(i, declare(a, style, False), lines=alter_last(b.d.gsm_lines(i), g, w)),
                F,
                f"wrong number with the unit: '{a}'",
            )


def k_number_words(b: Builder):
    kind = "number_words"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 14, small_int(2, 99))
    pos_lines = [
        lambda w: f"The answer is {w}.",
        lambda w: f"**Answer:** {w}",
        lambda w: f"Final Answer: The final answer is {w}. I hope it is correct.",
        lambda w: f"So the answer is {w}.",
        lambda w: f"Answer: {w}",
        lambda w: f"The answer is {w[0].upper() + w[1:]}.",
        lambda w: f"Therefore, the answer is {w}.",
        lambda w: f"#### {w}",
    ]
    for n, i in enumerate(picks[:8]):
        g = b.d.gsm_gold(i)
        w = int_to_words(int(g))
        b.add(
            kind, "gsm8k", f"gsm8k/test:{i}", g, b.gsm_completion(i, pos_lines[n](w)), True, f"'{w}' for {g}"
        )
    for n, i in enumerate(picks[8:]):
        g = int(b.d.gsm_gold(i))
        if 13 <= g <= 19:
            wn = (g - 10) * 10  # thirteen -> thirty confusion
        elif g % 10 == 0 and 20 <= g <= 90:
            wn = g // 10 + 10
        else:
            wn = g + rng.choice([-1, 1, 2])
        w = int_to_words(wn)
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            str(g),
            b.gsm_completion(
                i, pos_lines[(n + 3) % 8](w), lines=alter_last(b.d.gsm_lines(i), str(g), str(wn))
            ),
            False,
            f"'{w}' ({wn}) for {g}",
        )


def k_text_answer(b: Builder):
    T, F = True, False
    curated(
        b,
        "text_answer",
        [
            (
                "number_theory/397",
                "\\text{Sunday}",
                {"line": "The answer is a Sunday."},
                T,
                "keep",
                "'a Sunday'",
            ),
            ("number_theory/525", "\\text{Friday}", {"line": "**Answer:** Friday"}, T, "keep", "plain word"),
            ("number_theory/880", "\\mbox{Saturday}", "\\text{Saturday}", T, "keep", "\\text vs \\mbox"),
            (
                "algebra/1349",
                "\\text{Evelyn}",
                {"line": "Final Answer: The final answer is Evelyn. I hope it is correct."},
                T,
                "keep",
                "a name",
            ),
            (
                "intermediate_algebra/8",
                "\\text{odd}",
                {"line": "So $f(x)g(x)$ is an odd function.\n\nAnswer: odd"},
                T,
                "keep",
                "odd",
            ),
            (
                "intermediate_algebra/10",
                "\\text{neither}",
                {"line": "The answer is $\\boxed{\\text{neither}}$."},
                T,
                "keep",
                "boxed text",
            ),
            (
                "intermediate_algebra/300",
                "\\text{circle}",
                {"line": "The answer is a circle."},
                T,
                "keep",
                "'a circle'",
            ),
            (
                "prealgebra/105",
                "\\text{east}",
                {"line": "So she is facing East.\n\nThe answer is East."},
                T,
                "keep",
                "capitalised",
            ),
            (
                "number_theory/669",
                "\\text{Tuesday}",
                {"line": "The answer is Wednesday."},
                F,
                "drop",
                "wrong day",
            ),
            (
                "number_theory/1109",
                "\\text{Saturday}",
                {"line": "The answer is $\\boxed{\\text{Sunday}}$."},
                F,
                "drop",
                "wrong day",
            ),
            ("intermediate_algebra/56", "\\text{odd}", {"line": "Answer: even"}, F, "drop", "wrong parity"),
            (
                "intermediate_algebra/562",
                "\\text{neither}",
                {"line": "Final Answer: The final answer is odd. I hope it is correct."},
                F,
                "drop",
                "wrong",
            ),
            (
                "intermediate_algebra/643",
                "\\text{ellipse}",
                {"line": "**Answer:** hyperbola"},
                F,
                "drop",
                "wrong conic",
            ),
            ("prealgebra/1991", "\\text{Navin}", {"line": "So the answer is Luka."}, F, "drop", "wrong name"),
        ],
    )


def k_choice_letter(b: Builder):
    T, F = True, False
    curated(
        b,
        "choice_letter",
        [
            ("algebra/1689", "C", {"line": "The answer is (C)."}, T, "keep", "(C) for C"),
            ("algebra/2687", "\\text{(C)}", {"line": "Answer: C"}, T, "keep", "the brief's 'Answer: B' form"),
            ("intermediate_algebra/66", "\\text{D}", "\\text{(D)}", T, "keep", "\\text{(D)} for \\text{D}"),
            (
                "intermediate_algebra/614",
                "\\text{(C)}",
                {"line": "The curve is a circle, so the correct option is (C)."},
                T,
                "keep",
                "'correct option is (C)'",
            ),
            ("intermediate_algebra/951", "\\text{(A)}", "\\textbf{(A)}", T, "keep", "\\textbf{(A)}"),
            ("intermediate_algebra/1523", "\\text{E}", {"line": "**Answer: (E)**"}, T, "keep", "bold (E)"),
            ("prealgebra/8", "\\text{C}", {"line": "#### C"}, T, "keep", "bare letter"),
            (
                "prealgebra/970",
                "\\text{D}",
                {"line": "The answer is D. 67.445"},
                T,
                "keep",
                "letter with the option",
            ),
            (
                "prealgebra/1797",
                "\\text{A}",
                {"line": "Therefore, the final answer is $\\boxed{A}$."},
                T,
                "keep",
                "boxed letter",
            ),
            (
                "precalculus/195",
                "\\text{(C)}",
                {"line": "Final Answer: The final answer is $\\text{(C)}$. I hope it is correct."},
                T,
                "keep",
                "minerva form",
            ),
            ("precalculus/373", "\\text{(E)}", {"line": "The answer is (C)."}, F, "drop", "wrong letter"),
            ("precalculus/436", "\\text{(D)}", {"line": "Answer: B"}, F, "drop", "wrong letter"),
            ("precalculus/621", "\\text{(E)}", "\\text{(A)}", F, "drop", "wrong letter"),
            (
                "prealgebra/1105",
                "\\text{C}",
                {"line": "The answer is B."},
                F,
                "keep",
                "wrong letter; the gold letter appears in the reasoning",
            ),
            ("prealgebra/2010", "A", {"line": "**Answer:** (C)"}, F, "drop", "wrong letter"),
            (
                "intermediate_algebra/614",
                "\\text{(C)}",
                {"line": "So the answer is (E)."},
                F,
                "keep",
                "wrong letter after a correct reasoning",
            ),
            (
                "algebra/1689",
                "C",
                {"line": "Final Answer: The final answer is $\\text{(B)}$. I hope it is correct."},
                F,
                "drop",
                "wrong letter",
            ),
            (
                "intermediate_algebra/951",
                "\\text{(A)}",
                {"line": "$$\\boxed{\\text{(B)}}$$"},
                F,
                "drop",
                "wrong letter boxed",
            ),
        ],
    )


def k_expr_value(b: Builder):
    T, F = True, False
    curated(
        b,
        "expr_value",
        [
            ("precalculus/50", "\\sqrt{3}", "\\tan 60^\\circ", T, "drop", "the brief's example"),
            ("geometry/1119", "2\\sqrt{3}", "\\sqrt{12}", T, "drop", "unsimplified radical"),
            ("algebra/184", "3\\sqrt{2}", "\\sqrt{18}", T, "drop", "unsimplified radical"),
            ("geometry/888", "4\\sqrt{13}", "\\sqrt{208}", T, "drop", "unsimplified radical"),
            ("geometry/517", "90\\pi", "\\pi \\cdot 3^2 \\cdot 10", T, "drop", "unevaluated product"),
            ("geometry/118", "\\frac{9\\pi}{2}", "4.5\\pi", T, "drop", "decimal coefficient"),
            ("counting_and_probability/140", "1024", "2^{10}", T, "drop", "power"),
            ("algebra/1438", "625", "5^4", T, "drop", "power"),
            ("intermediate_algebra/421", "\\sqrt{3}", "\\tan 30^\\circ", F, "drop", "tan 30 = 1/sqrt 3"),
            ("geometry/843", "6\\sqrt{2}", "\\sqrt{18}", F, "drop", "3 sqrt 2"),
            ("algebra/1568", "\\sqrt{13}", "\\sqrt{31}", F, "drop", "digits swapped"),
            ("geometry/364", "16\\pi", "4\\pi", F, "drop", "forgot to square"),
            ("algebra/2459", "512", "2^{8}", F, "drop", "256"),
            ("algebra/756", "243", "3^6", F, "drop", "729"),
            ("geometry/508", "\\sqrt{15}", "\\frac{\\sqrt{15}}{2}", F, "drop", "half"),
            ("precalculus/977", "\\sqrt{2}", "2\\sin 45^\\circ \\cdot \\frac{1}{2}", F, "drop", "sqrt2/2"),
        ],
    )


def k_frac_decimal(b: Builder):
    T, F = True, False
    curated(
        b,
        "frac_decimal",
        [
            ("algebra/104", "187.5", "\\frac{375}{2}", T, "drop", "fraction for decimal"),
            ("algebra/1774", "0.75", "\\frac{3}{4}", T, "drop", "fraction for decimal"),
            ("algebra/919", "7.5", {"line": "The answer is 15/2."}, T, "drop", "a/b for decimal"),
            ("algebra/1057", ".5", "\\frac12", T, "drop", "\\frac12 for .5"),
            ("algebra/1278", "-0.25", "-\\frac{1}{4}", T, "drop", "negative fraction"),
            (
                b.d.math_find("\\frac{7}{25}"),
                "\\frac{7}{25}",
                {"line": "The answer is 0.28."},
                T,
                "drop",
                "decimal for fraction",
            ),
            (b.d.math_find("\\frac{19}{4}"), "\\frac{19}{4}", "4.75", T, "drop", "decimal for fraction"),
            (b.d.math_find("-\\frac{1}{2}"), "-\\frac{1}{2}", "-0.5", T, "drop", "negative decimal"),
            (
                b.d.math_find("\\frac{1}{4}"),
                "\\frac{1}{4}",
                {"line": "#### 0.25"},
                T,
                "drop",
                "decimal for fraction",
            ),
            ("algebra/613", "3.5", "3\\frac{1}{2}", T, "drop", "mixed number (hand decision: TRUE)"),
            (b.d.math_find("\\frac{1}{4}", 1), "\\frac{1}{4}", "0.4", F, "drop", "1/4 read as 0.4"),
            (b.d.math_find("\\frac{25}{9}"), "\\frac{25}{9}", "2.5", F, "drop", "wrong"),
            ("algebra/1933", "3.2", "\\frac{3}{2}", F, "drop", "3.2 vs 3/2"),
            ("algebra/1168", "0.43", "\\frac{4}{3}", F, "drop", "0.43 vs 4/3"),
            (
                b.d.math_find("\\frac{19}{4}", 1)
                if len([1 for g in b.d.math_gold.values() if g == "\\frac{19}{4}"]) > 1
                else b.d.math_find("\\frac{14}{3}"),
                None,
                "4.57",
                F,
                "drop",
                "wrong decimal",
            ),
            ("algebra/1770", "1.8", "\\frac{9}{4}", F, "drop", "wrong fraction"),
        ],
    )


def k_percent(b: Builder):
    kind = "percent"
    T, F = True, False
    curated(
        b,
        kind,
        [
            ("algebra/1820", "44\\%", {"line": "The answer is 44%."}, T, "drop", "44% plain"),
            ("counting_and_probability/309", "65\\%", "65", T, "drop", "no percent sign"),
            ("prealgebra/1400", "28\\%", {"line": "**Answer:** 28 percent"}, T, "drop", "'percent' word"),
            ("prealgebra/1928", "7\\%", "7 \\%", T, "drop", "spacing"),
            ("geometry/586", "33\\%", "30\\%", F, "drop", "wrong"),
            ("prealgebra/1440", "198\\%", {"line": "The answer is 98%."}, F, "drop", "wrong"),
            ("prealgebra/768", "20\\%", "2\\%", F, "drop", "wrong"),
        ],
    )
    rng = b.rng(kind + "/gsm")
    picks = b.gsm_pool(
        rng,
        7,
        lambda i, g, q: (
            is_int(g)
            and 1 <= int(g) <= 100
            and re.search(r"[Ww]hat (percent|percentage) (of|did|does|is)", q.split(". ")[-1]) is not None
        ),
        max_lines=7,
    )
    pos = [
        lambda g: f"The answer is {g}%.",
        lambda g: f"Answer: {g} percent",
        lambda g: f"So the answer is $\\boxed{{{g}\\%}}$.",
        lambda g: f"#### {g}%",
    ]
    for n, i in enumerate(picks[:4]):
        g = b.d.gsm_gold(i)
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, pos[n](g)),
            T,
            "percent sign or word added",
        )
    for n, i in enumerate(picks[4:]):
        g = b.d.gsm_gold(i)
        w = str(int(g) + rng.choice([-5, 5, 10]))
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, pos[(n + 1) % 4](w), lines=alter_last(b.d.gsm_lines(i), g, w)),
            F,
            f"wrong percentage {w}",
        )


def k_money(b: Builder):
    kind = "money"
    T, F = True, False
    curated(
        b,
        kind,
        [
            ("algebra/2780", "\\$18.90", "18.9", T, "drop", "no $, trailing zero dropped"),
            (
                "algebra/155",
                "\\$15,\\!000",
                {"line": "The answer is $15000."},
                T,
                "drop",
                "$ and no separator",
            ),
            ("algebra/160", "\\$ 139", "\\$139", T, "drop", "spacing"),
            ("counting_and_probability/825", "-\\$0.50", "-0.50", T, "drop", "negative, no $"),
            ("algebra/794", "\\$76.80", {"line": "**Answer:** 76.80 dollars"}, T, "drop", "'dollars' word"),
            ("algebra/1755", "\\$16,\\!386.16", "\\$16,386.61", F, "drop", "cents transposed"),
            ("counting_and_probability/266", "\\$0.50", "\\$0.05", F, "drop", "wrong"),
            ("prealgebra/1203", "\\$36", "\\$24", F, "drop", "wrong"),
        ],
    )
    rng = b.rng(kind + "/gsm")
    picks = b.gsm_pool(
        rng,
        7,
        lambda i, g, q: (
            is_int(g)
            and 3 <= int(g) <= 3000
            and re.search(
                r"[Hh]ow (much|many dollars)[^.?]*(money|\$|dollars|cost|spend|pay|earn|make|save)", q
            )
            is not None
            and "$" + g in b.d.gsm_lines(i)[-1]
            and "time" not in q.split(". ")[-1]
        ),
    )
    pos = [
        lambda g: f"The answer is ${g}.00.",
        lambda g: f"Answer: \\${g}",
        lambda g: f"#### {g} dollars",
        lambda g: f"So the answer is $\\boxed{{\\${g}}}$.",
    ]
    for n, i in enumerate(picks[:4]):
        g = b.d.gsm_gold(i)
        b.add(kind, "gsm8k", f"gsm8k/test:{i}", g, b.gsm_completion(i, pos[n](g)), T, "money forms")
    for n, i in enumerate(picks[4:]):
        g = b.d.gsm_gold(i)
        w = [str(int(g) * 10), f"{int(g) - 1}.50", f"{int(g) / 10:g}"][n]
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, pos[n](w), lines=alter_last(b.d.gsm_lines(i), g, w)),
            F,
            f"wrong amount {w}",
        )


def k_thousands(b: Builder):
    kind = "thousands_sep"
    T, F = True, False
    curated(
        b,
        kind,
        [
            ("counting_and_probability/575", "15,600", "15600", T, "drop", "separator removed"),
            ("counting_and_probability/56", "34,\\!650", "34,650", T, "drop", "plain comma"),
            ("prealgebra/9", "362,\\!880", "362880", T, "drop", "separator removed"),
            ("number_theory/531", "6,\\!000", "6{,}000", T, "drop", "{,} separator"),
            ("counting_and_probability/737", "58,500", "5,850", F, "drop", "digit group shifted"),
            ("counting_and_probability/103", "14,\\!400", "1,440", F, "drop", "off by a factor of 10"),
        ],
    )
    rng = b.rng(kind + "/gsm")
    picks = b.gsm_pool(
        rng, 8, lambda i, g, q: re.fullmatch(r"\d{1,3}(,\d{3})+|\d{4,7}", g) is not None, max_lines=7
    )
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        v = int(g.replace(",", ""))
        if n < 4:
            a = [f"{v:,}", f"{v:,}".replace(",", "{,}"), f"{v:,}".replace(",", "\\,"), str(v)][n]
            if a == g:
                a = f"{v:,}" if "," not in g else str(v)
            line = [f"The answer is {a}.", f"The answer is ${a}$.", f"Answer: ${a}$", f"#### {a}"][n]
            b.add(kind, "gsm8k", f"gsm8k/test:{i}", g, b.gsm_completion(i, line), T, f"'{a}' for {g}")
        else:
            w = [f"{v // 10:,}", f"{v * 10:,}", f"{v + 1000:,}", f"{(v // 1000) * 100 + v % 100:,}"][n - 4]
            line = [f"The answer is {w}.", f"**Answer:** {w}", f"#### {w}", f"Answer: {w}"][n - 4]
            wl = w.replace(",", "")
            b.add(
                kind,
                "gsm8k",
                f"gsm8k/test:{i}",
                g,
                b.gsm_completion(i, line, lines=alter_last(b.d.gsm_lines(i), g.replace(",", ""), wl)),
                F,
                f"'{w}' for {g}",
            )


def k_latex_forms(b: Builder):
    T, F = True, False
    curated(
        b,
        "latex_forms",
        [
            (
                b.d.math_find("\\dfrac{3}{7}"),
                "\\dfrac{3}{7}",
                "\\frac{3}{7}",
                T,
                "drop",
                "\\frac for \\dfrac",
            ),
            (
                b.d.math_find("-\\dfrac{4}{25}"),
                "-\\dfrac{4}{25}",
                "\\frac{-4}{25}",
                T,
                "drop",
                "sign in numerator",
            ),
            (
                b.d.math_find("\\dfrac{9}{7}"),
                "\\dfrac{9}{7}",
                {"line": "The answer is 9/7."},
                T,
                "drop",
                "a/b",
            ),
            (b.d.math_find("\\dfrac{1}{5}"), "\\dfrac{1}{5}", "\\tfrac{1}{5}", T, "drop", "\\tfrac"),
            ("algebra/1390", "\\frac9{5}", "\\frac{9}{5}", T, "drop", "braced \\frac for \\frac9{5}"),
            ("geometry/1115", "\\frac13", "\\dfrac{1}{3}", T, "drop", "\\dfrac for \\frac13"),
            (b.d.math_find("\\frac{2}{3}", 1), "\\frac{2}{3}", "\\frac 23", T, "drop", "\\frac 23"),
            (
                b.d.math_find("\\frac{\\sqrt7}{14}"),
                "\\frac{\\sqrt7}{14}",
                "\\frac{\\sqrt{7}}{14}",
                T,
                "drop",
                "\\sqrt{7} for \\sqrt7",
            ),
            (b.d.math_find("10\\sqrt 2"), "10\\sqrt 2", "10\\sqrt{2}", T, "drop", "\\sqrt{2} for \\sqrt 2"),
            (
                b.d.math_find("\\frac{47}{24}"),
                "\\frac{47}{24}",
                "\\displaystyle \\frac{47}{24}",
                T,
                "drop",
                "\\displaystyle",
            ),
            (
                b.d.math_find("\\dfrac{5}{12}"),
                "\\dfrac{5}{12}",
                "\\left(\\frac{5}{12}\\right)",
                T,
                "drop",
                "\\left( \\right) around",
            ),
            (b.d.math_find("\\!\\sqrt{33}"), "\\!\\sqrt{33}", "\\sqrt{33}", T, "drop", "no \\! spacing"),
            (b.d.math_find("\\dfrac{4}{3}"), "\\dfrac{4}{3}", "\\dfrac{3}{4}", F, "drop", "inverted"),
            (b.d.math_find("-\\dfrac{3}{4}"), "-\\dfrac{3}{4}", "\\frac{3}{4}", F, "drop", "sign lost"),
            (
                b.d.math_find("\\dfrac{8}{7}"),
                "\\dfrac{8}{7}",
                "\\frac{8}{17}",
                F,
                "drop",
                "wrong denominator",
            ),
            (
                b.d.math_find("\\frac{\\sqrt6}3"),
                "\\frac{\\sqrt6}3",
                "\\frac{6}{\\sqrt{3}}",
                F,
                "drop",
                "2 sqrt 3",
            ),
            (
                b.d.math_find("\\dfrac{39}{64}"),
                "\\dfrac{39}{64}",
                "\\dfrac{25}{64}",
                F,
                "drop",
                "wrong numerator",
            ),
            (
                b.d.math_find("\\frac{1}{2}", 3),
                "\\frac{1}{2}",
                "\\left(\\frac{1}{2}\\right)^2",
                F,
                "drop",
                "1/4",
            ),
        ],
    )


def k_var_assign(b: Builder):
    kind = "var_assign"
    T, F = True, False
    curated(
        b,
        kind,
        [
            ("counting_and_probability/754", "k = 15", "15", T, "drop", "value for 'k = 15'"),
            ("algebra/1464", "x = 4", "4", T, "drop", "value for 'x = 4'"),
            ("algebra/2363", "x = -1", "x=-1", T, "drop", "spacing"),
            ("number_theory/1114", "a=9", {"line": "The answer is $a = 9$."}, T, "drop", "same"),
            ("algebra/2163", "x=-10", "x = 10", F, "drop", "sign"),
            ("algebra/1253", "b=4", "b = -4", F, "drop", "sign"),
            ("geometry/186", "b=0", "b = 1", F, "drop", "wrong"),
        ],
    )
    rng = b.rng(kind + "/gsm")
    picks = b.gsm_pool(rng, 7, small_int(3, 500))
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        if n < 4:
            line = [
                f"So x = {g}.\nThe answer is x = {g}.",
                f"Answer: $x = {g}$",
                f"Let n be the count; then n = {g}.\n#### n = {g}",
                f"The answer is $\\boxed{{x={g}}}$.",
            ][n]
            b.add(kind, "gsm8k", f"gsm8k/test:{i}", g, b.gsm_completion(i, line), T, f"'x = {g}' for {g}")
        else:
            w = str(int(g) + rng.choice([-2, 2, 3]))
            line = [
                f"Answer: $x = {w}$",
                f"The answer is $y = {w}$.",
                f"So x = {w}.\nThe answer is x = {w}.",
            ][n - 4]
            b.add(
                kind,
                "gsm8k",
                f"gsm8k/test:{i}",
                g,
                b.gsm_completion(i, line, lines=alter_last(b.d.gsm_lines(i), g, w)),
                F,
                f"'x = {w}' for {g}",
            )


def k_root_sets(b: Builder):
    T, F = True, False
    curated(
        b,
        "root_sets",
        [
            ("algebra/2050", "6, -2", "-2, 6", T, "drop", "order"),
            ("algebra/2168", "-4, 4", "\\pm 4", T, "drop", "\\pm"),
            (
                "intermediate_algebra/182",
                "1,-3",
                {"line": "The solutions are $x = -3$ or $x = 1$.\n\nAnswer: $x = -3$ or $x = 1$"},
                T,
                "drop",
                "x = ... or x = ...",
            ),
            ("intermediate_algebra/1044", "9,-7", "x = -7, 9", T, "drop", "x = prefix, order"),
            (
                "intermediate_algebra/422",
                "\\frac{9}{4}, -\\frac{9}{4}",
                "\\pm\\frac{9}{4}",
                T,
                "drop",
                "\\pm fraction",
            ),
            ("intermediate_algebra/983", "3i,-3i", "\\pm 3i", T, "drop", "\\pm complex"),
            (
                "intermediate_algebra/1101",
                "\\sqrt{5}, -\\sqrt{5}",
                "-\\sqrt{5}, \\sqrt{5}",
                T,
                "drop",
                "order",
            ),
            (
                "intermediate_algebra/662",
                "1 \\pm \\sqrt{19}",
                "1 + \\sqrt{19}, 1 - \\sqrt{19}",
                T,
                "drop",
                "\\pm expanded",
            ),
            ("intermediate_algebra/61", "-5, 1, 4", "-5, 4", F, "drop", "missing root"),
            ("intermediate_algebra/913", "2, -3, 4", "2, 3, 4", F, "drop", "sign"),
            ("intermediate_algebra/494", "-8,1", "8, -1", F, "drop", "signs"),
            ("intermediate_algebra/1048", "1,-2", "1", F, "drop", "only one root"),
        ],
    )


def k_extraneous(b: Builder):
    T, F = True, False
    rows = [
        (
            "algebra/2193",
            "x=5",
            F,
            "text:Subtracting 4 from both sides gives $x - 4 = \\sqrt{11-2x}$. Squaring, "
            "$x^2 - 8x + 16 = 11 - 2x$, so $x^2 - 6x + 5 = 0$, i.e. $(x-5)(x-1) = 0$.",
            {"line": "So $x = 5$ or $x = 1$.\n\nThe answer is $x = 5$ or $x = 1$."},
        ),
        (
            "algebra/882",
            "7",
            F,
            "text:Since $7^2 = 49$, we need $\\log_x 49 = 2$, so $x^2 = 49$.",
            {"line": "Therefore $x = \\boxed{\\pm 7}$."},
        ),
        (
            "algebra/2531",
            "36",
            F,
            "text:If $x^2 + cx + 9c = (x + a)^2$, then $c = 2a$ and $9c = a^2$, so $18a = a^2$ "
            "and $a = 0$ or $a = 18$. Hence $c = 2a$.",
            {"line": "Final Answer: The final answer is $0, 36$. I hope it is correct."},
        ),
        (
            "algebra/2094",
            "11",
            F,
            "text:We need $(n^2 - n)/2 = 55$, so $n^2 - n - 110 = 0$, which factors as "
            "$(n - 11)(n + 10) = 0$.",
            {"line": "So $n = 11$ or $n = -10$.\n\nAnswer: $n = 11, -10$"},
        ),
        (
            "algebra/1774",
            "0.75",
            F,
            "text:Setting $y = 0$: $-16t^2 - 60t + 54 = 0$, i.e. $8t^2 + 30t - 27 = 0$, so "
            "$t = \\frac{-30 \\pm \\sqrt{900 + 864}}{16} = \\frac{-30 \\pm 42}{16}$.",
            {"line": "The answer is $t = 0.75$ or $t = -4.5$."},
        ),
        (
            "algebra/2731",
            "3.5",
            F,
            "text:Setting $y = 0$: $16t^2 - 26t - 105 = 0$, so $t = \\frac{26 \\pm "
            "\\sqrt{676 + 6720}}{32} = \\frac{26 \\pm 86}{32}$.",
            {"line": "So $t = \\boxed{3.5 \\text{ or } -1.875}$."},
        ),
        (
            "geometry/353",
            "\\sqrt{5}",
            F,
            "text:The volume rises by $20\\pi$ while the height rises by 4, so "
            "$\\pi r^2 \\cdot 4 = 20\\pi$ and $r^2 = 5$.",
            {"line": "Thus $r = \\boxed{\\pm\\sqrt{5}}$."},
        ),
        (
            "number_theory/103",
            "9",
            F,
            "text:Writing the numbers in base $b$: $5(2b + 5) = b^2 + 3b + 7$, so "
            "$b^2 - 7b - 18 = 0$ and $(b - 9)(b + 2) = 0$.",
            {"line": "The answer is $b = 9$ or $b = -2$."},
        ),
        (
            "algebra/2141",
            "\\frac{8}{3}",
            F,
            "text:The distances are equal: $3x^2 = 4(16 - 4x)$, so $3x^2 + 16x - 64 = 0$ "
            "and $(3x - 8)(x + 8) = 0$.",
            {"line": "The answer is $x = \\frac{8}{3}$ or $x = -8$."},
        ),
        (
            "precalculus/534",
            "\\sqrt{5}",
            F,
            "text:Taking the tangent of both sides and simplifying gives $x^2 = 5$.",
            {"line": "The solutions are $\\boxed{\\sqrt{5}, -\\sqrt{5}}$."},
        ),
        ("algebra/2193", "x=5", T, "keep", {"line": "The answer is $5$."}),
        (
            "algebra/882",
            "7",
            T,
            "text:Since $7^2 = 49$, we need $\\log_x 49 = 2$, so $x^2 = 49$ and $x = \\pm 7$. "
            "But the base of a logarithm must be positive, so $x = -7$ is extraneous.",
            {"line": "The answer is $7$."},
        ),
        (
            "number_theory/103",
            "9",
            T,
            "text:Writing the numbers in base $b$: $5(2b + 5) = b^2 + 3b + 7$, so "
            "$b^2 - 7b - 18 = 0$, giving $b = 9$ or $b = -2$. A base must be positive, so we reject $b = -2$.",
            {"line": "Final Answer: The final answer is $9$. I hope it is correct."},
        ),
        (
            "algebra/2141",
            "\\frac{8}{3}",
            T,
            "text:$3x^2 = 4(16 - 4x)$ gives $(3x - 8)(x + 8) = 0$, so $x = 8/3$ "
            "or $x = -8$; since $x > 0$, only $x = 8/3$ works.",
            {"line": "**Answer:** $\\frac{8}{3}$"},
        ),
    ]
    curated(
        b,
        "extraneous_root",
        [
            (
                s,
                g,
                a,
                lab,
                mode,
                "both roots declared (hand decision: FALSE)"
                if not lab
                else "spurious root rejected, gold declared",
            )
            for s, g, lab, mode, a in rows
        ],
    )


def k_hedged(b: Builder):
    """Two values offered as the answer, one of them the gold: a grader cannot accept a hedge."""
    kind = "hedged"
    rng = b.rng(kind)
    picks = b.gsm_pool(rng, 6, small_int(5, 2000))
    forms = [
        lambda g, w: f"The answer is {g} or {w}.",
        lambda g, w: f"So the answer is either {w} or {g}.",
        lambda g, w: f"The final answer is $\\boxed{{{g} \\text{{ or }} {w}}}$.",
        lambda g, w: f"Answer: {w} (or {g} if we also count the last one)",
        lambda g, w: (
            f"Final Answer: The final answer is {g} or {w}, depending on how the question is read. "
            f"I hope it is correct."
        ),
        lambda g, w: f"**Answer:** {w} or {g}",
    ]
    for n, i in enumerate(picks):
        g = b.d.gsm_gold(i)
        w = str(int(g) + rng.choice([-2, -1, 1, 2, 10]))
        b.add(
            kind,
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, forms[n](g, w)),
            False,
            f"hedge between {g} and {w}",
        )


def k_more_phrasings(b: Builder):
    """Extra positive phrasings, filed under the kind they belong to."""
    rng = b.rng("more_phrasings")
    picks = b.gsm_pool(rng, 2, small_int(5, 2000))
    for i, line in zip(picks, ["The answer is: {g}", "Final answer: {g}."], strict=True):
        g = b.d.gsm_gold(i)
        b.add(
            "declared_trailing",
            "gsm8k",
            f"gsm8k/test:{i}",
            g,
            b.gsm_completion(i, line.format(g=g), trailing=f"(Check: {g} + 1 = {int(g) + 1}.)"),
            True,
            f"'{line.split(' {')[0]}' phrasing, then a check",
        )
    i = b.gsm_pool(rng, 1, small_int(101, 999))[0]
    g = b.d.gsm_gold(i)
    b.add(
        "number_words",
        "gsm8k",
        f"gsm8k/test:{i}",
        g,
        b.gsm_completion(i, f"The answer is {int_to_words(int(g))}."),
        True,
        f"'{int_to_words(int(g))}' for {g}",
    )
    i = b.gsm_pool(
        rng,
        1,
        lambda i, g, q: (
            is_int(g)
            and 1000 <= int(g) <= 99999
            and ("$" + g in b.d.gsm_lines(i)[-1] or "$" + f"{int(g):,}" in b.d.gsm_lines(i)[-1])
        ),
        max_lines=7,
    )[0]
    g = b.d.gsm_gold(i)
    b.add(
        "money",
        "gsm8k",
        f"gsm8k/test:{i}",
        g,
        b.gsm_completion(i, f"Answer: ${int(g):,}.00"),
        True,
        "'$1,234.00' form",
    )
    uid, item, g = b.d.math_item("geometry/473")
    b.add(
        "units",
        "math",
        uid,
        g,
        b.math_completion(math_reasoning(item["solution"], "drop"), "The answer is 864 in²."),
        True,
        "unicode square inches",
    )
    uid, item, g = b.d.math_item("prealgebra/8")
    b.add(
        "choice_letter",
        "math",
        uid,
        g,
        b.math_completion(math_reasoning(item["solution"], "drop"), "The correct answer is option C."),
        True,
        "'option C'",
    )


KINDS = [
    k_declared_trailing,
    k_gold_elsewhere,
    k_correct_then_wrong,
    k_self_correction,
    k_near_miss,
    k_rounded,
    k_matrix,
    k_tuple_interval,
    k_units,
    k_number_words,
    k_text_answer,
    k_choice_letter,
    k_expr_value,
    k_frac_decimal,
    k_percent,
    k_money,
    k_thousands,
    k_latex_forms,
    k_var_assign,
    k_root_sets,
    k_extraneous,
    k_hedged,
    k_more_phrasings,
]


# ------------------------------------------------------------------------------- the independent label check
#
# Written from the text only: it sees the completion and the gold string, never the row's kind, note or label.

import sympy  # noqa: E402
from sympy.parsing.sympy_parser import (  # noqa: E402
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

DECL_PATTERNS = [
    re.compile(
        r"(?i)(?:final answer|the answer|answer|option|choice)\s*(?:is:?|:)\s*(?:\*\*)?\s*(?P<a>[^\n]*)"
    ),
    re.compile(r"(?m)^####\s*(?P<a>[^\n]*)"),
    re.compile(r"(?i)\*\*(?:final )?answer:?\*\*:?\s*(?P<a>[^\n]*)"),
]


def declarations(text: str) -> list[tuple[int, str]]:
    found = []
    for p in DECL_PATTERNS:
        for m in p.finditer(text):
            found.append((m.start("a"), m.group("a")))
    for a, _e, c in boxed_spans(text):
        found.append((a, c))
    return sorted(found)


def clean_decl(a: str) -> str:
    a = a.strip()
    spans = boxed_spans(a)
    if spans:
        return spans[-1][2]
    while True:  # "Final Answer: The final answer is X" -> X
        m = re.match(r"(?i)(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", a)
        if not m:
            break
        a = a[m.end() :]
    a = re.sub(r"\s*I hope it is correct\.?$", "", a)
    a = re.sub(r"\*\*", "", a).strip()
    a = re.sub(r"[.\s]+$", "", a) if not re.search(r"\d\.$", a) else a[:-1]
    return a.strip()


def final_declared(text: str) -> str | None:
    ds = declarations(text)
    if not ds:
        return None
    # the last declaration by position; a \boxed inside a phrase wins over the phrase (same end)
    pos, a = ds[-1]
    return clean_decl(a)


WORD_NUM = {w: i for i, w in enumerate(NUM_WORDS)}
WORD_NUM.update({w: 10 * i for i, w in enumerate(TENS_WORDS) if w != "_"})


def words_to_number(s: str) -> str:
    def conv(m):
        toks = re.split(r"[\s-]+", m.group(0).lower())
        total, cur = 0, 0
        for t in toks:
            if t in WORD_NUM:
                cur += WORD_NUM[t]
            elif t == "hundred":
                cur *= 100
            elif t == "thousand":
                total += cur * 1000
                cur = 0
        return str(total + cur)

    names = "|".join(sorted(list(WORD_NUM) + ["hundred", "thousand"], key=len, reverse=True))
    return re.sub(rf"(?i)\b(?:{names})(?:[\s-]+(?:{names}))*\b", conv, s)


def unwrap_text(s: str) -> str:
    for cmd in ("text", "mbox", "textbf", "mathrm", "textrm", "mathbf", "operatorname"):
        while True:
            m = re.search(r"\\" + cmd + r"\s*\{", s)
            if not m:
                break
            e = brace_span(s, m.end() - 1)
            if e < 0:
                break
            s = s[: m.start()] + " " + s[m.end() : e - 1] + " " + s[e:]
    return s


def base_clean(s: str) -> str:
    s = s.replace("$", " ").replace("\\$", " ")
    s = re.sub(r"\\(left|right|displaystyle|bigl|bigr|Bigl|Bigr)\b", "", s)
    s = s.replace("\\!", "").replace("\\;", " ").replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"(?<=\d)\\,(?=\d{3})", "", s)
    s = s.replace("\\,", " ")
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"\\(d|t)frac", r"\\frac", s)
    s = s.replace("\\%", "%")
    return s.strip()


def letter_of(s: str) -> str | None:
    s = unwrap_text(s).replace("$", "").strip()
    s = re.sub(r"(?i)^(option|choice)\s+", "", s)
    m = re.match(r"^\(?([A-E])\)?(?:[.\s:]|$)", s)
    return m.group(1) if m else None


STOP = {"a", "an", "the", "on", "it", "is", "will", "be", "function", "day", "graph", "facing", "student"}


def words_of(s: str) -> set[str]:
    s = unwrap_text(s).replace("$", " ")
    return {w for w in re.findall(r"[a-z]+", s.lower()) if w not in STOP}


def read_arg(s: str, i: int) -> tuple[str, int]:
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        e = brace_span(s, i)
        return s[i + 1 : e - 1], e
    if s.startswith("\\", i):
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        name = m.group(0)
        arg, j = read_arg(s, i + len(name))
        return name + "{" + arg + "}", j
    return s[i], i + 1


def latex_to_py(s: str) -> str:
    s = base_clean(unwrap_text(s))
    trig = re.search(r"\\(sin|cos|tan)", s) is not None
    s = re.sub(r"(\d+(?:\.\d+)?)\s*\^\s*\{?\\circ\}?", (r"(\1*pi/180)" if trig else r"\1"), s)
    s = s.replace("°", "")
    s = re.sub(r"(?<=\d)\s+(?=\\frac)", " + ", s)  # mixed number 3 \frac12 written with a space
    s = re.sub(r"(?<=\d)(?=\\frac)", " + ", s)  # 3\frac{1}{2} -> 3 + 1/2
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            a, j = read_arg(s, i + 5)
            c, k = read_arg(s, j)
            out.append(f"(({latex_to_py(a)})/({latex_to_py(c)}))")
            i = k
        elif s.startswith("\\sqrt", i):
            j = i + 5
            root = None
            if j < len(s) and s[j] == "[":
                e = s.index("]", j)
                root, j = s[j + 1 : e], e + 1
            a, k = read_arg(s, j)
            out.append(f"(({latex_to_py(a)})**(1/({root})))" if root else f"sqrt({latex_to_py(a)})")
            i = k
        elif s.startswith("\\binom", i) or s.startswith("\\dbinom", i):
            j = i + (6 if s.startswith("\\binom", i) else 7)
            a, j = read_arg(s, j)
            c, k = read_arg(s, j)
            out.append(f"binomial({latex_to_py(a)},{latex_to_py(c)})")
            i = k
        else:
            out.append(s[i])
            i += 1
    t = "".join(out)
    t = re.sub(r"\\(sin|cos|tan)\s*", r" \1", t)
    t = t.replace("\\pi", " pi ").replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    t = t.replace("{", "(").replace("}", ")")
    t = t.replace("%", "")
    t = re.sub(r"(\d*\.\d+)", r"Rational('\1')", t)
    return t


TRANS = standard_transformations + (implicit_multiplication_application, convert_xor)
LOCALS = {
    "pi": sympy.pi,
    "i": sympy.I,
    "sqrt": sympy.sqrt,
    "binomial": sympy.binomial,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "Rational": sympy.Rational,
}


def to_sympy(s: str):
    return parse_expr(latex_to_py(s), local_dict=LOCALS, transformations=TRANS, evaluate=True)


def strip_units(s: str) -> str:
    """Drop units and words around a number: '864 square inches', '45 miles per hour', '18 dollars', 'x = 5'."""
    s = base_clean(unwrap_text(words_to_number(s))).replace("²", "^2").replace("³", "^3")
    s = re.sub(r"^\s*\(?[a-zA-Z]\s*(,\s*[a-zA-Z])?\)?\s*=\s*", "", s)  # x = 5, (x, y) = ...
    s = re.sub(r"(?i)\bpercent\b", "", s)
    s = re.sub(r"(?i)\bdollars?\b", "", s)
    for _ in range(4):
        s = re.sub(r"(?<![\\a-zA-Z])(?:[A-Za-z]{2,}\.?|m|g)\s*(\^\s*\{?\d\}?)?\s*$", "", s).strip()
        s = re.sub(r"(?i)\s+(per|square|cubic|sq)\s*$", "", s).strip()
    s = re.sub(r"(\d)\s+(?=\d{3}\b)", r"\1", s)  # 1 500 -> 1500
    return s.strip().rstrip(".").strip()


def same_value(a: str, g: str) -> bool | None:
    try:
        ea, eg = to_sympy(strip_units(a)), to_sympy(strip_units(g))
    except Exception:
        return None
    try:
        if sympy.simplify(ea - eg) == 0:
            return True
        va, vg = complex(ea.evalf(30)), complex(eg.evalf(30))
        return abs(va - vg) <= 1e-12 * max(1.0, abs(vg))
    except Exception:
        return None


def split_top(s: str, seps=(",",)) -> list[str]:
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and ch in seps:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def matrix_cells(s: str):
    m = re.search(r"\\begin\{([pbvB]?matrix|array)\}(\{[^}]*\})?(.*?)\\end\{\1\}", s, re.S)
    if not m:
        return None
    return [[c.strip() for c in row.split("&")] for row in m.group(3).split("\\\\") if row.strip()]


def intervals_of(s: str):
    s = base_clean(s)
    s = re.sub(r"^\s*[a-z]\s*\\in\s*", "", s)
    s = re.sub(r"^\s*\(\s*[a-z]\s*,\s*[a-z]\s*\)\s*=\s*", "", s)
    pieces = [p.strip() for p in s.split("\\cup")]
    out = []
    for p in pieces:
        m = re.fullmatch(r"([\(\[])(.*)([\)\]])", p, re.S)
        if not m:
            return None
        ends = split_top(m.group(2))
        if len(ends) != 2:
            return None
        out.append((m.group(1), ends[0], ends[1], m.group(3)))
    return out


def root_values(s: str):
    s = base_clean(unwrap_text(s))
    s = re.sub(r"\s+(or|and)\s+", ",", s)
    vals = []
    for p in split_top(s):
        p = re.sub(r"^[a-z]\s*=\s*", "", p.strip())
        if "\\pm" in p:
            left, right = p.split("\\pm", 1)
            left = left.strip() or "0"
            vals += [f"{left} + {right}", f"{left} - ({right})"]
        else:
            vals.append(p)
    try:
        return [to_sympy(v) for v in vals]
    except Exception:
        return None


def set_equal(xs, ys) -> bool:
    def has(zs, v):
        return any(sympy.simplify(v - z) == 0 for z in zs)

    return all(has(ys, x) for x in xs) and all(has(xs, y) for y in ys)


def independent_label(completion: str, gold: str) -> tuple[bool | None, str]:
    """(label, declared) from the text only; label None where the rule cannot decide."""
    a = final_declared(completion)
    if a is None:
        return None, ""
    g = gold.strip()
    gu = unwrap_text(g).strip()
    # choice letter
    if re.fullmatch(r"\(?[A-E]\)?", gu.strip()):
        return letter_of(a) == gu.strip("() "), a
    # word answers
    if not re.search(r"\d", gu) and re.fullmatch(r"[A-Za-z ]+", gu.strip()):
        return words_of(a) == words_of(g), a
    # matrices
    if "matrix" in g:
        cg, ca = matrix_cells(g), matrix_cells(a)
        if ca is None:
            return False, a
        if len(cg) != len(ca) or any(len(r1) != len(r2) for r1, r2 in zip(cg, ca, strict=True)):
            return False, a
        ok = all(same_value(x, y) for r1, r2 in zip(ca, cg, strict=True) for x, y in zip(r1, r2, strict=True))
        return ok, a
    # intervals and tuples
    ig = intervals_of(g)
    if ig is not None:
        ia = intervals_of(a)
        if ia is None or len(ia) != len(ig):
            return False, a
        for (l1, x1, y1, r1), (l2, x2, y2, r2) in zip(ia, ig, strict=True):
            if l1 != l2 or r1 != r2:
                return False, a
            for u, v in ((x1, x2), (y1, y2)):
                if "infty" in u or "infty" in v:
                    if u.replace(" ", "") != v.replace(" ", ""):
                        return False, a
                elif not same_value(u, v):
                    return False, a
        return True, a
    # lists of roots (top-level commas or \pm in the gold, or several values declared)
    gb = base_clean(g)
    ab = base_clean(unwrap_text(a))
    multi_a = len(split_top(re.sub(r"\s+(or|and)\s+", ",", ab))) > 1 or "\\pm" in ab
    if len(split_top(gb)) > 1 or "\\pm" in gb or multi_a:
        rg, ra = root_values(g), root_values(a)
        if rg is None or ra is None:
            return None, a
        return set_equal(ra, rg), a
    return same_value(a, g), a


# Rows where the independent rule and the construction disagreed or the rule could not decide; each was read by
# hand. value: (label, reason). The build stops on any disagreement not listed here.
HAND_DECISIONS: dict[str, tuple[bool, str]] = {
    "blind-hedged-04": (
        False,
        "'Answer: 1208 (or 1210 if we also count the last one)': two values offered; the rule "
        "reads the whole parenthesis as one expression and cannot parse it. A grader does not "
        "accept a hedge, even when one of the options is the gold.",
    ),
    "blind-hedged-05": (
        False,
        "'40 or 42, depending on how the question is read': two values offered; the rule cannot "
        "parse the trailing clause. A hedge is wrong for a grader.",
    ),
}


def build(data: Data) -> list[dict]:
    b = Builder(data)
    for k in KINDS:
        k(b)
    return b.rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="verify the file on disk equals a fresh build")
    ap.add_argument("--show", action="store_true", help="print every disagreement with the independent rule")
    args = ap.parse_args()
    data = Data(data_dir())
    rows = build(data)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    disagree, undecided = [], []
    for r in rows:
        lab, declared = independent_label(r["completion"], r["gold"])
        r["_declared"] = declared
        if lab is None:
            undecided.append(r)
        elif lab != r["label"]:
            disagree.append((r, lab))
    unresolved = []
    for r in undecided + [x for x, _ in disagree]:
        if r["id"] in HAND_DECISIONS:
            hl, reason = HAND_DECISIONS[r["id"]]
            if hl != r["label"]:
                raise SystemExit(f"{r['id']}: hand decision {hl} contradicts construction label {r['label']}")
        else:
            unresolved.append(r)
    for r in rows:
        r.pop("_declared")
    n_true = sum(r["label"] for r in rows)
    kinds = sorted({r["kind"] for r in rows})
    print(f"{len(rows)} rows: {n_true} true, {len(rows) - n_true} false; {len(kinds)} kinds")
    for k in kinds:
        kr = [r for r in rows if r["kind"] == k]
        print(
            f"  {k:20s} {len(kr):3d}  true {sum(r['label'] for r in kr):3d}  false {sum(not r['label'] for r in kr):3d}"
        )
    print(
        f"independent check: {len(disagree)} disagreements, {len(undecided)} undecided, "
        f"{len(disagree) + len(undecided) - len(unresolved)} resolved by hand"
    )
    if unresolved or args.show:
        for r in unresolved if not args.show else undecided + [x for x, _ in disagree]:
            lab, declared = independent_label(r["completion"], r["gold"])
            print(f"--- {r['id']} label={r['label']} rule={lab} gold={r['gold']!r} declared={declared!r}")
            print("   " + "\n   ".join(r["completion"].splitlines()[-3:]))
    if unresolved:
        raise SystemExit(f"{len(unresolved)} rows need a hand decision")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("file matches a fresh build" if same else "file DIFFERS from a fresh build")
        sys.exit(0 if same else 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
