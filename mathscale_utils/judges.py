"""The two MWPBench answer judges (MathScale §4.2, METHOD.md §8): the prompt templates and stop strings, the
paper's judge (normalisation, answer extraction, equivalence; bug-for-bug) and a strict judge (math-verify).

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

Quirks of the paper's judge, kept on purpose because they are part of the published numbers (see each function):

* everything is lower-cased first; ``\\boxed{`` is the only box recognised (not ``\\fbox``, not ``\\boxed {``);
* for a *numeric* reference the last number anywhere in the completion is taken, "The answer is" is ignored, and
  the number pattern stops at one separator (``1,000,000`` -> ``,000`` -> ``000`` -> 0, wrong; ``1e3`` -> ``3``);
* all commas are deleted (thousands separators, but also tuple commas: ``(1,-2)`` -> ``(1-2)``);
* a bare ``%`` survives normalisation (``25%`` != ``25``) while ``\\%`` is removed;
* a reference that is one ``$...$`` span is matched by *substring* (``\\boxed{x+12}`` vs ``$2$`` is correct);
* other non-numeric strings of >= 3 characters are accepted when one contains the other;
* numbers compare by exact float equality (``0.3333`` != ``1/3``), with ``0.5`` the only decimal rewritten;
* ``strip_string`` raises on a second ``\\text{ `` or a trailing bare ``\\sqrt`` / ``\\frac``. For a prediction that
  falls back to raw string equality (as upstream). For a *reference* upstream lets the exception escape and the
  driver silently drops the whole task; here the item is judged wrong, logged, and counted (``reference_error``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

# ================================================================================================================
# the paper's judge (METHOD.md §8.4-8.6)


class NormalisationError(ValueError):
    """``strip_string`` cannot normalise this string (upstream raised an AssertionError / IndexError here)."""


_PAREN_FRAC = re.compile(r"\(\((\d+)\)/\((\d+)\)\)")
_LAST_NUMBER = re.compile(r"[-+]?\d*[.,/]?\d+")
_BOXED_OPEN = re.compile(r"\\boxed\{")


def _remove_right_units(s: str) -> str:
    """Keep what comes before ``\\text{ `` (with the space): units are assumed to be written that way.

    Quirk: a second ``\\text{ `` makes this raise (upstream asserted exactly one occurrence).
    """
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise NormalisationError(f"more than one '\\text{{ ' in {s!r}")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    """``\\sqrtX`` -> ``\\sqrt{X}`` for the single character X after it (a space counts as that character).

    Quirk: a ``\\sqrt`` with nothing after it (end of string, or directly another ``\\sqrt``) raises.
    """
    if "\\sqrt" not in s:
        return s
    head, *pieces = s.split("\\sqrt")
    out = [head]
    for p in pieces:
        if not p:
            raise NormalisationError(f"bare \\sqrt in {s!r}")
        out.append("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]))
    return "".join(out)


def _fix_fracs(s: str) -> str:
    """Brace bare fraction arguments: ``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1b`` -> ``\\frac{1}{b}``,
    ``\\frac1{72}`` -> ``\\frac{1}{72}``; ``\\frac{72}1`` is left alone.

    Quirks: a ``\\frac`` followed by a single character leaves the *whole* string unchanged; a ``\\frac`` followed
    by nothing raises.
    """
    head, *pieces = s.split("\\frac")
    if not pieces:
        return s
    out = [head]
    for p in pieces:
        out.append("\\frac")
        if not p:
            raise NormalisationError(f"bare \\frac in {s!r}")
        if p[0] == "{":
            out.append(p)
            continue
        if len(p) < 2:
            return s
        a, b, rest = p[0], p[1], p[2:]
        out.append("{" + a + "}" + (b if b == "{" else "{" + b + "}") + rest)
    return "".join(out)


def _fix_a_slash_b(s: str) -> str:
    """A plain integer fraction ``a/b`` (exactly one slash, both sides canonical integers) -> ``\\frac{a}{b}``."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return f"\\frac{{{a}}}{{{b}}}"


def strip_string(s: str) -> str:
    """The paper's normalisation, applied to prediction and reference alike; the 18 steps run in this order.

    1 ``((a)/(b))`` (digits) -> ``\\frac{a}{b}``; 2 delete ALL commas; 3 delete newlines; 4 delete ``\\!``;
    5 ``\\\\`` -> ``\\``; 6 tfrac/dfrac -> frac (anywhere in the text); 7 delete ``\\left`` / ``\\right`` (also
    inside ``\\leftarrow``...); 8 delete ``^{\\circ}`` / ``^\\circ``; 9 delete ``\\$`` (plain ``$`` kept); 10 drop
    everything from ``\\text{ `` on (raises on two); 11 delete ``\\%`` (a bare ``%`` stays); 12 `` .`` -> `` 0.``,
    ``{.`` -> ``{0.``, an empty string is returned as is, a leading ``.`` gets a ``0``; 13 ``lhs=rhs`` with
    len(lhs) <= 2 (spaces count) -> rhs; 14 ``\\sqrtX`` -> ``\\sqrt{X}``; 15 ``\\quad`` -> space, then delete all
    spaces; 16 brace bare ``\\frac`` arguments; 17 exactly ``0.5`` -> ``\\frac{1}{2}``; 18 ``a/b`` -> ``\\frac{a}{b}``.

    Raises NormalisationError on the inputs upstream crashed on (see ``_remove_right_units``, ``_fix_sqrt``,
    ``_fix_fracs``).
    """
    s = _PAREN_FRAC.sub(lambda m: "\\frac{" + m.group(1) + "}{" + m.group(2) + "}", s)
    s = s.replace(",", "")
    s = s.replace("\n", "")
    s = s.replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_sqrt(s)
    s = s.replace("\\quad", " ").replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_number(s: str) -> bool:
    """True when ``float()`` accepts the string after stripping surrounding ``$``.

    Quirk (Python's float): "inf", "nan", "1e3", "1_000" and surrounding whitespace all count as numbers.
    """
    try:
        float(s.strip("$"))
    except ValueError:
        return False
    return True


def _is_single_inline_math(s: str) -> bool:
    """One ``$...$`` span with at least one character and no ``$`` inside."""
    return len(s) >= 3 and s[0] == "$" and s[-1] == "$" and "$" not in s[1:-1]


def is_equiv(prediction: str | None, reference: str | None) -> tuple[bool, str | None, str | None, str]:
    """The paper's equivalence: ``(correct, clean_prediction, clean_reference, rule)``; the first rule that applies
    decides.

    missing: both None -> True (upstream only printed a warning), one None -> False. Then both are normalised and:
    numeric (both numbers: exact float equality, no tolerance); inline_math (reference a single ``$...$`` span:
    correct iff the reference without dollars is a *substring* of the prediction without outer dollars);
    pred_in_ref (prediction >= 3 chars, not a number, neither starts with "-", prediction substring of reference);
    ref_in_pred (the same with the roles swapped); exact (string equality). raw_fallback: normalisation raised, so
    the raw (lower-cased) strings are compared for equality.
    """
    if prediction is None and reference is None:
        log.warning("is_equiv: both prediction and reference are missing; judged correct as upstream does")
        return True, None, None, "missing"
    if prediction is None or reference is None:
        return False, prediction, reference, "missing"
    try:
        p, r = strip_string(prediction), strip_string(reference)
    except Exception:  # upstream: any exception -> raw equality
        return prediction == reference, prediction, reference, "raw_fallback"
    p_num, r_num = is_number(p), is_number(r)
    if p_num and r_num:
        return float(p.strip("$")) == float(r.strip("$")), p, r, "numeric"
    if _is_single_inline_math(r):
        return r.strip("$") in p.strip("$"), p, r, "inline_math"
    no_minus = not p.startswith("-") and not r.startswith("-")
    if len(p) >= 3 and not p_num and no_minus and p in r:
        return True, p, r, "pred_in_ref"
    if len(r) >= 3 and not r_num and no_minus and r in p:
        return True, p, r, "ref_in_pred"
    return p == r, p, r, "exact"


def extract_boxed_all(text: str) -> list[str]:
    """Contents of every balanced ``\\boxed{...}`` (nested braces counted), in order; unbalanced ones are skipped.

    Quirk kept: only the literal ``\\boxed{`` is recognised (``\\fbox{}``, ``\\boxed {}`` are not).
    """
    out = []
    for m in _BOXED_OPEN.finditer(text):
        depth = 1
        for i in range(m.end(), len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[m.end() : i])
                    break
    return out


def _clean_tail(t: str) -> str:
    """Clean the text after "answer is" / "is": trim, drop leading colons, cut at the first ".\\n", trim periods."""
    t = t.strip().lstrip(":").strip()
    t = t.split(".\n")[0]
    t = t.strip().strip(".")
    if t.endswith("."):
        t = t[:-1]
    return t.strip()


def extract_answer(completion: str, reference_is_number: bool) -> tuple[str | None, str]:
    """The paper's candidate extraction from an already lower-cased completion: ``(candidate, method)``.

    Priority: boxed (last balanced ``\\boxed{}``, stripped) > last_number (only for a numeric reference; the last
    match of ``[-+]?\\d*[.,/]?\\d+`` anywhere, "answer is" NOT consulted; none -> candidate None) > answer_phrase
    (text after the last "answer is", else after the last "solution is") > last_is (text after the last "is", even
    inside words such as "this") > none.
    """
    boxed = extract_boxed_all(completion)
    if boxed:
        return boxed[-1].strip(), "boxed"
    if reference_is_number:
        nums = _LAST_NUMBER.findall(completion)
        return (nums[-1] if nums else None), "last_number"
    for phrase in ("answer is", "solution is"):
        if phrase in completion:
            return _clean_tail(completion.rsplit(phrase, 1)[1]), "answer_phrase"
    if "is" in completion:
        return _clean_tail(completion[completion.rfind("is") + 2 :]), "last_is"
    return None, "none"


@dataclass
class PaperVerdict:
    correct: bool
    extracted: str | None
    method: str
    rule: str
    clean_prediction: str | None
    clean_reference: str | None
    reference_error: str | None = None


def paper_judge(completion: str | None, reference: str) -> PaperVerdict:
    """The paper's ``is_correct``: lower-case both, normalise the reference, extract a candidate, ``is_equiv``.

    A failed request (completion None) is judged like upstream's empty completion: wrong. If the *reference* makes
    normalisation raise, upstream's exception would escape and drop the whole task; here the item is judged wrong,
    logged, and marked with ``reference_error`` so metrics count it.
    """
    c = (completion or "").lower()
    r = reference.lower()
    try:
        clean_ref = strip_string(r)
    except Exception as e:
        log.warning("paper judge: reference %r cannot be normalised (%s); item judged wrong", reference, e)
        return PaperVerdict(
            False, None, "reference_error", "reference_error", None, None, f"{type(e).__name__}: {e}"
        )
    candidate, method = extract_answer(c, is_number(clean_ref))
    if method == "none":
        return PaperVerdict(False, None, "none", "no_candidate", None, clean_ref)
    ok, cp, cr, rule = is_equiv(candidate, r)
    return PaperVerdict(bool(ok), candidate, method, rule, cp, cr)


# ================================================================================================================
# the strict judge (math-verify)

_FUNCTION_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln",
    "exp", "lim", "max", "min", "det", "gcd", "lcm", "mod", "sqrt", "frac", "pmod", "bmod", "deg",
}  # fmt: skip


def is_textual(gold: str) -> bool:
    """A reference that is words rather than mathematics ("Triangular Prism", "diverges", "\\text{yes}")."""
    t = re.sub(r"\\(?!text)[A-Za-z]+", " ", gold)
    t = t.replace("\\text", " ")
    return any(w.lower() not in _FUNCTION_WORDS for w in re.findall(r"[A-Za-z]{3,}", t))


def _norm_text(s: str) -> str:
    s = s.lower()
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"[\s$\\{}]", "", s)
    return s.strip(".,;:")


def _final_answer_span(text: str) -> str | None:
    """The explicit final answer of a completion, original case: last boxed (``\\boxed{}``, ``\\boxed {}`` or
    ``\\fbox{}``), else the cleaned text after the last "answer is"; None otherwise."""
    from mathscale_utils.benchmarks import find_boxed

    boxed = find_boxed(text)
    if boxed is not None:
        return boxed
    low = text.lower()
    k = low.rfind("answer is")
    if k < 0:
        return None
    span = _clean_tail(text[k + len("answer is") :]).strip("$ ")
    return span or None


def _timeouts() -> int | None:
    """math-verify times out with signal.alarm, which only works in the main thread: elsewhere run without."""
    return 5 if threading.current_thread() is threading.main_thread() else None


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@lru_cache(maxsize=8192)
def _parse_gold(gold: str, timeout: int | None) -> tuple[list, ...]:
    """The gold's readings for math-verify (empty tuple: unparseable). A trailing sentence period is dropped; a gold
    with math delimiters is parsed as is, else as ``\\boxed{gold}``; a gold with (unescaped) ``$`` also gets a second
    reading with every such ``$`` removed, inside one box (textbook answers split one expression over several ``$`` spans)."""
    from math_verify import parse

    g = re.sub(r"[\s.]+$", "", gold.strip()) or gold.strip()
    readings = []
    dollars = _UNESCAPED_DOLLAR.search(g) is not None  # "\\$40" is a price, not a math delimiter
    if dollars or any(d in g for d in ("\\(", "\\[", "\\boxed")):
        readings.append(parse(g, parsing_timeout=timeout))
        if dollars:
            readings.append(parse("\\boxed{" + _UNESCAPED_DOLLAR.sub("", g) + "}", parsing_timeout=timeout))
    else:
        readings.append(
            parse("\\boxed{" + g + "}", parsing_timeout=timeout) or parse(g, parsing_timeout=timeout)
        )
    return tuple(r for r in readings if r)


@dataclass
class StrictVerdict:
    correct: bool
    extracted: str | None
    method: str
    error: str | None = None


def strict_judge(completion: str | None, reference: str) -> StrictVerdict:
    """A stricter, symbolic judge: math-verify ``parse`` on both sides and ``verify(gold, prediction)``.

    The gold is parsed as is when it carries math delimiters, else as ``\\boxed{gold}`` (so intervals, tuples and
    ``\\infty`` parse); a trailing period is dropped and a gold with ``$`` is also read with its dollars removed
    (see ``_parse_gold``); matching any reading counts. Textual golds (words, see ``is_textual``) and golds math-verify cannot parse use the "text"
    method: the prediction's last ``\\boxed{}`` or "answer is" tail must equal the gold after lower-casing and
    removing spaces, ``$``, braces and ``\\text{}``. When math-verify's own extraction from the whole completion
    does not verify, the explicit final answer (last box, or the "answer is" tail; see ``_final_answer_span``) is
    parsed as ``$span$`` and verified too (method "math_verify_span"): math-verify misreads plain-text tuples such as
    "The answer is (1, -2)" and does not see ``\\fbox{}``. Timeouts (5 s per parse / comparison) apply in the main thread
    only (math-verify uses signal.alarm); any error is caught and judged wrong, with ``error`` set.
    """
    text = completion or ""
    if not text.strip():
        return StrictVerdict(False, None, "none")
    try:
        timeout = _timeouts()
        gold = () if is_textual(reference) else _parse_gold(reference, timeout)
        if not gold:
            low = text.lower()
            boxed = extract_boxed_all(low)
            cand = (
                boxed[-1]
                if boxed
                else (_clean_tail(low.rsplit("answer is", 1)[1]) if "answer is" in low else None)
            )
            ok = (
                cand is not None and bool(_norm_text(reference)) and _norm_text(cand) == _norm_text(reference)
            )
            return StrictVerdict(ok, cand, "text")
        from math_verify import parse, verify

        pred = parse(text, parsing_timeout=timeout)
        extracted = (str(pred[1]) if len(pred) > 1 else str(pred[0])) if pred else None
        if pred and any(verify(g, pred, timeout_seconds=timeout) for g in gold):
            return StrictVerdict(True, extracted, "math_verify")
        cand = _final_answer_span(text)
        if cand and cand != extracted:
            pred2 = parse("$" + cand + "$", parsing_timeout=timeout)
            if pred2 and any(verify(g, pred2, timeout_seconds=timeout) for g in gold):
                return StrictVerdict(True, cand, "math_verify_span")
        return StrictVerdict(False, extracted, "math_verify")
    except BaseException as e:  # math-verify's TimeoutException derives from BaseException
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
        "strict_error": sv.error,
    }


# the judges' names: the prefix of their verdict fields in predictions.jsonl and their keys in metrics.json
JUDGES = ("paper", "strict")


def verdict_dict(v: PaperVerdict | StrictVerdict) -> dict[str, Any]:
    return asdict(v)
