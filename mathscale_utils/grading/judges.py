"""The strict MWPBench judge, and both judges side by side (MathScale §4.2, METHOD.md §8); the paper's judge (bug
for bug with the official driver) lives in ``paper_judge.py``, the prompt templates in ``templates.py``.

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

The strict judge reads the answer the completion declares (``answers.final_answer``) and compares it by value
(``answers_equivalent``): the score we recommend for honest numbers. Numbers are read in ``numbers.py``, answers
stated in sentences or as equations in ``statements.py``, and symbolic checks (math-verify, guarded and
time-limited in any thread) run in ``symbolic.py``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mathscale_utils.grading import answers as _answers
from mathscale_utils.grading import statements as _statements
from mathscale_utils.grading.numbers import number_value, strip_unit_text
from mathscale_utils.grading.paper_judge import PaperVerdict, paper_judge
from mathscale_utils.grading.statements import is_textual
from mathscale_utils.grading.symbolic import symbolic_equal, time_limit, too_costly

__all__ = [
    "structure",
    "structures_equal",
    "answers_equivalent",
    "StrictVerdict",
    "strict_judge",
    "judge",
    "JUDGES",
    "verdict_dict",
]


# --- structures: vectors, matrices, tuples, intervals, sets ------------------------------------------------------

_MATRIX = re.compile(r"^\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.S)


def _cells(inside: str) -> list[str]:
    """The comma-separated entries of a bracket's inside (top level only)."""
    return [c.strip() for c in _answers.answer_parts(inside)] if inside.strip() else []


def structure(a: str) -> tuple[str, tuple[int, int], list[str]] | None:
    """``(kind, shape, cells)`` of a vector, matrix, tuple, interval or set written in any bracket style; None for
    anything else. Kinds: "matrix" (``pmatrix`` = ``bmatrix`` = ``\\left[\\begin{array}..``), "(...)", "(...]",
    "[...)", "[...]" (tuples and intervals), "<...>" (``\\langle..\\rangle``), "set" (``\\{..\\}``).
    ``vmatrix`` (a determinant) is not a structure."""
    a = _answers.clean_answer(a)
    # sizing commands and thin spaces go; a row break (two backslashes) followed by a space stays
    a = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])|\\[!,;: ](?<!\\\\ )", "", a).strip()
    m = _MATRIX.match(re.sub(r"^[(\[]\s*(\\begin.*\\end\{\w+\})\s*[)\]]$", r"\1", a, flags=re.S))
    if m and m.group(1) not in ("vmatrix", "Vmatrix"):
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip() and r.strip() != "\\hline"]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        if not cells or len({len(r) for r in cells}) != 1:
            return None
        return "matrix", (len(cells), len(cells[0])), [c for r in cells for c in r]
    if a.startswith("\\langle") and a.endswith("\\rangle"):
        cells = _cells(a[len("\\langle") : -len("\\rangle")])
        return "<...>", (len(cells), 1), cells
    if a.startswith("\\{") and a.endswith("\\}"):
        cells = _cells(a[2:-2])
        return "set", (len(cells), 1), cells
    if len(a) >= 2 and a[0] in "([" and a[-1] in ")]" and _balanced_group(a):
        cells = _cells(a[1:-1])
        if len(cells) >= 2:
            return f"{a[0]}...{a[-1]}", (len(cells), 1), cells
    return None


def _balanced_group(a: str) -> bool:
    """The first bracket of ``a`` closes at its last character (so "(1)(2)" is not one tuple)."""
    depth = 0
    for i, ch in enumerate(a):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and i < len(a) - 1:
            return False
    return depth == 0


def _as_vector(s: tuple[str, tuple[int, int], list[str]]) -> list[str] | None:
    """The entries of a column or row vector, a tuple or an angle-bracket vector; None for anything else."""
    kind, (rows, cols), cells = s
    if kind == "matrix" and (rows == 1 or cols == 1):
        return cells
    return cells if kind in ("(...)", "<...>") else None


def structures_equal(p: tuple, g: tuple) -> bool:
    """Same kind (a vector in any notation matches a tuple), same shape, each entry equivalent; sets in any order."""
    if p[0] == "set" and g[0] == "set":
        return len(p[2]) == len(g[2]) and _match_all(p[2], g[2])
    if p[0] == g[0] and p[1] == g[1]:
        return all(answers_equivalent(a, b)[0] for a, b in zip(p[2], g[2], strict=True))
    pv, gv = _as_vector(p), _as_vector(g)
    if pv is not None and gv is not None and len(pv) == len(gv) and "matrix" in (p[0], g[0]):
        return all(answers_equivalent(a, b)[0] for a, b in zip(pv, gv, strict=True))
    return False


def _match_all(preds: list[str], golds: list[str]) -> bool:
    """Every gold value matched by a different predicted value (order free), and nothing left over."""
    left = list(preds)
    for g in golds:
        hit = next((i for i, p in enumerate(left) if answers_equivalent(p, g)[0]), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


# --- one value against another ------------------------------------------------------------------------------------


def _gold_choice(gold: str) -> str | None:
    """The option letter of a multiple-choice gold: an upper-case letter, or a letter in brackets / ``\\text{}``."""
    g = _answers.clean_answer(gold)
    if re.fullmatch(r"[a-e]", g):  # a bare lower-case letter is a variable ("b"), or Euler's e
        return None
    return _answers.choice_letter(g)


def answers_equivalent(prediction: str, gold: str) -> tuple[bool, str]:
    """``(same, rule)``: whether a declared answer says the same as the gold, and which rule decided.

    Both sides are first read as LaTeX where typed as plain text (``answers.plain_math``: "2⁵", "5√2", "−∞").
    Rules, first that applies: "exact" (same normal form, ``answers.normalise``); "choice" (gold is an option letter:
    the same letter, in any form); "numeric" (both one exact number, ``numbers.number_value``: units, words, scale
    words, separators, money, percents read off; equal as fractions, so 0.3333 is not 1/3; a percent on one side
    only may also be read as a fraction, "50%" for 1/2); "parts" (a list on either side: the same values in any
    order, so an extra root is wrong); "restated" (the answer written several ways, "\\frac{3}{4}, i.e. 0.75" or
    "2 + 3 = 5": every form must be right); "named" (an equation whose other sides name the quantity, "P+Q = 7",
    "r^2 = 5+\\sqrt{2}": its value must be right; "named_zero" refuses a polynomial set to zero); "structure"
    (vectors, matrices, tuples, intervals, sets in any bracket style, entry by entry); "time" (a clock time, "3:30
    PM" for "3:30"); "text" (a textual gold: the same words, articles and ``\\text{}`` aside); "symbolic"
    (math-verify, guarded and time-limited; ``\\tan 60^\\circ`` = ``\\sqrt{3}``, ``2^5`` = 32).
    """
    if not prediction or not prediction.strip():
        return False, "empty"
    prediction, gold = _answers.plain_math(prediction), _answers.plain_math(gold)
    g_norm = _answers.normalise(gold)
    if g_norm and _answers.normalise(prediction) == g_norm:
        return True, "exact"
    letter = _gold_choice(gold)
    if letter:
        return _answers.choice_letter(prediction, strict=False) == letter, "choice"
    pv, gv = number_value(prediction), number_value(gold)
    if pv is not None and gv is not None:  # before lists: "12 dollars and 50 cents" is one number
        return _same_number(prediction, gold, pv, gv), "numeric"
    lists = _lists_equal(prediction, gold)
    if lists is not None:
        return lists, "parts"
    if "=" not in _answers.strip_assignment(_answers.clean_answer(gold)):
        forms = _answers.restatements(prediction)
        if len(forms) > 1:
            return _restated_equal(forms, gold)
    return _values_equal(prediction, gold)


_EQUATION = re.compile(
    r"[a-zA-Z]\s*\^\s*\{?\s*\d|\d\s*[a-zA-Z]"
)  # a power of a variable, a coefficient: "x^2 - 7x"


def _restated_equal(forms: list[str], gold: str) -> tuple[bool, str]:
    """An answer written several ways: every form must be the gold ("restated"), except the forms that name the
    quantity ("P+Q = 7", "r^2 = 5+\\sqrt{2}", "\\text{Total} = 12": "named") when the gold is a value without
    variables; at least one form must be a value. An equation set to zero ("x^2 - 5x + 6 = 0") names nothing
    ("named_zero"), unless the question asks for its left side (``strict_judge``)."""
    names = [f for f in forms if _statements.is_name(f)]
    values = [f for f in forms if f not in names]
    g = strip_unit_text(_answers.clean_answer(gold))
    if (
        names
        and values
        and (number_value(gold) is not None or not (_statements.free_letters(g) or is_textual(g)))
    ):
        if number_value(values[-1]) == 0 and any(_EQUATION.search(n) for n in names):
            return False, "named_zero"  # an equation to solve, unless the question asks for its left side
        return all(answers_equivalent(v, gold)[0] for v in values), "named"
    return all(answers_equivalent(f, gold)[0] for f in forms), "restated"


def _lists_equal(prediction: str, gold: str) -> bool | None:
    """Compare answers that are lists (None when both are single values): the same values in any order; a single
    gold against several predicted values only when each of them is the gold ("\\frac{3}{2}, or 1.5"). A comma
    group such as "70,110" is read as a number first and as a list when that makes the lengths agree."""
    pp, gp = _answers.answer_parts(prediction), _answers.answer_parts(gold)
    if len(pp) != len(gp):
        pl, gl = (
            _answers.answer_parts(prediction, thousands=False),
            _answers.answer_parts(gold, thousands=False),
        )
        if len(pl) == len(gl) and (pl, gl) != (pp, gp):
            pp, gp = pl, gl
    if len(pp) == 1 and len(gp) == 1:
        return None
    if len(pp) == len(gp):
        return _match_all(pp, gp)
    if len(gp) == 1:
        return all(answers_equivalent(p, gold)[0] for p in pp)
    ps, gs = structure(prediction), structure(gold)
    if ps and ps[0] == "set" and len(ps[2]) == len(gp):  # "\\{2, -4\\}" for "2, -4"
        return _match_all(ps[2], gp)
    if gs and gs[0] == "set" and len(gs[2]) == len(pp):
        return _match_all(pp, gs[2])
    return False


_PERCENT = re.compile(r"\\?%|\bper\s*cent\b|\bpercent\b")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})\s*(?:([ap])\.?\s*m\.?)?$", re.I)


def _same_number(prediction: str, gold: str, pv, gv) -> bool:
    """Two exact numbers are the same answer: equal, or equal once a percent on one side only is read as a
    fraction ("50%" for 1/2, "0.25" for "25\\%"); percents are otherwise read by their number ("25%" for 25)."""
    if pv == gv:
        return True
    pp, gp = bool(_PERCENT.search(prediction)), bool(_PERCENT.search(gold))
    return pp != gp and (pv / 100 == gv if pp else gv / 100 == pv)


def _values_equal(prediction: str, gold: str) -> tuple[bool, str]:
    """One value against one value: exact form, structure, exact number, words, then symbolic."""
    p = _answers.strip_assignment(re.sub(r"^=\s*", "", _answers.clean_answer(prediction)))
    g = _answers.strip_assignment(_answers.clean_answer(gold))
    if _answers.normalise(g) and _answers.normalise(p) == _answers.normalise(g):
        return True, "exact"
    ps, gs = structure(p), structure(g)
    if ps and gs:
        return structures_equal(ps, gs), "structure"
    pv, gv = number_value(p), number_value(g)
    if pv is not None and gv is not None:
        return _same_number(p, g, pv, gv), "numeric"
    pt, gt = _TIME.match(_answers.unwrap_text(p).strip()), _TIME.match(_answers.unwrap_text(g).strip())
    if pt and gt:  # "3:30 PM" for "3:30": the same clock time, and the same half of the day where both say it
        halves = {(m.group(3) or "").lower() for m in (pt, gt)} - {""}
        return pt.group(1, 2) == gt.group(1, 2) and len(halves) < 2, "time"
    if gv is None and is_textual(g):
        return bool(_answers.text_key(g)) and _answers.text_key(p) == _answers.text_key(g), "text"
    if pv is not None and is_textual(p) and gv is None:
        return False, "numeric"  # "5 apples" against an expression
    p, g = (_answers.strip_thousands(strip_unit_text(x)) for x in (p, g))
    return symbolic_equal(p, g), "symbolic"


# --- the judge ------------------------------------------------------------------------------------------------------


@dataclass
class StrictVerdict:
    """The strict judge's verdict: ``correct``; ``extracted``, the answer it compared (None when none was found);
    ``method``, the rule that decided (``answers_equivalent``'s rules, "named_other", "long_form", "stated_text",
    "sentence_number", "no_answer", "none", "error"); ``error``, the exception text when one was raised;
    ``source``, "declared" (the completion states its answer) or "last" (it declares none: math-verify's own
    extraction, or for a textual gold the concluding sentence)."""

    correct: bool
    extracted: str | None
    method: str
    error: str | None = None
    source: str | None = None


def _undeclared_answer(text: str) -> str | None:
    """The answer of a completion that declares none: math-verify's own extraction from the whole text (its last
    LaTeX expression or number), as the string it read."""
    from math_verify import parse

    if too_costly(text, max_chars=None):
        return None
    with time_limit():
        pred = parse(_answers.plain_math(text).replace("\\$", " "), parsing_timeout=None)
    return str(pred[-1]) if pred else None


# a reference that runs over several sentences, clauses or lines ("Not a function. The graph fails ...")
_LONG_FORM = re.compile(
    r"\.\s+\S|\n|;\s|,\s+(?:since|because|as|which|so|but|that|where|and)\b|\s(?:since|because)\s"
)


def _same_text(prediction: str, gold: str) -> bool:
    """Whole-text equality for long-form answers: the same normal form, or the same words."""
    return _answers.normalise(prediction) == _answers.normalise(gold) or (
        bool(_answers.text_key(gold)) and _answers.text_key(prediction) == _answers.text_key(gold)
    )


def _textual_gold(reference: str) -> bool:
    """A gold that is words only, not an option letter ("\\text{Wednesday}", "parabola", "Triangular Prism")."""
    return _statements.is_word_answer(reference) and _gold_choice(reference) is None


_SINGLE_SYMBOL = re.compile(r"^\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*$")


def _equation_names(cand: str) -> list[str]:
    """The sides of an equation answer that name a quantity, a single symbol ("x" of "x = 5") aside."""
    sides = re.split(r"(?<![<>!\\])=(?!=)", _answers.clean_answer(cand))
    return [s for s in sides if _statements.is_name(s) and not _SINGLE_SYMBOL.match(s)]


def _names_other_quantity(cand: str, question: str | None) -> bool:
    """The answer is an equation whose left side names a quantity other than the one the question asks for ("P+Q
    = 7" for "Find $P$"). A single symbol ("x = 5") is taken as the solution's name for the unknown."""
    return any(_statements.name_asked(n, question) is False for n in _equation_names(cand))


def _names_asked_quantity(cand: str, question: str | None) -> bool:
    """Every name in an equation answer is what the question asks for ("6b = 0" for "What is $6b$?")."""
    names = _equation_names(cand)
    return bool(names) and all(_statements.name_asked(n, question) for n in names)


def _stated(text: str, cand: str | None, declared: bool, reference: str) -> tuple[str, str] | None:
    """``(answer, rule)`` when the completion states the gold in a sentence rather than declaring it: a textual
    gold as what something is ("So the curve is a parabola."), or the one number of a declared sentence ("The
    answer is: Tom has 12 apples left")."""
    if _textual_gold(reference):
        sentence = cand if declared else _statements.concluding_sentence(text)
        if sentence and _statements.states_text(sentence, reference):
            return sentence, "stated_text"
        return None
    gold_value = number_value(reference)
    if declared and cand and gold_value is not None:
        n = _statements.sentence_number(cand)
        if n is not None and number_value(n) == gold_value:
            return cand, "sentence_number"
    return None


def strict_judge(completion: str | None, reference: str, question: str | None = None) -> StrictVerdict:
    """The strict judge: the answer the completion declares, compared by value with the reference.

    The declared answer is the last "The answer is X" / "Final Answer: X" / "Answer: X" / "#### X" or box
    (``answers.final_answer``); whatever follows it (a check, a restatement, other numbers) is ignored, and a later
    declaration replaces an earlier one (a self-correction). A completion that declares nothing is read by
    math-verify's own extraction, and, for a textual gold, by its concluding sentence ("So the curve is a
    parabola."). A reference that runs over several sentences or lines is also compared, as whole text, with
    everything after the last answer phrase ("long_form"). The comparison is ``answers_equivalent``: exact forms,
    option letters, lists, equations that name the quantity ("P+Q = 7"), structures, exact numbers (units, words,
    separators), textual answers, then math-verify; then an answer stated in a sentence (``_stated``).

    ``question`` (optional): the item's question. With it, an equation whose left side names another quantity than
    the one asked for is wrong ("P+Q = 7" when the question asks for $P$); without it, the judge cannot tell and
    takes the equation's value. Symbolic work is guarded (``too_costly``) and time-limited in any thread
    (``time_limit``); an error is judged wrong, with ``error`` set.
    """
    text = completion or ""
    if not text.strip():
        return StrictVerdict(False, None, "none")
    try:
        declared = _answers.final_answer(text)
        if declared is not None:
            cand, source = declared[0], "declared"
        else:
            cand, source = _undeclared_answer(text), "last"
        ok, rule = answers_equivalent(cand, reference) if cand is not None else (False, "no_answer")
        if ok and rule == "named" and _names_other_quantity(cand, question):
            return StrictVerdict(False, cand, "named_other", source=source)
        if rule == "named_zero" and _names_asked_quantity(cand, question):
            forms = [f for f in _answers.restatements(cand) if not _statements.is_name(f)]
            ok, rule = bool(forms) and all(answers_equivalent(f, reference)[0] for f in forms), "named"
        if ok:
            return StrictVerdict(True, cand, rule, source=source)
        if declared is not None and _LONG_FORM.search(reference.strip()):
            whole = _answers.final_answer(text, whole=True)
            if whole and whole[0] != cand and _same_text(whole[0], reference):
                return StrictVerdict(True, whole[0], "long_form", source=source)
        stated = _stated(text, cand, declared is not None, reference)
        if stated is not None:
            return StrictVerdict(True, stated[0], stated[1], source=source)
        return StrictVerdict(False, cand, rule, source=source)
    except BaseException as e:  # SymbolicTimeout and math-verify's TimeoutException derive from BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        return StrictVerdict(False, None, "error", f"{type(e).__name__}: {e}")


def judge(completion: str | None, reference: str, question: str | None = None) -> dict[str, Any]:
    """Both judges side by side, as the flat fields of a predictions.jsonl row (``question`` goes to the strict
    judge only; the paper judge never sees it)."""
    pv = paper_judge(completion, reference)
    sv = strict_judge(completion, reference, question)
    return {
        "extracted": pv.extracted,
        "paper_correct": pv.correct,
        "paper_method": pv.method,
        "paper_rule": pv.rule,
        "clean_prediction": pv.clean_prediction,
        "clean_reference": pv.clean_reference,
        "reference_error": pv.reference_error,
        "strict_correct": sv.correct,
        "strict_extracted": sv.extracted,
        "strict_method": sv.method,
        "strict_source": sv.source,
        "strict_error": sv.error,
    }


# the judges' names: the prefix of their verdict fields in predictions.jsonl and their keys in metrics.json
JUDGES = ("paper", "strict")


def verdict_dict(v: PaperVerdict | StrictVerdict) -> dict[str, Any]:
    return asdict(v)
