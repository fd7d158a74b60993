"""Exact numbers read from answer text: digits with separators, fractions, mixed numbers, money, percents, number
words, scale words ("15 thousand"), and the unit words that may follow a number without changing it.

Used by the strict judge (``judges.py``) and the answer check (``method/filters.py``) through ``number_value``; the
unit rules (``is_unit_tail``) decide which words after a number are units ("12 apples", "15 \\text{ marbles}",
"12 km/h", "5 more apples") and which change the value or the meaning ("5 hundred", "5 more than", "12 out of 20",
"5 apples and 3 pears").
"""

from __future__ import annotations

import re
from fractions import Fraction

from mathscale_utils.grading.answers import (
    DEGREE_MARK,
    clean_answer,
    strip_assignment,
    strip_thousands,
    unwrap_text,
)

_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
          "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
          "seventeen": 17, "eighteen": 18, "nineteen": 19, "zero": 0, "twenty": 20, "thirty": 30, "forty": 40,
          "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}  # fmt: skip
NUMBER_WORDS = frozenset(_UNITS)
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
# a scale word right after a number multiplies it ("15 thousand", "1.5 million", "2 dozen")
_MULTIPLIERS = {**_SCALES, "trillion": 10**12, "dozen": 12}


def words_to_number(s: str) -> int | None:
    """A number written in English words ("nine", "twenty-five", "three hundred and two"), else None."""
    s = s.lower().replace("-", " ").strip()
    if not re.fullmatch(r"[a-z ]+", s):
        return None
    words = s.split()
    if not words or any(w not in _UNITS and w not in _SCALES and w != "and" for w in words):
        return None
    if words[0] == "and" or words[-1] == "and":
        return None
    total, current = 0, 0
    for w in words:
        if w in _UNITS:
            current += _UNITS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in _SCALES:
            total += max(current, 1) * _SCALES[w]
            current = 0
    return total + current


NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# words that change a number's value or make it an expression or a comparison: never dropped as units
_NOT_UNITS = frozenset(
    (
        "pi sqrt sin cos tan cot sec csc log ln exp inf infty or and plus minus times over divided squared "
        "cubed root roots power powers exponent factorial choose inverse reciprocal negative hundred hundreds "
        "thousand thousands million millions billion billions trillion dozen dozens half halves third thirds "
        "quarter quarters fourth fourths fifth fifths tenth tenths hundredth hundredths thousandth thousandths "
        "percent radian radians not no than at least most about approximately nearly almost roughly around "
        "under to by out twice thrice double triple between except instead rather but if wrong incorrect "
        "remainder mod modulo ratio fraction decimal i e"
    ).split()
)
# comparison words that leave the number as it is ("5 more apples", "12 years older than Jane")
COMPARATIVES = frozenset(
    (
        "more less fewer older younger longer shorter taller heavier faster slower higher lower larger "
        "smaller bigger greater extra additional"
    ).split()
)
_SINGLE_LETTER_UNITS = {"m", "g", "s", "h", "l", "L", "K", "N", "J", "W", "V"}
_UNIT_WORD = re.compile(r"(?:[a-zA-Z]{2,}(?:'s)?|o'clock)\.?(?:\^\{?[23]\}?|[²³])?$")


def _unit_piece(piece: str, in_slash: bool) -> bool:
    """One word of a unit: letters (two or more, or a known one-letter unit), with ``^2``/``^3`` or ``²``/``³``."""
    if not piece:
        return in_slash
    base = re.sub(r"(?:\^\{?[23]\}?|[²³])$", "", piece).rstrip(".")
    if base.lower() in _NOT_UNITS or base.lower() in _UNITS or base.lower() in _SCALES:
        return False
    if base in _SINGLE_LETTER_UNITS or (in_slash and re.fullmatch(r"[a-zA-Z]", base)):
        return True
    return bool(_UNIT_WORD.match(piece))


def is_unit_tail(words: list[str]) -> bool:
    """Words after a number that leave it as it is: plain unit words ("square inches", "digits", "km/h", "cm^2",
    "Tom's", "(apples)"), a comparative ("5 more apples", "12 years older than Jane"), "times" as the last word.
    Anything that is mathematics, a variable, another number (digits or words), a bound, a range or a scale is not
    ("5 hundred", "5 more than x", "12 out of 20", "5 to 7", "at least 5")."""
    words = [w.strip("()[]{}\"',;:!?*") for w in words]
    words = [w for w in words if w]
    for i, w in enumerate(words):
        low = w.lower().rstrip(".")
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if low in COMPARATIVES or (low == "than" and i and words[i - 1].lower() in COMPARATIVES):
            continue  # "5 more apples", "12 years older than Jane"; "than x" / "than 3" fail below
        if low == "times" and not nxt:
            continue
        if re.search(r"\d", re.sub(r"(?:\^\{?[23]\}?)", "", w)):
            return False
        pieces = w.split("/")
        if not all(_unit_piece(p, len(pieces) > 1) for p in pieces):
            return False
    return True


_FRAC = re.compile(r"^([-+]?)\\frac\{\s*([-+]?\d+)\s*\}\{\s*([-+]?\d+)\s*\}$")
_MIXED = re.compile(r"^([-+]?)(\d+)\s*\\frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}$")
_MIXED_PLAIN = re.compile(r"^([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d/])")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*([-+]?\d+)$")
_DOLLARS_CENTS = re.compile(r"^\\?\$?\s*(\d+)\s*dollars?,?\s+(?:and\s+)?(\d{1,2})\s*cents?$", re.I)
_UNIT_GROUP = re.compile(r"\\(?:text|mbox|textrm|mathrm|textit|textbf)\s*\{([^{}]*)\}")
_SPACES = re.compile(r"(?<!\\)\\[,;:! ]|~|\\q?quad\b")


def _split_number(a: str) -> tuple[str, str, list[str]] | None:
    """``(number, scale word or "", unit words)`` of an answer that is one number with words after it, else None.
    Text groups after the number are read as words ("15 \\text{ marbles}", "15\\,\\text{cm}^2")."""
    a = _SPACES.sub(" ", a)
    m = re.match(rf"^\s*({NUMBER}(?:\s*\\?%)?)(?=\s|\\text|\\mbox|\\mathrm|\\textrm|$)(.*)$", a, re.S)
    if not m:
        return None
    tail = _UNIT_GROUP.sub(lambda g: " " + g.group(1) + " ", m.group(2))
    tail = re.sub(r"\s*\^\s*\{?\s*([23])\s*\}?", r"^\1", tail)  # "\\text{ cm}^{2}" -> "cm^2"
    words = tail.split()
    scale = ""
    if words and words[0].lower().rstrip("s") in _MULTIPLIERS and "%" not in m.group(1):
        scale = words.pop(0).lower().rstrip("s")
    return m.group(1), scale, words


def _strip_units(a: str) -> str:
    """The number of a number followed by units ("864 square inches" -> "864", "15 \\text{ marbles}" -> "15"), times
    its scale word ("15 thousand" -> "15000"); anything else unchanged. "percent" / "per cent" become ``%``."""
    a = re.sub(
        r"\\(?:text|mbox|textrm|mathrm)\s*\{\s*(?:percent|per\s*cent)\s*\}|\s+(?:percent|per\s*cent)\b",
        "%",
        a,
    )
    split = _split_number(a)
    if split is None:
        return a.strip()
    number, scale, words = split
    if words and not is_unit_tail(words):
        return a.strip()
    if not scale:
        return number
    if not re.fullmatch(NUMBER, number):
        return a.strip()
    return str(Fraction(number) * _MULTIPLIERS[scale])


# a closing remark in brackets, in words ("12 (the number of apples)"); not one that changes the scale ("(in
# thousands)") or holds a number (a restatement that must be checked: "\\frac{1}{2} (0.6)")
_REMARK = re.compile(
    r"\s*\((?![^()]*\b(?:in|hundreds?|thousands?|millions?|billions?|dozens?|percent|mod|or)\b)[^()\d]*\)\s*$",
    re.I,
)
_MATH_DOLLAR = re.compile(
    r"(?<!\\)\$(?=.*(?<!\\)\$)|(?<=\S)(?<!\\)\$"
)  # "$0.75$ as a decimal": math, not money
AS_FORM = re.compile(
    r"\s*\(?\s*\b(?:as|in)\s+(?:an?\s+)?(?:decimal|fraction|percent(?:age)?|mixed number|integer|simplest form"
    r"|lowest terms|radical form)\)?\s*$",
    re.I,
)
_UNIT_TEXT = re.compile(
    r"\\(?:text|mbox|textrm|mathrm)\s*\{(?!\s*(?:or|and)\s*\})\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?[23]\}?)?"
)


def strip_unit_text(a: str) -> str:
    """An expression without the unit text after it: ``16\\pi \\text{ square units}`` -> ``16\\pi``,
    ``8\\sqrt{3} cm`` -> ``8\\sqrt{3}``; the expression itself is kept whole (nothing left: unchanged)."""
    b = _UNIT_TEXT.sub(" ", AS_FORM.sub("", a)).strip()
    words = b.split()
    k = len(words)
    while k > 1 and is_unit_tail(words[k - 1 :]) and re.fullmatch(r"[A-Za-z]+\.?", words[k - 1]):
        k -= 1
    b = " ".join(words[:k]).strip()
    return b or a


def _words_value(a: str) -> int | None:
    """A number in words, possibly followed by unit words ("nine", "five digits", "twenty-five cents")."""
    words = a.split()
    for k in range(len(words), 0, -1):
        v = words_to_number(" ".join(words[:k]))
        if v is not None:
            return v if is_unit_tail(words[k:]) else None
    return None


def number_value(a: str) -> Fraction | None:
    """The exact value of an answer that is one number, or None: integers and decimals with thousands separators,
    ``a/b``, ``\\frac{a}{b}``, mixed numbers (``2\\frac{1}{4}``), money (``\\$1,080.00``, "12 dollars and 50
    cents"), percents (the sign is dropped: "25%" reads as 25), units or words after the number (``is_unit_tail``),
    a scale word ("15 thousand"), number words ("nine"), ``x = 5``."""
    a = _REMARK.sub("", strip_thousands(clean_answer(a))) or a
    a = strip_assignment(AS_FORM.sub("", _MATH_DOLLAR.sub("", a)))
    a = DEGREE_MARK.sub("", a)
    a = re.sub(r"\\(?:left|right)|\\!", "", a).replace("dfrac", "frac").replace("tfrac", "frac")
    a = re.sub(r"^(-?)\s*\\?\$\s*", r"\1", a.strip())  # currency sign
    a = re.sub(r"^\\(?:text|mbox|textrm|mathrm)\s*\{([^{}]*)\}$", r"\1", a.strip())  # "\\text{15 marbles}"
    money = _DOLLARS_CENTS.match(a.strip())
    if money:
        return int(money.group(1)) + Fraction(int(money.group(2)), 100)
    mixed = _MIXED_PLAIN.match(a.strip())
    if (
        mixed
        and 0 < int(mixed.group(3)) < int(mixed.group(4))
        and is_unit_tail(a.strip()[mixed.end() :].split())
    ):
        v = int(mixed.group(2)) + Fraction(int(mixed.group(3)), int(mixed.group(4)))  # "2 1/2 cups"
        return -v if mixed.group(1) == "-" else v
    a = _strip_units(a)
    a = re.sub(r"\s*\\?%$", "", a.strip()).replace("$", "").strip()
    a = re.sub(r"^\{(.*)\}$", r"\1", a)
    a = re.sub(r"\\[,;: ]", "", a)
    if re.fullmatch(NUMBER, a):
        if abs(int(re.split(r"[eE]", a + "e0")[1] or 0)) > 1000:
            return None  # "1e999999999": not computed
        try:
            return Fraction(a)
        except (ValueError, ZeroDivisionError):
            return None
    for rx in (_FRAC, _SLASH):
        m = rx.match(a)
        if m:
            sign, num, den = (
                (m.group(1), m.group(2), m.group(3)) if rx is _FRAC else ("", m.group(1), m.group(2))
            )
            if int(den) == 0:
                return None
            v = Fraction(int(num), int(den))
            return -v if sign == "-" else v
    m = _MIXED.match(a)
    if m and int(m.group(4)) != 0:
        v = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -v if m.group(1) == "-" else v
    w = _words_value(unwrap_text(a).strip())
    return None if w is None else Fraction(w)


__all__ = [
    "NUMBER",
    "NUMBER_WORDS",
    "AS_FORM",
    "words_to_number",
    "is_unit_tail",
    "strip_unit_text",
    "number_value",
]
