"""Answers stated in words rather than declared: a textual answer in a concluding sentence ("so the curve is a
parabola"), a number in a sentence ("Tom has 12 apples left"), the name on the left of an equation ("P+Q = 7"), and
the quantity a question asks for ("Find $P$.").

The strict judge (``judges.py``) uses them only to accept what a careful grader accepts: the stated text must be the
sentence's conclusion (not negated, not one of alternatives, not a question), a sentence must hold exactly one number
and nothing that changes it ("more than", "about"), and a name on the left of an equation is checked against the
question when the caller gives one.
"""

from __future__ import annotations

import re

from mathscale_utils.grading.answers import (
    ABBREVIATION,
    clean_answer,
    math_ranges,
    normalise,
    text_key,
    unwrap_text,
)
from mathscale_utils.grading.numbers import COMPARATIVES, NUMBER_WORDS, number_value

_FUNCTION_WORDS = frozenset(
    (
        "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp lim max min det gcd lcm mod "
        "sqrt frac pmod bmod deg"
    ).split()
)


def is_textual(gold: str) -> bool:
    """A reference that is words rather than mathematics ("Triangular Prism", "diverges", "\\text{yes}")."""
    t = re.sub(r"\\(?!text)[A-Za-z]+", " ", gold)
    t = t.replace("\\text", " ")
    return any(w.lower() not in _FUNCTION_WORDS for w in re.findall(r"[A-Za-z]{3,}", t))


def is_word_answer(gold: str) -> bool:
    """A reference made of words only, with no digit or mathematics: "\\text{parabola}", "Wednesday",
    "Triangular Prism", "neither"; not "69\\text{ degrees}" or a matrix."""
    g = unwrap_text(clean_answer(gold)).strip()
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z' -]*", g)) and re.search(r"[A-Za-z]{2,}", g) is not None


# ----------------------------------------------------------------------------------------------------------------
# sentences

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# closing remarks that state nothing about the answer
_REMARK = re.compile(
    r"\b(?:hope|helps?|helpful|let me know|feel free|any (?:other |further )?questions|happy to|good luck"
    r"|makes sense|verify|double[- ]check)\b"
    r"|^\W*$",
    re.I,
)


def sentences(text: str) -> list[str]:
    """The sentences of a text, in order: split at line breaks and at ``.``/``!``/``?`` outside math, decimals
    ("3.5") and abbreviations ("e.g.") aside. Markdown emphasis and list marks are dropped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*>]|\d+[.)])\s+", "", line).replace("**", "").replace("__", "")
        ranges, last = math_ranges(line), 0
        for m in _SENTENCE_END.finditer(line):
            if any(a <= m.start() < b for a, b in ranges):
                continue
            if m.group() == "." and ABBREVIATION.search(line, 0, m.start() + 1):
                continue
            out.append(line[last : m.end()].strip())
            last = m.end()
        out.append(line[last:].strip())
    return [s for s in out if s]


def concluding_sentence(text: str) -> str | None:
    """The last sentence of a completion that states something: closing remarks ("I hope it helps", "Let me know
    ...") are passed over; a question or a sentence that ends on a colon concludes nothing (None)."""
    for s in reversed(sentences(text)):
        if _REMARK.search(s):
            continue
        return None if s.rstrip().endswith(("?", ":")) else s
    return None


# ----------------------------------------------------------------------------------------------------------------
# a textual answer stated in a sentence

_NEGATION = re.compile(
    r"\b(?:not|never|neither|nor|cannot|no longer|none|instead|rather|unlike)\b|n[’']t\b", re.I
)
# a statement under a condition ("If it were a leap year, ..."), or among alternatives just before the answer
_CONDITION = re.compile(r"\b(?:if|unless|whether|suppose|supposing|assume|assuming)\b")
_ALTERNATIVE = re.compile(r"\b(?:or|either|between)\b")
# the verb that introduces a stated answer, then an optional preposition and article
_COPULA = (
    r"(?:^|\b(?:is|are|was|were|be|becomes|become|remains|represents|describes|defines|forms|makes|gives|equals|means"
    r"|s|has|have|answer|result|falls|fall|lands|land|occurs|occur|happens|happen|will be|would be|must be)\s+)"
    r"(?:(?:on|in|at|as|of)\s+)?(?:(?:a|an|the)\s+)?(?:(?:equation|graph|shape|form)\s+of\s+(?:(?:a|an|the)\s+)?)?"
)
# answers that are verbs, stated after their subject ("So the series diverges.")
_VERBS = re.compile(r"(?:diverges|converges|exists|increases|decreases|intersects|terminates|repeats)$")
_LEAD = re.compile(r"^(?:so|thus|therefore|hence|finally|consequently|in conclusion|overall|in summary)\s+")
# nouns that may follow a textual answer and restate what it qualifies ("an even function", "an obtuse triangle")
_KIND_NOUNS = frozenset(
    (
        "function functions number numbers integer integers day shape curve graph figure triangle sequence "
        "series one form type kind solid polygon angle"
    ).split()
)


def states_text(sentence: str, gold: str) -> bool:
    """Whether a sentence concludes with the textual gold as what something is: "So the curve is a parabola.",
    "It falls on a Wednesday.", "Therefore, $f$ is an even function." for gold "even". Not when negated ("is not a
    parabola"), given as one of alternatives ("a parabola or a hyperbola"), or followed by more words."""
    gold_key = text_key(gold)
    if not gold_key or not sentence or sentence.rstrip().endswith("?"):
        return False
    raw = unwrap_text(clean_answer(sentence))
    if gold_key in ("yes", "no") and re.match(rf"^\W*{gold_key}\b\s*[,.!;:]", raw, re.I):
        return gold_key == "no" or not _NEGATION.search(raw)  # "No, it is not possible."
    raw = re.split(r",\s+(?:since|because|as|which|so|where|with)\b|\s+(?:since|because|with|whose)\b", raw)[
        0
    ]
    raw = raw.lower()
    if gold_key == "neither":  # "neither even nor odd"
        raw = re.sub(r"\bneither\s+\w+\s+nor\s+\w+", "neither", raw)
    if _NEGATION.search(raw.replace(gold_key, " ")):
        return False
    key = _LEAD.sub("", text_key(raw))
    if _CONDITION.search(key):
        return False
    if _VERBS.match(gold_key) and re.fullmatch(rf"(?:\w+\s+){{1,6}}{gold_key}", key):
        return not _ALTERNATIVE.search(key)
    kinds = "|".join(_KIND_NOUNS)
    m = re.search(rf"{_COPULA}{re.escape(gold_key)}(?:\s+(?:{kinds}))?$", key)
    return m is not None and not _ALTERNATIVE.search(" ".join(key[: m.start()].split()[-4:]))


# ----------------------------------------------------------------------------------------------------------------
# a number stated in a sentence

_NUMBER_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:\s*%)?(?![\w.]*[\w])")
# words that make the stated number something other than the number itself, or qualify it
_CHANGES = re.compile(
    r"\b(?:than|times|twice|half|double|triple|about|approximately|around|roughly|nearly|almost|over|under|at least"
    r"|at most|up to|not|no|never|out of|ratio|percent|hundred|thousand|million|billion|dozen|plus|minus|divided"
    r"|multiplied|if|remainder|or)\b"
    r"|[=<>+*/^×÷]|\\[a-zA-Z]+",
    re.I,
)


def sentence_number(sentence: str) -> str | None:
    """The number of a short answer sentence that holds exactly one ("Tom has 12 apples left", "She needs $\\$15$"),
    with nothing around it that changes or qualifies it ("more than 12", "12 more than x", "about 12"); else None."""
    s = unwrap_text(clean_answer(sentence)).replace("\\$", "$").replace("\\%", "%")
    s = re.sub(r"\\[,;:! ]|~", " ", s).replace("$", " ")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s).rstrip(".")
    if not re.search(r"[A-Za-z]{2,}", s) or len(s.split()) > 16:
        return None
    numbers = _NUMBER_TOKEN.findall(s)
    if len(numbers) != 1 or len(re.findall(r"\d+(?:\.\d+)?", s)) != 1:
        return None
    before, after = _NUMBER_TOKEN.split(s)
    comparative = rf"\b(?:{'|'.join(COMPARATIVES)})\s+than\b(?=\s+[A-Za-z]{{2,}}(?:'s)?\b(?!\s*[a-zA-Z]\b))"
    after = re.sub(comparative, " ", after, flags=re.I)  # "12 years older than Jane", not "12 more than x"
    rest = before + " " + after
    if _CHANGES.search(rest) or any(w.lower() in NUMBER_WORDS for w in re.findall(r"[A-Za-z]+", rest)):
        return None
    return numbers[0].replace(" ", "")


# ----------------------------------------------------------------------------------------------------------------
# names on the left of an equation, and the quantity a question asks for

_COMMANDS = re.compile(
    r"\\(?:frac|dfrac|tfrac|sqrt|cdot|times|div|pi|left|right|pm|mp|circ|degree|infty|ldots|cdots|dots|quad"
    r"|qquad|sin|cos|tan|cot|sec|csc|log|ln|exp|binom|dbinom|tbinom|choose)(?![a-zA-Z])|\\[,;:! ]"
)


def free_letters(expr: str) -> set[str]:
    """The variables of an expression: its letters and Greek letters once numbers, functions, constants (``\\pi``,
    ``e``, ``i``) and ``\\text{}`` units are set aside; words count as names ("Total")."""
    e = clean_answer(expr)
    e = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r" \1 ", e)
    e = _COMMANDS.sub(" ", e)
    e = re.sub(
        r"\\(?:overline|angle|measuredangle|triangle|mathbf|vec|hat|bar|operatorname)(?![a-zA-Z])", " ", e
    )
    greek = set(re.findall(r"\\([a-zA-Z]+)", e))
    e = re.sub(r"\\[a-zA-Z]+", " ", e)
    return (set(re.findall(r"[A-Za-z]+", e)) | greek) - {"e", "i"}


_ELLIPSIS = re.compile(r"\\[lc]?dots\b|\.\.\.|…")


def is_name(form: str) -> bool:
    """A form of a restated answer that names a quantity rather than giving its value ("P+Q", "r^2", "f(3)",
    "\\text{Total}", "1 + 2 + \\cdots + 100"): it has a variable or an ellipsis and is not one number with units."""
    return bool(free_letters(form) or _ELLIPSIS.search(form)) and number_value(form) is None


_ASK = re.compile(
    r"\b(?:find|compute|calculate|evaluate|determine|simplify|what\s+is|what's|what\s+are|value\s+of|express"
    r"|give|enter|how\s+(?:many|much))\b",
    re.I,
)
_CLAUSE_STOP = re.compile(r"[?;]|\.(?=\s|$)|\b(?:if|given|where|when|such that|so that|provided)\b", re.I)
_MATH_SPAN = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")


def asked_spans(question: str) -> list[str]:
    """The math a question asks for: the ``$...$`` spans of each clause that asks ("Find $P$ if $P+Q=7$" ->
    ["P"]; "What is the sum of $a$ and $b$?" -> ["a", "b"]). Empty when the asking clauses hold no math."""
    spans = []
    for m in _ASK.finditer(question):
        rest = question[m.end() :]
        cut = len(rest)
        ranges = math_ranges(rest)
        for stop in _CLAUSE_STOP.finditer(rest):
            if not any(a <= stop.start() < b for a, b in ranges):
                cut = stop.start()
                break
        spans += [a or b for a, b in _MATH_SPAN.findall(rest[:cut])]
    spans = [re.sub(r"[\s.,;:?!]+$", "", s.strip()) for s in spans]  # "Find $x.$"
    return list(dict.fromkeys(s for s in spans if s))


def name_asked(name: str, question: str | None) -> bool | None:
    """Whether the name on the left of an equation is what the question asks for: True when it is one of the
    asked spans or uses only their variables ("a+b" for "the sum of $a$ and $b$"), False when the asking clauses
    name other variables ("P+Q" for "Find $P$"), None when the question does not tell (none given, a word problem,
    or only an equation to solve: "Solve $x^2 = 7x$" asks for $x$, not for either side)."""
    if not question:
        return None
    spans = [s for s in asked_spans(question) if not re.search(r"[=<>]|\\[lg]eq?\b", s)]
    if not spans:
        return None
    key = normalise(name)
    if any(normalise(s) == key for s in spans):
        return True
    letters = free_letters(name)
    if any(len(w) > 2 and w.islower() for w in letters):
        return None  # a name in words ("total"): the question's math cannot tell
    asked = {c for s in spans for w in free_letters(s) for c in w}
    return bool(letters) and {c for w in letters for c in w} <= asked


__all__ = [
    "is_textual",
    "is_word_answer",
    "sentences",
    "concluding_sentence",
    "states_text",
    "sentence_number",
    "free_letters",
    "is_name",
    "asked_spans",
    "name_asked",
]
