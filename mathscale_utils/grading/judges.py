"""The strict MWPBench judge, and both judges side by side (MathScale §4.2, METHOD.md §8); the paper's judge (bug
for bug with the official driver) lives in ``paper_judge.py``, the prompt templates in ``templates.py``.

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

The strict judge reads the answer the completion declares (``answers.final_answer``) and compares it by value
(``answers_equivalent``): the score we recommend for honest numbers. Symbolic checks (math-verify) are guarded
against pathological inputs and time-limited in any thread (``too_costly``, ``time_limit``).
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from mathscale_utils.grading import answers as _answers
from mathscale_utils.grading.paper_judge import PaperVerdict, paper_judge

log = logging.getLogger(__name__)


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    """math-verify warns once that its timeouts are off; ``time_limit`` provides them (see ``symbolic_equal``)."""
    return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_drop_timeout_notice)

__all__ = [
    "SYMBOLIC_SECONDS",
    "SymbolicTimeout",
    "time_limit",
    "too_costly",
    "is_textual",
    "symbolic_equal",
    "structure",
    "answers_equivalent",
    "StrictVerdict",
    "strict_judge",
    "judge",
    "JUDGES",
    "verdict_dict",
]

# ================================================================================================================
# the strict judge: the declared answer, compared by value (answers.py, then math-verify)

SYMBOLIC_SECONDS = 5.0  # wall-clock limit of one symbolic comparison, in any thread


class SymbolicTimeout(BaseException):
    """A symbolic check ran past its time limit. A BaseException, so that math-verify's ``except Exception``
    handlers let it through (its own TimeoutException is one too)."""


class _Deadline:
    """Raise SymbolicTimeout in the calling thread after ``seconds`` (CPython's asynchronous exception).

    Unlike math-verify's signal.alarm this works in any thread. The exception is delivered between bytecodes, so a
    single long C call (a huge integer power) is not interrupted: ``too_costly`` keeps those out beforehand.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tid = threading.get_ident()
        self.lock = threading.Lock()
        self.state = "armed"  # armed -> fired | done
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        """Raise in the watched thread, and again every 0.25 s until the block ends: an asynchronous exception that
        lands in a finaliser (a weakref callback during garbage collection) is printed and dropped by Python."""
        with self.lock:
            if self.state == "done":
                return
            self.state = "fired"
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.tid), ctypes.py_object(SymbolicTimeout)
            )
            self.timer = threading.Timer(0.25, self._fire)
            self.timer.daemon = True
            self.timer.start()

    def __enter__(self) -> _Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            fired, self.state = self.state == "fired", "done"
            self.timer.cancel()
        if fired:  # a pending exception not raised yet must not leak into the caller's next lines
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.tid), None)


def time_limit(seconds: float = SYMBOLIC_SECONDS) -> _Deadline:
    """``with time_limit(s): ...`` raises SymbolicTimeout when the block runs longer than ``s`` seconds."""
    return _Deadline(seconds)


_POW_NUM = re.compile(r"(\d+(?:\.\d+)?)\s*\}?\s*\^\s*(?:\{\s*(\d+)\s*\}|(\d))")
_EXPONENT = re.compile(r"\^\s*\{")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_GROUP_FACTORIAL = re.compile(r"\^\s*\{?\s*\d+\s*\}?\s*[)}]\s*!")
MAX_DIGITS = 100_000  # a number with more digits than this is not computed
MAX_SYMBOLIC_CHARS = 1_500


def too_costly(latex: str, max_chars: int | None = MAX_SYMBOLIC_CHARS) -> bool:
    """True for text that symbolic evaluation must not touch: a numeric power tower (``2003^{2002^{2001}}``), a
    power or factorial with more than MAX_DIGITS digits, or (with ``max_chars``) a very long expression. The big
    integer arithmetic happens in single C calls that no time limit can interrupt, hence a guard beforehand."""
    if max_chars is not None and len(latex) > max_chars:
        return True
    for m in _EXPONENT.finditer(latex):
        end = _answers.closing_brace(latex, m.end())
        inner = latex[m.end() : (end or len(latex)) - 1]
        if _POW_NUM.search(inner) or _FACTORIAL.search(inner):
            return True
    for m in _POW_NUM.finditer(latex):
        base, exp = float(m.group(1)), int(m.group(2) or m.group(3))
        if base > 1 and exp * math.log10(base) > MAX_DIGITS:
            return True
    if any(int(n) > 20_000 for n in _FACTORIAL.findall(latex)):  # 20000! has about 77,000 digits
        return True
    return bool(_GROUP_FACTORIAL.search(latex))  # "(10^{5})!": a factorial of a power


_FUNCTION_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln",
    "exp", "lim", "max", "min", "det", "gcd", "lcm", "mod", "sqrt", "frac", "pmod", "bmod", "deg",
}  # fmt: skip


def is_textual(gold: str) -> bool:
    """A reference that is words rather than mathematics ("Triangular Prism", "diverges", "\\text{yes}")."""
    t = re.sub(r"\\(?!text)[A-Za-z]+", " ", gold)
    t = t.replace("\\text", " ")
    return any(w.lower() not in _FUNCTION_WORDS for w in re.findall(r"[A-Za-z]{3,}", t))


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple[list, ...]:
    """The gold's readings for math-verify (empty tuple: unparseable). A trailing sentence period is dropped; a gold
    with math delimiters is parsed as is, else as ``\\boxed{gold}``; a gold with (unescaped) ``$`` also gets a second
    reading with every such ``$`` removed, inside one box (textbook answers split one expression over several
    ``$`` spans). Call inside ``time_limit``."""
    from math_verify import parse

    g = re.sub(r"[\s.]+$", "", gold.strip()) or gold.strip()
    readings = []
    dollars = _UNESCAPED_DOLLAR.search(g) is not None  # "\\$40" is a price, not a math delimiter
    if dollars or any(d in g for d in ("\\(", "\\[", "\\boxed")):
        readings.append(parse(g, parsing_timeout=None))
        if dollars:
            readings.append(parse("\\boxed{" + _UNESCAPED_DOLLAR.sub("", g) + "}", parsing_timeout=None))
    else:
        readings.append(parse("\\boxed{" + g + "}", parsing_timeout=None) or parse(g, parsing_timeout=None))
    return tuple(r for r in readings if r and _covers(r, g))


def _covers(reading: list, source: str) -> bool:
    """math-verify read (most of) the text, not one piece of it: "5" is not a reading of
    ``\\underbrace{55\\ldots 5}_{49}805``, and a comparison on it would be meaningless."""
    text = reading[-1] if len(reading) > 1 and isinstance(reading[-1], str) else None
    if text is None:
        return True
    return 2 * len(_answers.normalise(text)) >= len(_answers.normalise(source))


_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)\b")
_DEGREE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)")


def for_sympy(latex: str) -> str:
    """Degrees that math-verify would drop: inside a trigonometric function ``60^\\circ`` becomes
    ``\\frac{60\\pi}{180}`` (math-verify reads ``\\sin 60^\\circ`` as the sine of 60 radians); elsewhere the mark
    goes (an angle of 90 degrees is the number 90)."""
    if _TRIG.search(latex):
        return _DEGREE.sub(r"\\frac{\1\\pi}{180}", latex)
    return _DEGREE.sub(r"\1", latex)


def _parse_prediction(span: str) -> list:
    """math-verify's reading of a prediction span: as LaTeX (``$span$``), else as plain text."""
    from math_verify import parse

    pred = parse("$" + span + "$", parsing_timeout=None) or parse(span, parsing_timeout=None)
    return pred if pred and _covers(pred, span) else []


_RATIO = re.compile(r"\d\s*:\s*\d")


def symbolic_equal(prediction: str, gold: str, seconds: float = SYMBOLIC_SECONDS) -> bool:
    """math-verify's ``verify`` of one prediction span against the gold, within ``seconds`` in any thread; False
    for expressions ``too_costly`` to evaluate, for times and ratios ("7:20", which math-verify reads as 7), for a
    reading that covers only a piece of the text (``_covers``) and on a timeout."""
    if too_costly(prediction) or too_costly(gold):
        return False
    if _RATIO.search(prediction) or _RATIO.search(gold):  # math-verify reads "7:20 p.m." as 7
        return False
    from math_verify import verify

    try:
        with time_limit(seconds):
            golds = _parse_gold(for_sympy(gold))
            pred = _parse_prediction(for_sympy(prediction)) if golds else []
            return bool(pred) and any(verify(g, pred, timeout_seconds=None) for g in golds)
    except SymbolicTimeout:
        log.info("strict judge: symbolic check timed out (%r vs %r)", prediction[:80], gold[:80])
        return False


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

    Rules, first that applies: "exact" (same normal form, ``answers.normalise``); "choice" (gold is an option letter:
    the same letter, in any form); "restated" (the answer written several ways, "\\frac{3}{4}, i.e. 0.75" or
    "2 + 3 = 5": every form must be right); "parts" (a list on either side: the same values in any order, so an
    extra root is wrong); "structure" (vectors, matrices, tuples, intervals, sets in any bracket style, entry by
    entry); "numeric" (both one exact number: units, words, separators, money, percents read off; equal as
    fractions, so 0.3333 is not 1/3); "text" (a textual gold: the same words, articles and ``\\text{}`` aside);
    "symbolic" (math-verify, guarded and time-limited; ``\\tan 60^\\circ`` = ``\\sqrt{3}``).
    """
    if not prediction or not prediction.strip():
        return False, "empty"
    g_norm = _answers.normalise(gold)
    if g_norm and _answers.normalise(prediction) == g_norm:
        return True, "exact"
    letter = _gold_choice(gold)
    if letter:
        return _answers.choice_letter(prediction, strict=False) == letter, "choice"
    lists = _lists_equal(prediction, gold)
    if lists is not None:
        return lists, "parts"
    if "=" not in _answers.strip_assignment(_answers.clean_answer(gold)):
        forms = _answers.restatements(prediction)
        if len(forms) > 1:
            return all(answers_equivalent(f, gold)[0] for f in forms), "restated"
    return _values_equal(prediction, gold)


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


def _values_equal(prediction: str, gold: str) -> tuple[bool, str]:
    """One value against one value: exact form, structure, exact number, words, then symbolic."""
    p = _answers.strip_assignment(_answers.clean_answer(prediction))
    g = _answers.strip_assignment(_answers.clean_answer(gold))
    if _answers.normalise(g) and _answers.normalise(p) == _answers.normalise(g):
        return True, "exact"
    ps, gs = structure(p), structure(g)
    if ps and gs:
        return structures_equal(ps, gs), "structure"
    pv, gv = _answers.number_value(p), _answers.number_value(g)
    if pv is not None and gv is not None:
        return pv == gv, "numeric"
    if gv is None and is_textual(g):
        return bool(_answers.text_key(g)) and _answers.text_key(p) == _answers.text_key(g), "text"
    if pv is not None and is_textual(p) and gv is None:
        return False, "numeric"  # "5 apples" against an expression
    return symbolic_equal(_answers.strip_unit_text(p), _answers.strip_unit_text(g)), "symbolic"


# --- the judge ------------------------------------------------------------------------------------------------------


@dataclass
class StrictVerdict:
    correct: bool
    extracted: str | None
    method: str
    error: str | None = None
    source: str | None = (
        None  # "declared" (the completion states its answer) | "last" (math-verify's extraction)
    )


def _undeclared_answer(text: str) -> str | None:
    """The answer of a completion that declares none: math-verify's own extraction from the whole text (its last
    LaTeX expression or number), as the string it read."""
    from math_verify import parse

    if too_costly(text, max_chars=None):
        return None
    with time_limit():
        pred = parse(text, parsing_timeout=None)
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


def strict_judge(completion: str | None, reference: str) -> StrictVerdict:
    """The strict judge: the answer the completion declares, compared by value with the reference.

    The declared answer is the last "The answer is X" / "Final Answer: X" / "Answer: X" / "#### X" or box
    (``answers.final_answer``); whatever follows it (a check, a restatement, other numbers) is ignored, and a later
    declaration replaces an earlier one (a self-correction). A completion that declares nothing is read by
    math-verify's own extraction. A reference that runs over several sentences or lines is also compared, as whole
    text, with everything after the last answer phrase ("long_form"). The comparison is ``answers_equivalent``:
    exact forms, option letters, lists,
    structures, exact numbers (units, words, separators), textual answers, then math-verify. Symbolic work is
    guarded (``too_costly``) and time-limited in any thread (``time_limit``); an error is judged wrong, with
    ``error`` set.
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
        if cand is None:
            return StrictVerdict(False, None, "no_answer", source=source)
        ok, rule = answers_equivalent(cand, reference)
        if not ok and declared is not None and _LONG_FORM.search(reference.strip()):
            whole = _answers.final_answer(text, whole=True)
            if whole and whole[0] != cand and _same_text(whole[0], reference):
                return StrictVerdict(True, whole[0], "long_form", source=source)
        return StrictVerdict(ok, cand, rule, source=source)
    except BaseException as e:  # SymbolicTimeout and math-verify's TimeoutException derive from BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        return StrictVerdict(False, None, "error", f"{type(e).__name__}: {e}")


def judge(completion: str | None, reference: str) -> dict[str, Any]:
    """Both judges side by side, as the flat fields of a predictions.jsonl row."""
    pv = paper_judge(completion, reference)
    sv = strict_judge(completion, reference)
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
