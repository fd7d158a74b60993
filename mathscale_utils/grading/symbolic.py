"""Symbolic comparison for the strict judge: math-verify's ``verify``, guarded against pathological inputs
(``too_costly``) and time-limited in any thread (``time_limit``), with the readings of a gold answer cached.

math-verify's own timeouts use ``signal.alarm``, which works only in the main thread; ``time_limit`` raises
``SymbolicTimeout`` in whatever thread runs the check, so the judge can run in worker threads.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
from functools import lru_cache

from mathscale_utils.grading import answers as _answers

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
    "parse_gold",
    "for_sympy",
    "symbolic_equal",
]

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


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@lru_cache(maxsize=8192)
def parse_gold(gold: str) -> tuple[list, ...]:
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
    goes (an angle of 90 degrees is the number 90). Powers and symbols as ``answers.plain_math`` writes them; a number times a bracket is
    written out (``2(19)`` -> ``2\\cdot(19)``: math-verify reads ``2(19)`` as 21)."""
    latex = re.sub(r"(?<![\w^_{])(\d+)\s*\((?=[^()]*\d[^()]*\))", r"\1\\cdot(", _answers.plain_math(latex))
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
            golds = parse_gold(for_sympy(gold))
            pred = _parse_prediction(for_sympy(prediction)) if golds else []
            return bool(pred) and any(verify(g, pred, timeout_seconds=None) for g in golds)
    except SymbolicTimeout:
        log.info("strict judge: symbolic check timed out (%r vs %r)", prediction[:80], gold[:80])
        return False
