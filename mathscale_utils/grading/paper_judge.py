"""The paper's MWPBench judge (MathScale §4.2, METHOD.md §8.4-8.6), frozen bug for bug: normalisation
(``strip_string``), candidate extraction (``extract_answer``), equivalence (``is_equiv``) and ``paper_judge``.

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied. This module reproduces the published verdicts, so
its behaviour must not change: answer-text improvements go to ``answers.py`` and the strict judge (``judges.py``).

Quirks kept on purpose because they are part of the published numbers (see each function):

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
from dataclasses import dataclass

log = logging.getLogger(__name__)


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
