"""Build the labelled judge set: completions of real GSM8K and MATH test items, half equivalent to the gold, half not.

    .venv/bin/python bench/build_judge_set.py [--data-dir DIR] [--out tests/data/judge_set.jsonl]

Each row is one completion as a careful grader would read it: a little working (the start of the item's reference
solution), a declared answer in one of many forms, sometimes text after it. ``kind`` says what the row tests
(see KINDS); ``label`` is True when a careful grader accepts the completion. Gold answers come from the shared data
(GSM8K: the text after ``####``; MATH: the last box of the reference solution), used by path, never copied whole.

Every label is set twice:

1. by construction: each generator writes a completion whose declared answer it knows to be right or wrong
   (``declared``), e.g. the gold in another form, or a near-miss value;
2. by a second method, ``second_opinion`` below, written apart from the judges (it imports nothing from
   ``mathscale_utils`` but the data readers): it checks that ``declared`` is what the completion declares last,
   then reads ``declared`` and the gold with its own small LaTeX-to-sympy translator and per-kind rules (option
   letters, words, units, lists, vectors) and compares values exactly (sympy, no rounding).

Rows where the two disagree are listed in RESOLVED with the decision taken by hand and why; the build fails on a
disagreement that is not listed. While the set was written, the second method caught these construction errors,
fixed in the generators rather than relabelled: a "rounded" near miss that was exact (0.75 for 3/4: rounding now
only for inexact values); ``1\\sqrt 17``, which TeX reads as sqrt(1)*7 (a bare root argument now only for one
digit, no coefficient 1); the MATH gold "61,328", a thousands number and not a list of two (comma groups of three
digits are left out of the list kind); "440 cm" written for ``440\\text{ cm}^2`` (the square is kept). It also
caught its own mistakes (interval commas read as thousands separators, ``\\text{ or }`` read as a unit, the
degree sign dropped inside ``\\sin 60^\\circ``), fixed in ``second_opinion``. One row is decided by hand: a mixed
number (RESOLVED). The split is by item (``split``: "dev" ~70%, "heldout" ~30%, from a hash of the
item id), and the last phrasing of each list of phrasings is used only in held-out rows, so held-out also has
wordings the judge was not tuned on. Deterministic: one seed, no clock, no set iteration order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.data.benchmarks import read_gsm8k, read_math  # noqa: E402

SEED = 15
OUT = ROOT / "tests" / "data" / "judge_set.jsonl"
HELDOUT_SHARE = 0.3

# ================================================================================================================
# items: gold answers sorted into the shapes the generators know how to vary


def split_of(item_id: str) -> str:
    """dev or heldout, fixed by the item id (so an item's completions are all on one side)."""
    h = int(hashlib.sha256(f"judge-set/{item_id}".encode()).hexdigest()[:8], 16)
    return "heldout" if h % 1000 < HELDOUT_SHARE * 1000 else "dev"


_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_SQRT = re.compile(r"(\d*)\\sqrt\{(\d+)\}")
_FRAC_SQRT = re.compile(r"\\frac\{(\d*)\\sqrt\{(\d+)\}\}\{(\d+)\}")
_PI = re.compile(r"(\d+)\s*\\pi")
_DEC = re.compile(r"-?\d*\.\d+")
_TUPLE = re.compile(r"\((-?\d+),\s*(-?\d+)\)")
_INTERVAL = re.compile(r"([(\[])(-?\d+|-\\infty),\s*(-?\d+|\\infty)([)\]])")
_PMATRIX = re.compile(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", re.S)
_CHOICE = re.compile(r"\(?\\text\{\s*\(?([A-E])\)?\s*\}\)?|\(?([A-E])\)?")
_DEGREES = re.compile(r"(\d+)\^\{?\\circ\}?")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\\%")
_MONEY = re.compile(r"\\\$\s?(\d+(?:\.\d\d)?)")
_UNIT = re.compile(r"(\d+)\s*\\(?:text|mbox)\{\s*([a-z ]+?)\s*\}(\^2)?")
_LIST = re.compile(r"-?\d+(?:\s*,\s*-?\d+)+")
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORD_SETS = [["odd", "even", "neither"], ["circle", "parabola", "ellipse", "hyperbola"], DAYS]


def shape_of(gold: str) -> str | None:
    """The gold's shape, for the generators (None: not used)."""
    g = gold.strip()
    for name, rx in (
        ("int", _INT),
        ("frac", _FRAC),
        ("sqrt", _SQRT),
        ("frac_sqrt", _FRAC_SQRT),
        ("pi", _PI),
        ("dec", _DEC),
        ("tuple", _TUPLE),
        ("interval", _INTERVAL),
        ("matrix", _PMATRIX),
        ("choice", _CHOICE),
        ("degrees", _DEGREES),
        ("percent", _PERCENT),
        ("money", _MONEY),
        ("unit", _UNIT),
        ("list", _LIST),
    ):
        if rx.fullmatch(g):
            if name == "list" and re.fullmatch(r"-?\d{1,3}(?:,\d{3})+", g):  # "61,328": 61328, or a list?
                return None
            return name
    if re.fullmatch(r"\\(?:text|mbox)\{([A-Za-z]+)\}", g) and any(
        re.sub(r"\\(?:text|mbox)\{|\}", "", g) in ws for ws in WORD_SETS
    ):
        return "word"
    return None


def load_items(data_dir: Path) -> dict[str, list[dict]]:
    """Test items by shape: {"gsm8k": [...], "int": [...], ...}; each {id, dataset, gold, question, working}."""
    by: dict[str, list[dict]] = {}
    for r in read_gsm8k(data_dir, "test"):
        first = r.solution.split("\n")[:2]
        by.setdefault("gsm8k", []).append(
            {
                "id": r.id,
                "dataset": "gsm8k",
                "gold": r.answer,
                "working": "\n".join(first),
                "question": r.question,
            }
        )
    for r in read_math(data_dir, "test"):
        shape = shape_of(r.answer)
        if shape is None:
            continue
        by.setdefault(shape, []).append(
            {"id": r.id, "dataset": "MATH", "gold": r.answer, "working": math_working(r.solution)}
        )
    return by


_MESSY = re.compile(r"\[asy\]|\\begin|\\\[|\$\$|\\boxed|\\fbox|answer", re.I)


def math_working(solution: str) -> str:
    """The first sentences of a MATH solution (at most ~250 characters) as a completion's working: sentences
    with diagrams, displayed environments, boxes or the word "answer" are left out, so nothing is cut half-open."""
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", solution):
        if _MESSY.search(sent) or sent.count("$") % 2:
            continue
        if out and len(" ".join(out + [sent])) > 250:
            break
        out.append(sent)
    return " ".join(out) or "We work through the problem step by step."


# ================================================================================================================
# phrasings: how a completion declares its answer and what may follow it. The LAST entry of each list is used
# only in held-out rows.

DECLARE = [
    "The answer is {a}.",
    "Therefore, the answer is {a}.",
    "So the final answer is {a}.",
    "Answer: {a}",
    "#### {a}",
    "**Answer:** {a}",
    "The final answer is {a}",
    "Hence, the required answer is: {a}.",
]
DECLARE_MATH = [
    "The answer is ${a}$.",
    "Therefore, the final answer is $\\boxed{{{a}}}$.",
    "So the answer is $\\boxed{{{a}}}$.",
    "Final Answer: The final answer is ${a}$. I hope it is correct.",
    "Answer: ${a}$",
    "$$\\boxed{{{a}}}$$",
    "Thus our answer is \\( {a} \\).",
]
AFTER = [  # text after the declared answer, {g} the declared value and {n} other numbers
    "Check: {g} + {n} = {gn}.",
    "To verify, {n} + {g} = {gn}, which is consistent.",
    "I hope it is correct.",
    "(We double-check the arithmetic: {n} x 2 = {n2}.)",
    "This matches the conditions of the problem, where we also had {n} and {n2}.",
    "We can verify that the answer is correct: {g} + {n} = {gn}.",
    "Let me re-check: {n2} - {n} = {n}, and {g} stays the same.",
]


def pick(rng: random.Random, options: list[str], split: str) -> str:
    """One phrasing; the last one of the list only in held-out rows."""
    return rng.choice(options if split == "heldout" else options[:-1])


def declare(rng: random.Random, a: str, split: str, latex: bool = False) -> str:
    """A declaration of ``a``; LaTeX phrasings (``$a$``, boxes) only for an answer without plain words."""
    plain_words = re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+\{[^{}]*\}", "", a))
    return pick(rng, DECLARE_MATH if latex and not plain_words else DECLARE, split).format(a=a)


def after(rng: random.Random, g: str, split: str) -> str:
    n = rng.randint(2, 60)
    try:
        gv = Fraction(g.replace(",", ""))
        gn = str(gv + n) if gv.denominator == 1 else f"{g} + {n}"
    except (ValueError, ZeroDivisionError):
        gn = f"{g} + {n}"
    return pick(rng, AFTER, split).format(g=g, n=n, gn=gn, n2=2 * n)


# ================================================================================================================
# wrong values that look close


def near_int(rng: random.Random, n: int) -> int:
    """A near-miss integer: off by one or ten, a digit dropped or swapped, ten times too big."""
    s = str(abs(n))
    cands = [n + 1, n - 1, n + 10, n * 10]
    if len(s) >= 2:
        cands.append(int(s[0] + s[2:] if len(s) > 2 else s[0]) * (1 if n >= 0 else -1))
        sw = s[:-2] + s[-1] + s[-2]
        if sw != s:
            cands.append(int(sw) * (1 if n >= 0 else -1))
    cands = [c for c in cands if c != n]
    return rng.choice(cands)


def gsm_int(gold: str) -> int | None:
    try:
        return int(gold.replace(",", ""))
    except ValueError:
        return None


def with_commas(n: int) -> str:
    return f"{n:,}"


NUM_WORDS = {
    0: "zero",
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
    13: "thirteen",
    14: "fourteen",
    15: "fifteen",
    16: "sixteen",
    17: "seventeen",
    18: "eighteen",
    19: "nineteen",
    20: "twenty",
    30: "thirty",
    40: "forty",
    50: "fifty",
    60: "sixty",
    70: "seventy",
    80: "eighty",
    90: "ninety",
}


def in_words(n: int) -> str | None:
    if n in NUM_WORDS:
        return NUM_WORDS[n]
    if 20 < n < 100:
        return NUM_WORDS[n - n % 10] + "-" + NUM_WORDS[n % 10]
    return None


# ================================================================================================================
# generators: (item, rng, split, positive) -> (completion, declared, note) or None when the item does not fit.
# ``declared`` is the answer text exactly as the completion states it last.


def g_plain(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None:
        return None
    a = it["gold"] if pos else with_commas(near_int(rng, n)) if "," in it["gold"] else str(near_int(rng, n))
    return f"{it['working']}\n{declare(rng, a, split)}", a, "gold as written" if pos else "near-miss number"


def g_declared_then_more(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None:
        return None
    a = str(n) if pos else str(near_int(rng, n))
    tail = after(rng, a, split)
    if not pos:  # the gold itself appears after the wrong declared answer
        tail += f" Earlier we also found {n}."
    return f"{it['working']}\n{declare(rng, a, split)}\n{tail}", a, "declared, then other numbers"


def g_boxed_then_more(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None:
        return None
    a = str(n) if pos else str(near_int(rng, n))
    tail = after(rng, a, split) + ("" if pos else f" (Not {n}, which counts the eggs twice.)")
    return f"{it['working']}\nSo the result is $\\boxed{{{a}}}$.\n\n{tail}", a, "box, then more text"


def g_self_correction(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None:
        return None
    w = near_int(rng, n)
    first, last = (w, n) if pos else (n, w)
    text = (
        f"{it['working']}\nThe answer is {first}.\n"
        f"Wait, let me recheck that step. {pick(rng, SELF_FIX, split)}\nThe answer is {last}."
    )
    return text, str(last), "corrected to the gold" if pos else "right value, then a wrong final answer"


SELF_FIX = [
    "I made an arithmetic error above.",
    "Actually, I misread the question.",
    "Hmm, that is not right; recomputing.",
    "On second thought, the last step was wrong.",
]


def g_right_then_wrong(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None:
        return None
    w = near_int(rng, n)
    if pos:  # a wrong-looking intermediate number, then the right final answer
        text = f"{it['working']}\nA first estimate gives {w}, but we must use the exact count.\nThe answer is {n}."
        return text, str(n), "other number before the right final answer"
    text = f"{it['working']}\nThis gives {n} in total, and then we adjust once more.\nThe answer is {w}."
    return text, str(w), "gold in the working, wrong final answer"


def g_undeclared(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None or not re.search(r"\d", it["working"]):
        return None
    a = it["gold"] if pos else str(near_int(rng, n))
    end = pick(
        rng,
        [
            "So the total comes to {a}.",
            "That means she has {a} left.",
            "In total: {a}",
            "We get {a} as the result.",
            "Thus {a} is what we are looking for.",
        ],
        split,
    ).format(a=a)
    working = re.sub(r"(?i)answer", "result", it["working"])
    return f"{working}\n{end}", a, "no answer phrase: the last number"


def g_separators(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None or abs(n) < 1000:
        return None
    if pos:
        s = str(n)
        a = rng.choice(
            [
                with_commas(n),
                s,
                f"{with_commas(n).replace(',', '{,}')}",
                with_commas(n).replace(",", "\\,"),
                with_commas(n).replace(",", "\\!,\\!"),
            ]
        )
        note = "thousands separator style"
    else:
        s = str(abs(n))
        wrong = int(s[:-1]) if rng.random() < 0.5 else int(s + "0")
        wrong = wrong * (1 if n >= 0 else -1)
        a = with_commas(wrong)
        note = "digit dropped or added, separators kept"
    latex = "\\" in a or "{" in a
    return f"{it['working']}\n{declare(rng, a, split, latex=latex)}", a, note


def _asks_money(question: str) -> bool:
    """A GSM8K question whose answer is an amount of money."""
    return bool(
        re.search(r"(?i)how much (?:money|did|does|do|will|would|is|was|are)\b|in dollars|\$", question)
    ) and ("$" in question or "dollar" in question.lower())


def g_money(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None or n < 0 or not _asks_money(it["question"]):
        return None
    v = n if pos else rng.choice([n + 1, n * 100, n - 1]) if n > 1 else n + 2
    a = rng.choice([f"${with_commas(v)}", f"${v}.00", f"\\${v}", f"{v} dollars", f"$ {with_commas(v)}"])
    latex = a.startswith("\\")
    return (
        f"{it['working']}\n{declare(rng, a, split, latex=latex)}",
        a,
        "money" if pos else "money, near miss",
    )


def g_number_words(it, rng, split, pos):
    n = gsm_int(it["gold"])
    if n is None or in_words(n) is None:
        return None
    v = n if pos else rng.choice([n + 1, n - 1]) if n > 0 else n + 1
    w = in_words(v)
    if w is None:
        return None
    a = rng.choice([w, w.capitalize(), f"{w} {rng.choice(['apples', 'days', 'people', 'hours'])}"])
    return f"{it['working']}\n{declare(rng, a, split)}", a, "number in words"


_NOT_A_UNIT = {
    "more",
    "times",
    "of",
    "percent",
    "total",
    "people",
    "in",
    "does",
    "did",
    "do",
    "will",
    "would",
    "can",
}


def question_unit(question: str) -> str | None:
    """The unit a GSM8K question asks for: the noun after "How many" ("How many pens ..." -> "pens"), or "dollars"
    for a money question; None when unclear."""
    m = re.search(r"(?i)how many ([a-z]+)(?: ([a-z]+))?", question)
    if m and m.group(1).lower() not in _NOT_A_UNIT:
        two = m.group(2) and m.group(2).lower() not in (
            "does",
            "did",
            "do",
            "will",
            "would",
            "can",
            "are",
            "is",
            "were",
            "was",
            "has",
            "have",
            "had",
            "should",
            "must",
            "could",
            "of",
        )
        return (
            f"{m.group(1)} {m.group(2)}".lower()
            if two and m.group(1).lower() in ("square", "cubic")
            else m.group(1).lower()
        )
    return "dollars" if _asks_money(question) else None


def g_units_gsm(it, rng, split, pos):
    n = gsm_int(it["gold"])
    unit = question_unit(it["question"])
    if n is None or unit is None:
        return None
    v = n if pos else near_int(rng, n)
    a = f"{v} {unit}"
    return f"{it['working']}\n{declare(rng, a, split)}", a, "number with unit words"


# --- MATH generators ---------------------------------------------------------------------------------------------


def m_int(it, rng, split, pos):
    n = int(it["gold"])
    if pos:
        a = rng.choice(
            [str(n), f"{n}.0", f"x = {n}", f"{{{n}}}", f"\\mathbf{{{n}}}"]
            + ([f"\u2212{-n}"] * 3 if n < 0 else [])
        )
    else:
        a = str(near_int(rng, n))
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, "integer form" if pos else "near miss"


def _int_forms(n: int) -> tuple[list[str], list[str]]:
    """Expressions equal to n, and close ones that are not (a careful grader accepts an unsimplified value)."""
    same = [f"\\frac{{{3 * n}}}{{3}}", f"\\sqrt{{{n * n}}}"]
    near = [f"\\frac{{{3 * n + 1}}}{{3}}", f"\\sqrt{{{n * n + 1}}}"]
    k = n.bit_length() - 1
    if n >= 4 and n == 2**k:
        same.append(f"2^{{{k}}}")
        near.append(f"2^{{{k + 1}}}")
    fact = {6: 3, 24: 4, 120: 5, 720: 6}
    if n in fact:
        same.append(f"{fact[n]}!")
        near.append(f"{fact[n] + 1}!")
    for m in range(4, 40):
        if m * (m - 1) // 2 == n:
            same.append(f"\\binom{{{m}}}{{2}}")
            near.append(f"\\binom{{{m}}}{{3}}")
    r = int(n**0.5)
    if r > 1 and r * r == n:
        same.append(f"{r}^2")
        near.append(f"{r}^3")
    return same, near


def m_int_equal_value(it, rng, split, pos):
    n = int(it["gold"])
    if n <= 1 or n > 1000:
        return None
    same, near = _int_forms(n)
    if pos:
        a, note = rng.choice(same), "expression equal to the gold"
    else:
        a, note = rng.choice(near), "expression close to the gold"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_frac(it, rng, split, pos):
    m = _FRAC.fullmatch(it["gold"])
    sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
    if pos:
        forms = [
            f"{sign}\\dfrac{{{p}}}{{{q}}}",
            f"{sign}{p}/{q}",
            f"\\frac{{{sign}{p}}}{{{q}}}",
            f"{sign}\\frac{{{2 * p}}}{{{2 * q}}}",
        ]
        if p < 10 and q < 10:
            forms.append(f"{sign}\\frac{p}{q}")
        if p > q and p % q:
            forms.append(f"{sign}{p // q}\\frac{{{p % q}}}{{{q}}}")
        if sympy.Rational(p, q).q in (2, 4, 5, 8, 10, 20, 25):
            forms.append(f"{sign}{float(sympy.Rational(p, q)):g}")
        a = rng.choice(forms)
        note = "fraction form"
    else:
        rounded = (
            f"{sign}{round(p / q, 2)}"
            if Fraction(p, q) != Fraction(str(round(p / q, 2)))
            else f"{sign}{p / q + 0.01:g}"
        )
        cands = [
            f"{sign}\\frac{{{q}}}{{{p}}}",
            f"{sign}\\frac{{{p + 1}}}{{{q}}}",
            rounded,
            f"{'' if sign else '-'}\\frac{{{p}}}{{{q}}}",
        ]
        a = rng.choice([c for c in cands if c not in (it["gold"],)] if p != q else cands[1:])
        note = "reciprocal, off by one, rounded or sign"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_dec(it, rng, split, pos):
    g = it["gold"]
    v = sympy.Rational(g if not g.startswith(".") else "0" + g)
    if pos:
        forms = [g + "0", f"\\frac{{{v.p}}}{{{v.q}}}", ("0" + g) if g.startswith(".") else g.rstrip("0")]
        a = rng.choice([f for f in forms if f])
        note = "decimal as fraction / trailing zero"
    else:
        a = rng.choice([str(float(v) + 0.1), str(float(v) * 10), g.replace(".", "")])
        note = "decimal near miss"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_sqrt(it, rng, split, pos):
    m = _SQRT.fullmatch(it["gold"])
    c, r = int(m.group(1) or 1), int(m.group(2))
    if pos:
        k = "" if c == 1 else str(c)
        forms = [
            f"\\sqrt{{{c * c * r}}}",
            f"{k}\\sqrt{{ {r} }}",
            f"{c} \\cdot \\sqrt{{{r}}}",
            f"\\sqrt{{{r}}} \\cdot {c}",
        ]
        if r < 10:
            forms.append(f"{k}\\sqrt {r}")
        if r == 3 and c == 1:
            forms.append("\\tan 60^\\circ")
        if r == 2 and c == 1:
            forms.append("2\\cos 45^\\circ")
        a = rng.choice(forms)
        note = "radical in another form"
    else:
        k = "" if c == 1 else str(c)
        a = rng.choice(
            [
                f"{k}\\sqrt{{{r + 1}}}",
                f"{c + 1}\\sqrt{{{r}}}",
                f"{float(sympy.sqrt(r) * c):.2f}",
                f"\\sqrt{{{c * r}}}" if c > 1 else f"\\sqrt{{{r}}} + 1",
            ]
        )
        note = "radical near miss or rounded decimal"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_frac_sqrt(it, rng, split, pos):
    m = _FRAC_SQRT.fullmatch(it["gold"])
    c, r, d = int(m.group(1) or 1), int(m.group(2)), int(m.group(3))
    if pos:
        k = "" if c == 1 else str(c)
        forms = [
            f"\\dfrac{{{k}\\sqrt{{{r}}}}}{{{d}}}",
            f"\\frac{{{c}}}{{{d}}}\\sqrt{{{r}}}",
            f"\\frac{{\\sqrt{{{c * c * r}}}}}{{{d}}}",
        ]
        if (c, r, d) == (1, 3, 3):
            forms.append("\\frac{1}{\\sqrt{3}}")
        if (c, r, d) == (1, 3, 2):
            forms.append("\\sin 60^\\circ")
        if (c, r, d) == (1, 2, 2):
            forms.append("\\frac{1}{\\sqrt{2}}")
        a = rng.choice(forms)
        note = "radical fraction in another form"
    else:
        k = "" if c == 1 else str(c)
        a = rng.choice(
            [
                f"\\frac{{{k}\\sqrt{{{r}}}}}{{{d + 1}}}",
                f"\\frac{{{d}}}{{{k}\\sqrt{{{r}}}}}",
                f"{float(c * sympy.sqrt(r) / d):.3f}",
            ]
        )
        note = "radical fraction near miss"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_pi(it, rng, split, pos):
    m = _PI.fullmatch(it["gold"])
    c = int(m.group(1))
    if pos:
        a = rng.choice(
            [
                f"\\pi \\cdot {c}",
                f"{c} \\pi",
                f"{c}\\pi \\text{{ square units}}",
                f"\\frac{{{2 * c}\\pi}}{{2}}",
            ]
        )
        note = "multiple of pi in another form"
    else:
        a = rng.choice([f"{c + 1}\\pi", f"{c * 3.14:.2f}", str(c), f"{c}\\pi^2"])
        note = "pi coefficient off, pi dropped or approximated"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_tuple(it, rng, split, pos):
    m = _TUPLE.fullmatch(it["gold"])
    x, y = m.group(1), m.group(2)
    if pos:
        a = rng.choice([f"\\left( {x}, {y} \\right)", f"({x},{y})", f"( {x} , {y} )", f"(x, y) = ({x}, {y})"])
        note = "ordered pair, other spacing / brackets sizing"
    else:
        cands = [f"({y}, {x})", f"({x}, {-int(y)})", f"[{x}, {y}]", f"({x}, {int(y) + 1})"]
        a = rng.choice([c for c in cands if c.replace(" ", "") != it["gold"].replace(" ", "")])
        note = "swapped, sign, bracket or entry changed"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_interval(it, rng, split, pos):
    m = _INTERVAL.fullmatch(it["gold"])
    lb, lo, hi, rb = m.groups()
    if pos:
        a = rng.choice(
            [f"\\left{lb}{lo}, {hi}\\right{rb}", f"{lb} {lo} , {hi} {rb}", f"x \\in {lb}{lo}, {hi}{rb}"]
        )
        note = "interval, other spacing"
    else:
        flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
        cands = []
        if "infty" not in lo:
            cands.append(f"{flip[lb]}{lo}, {hi}{rb}")
        if "infty" not in hi:
            cands.append(f"{lb}{lo}, {hi}{flip[rb]}")
            cands.append(f"{lb}{lo}, {int(hi) + 1}{rb}")
        if not cands:
            return None
        a = rng.choice(cands)
        note = "open/closed end or end point changed"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def _matrix_rows(gold: str) -> list[list[str]]:
    inner = _PMATRIX.fullmatch(gold).group(1)
    return [[c.strip() for c in row.split("&")] for row in inner.split("\\\\") if row.strip()]


def _render(rows: list[list[str]], env: str) -> str:
    body = " \\\\ ".join(" & ".join(r) for r in rows)
    if env == "array":
        return f"\\left[ \\begin{{array}}{{{'c' * len(rows[0])}}} {body} \\end{{array}} \\right]"
    return f"\\begin{{{env}}} {body} \\end{{{env}}}"


def m_matrix(it, rng, split, pos):
    rows = _matrix_rows(it["gold"])
    if any(not re.fullmatch(r"-?\s?\d+(?:/\d+)?", c) for r in rows for c in r):
        return None
    if pos:
        styles = ["bmatrix", "array", "pmatrix-spaced"]
        if len(rows[0]) == 1:
            styles.append("tuple")
        style = rng.choice(styles)
        if style == "tuple":
            a = "(" + ", ".join(r[0] for r in rows) + ")"
        elif style == "pmatrix-spaced":
            a = _render([[c.replace(" ", "") for c in r] for r in rows], "pmatrix").replace(" & ", "&")
        else:
            a = _render(rows, style)
        note = f"same matrix/vector as {style}"
    else:
        bad = [list(r) for r in rows]
        i, j = rng.randrange(len(bad)), rng.randrange(len(bad[0]))
        c = bad[i][j].replace(" ", "")
        bad[i][j] = c[1:] if c.startswith("-") and c != "-0" else ("-" + c if c not in ("0",) else "1")
        a = _render(bad, rng.choice(["bmatrix", "pmatrix"]))
        note = "one entry changed (sign)"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_choice(it, rng, split, pos):
    m = _CHOICE.fullmatch(it["gold"])
    letter = m.group(1) or m.group(2)
    if not pos:
        letter = rng.choice([c for c in "ABCDE" if c != letter])
    form = pick(
        rng,
        [
            "Answer: {L}",
            "The answer is ({L}).",
            "The correct option is $\\textbf{{({L})}}$.",
            "The answer is $\\boxed{{\\text{{({L})}}}}$.",
            "So the answer is option {L}.",
            "The answer is {L}) as computed.",
        ],
        split,
    )
    text = form.format(L=letter)
    return f"{it['working']}\n{text}", _declared_choice(text), "choice letter" if pos else "another letter"


def _declared_choice(text: str) -> str:
    for rx in (
        r"\\boxed\{(.*)\}\$",
        r"Answer: (\w)$",
        r"answer is \((\w)\)",
        r"\$\\textbf\{(\(\w\))\}\$",
        r"option (\w)",
        r"answer is (\w\))",
    ):
        m = re.search(rx, text)
        if m:
            return m.group(1)
    raise ValueError(text)


def m_word(it, rng, split, pos):
    w = re.sub(r"\\(?:text|mbox)\{|\}", "", it["gold"])
    pool = next(ws for ws in WORD_SETS if w in ws)
    v = w if pos else rng.choice([x for x in pool if x != w])
    art = "an" if v[0] in "aeiou" else "a"
    a = pick(rng, [f"\\text{{{v}}}", f"{art} {v}", v.capitalize(), f"\\textbf{{{v}}}", f"the {v}"], split)
    latex = a.startswith("\\")
    return (
        f"{it['working']}\n{declare(rng, a, split, latex=latex)}",
        a,
        "word answer" if pos else "another word",
    )


def m_degrees(it, rng, split, pos):
    n = int(_DEGREES.fullmatch(it["gold"]).group(1))
    v = n if pos else near_int(rng, n)
    a = rng.choice([f"{v}", f"{v}^\\circ", f"{v}^{{\\circ}}", f"{v} \\text{{ degrees}}", f"{v}°"])
    return (
        f"{it['working']}\n{declare(rng, a, split, latex=True)}",
        a,
        "degrees" if pos else "degrees, near miss",
    )


def m_percent(it, rng, split, pos):
    v = _PERCENT.fullmatch(it["gold"]).group(1)
    w = v if pos else str(near_int(rng, int(float(v)))) if "." not in v else str(float(v) + 1)
    a = rng.choice([f"{w}\\%", f"{w}%", f"{w}", f"{w} \\text{{ percent}}"])
    return (
        f"{it['working']}\n{declare(rng, a, split, latex=True)}",
        a,
        "percent" if pos else "percent, near miss",
    )


def m_money(it, rng, split, pos):
    v = _MONEY.fullmatch(it["gold"]).group(1)
    if pos:
        a = rng.choice([f"\\${v}", v, f"{v} \\text{{ dollars}}", f"\\$ {v}" if "." in v else f"\\${v}.00"])
        note = "money"
    else:
        f = Fraction(v)
        a = rng.choice([f"\\${float(f + 1):.2f}", f"\\${float(f * 10):.2f}", f"{float(f) + 0.05:.2f}"])
        note = "money, near miss"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_unit(it, rng, split, pos):
    m = _UNIT.fullmatch(it["gold"])
    n, unit, sq = int(m.group(1)), m.group(2), m.group(3)
    v = n if pos else near_int(rng, n)
    short = unit.split()[-1]
    forms = [
        f"{v}",
        f"{v} \\text{{ {unit}}}{sq or ''}",
        f"{v} \\mbox{{ {short}}}{'^2' if sq else ''}",
        f"{v}\\text{{{unit}}}",
        f"{v} {unit}{'^2' if sq else ''}",
    ]
    if "square" in unit:
        forms.append(f"{v} \\mbox{{ {short}}}^2")
    a = rng.choice(forms)
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, "units" if pos else "units, near miss"


def m_list(it, rng, split, pos):
    vals = [v.strip() for v in it["gold"].split(",")]
    if pos:
        shuffled = vals[:]
        rng.shuffle(shuffled)
        a = rng.choice(
            [
                ", ".join(shuffled),
                ", ".join(shuffled[:-1]) + (", and " if len(vals) > 2 else " and ") + shuffled[-1],
                " \\text{ or } ".join(f"x = {v}" for v in shuffled),
            ]
        )
        note = "all values, any order"
    else:
        cands = [", ".join(vals[:-1]), ", ".join(vals + [str(int(vals[-1]) + 1)])]
        a = rng.choice([c for c in cands if c])
        note = "a value missing or an extra one"
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, note


def m_extraneous(it, rng, split, pos):
    n = int(it["gold"])
    if pos:
        a = rng.choice([f"x = {n}", f"x={n}", f"{n}"])
        text = f"{it['working']}\nThe other root, x = {-n - 3}, does not satisfy the original equation.\n"
        return text + declare(rng, a, split, latex=True), a, "the valid root only"
    other = -n - 3 if n != -n - 3 else n + 2
    a = rng.choice([f"x = {n} \\text{{ or }} x = {other}", f"{n}, {other}", f"x = {other}"])
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}", a, "an extraneous root kept (or only it)"


def m_latex_forms(it, rng, split, pos):
    m = _FRAC.fullmatch(it["gold"])
    if not m:
        return None
    sign, p, q = m.groups()
    v = f"{sign}\\frac{{{p}}}{{{q}}}" if pos else f"{sign}\\frac{{{q}}}{{{p}}}"
    if not pos and p == q:
        v = f"{sign}\\frac{{{p}}}{{{int(q) + 1}}}"
    a = rng.choice([f"\\displaystyle {v}", f"\\left({v}\\right)", v.replace("\\frac", "\\tfrac"), f"{{{v}}}"])
    wrap = rng.choice(["\\boxed{{{a}}}", "\\( {a} \\)", "$${a}$$", "\\[ {a} \\]"])
    text = f"{it['working']}\nThe answer is {wrap.format(a=a)}."
    return text, a, "LaTeX wrappers and spacing" if pos else "LaTeX wrappers, wrong value"


def m_then_more(it, rng, split, pos):
    """A MATH answer declared, then a check that mentions other values (or, negative: the gold after a wrong one)."""
    g = it["gold"]
    m = _FRAC.fullmatch(g)
    if not m:
        return None
    sign, p, q = m.groups()
    a = g if pos else f"{sign}\\frac{{{int(p) + 1}}}{{{q}}}"
    tail = pick(
        rng,
        [
            f"Check: plugging back in gives ${int(q) * 2}$ on both sides.",
            f"As a sanity check, the decimal value is about {float(sympy.Rational(int(p), int(q))):.4f}.",
            f"Note that ${g}$ would be the answer if the coin were fair, but it is not.",
            f"We could also have written ${q}$ in the denominator directly.",
        ],
        split,
    )
    if pos and "coin were fair" in tail:
        tail = f"Plugging ${g}$ back in confirms it."
    return f"{it['working']}\n{declare(rng, a, split, latex=True)}\n{tail}", a, "declared, then a check"


def m_restated(it, rng, split, pos):
    """An answer followed by the same value in another form ("\\frac{3}{4}, i.e. 0.75"): right when every form
    is right; the negative restates a wrong value, the gold only in the working."""
    m = _FRAC.fullmatch(it["gold"])
    if not m:
        return None
    sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
    v = Fraction(p, q) if pos else Fraction(p + 1, q)
    if v.denominator not in (2, 4, 5, 8, 10, 20, 25, 40, 50):
        return None
    dec = f"{sign}{float(v):g}"
    frac = f"{sign}\\frac{{{v.numerator}}}{{{v.denominator}}}"
    form = pick(
        rng,
        [
            "${f}$, i.e. ${d}$",
            "${f}$ (that is, ${d}$)",
            "${f} = {d}$",
            "${f}$, or ${d}$ as a decimal",
            "${f}$, which is ${d}$",
        ],
        split,
    )
    a = form.format(f=frac, d=dec)
    working = it["working"] + (
        "" if pos else f" Note that ${it['gold']}$ is the chance of the first draw only."
    )
    return (
        f"{working}\nThe answer is {a}.",
        a,
        "value restated in another form" if pos else "wrong value, restated",
    )


def m_undeclared(it, rng, split, pos):
    """No answer phrase and no box: the answer is the last expression of the completion."""
    m = _FRAC.fullmatch(it["gold"])
    if not m:
        return None
    sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
    if pos:
        a = f"{sign}\\frac{{{p}}}{{{q}}}"
        end = pick(
            rng,
            [
                "So the value we want is ${a}$.",
                "This gives ${a}$.",
                "Hence the probability is ${a}$.",
                "Simplifying, we get ${a}$ in total.",
            ],
            split,
        ).format(a=a)
        return f"{it['working']}\nBefore simplifying we have ${2 * p}/{2 * q}$.\n{end}", a, "last expression"
    a = f"{sign}\\frac{{{q}}}{{{p}}}" if p != q else f"{sign}\\frac{{{p + 1}}}{{{q}}}"
    end = pick(
        rng,
        [
            "But we want the reciprocal, which is ${a}$.",
            "Inverting, we get ${a}$.",
            "The other ratio is ${a}$.",
            "Taking the complement gives ${a}$.",
        ],
        split,
    ).format(a=a)
    return (
        f"{it['working']}\nSo far we have ${it['gold']}$.\n{end}",
        a,
        "gold earlier, another expression last",
    )


KINDS = {  # kind -> (source shape, generator, completions per label)
    "plain_gsm8k": ("gsm8k", g_plain, 14),
    "declared_then_more": ("gsm8k", g_declared_then_more, 18),
    "boxed_then_more": ("gsm8k", g_boxed_then_more, 14),
    "self_correction": ("gsm8k", g_self_correction, 14),
    "right_value_wrong_final": ("gsm8k", g_right_then_wrong, 12),
    "undeclared_last_number": ("gsm8k", g_undeclared, 12),
    "separators": ("gsm8k", g_separators, 14),
    "money": ("gsm8k", g_money, 12),
    "number_words": ("gsm8k", g_number_words, 14),
    "units_gsm8k": ("gsm8k", g_units_gsm, 10),
    "integer_forms": ("int", m_int, 12),
    "equal_value_expression": ("int", m_int_equal_value, 10),
    "fractions": ("frac", m_frac, 16),
    "decimals": ("dec", m_dec, 10),
    "radicals": ("sqrt", m_sqrt, 12),
    "radical_fractions": ("frac_sqrt", m_frac_sqrt, 10),
    "pi": ("pi", m_pi, 10),
    "tuples": ("tuple", m_tuple, 12),
    "intervals": ("interval", m_interval, 10),
    "matrices": ("matrix", m_matrix, 14),
    "choice_letters": ("choice", m_choice, 12),
    "textual": ("word", m_word, 12),
    "degrees": ("degrees", m_degrees, 10),
    "percent": ("percent", m_percent, 8),
    "money_math": ("money", m_money, 10),
    "units_math": ("unit", m_unit, 10),
    "lists": ("list", m_list, 10),
    "extraneous_root": ("int", m_extraneous, 10),
    "latex_forms": ("frac", m_latex_forms, 10),
    "declared_then_check_math": ("frac", m_then_more, 10),
    "restated_answer": ("frac", m_restated, 10),
    "undeclared_math": ("frac", m_undeclared, 10),
}


# ================================================================================================================
# the second opinion: an independent reading of the declared answer and the gold


_TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor)
WORD_NUMBERS = {w: n for n, w in NUM_WORDS.items()}


def _braced(s: str, i: int) -> tuple[str, int]:
    """The group starting at s[i] == "{" and the index after it (or one character when not braced)."""
    if i < len(s) and s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1 : j], j + 1
    return (s[i], i + 1) if i < len(s) else ("", i)


def latex_to_sympy(s: str) -> sympy.Expr:
    """A small LaTeX-to-sympy translator for the forms the generators write (fractions, roots, pi, degrees,
    trigonometric functions of degrees, products, powers), written apart from the judges."""
    s = (
        s.replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\left", "")
        .replace("\\right", "")
    )
    s = (
        s.replace("\u2212", "-")
        .replace("\\displaystyle", "")
        .replace("\\cdot", "*")
        .replace("\\times", "*")
        .replace("\\!", "")
    )
    s = re.sub(r"\\mathbf\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(\d+)\^\{?\\circ\}?", r"(\1*pi/180)", s)
    s = re.sub(r"\\(sin|cos|tan)\s*\(?([^()\s]+)\)?", r"\1(\2)", s)
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            a, i = _braced(s, i + 5)
            b, i = _braced(s, i)
            out.append(f"(({latex_to_sympy(a)})/({latex_to_sympy(b)}))")
        elif s.startswith("\\sqrt", i):
            j = i + 5
            while j < len(s) and s[j] == " ":
                j += 1
            a, i = _braced(s, j)
            out.append(f"sqrt({latex_to_sympy(a)})")
        elif s.startswith("\\binom", i) or s.startswith("\\dbinom", i):
            a, i = _braced(s, s.index("{", i))
            b, i = _braced(s, i)
            out.append(f"binomial({latex_to_sympy(a)}, {latex_to_sympy(b)})")
        elif s.startswith("\\pi", i):
            out.append(" pi ")
            i += 3
        elif s[i] == "{":
            a, i = _braced(s, i)
            out.append(f"({latex_to_sympy(a)})")
        else:
            out.append(s[i])
            i += 1
    expr = "".join(out).replace("^", "**")
    return sympy.nsimplify(parse_expr(expr, transformations=_TRANSFORMS, evaluate=True), rational=True)


def _strip(s: str) -> str:
    """Wrappers and decorations that never change a value: $, boxes, \\text{} units, money signs, "x =", percent,
    thousands separators, degree words."""
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s)
    s = re.sub(r"^(?:\(x, y\)|x|y)\s*=\s*", "", s)
    s = re.sub(r"^x \\in ", "", s)
    s = re.sub(r"\\(?:text|mbox)\{(?!\s*(?:or|and)\s*\})[a-z ]+\}(\^2)?", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").replace("°", "")
    s = re.sub(r"^(-?[\d.]+)\s+(?!(?:or|and)\b)[a-z][a-z ]*(?:\^2)?$", r"\1", s)  # unit words after a number
    s = re.sub(
        r"^(-?[\d.]+)\s*\^\{?\\circ\}?$", r"\1", s
    )  # "90^\circ" is the number 90 (not in sin 60^\circ)
    s = s.replace("{,}", "").replace("\\,", "").replace("\\!,\\!", "").replace("\\!", "")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s.strip()


def _value(s: str):
    """A comparable reading of an answer: ("letter", L) | ("word", w) | ("seq", brackets, values) | ("set", values)
    | ("num", sympy value)."""
    raw = s.strip().rstrip(".")
    m = re.fullmatch(
        r"\(?\\text(?:bf)?\{\s*\(?([A-E])\)?\s*\}\)?|\(?([A-E])\)?|option ([A-E])|([A-E])\)|\\textbf\{\(([A-E])\)\}",
        raw,
    )
    if m:
        return ("letter", next(g for g in m.groups() if g))
    t = re.sub(r"\\(?:text|textbf|mbox)\{([^{}]*)\}", r"\1", raw).strip().lower()
    t = re.sub(r"^(?:a|an|the)\s+", "", t)
    if any(t in [w.lower() for w in ws] for ws in WORD_SETS):
        return ("word", t)
    words = t.split()
    if (
        words
        and words[0] in WORD_NUMBERS
        or (words and "-" in words[0] and all(p in WORD_NUMBERS for p in words[0].split("-")))
    ):
        n = sum(WORD_NUMBERS[p] for p in words[0].split("-"))
        return ("num", sympy.Integer(n))
    s = _strip(raw)
    mat = re.fullmatch(
        r"(?:\\left\[\s*)?\\begin\{(pmatrix|bmatrix|array)\}(?:\{c+\})?(.*)\\end\{\1\}(?:\s*\\right\])?",
        s,
        re.S,
    )
    if mat:
        rows = [[latex_to_sympy(c) for c in r.split("&")] for r in mat.group(2).split("\\\\") if r.strip()]
        if len(rows[0]) == 1:
            return ("seq", "()", tuple(r[0] for r in rows))
        return ("matrix", tuple(tuple(r) for r in rows))
    s2 = s.replace("\\left", "").replace("\\right", "").strip()
    if len(s2) > 2 and s2[0] in "([" and s2[-1] in ")]" and "," in s2:
        parts = [p.strip() for p in s2[1:-1].split(",")]
        vals = tuple(
            sympy.oo if p == "\\infty" else -sympy.oo if p == "-\\infty" else latex_to_sympy(p) for p in parts
        )
        return ("seq", s2[0] + s2[-1], vals)
    parts = [p for p in re.split(r"\s*(?:,\s*and\s*|,|\\text\{\s*or\s*\}|\s+and\s+)\s*", s) if p.strip()]
    if len(parts) > 1:
        return ("set", tuple(sorted((latex_to_sympy(_strip(p)) for p in parts), key=sympy.default_sort_key)))
    return ("num", latex_to_sympy(s))


def _same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] in ("letter", "word"):
        return a[1] == b[1]
    if a[0] == "num":
        return sympy.simplify(a[1] - b[1]) == 0
    if a[0] == "seq":
        return (
            a[1] == b[1]
            and len(a[2]) == len(b[2])
            and all(_eq(x, y) for x, y in zip(a[2], b[2], strict=True))
        )
    if a[0] == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(r) == len(s) and all(_eq(x, y) for x, y in zip(r, s, strict=True))
            for r, s in zip(a[1], b[1], strict=True)
        )
    if a[0] == "set":
        return len(a[1]) == len(b[1]) and all(_eq(x, y) for x, y in zip(a[1], b[1], strict=True))
    return False


def _eq(x, y) -> bool:
    if x.is_infinite or y.is_infinite:
        return x == y
    return sympy.simplify(x - y) == 0


_MARKER = re.compile(r"answer is|answer:|\\boxed|####|final answer|correct option is", re.I)


def declared_last(completion: str, declared: str, kind: str) -> bool:
    """``declared`` is what the completion declares last: it follows the last declaration marker (or, with no
    marker at all, it ends the completion)."""
    marks = list(_MARKER.finditer(completion))
    if not marks:
        if kind == "undeclared_math":  # the last $...$ of the text (GSM8K text has money signs instead)
            last_span = re.search(r"\$([^$]+)\$[^$]*$", completion)
            return bool(last_span) and last_span.group(1) == declared
        return re.findall(r"-?[\d,]*\d", completion)[-1] == declared
    tail = completion[marks[-1].end() :]
    return declared in tail[: len(declared) + 40]


def second_opinion(row: dict) -> bool:
    """The label read independently: the declared answer is the last one, and its value equals the gold's."""
    if not declared_last(row["completion"], row["declared"], row["kind"]):
        return False
    gold = row["gold"]
    if row["kind"] == "percent" or row["kind"] == "units_math":
        gold = _strip(gold)
    if row["kind"] != "restated_answer":
        return _same(_value(row["declared"]), _value(gold))
    forms = _RESTATE.split(re.sub(r"\(that is,(.*)\)$", r"(that is,\1", row["declared"]))
    forms = [f.strip().strip("$").strip() for f in forms]
    return all(_same(_value(f), _value(gold)) for f in forms if f)


# "X, i.e. Y", "X (that is, Y)", "X = Y", "X, or Y as a decimal", "X, which is Y": one value written twice
_RESTATE = re.compile(r",\s*i\.e\.|\s*\(that is,|\s=\s|,\s*which is|,\s*or(?=.*as a decimal)|\s+as a decimal")


# rows where construction and second opinion disagree, decided by hand: id -> (label, reason)
RESOLVED: dict[str, tuple[bool, str]] = {
    "fractions.p15": (
        True,
        "mixed number: a grader reads -4\\frac{1}{12} as -4 1/12 = -49/12; the second method "
        "reads juxtaposition as a product",
    ),
}


# ================================================================================================================


def build(data_dir: Path) -> list[dict]:
    rng = random.Random(SEED)
    items = load_items(data_dir)
    rows: list[dict] = []
    for kind, (shape, gen, per_label) in KINDS.items():
        pool = sorted(items.get(shape, []), key=lambda it: it["id"])
        rng.shuffle(pool)
        made = Counter()
        for it in pool:
            for pos in (True, False):
                if made[pos] >= per_label:
                    continue
                split = split_of(it["id"])
                out = gen(it, rng, split, pos)
                if out is None:
                    continue
                completion, declared, note = out
                made[pos] += 1
                rows.append(
                    {
                        "id": f"{kind}.{'p' if pos else 'n'}{made[pos]:02d}",
                        "split": split,
                        "kind": kind,
                        "dataset": it["dataset"],
                        "item_id": it["id"],
                        "gold": it["gold"],
                        "completion": completion,
                        "declared": declared,
                        "label": pos,
                        "note": note,
                    }
                )
            if made[True] >= per_label and made[False] >= per_label:
                break
        if made[True] < per_label or made[False] < per_label:
            raise SystemExit(f"{kind}: only {dict(made)} rows from {len(pool)} items")
    return rows


def check_labels(rows: list[dict]) -> list[dict]:
    """Run the second opinion on every row; return the disagreements not decided in RESOLVED."""
    open_rows = []
    for r in rows:
        try:
            second = second_opinion(r)
        except Exception as e:  # noqa: BLE001 - an unreadable row is a disagreement to look at
            second = None
            r["check_error"] = f"{type(e).__name__}: {e}"
        r["second_opinion"] = second
        if second is not r["label"]:
            if r["id"] in RESOLVED:
                r["label"], r["resolution"] = RESOLVED[r["id"]]
            else:
                open_rows.append(r)
    return open_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir", default=os.environ.get("MATHSCALE_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    )
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = build(Path(args.data_dir))
    open_rows = check_labels(rows)
    for r in open_rows:
        print(
            json.dumps(
                {k: r.get(k) for k in ("id", "label", "second_opinion", "gold", "declared", "check_error")}
            )
        )
    if open_rows:
        raise SystemExit(f"{len(open_rows)} labels disagree with the second opinion: decide them in RESOLVED")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    by = Counter((r["split"], r["label"]) for r in rows)
    print(f"{len(rows)} rows -> {args.out}; {dict(sorted(by.items()))}; {len(RESOLVED)} resolved by hand")


if __name__ == "__main__":
    main()
