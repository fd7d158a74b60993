"""Answer text, read in one place: the ``\\boxed{}`` extractor, the final-answer finder and the normaliser.

Used for MATH reference answers (``data.py``), for parsing generated solutions (``reply_format.py``), by the
optional answer check (``filters.py``) and by the strict judge (``judges.py``). The paper judge keeps its own
frozen copies of these steps (``paper_judge.py``), because the published numbers depend on their quirks.

Three layers, each a small pure function of strings:

* boxes: ``boxed_spans`` / ``last_boxed`` / ``find_boxed`` (``\\boxed{}``, ``\\boxed {}``, ``\\fbox{}``, ``\\boxed 5``);
* the declared answer: ``final_answer`` finds the last declaration ("The answer is X", "Final Answer: X",
  "Answer: X", "#### X" or a box) and cuts it where the declaration ends ("The answer is 90. Check: ..." -> "90");
* comparison helpers: ``clean_answer`` (strip wrappers), ``normalise`` (one canonical string), ``answer_parts``
  (a list split into its values), ``restatements`` (one answer written several ways), ``choice_letter`` and
  ``text_key``. Exact numbers (units, number words, money) are read in ``numbers.py``.
"""

from __future__ import annotations

import re

# ----------------------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed ([^\s${]+)")


def closing_brace(text: str, start: int) -> int | None:
    """Index just after the brace that closes the group opened right before ``start`` (nesting counted)."""
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # an escaped brace (set notation) does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def boxed_spans(text: str) -> list[tuple[str, int, int]]:
    """``(content, start, end)`` of every balanced box, in text order: ``\\boxed{}``, ``\\boxed {}``, ``\\fbox{}``
    and the bare ``\\boxed 5`` of a few MATH solutions. Unbalanced boxes are skipped; content is stripped."""
    spans = []
    for m in _BOX_OPEN.finditer(text):
        end = closing_brace(text, m.end())
        if end is not None:
            spans.append((text[m.end() : end - 1].strip(), m.start(), end))
    braced = {s for _, s, _ in spans}
    for m in _BOX_BARE.finditer(text):
        if m.start() not in braced:
            spans.append((m.group(1).strip(), m.start(), m.end()))
    return sorted(spans, key=lambda s: s[1])


def last_boxed(text: str) -> tuple[str, int, int] | None:
    """``(content, start, end)`` of the last box in the text, or None."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


def find_boxed(text: str) -> str | None:
    """Content of the last box (nested braces counted), or None; MATH's short answers come from it (the Hendrycks
    convention). Not the paper judge's extractor, which recognises ``\\boxed{`` only."""
    box = last_boxed(text)
    return None if box is None else box[0]


# ----------------------------------------------------------------------------------------------------------------
# the declared final answer
# ----------------------------------------------------------------------------------------------------------------

# "The answer is X", "final answer: X", "Answer = X", "**Answer:** X"; not "the answer is correct", and not a
# phrase that checks the answer ("Let us check the answer: ...").
_ANSWER = re.compile(
    r"(?:final\s+answer|answers?)(?:\s+(?:would|will|should)\s+be\b|\s*(?:is|are)\b|\s*[:=])"
    r"(?![\s*:]*(?:(?:correct|right|wrong|incorrect|indeed|reasonable|consistent|valid|plausible|also)\b|not\s+[\d$\\-]))"
    r"[\s*:]*",
    re.I,
)
# the phrase is the object of a check ("we can verify that the answer is ...", "check the answer: ...")
_CHECKING = re.compile(
    r"\b(?:check|verify|confirm|test|whether|if)\w*\s+(?:(?:that|if|whether)\s+)?(?:the|our|my|this|that|your)?\s*$",
    re.I,
)
_HASHES = re.compile(r"^[ \t]*####[ \t]*", re.M)  # the GSM8K final-answer marker
# where a declared answer ends: a sentence break, a clause that explains it, or the end of the line
_CLAUSE_END = re.compile(
    r"\.(?=\s+\S)|\.$|;\s|,\s+(?:since|because|as|which|so|but|that|where)\b|,\s+and\s+(?=[a-zA-Z]{2,})"
    r"|\s+(?:since|because|which is|as (?:required|expected|computed|shown))\b|\s+\((?:check|since|because)",
    re.I,
)


_MONEY_SPAN = re.compile(r"\d[^$]*\s[a-zA-Z]{2}")
ABBREVIATION = re.compile(r"\b(?:i\.e|e\.g|approx|vs|etc|cf|Mr|Mrs|Ms|Dr|St|No)\.$")


def _line_end(text: str, i: int) -> int:
    """Index of the end of the line that contains position i."""
    j = text.find("\n", i)
    return len(text) if j == -1 else j


def math_ranges(line: str) -> list[tuple[int, int]]:
    """Spans of ``$...$``, ``\\(...\\)``, ``\\[...\\]`` and brace groups, inside which a declaration never ends."""
    ranges, i = [], 0
    while i < len(line):
        if line.startswith("$$", i):
            j = line.find("$$", i + 2)
            close = 2
        elif line[i] == "$" and (i == 0 or line[i - 1] != "\\"):
            j = line.find("$", i + 1)
            close = 1
            if j == -1 or _MONEY_SPAN.match(line[i + 1 : j]):  # "$18 and he earns $20": money, not math
                i += 1
                continue
        elif line.startswith("\\(", i) or line.startswith("\\[", i):
            j = line.find("\\)" if line[i + 1] == "(" else "\\]", i + 2)
            close = 2
        elif line[i] == "{" and (i == 0 or line[i - 1] != "\\"):
            end = closing_brace(line, i + 1)
            j, close = (end - 1, 1) if end else (-1, 0)
        else:
            i += 1
            continue
        if j == -1:
            ranges.append((i, len(line)))
            break
        ranges.append((i, j + close))
        i = j + close
    return ranges


def declaration_tail(line: str) -> str:
    """The answer part of the text that follows a declaration on its line: up to the first sentence break or
    explaining clause outside math ("90. Check: 90 + 55 = 145" -> "90"; "$3.5$, since ..." -> "$3.5$")."""
    ranges = math_ranges(line)
    for m in _CLAUSE_END.finditer(line):
        inside = any(a <= m.start() < b for a, b in ranges)
        decimal = line[m.start()] == "." and m.start() + 1 < len(line) and line[m.start() + 1].isdigit()
        abbreviation = line[m.start()] == "." and ABBREVIATION.search(line, 0, m.start() + 1)
        if not inside and not decimal and not abbreviation and m.start() > 0:
            return line[: m.start()]
    return line


def _phrase_answers(text: str) -> list[tuple[int, str, int, int]]:
    """``(start, raw answer, end of its line, where the answer starts)`` for each answer phrase whose answer is on
    its line (or, when the phrase ends the line, on the next non-blank line)."""
    out = []
    for m in _ANSWER.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if _CHECKING.search(text[line_start : m.start()]):
            continue
        eol = _line_end(text, m.end())
        tail = text[m.end() : eol]
        display = re.match(r"\s*(\$\$|\\\[)\s*$", tail)
        if display:  # "The answer is $$\n\\frac{1}{2}\n$$": the whole displayed block
            close = text.find("$$" if display.group(1) == "$$" else "\\]", eol)
            if close != -1:
                out.append((m.start(), text[m.end() : close + 2], _line_end(text, close + 2), m.end()))
                continue
        if not tail.strip():  # "The answer is:\n\n$$42$$"
            nxt = re.compile(r"\n[ \t]*(\S[^\n]*)").search(text, eol)
            if nxt is None or nxt.start() - eol > 3:
                continue
            tail, eol, begin = nxt.group(1), nxt.end(), nxt.start(1)
        else:
            begin = m.end()
        out.append((m.start(), declaration_tail(tail), eol, begin))
    for m in _HASHES.finditer(text):
        eol = _line_end(text, m.end())
        out.append((m.start(), text[m.end() : eol], eol, m.end()))
    return out


def final_answer(text: str, whole: bool = False) -> tuple[str, int] | None:
    """``(answer, end of the line that states it)`` for the last declared answer, or None when nothing declares one.

    A declaration is an answer phrase ("The answer is X", "Final Answer: X", "Answer: X", "#### X") or a box; the
    one that starts last wins (a self-correction replaces the first answer; "the answer is $\\boxed{7}$" is the
    box), except that a phrase after a box that describes rather than states ("The final answer is positive,
    because ...") does not replace it. Text after the declaration (a check, a restatement, other numbers) does not
    change the answer. The answer is cleaned with ``clean_answer``.

    ``whole``: a phrase's answer is everything after the phrase, to the end of the text, for a reference answer
    that itself runs over several sentences or lines.
    """
    phrases = [(s, clean_answer(text[b:] if whole else a), e) for s, a, e, b in _phrase_answers(text)]
    phrases = [p for p in phrases if p[1]]
    box = last_boxed(text)
    boxed = (box[1], clean_answer(box[0]), _line_end(text, box[2])) if box and box[0] else None
    if phrases and boxed and phrases[-1][0] > boxed[0] and _describes(phrases[-1][1]):
        phrases = []  # "\boxed{9}. The final answer is positive, because ...": a remark, not a new answer
    best = max([*phrases[-1:], *([boxed] if boxed else [])], key=lambda c: c[0], default=None)
    if best is None:
        return None
    return best[1], best[2]


_DESCRIPTION = re.compile(r"^(?:the|a|an|to|that|this|equally|positive|negative|not|because)\b", re.I)


def _describes(answer: str) -> bool:
    """An answer phrase that describes rather than states ("the product of $120$ and $24$", "positive, because"):
    it starts with an article or a describing word, or it is two words or more without a digit or math."""
    if _DESCRIPTION.match(answer) and (len(answer.split()) > 1 or answer.lower() in ("positive", "negative")):
        return True
    return len(answer.split()) > 1 and not re.search(r"[\d$\\]", answer)


# ----------------------------------------------------------------------------------------------------------------
# cleaning and normalising
# ----------------------------------------------------------------------------------------------------------------

_INLINE = re.compile(r"^\$+([^$]*)\$+$")
_MONEY = re.compile(r"^(-?)\s*\\?\$\s*(-?[\d,]*\.?\d+)$")


def clean_answer(a: str) -> str:
    """Strip the wrappers around a stated answer: a box (its content wins), ``$...$`` / ``\\(...\\)`` /
    ``\\[...\\]``, Markdown bold, a trailing period or colon, and a currency sign ("$5" -> "5")."""
    a = a.strip()
    box = last_boxed(a)
    if box and box[0]:
        a = box[0]
    for _ in range(2):
        a = a.strip().strip("*").strip().rstrip(".").strip()
        m = _INLINE.match(a)
        if m:
            a = m.group(1)
        for op, cl in (("\\(", "\\)"), ("\\[", "\\]")):
            if a.startswith(op) and a.endswith(cl):
                a = a[2:-2]
    money = _MONEY.match(a.strip())
    if money:
        a = money.group(1) + money.group(2)
    return a.strip().rstrip(".:").strip()


_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING = re.compile(
    r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])|(?<!\\)\\[!,;:> ]|\\q?quad\b|\\displaystyle\b"
)
DEGREE_MARK = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")


def unwrap_text(a: str) -> str:
    """``\\text{x}`` and its kin -> ``x`` (repeated for nesting)."""
    prev = None
    while prev != a:
        prev, a = a, _TEXT_CMD.sub(r"\1", a)
    return a


def strip_thousands(a: str) -> str:
    """``1,000,000`` / ``1{,}000`` / ``1\\,000`` -> ``1000000``; a comma list such as ``2,-4`` is left alone."""
    a = a.replace("\\!", "")
    a = re.sub(r"(?<=\d)(?:\{,\}|\\,|\\ )(?=\d{3}(?!\d))", ",", a)
    return _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), a)


def normalise(a: str) -> str:
    """One canonical string for an answer: cleaned, lower-cased, ``\\text{}`` unwrapped, spacing commands,
    ``\\left``/``\\right``, degree marks, ``$``, thousands separators and all whitespace removed, ``dfrac``/``tfrac``
    -> ``frac``, ``bmatrix`` -> ``pmatrix``. Two answers with the same normal form are the same answer."""
    a = clean_answer(a or "")
    a = strip_thousands(a)
    a = unwrap_text(a).lower()
    a = _SPACING.sub(" ", a)
    a = DEGREE_MARK.sub("", a)
    a = a.replace("dfrac", "frac").replace("tfrac", "frac").replace("bmatrix", "pmatrix")
    a = a.replace("\\%", "%").replace("\\$", "").replace("$", "")
    a = re.sub(r"\s+", "", a)
    return a.rstrip(".")


# ----------------------------------------------------------------------------------------------------------------
# values: lists, numbers, choice letters, words
# ----------------------------------------------------------------------------------------------------------------

_PART_SPLIT = re.compile(
    r"\s*(?:(?<!\\)[;,](?!\s*\(?\s*(?:i\.e\.|that is|in other words))(?:\s*(?:\\text\{\s*(?:or|and)\s*\}|(?:or|and)\s))?|\\text\{\s*(?:or|and)\s*\}|\\(?:quad|qquad)\b"
    r"|\s(?:or|and)\s)\s*"
)


def _depths(a: str) -> list[int]:
    """Bracket depth at each character: ``( [ {`` and ``\\{`` open, their closers close, \\begin..\\end counts."""
    out, depth, i = [0] * (len(a) + 1), 0, 0
    while i < len(a):
        step = 1
        if a.startswith("\\begin", i) or a[i] in "([{":
            depth += 1
        elif a.startswith("\\end", i) or a[i] in ")]}":
            depth -= 1
        elif a.startswith("\\{", i) or a.startswith("\\}", i):
            depth += 1 if a[i + 1] == "{" else -1
            out[i + 1] = depth
            step = 2
        out[i] = depth
        i += step
    return out


def _top_level_cuts(a: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the list separators of ``a`` that are outside brackets, braces and environments."""
    depth = _depths(a)
    return [
        (m.start(), m.end()) for m in _PART_SPLIT.finditer(a) if m.end() > m.start() and depth[m.start()] == 0
    ]


_HEDGE = re.compile(r"\s*\(\s*(or\s[^()]*)\)")  # "1208 (or 1210 if ...)": an alternative, not a remark
_PLUS_MINUS = re.compile(r"\\pm\b|±")


def answer_parts(a: str, thousands: bool = True) -> list[str]:
    """The values of a list answer, split at top-level commas, semicolons, "or"/"and" (``\\text{ or }`` too, and a
    bracketed "(or ...)" alternative); with ``thousands``, a group such as ``1,000`` is a number, not a list. A
    part with one ``\\pm`` is its two values ("1 \\pm \\sqrt{19}", "\\pm 4"). A tuple, interval, set or matrix
    stays one part."""
    a = _HEDGE.sub(r" \1", clean_answer(a))
    a = strip_thousands(a) if thousands else a
    parts, last = [], 0
    for s, e in _top_level_cuts(a):
        parts.append(a[last:s])
        last = e
    parts.append(a[last:])
    return [v for p in parts if p.strip() for v in _plus_minus(p.strip())]


def _plus_minus(part: str) -> list[str]:
    """ "a \\pm b" -> ["a + b", "a - b"] (one \\pm outside brackets); anything else unchanged."""
    hits = [m for m in _PLUS_MINUS.finditer(part) if _depths(part)[m.start()] == 0]
    if len(hits) != 1 or len(_PLUS_MINUS.findall(part)) != 1:
        return [part]
    m = hits[0]
    return [f"{part[: m.start()]}{sign}{part[m.end() :]}".strip() for sign in ("+", "-")]


_ASSIGN = re.compile(
    r"^\s*(?:\\?[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?|\(\s*[a-z]\s*(?:,\s*[a-z]\s*)+\))\s*=\s*(?!=)"
)


def strip_assignment(a: str) -> str:
    """``x = 5`` -> ``5``; ``f(x) = 2x`` -> ``2x``; ``(x, y) = (4, 5)`` -> ``(4, 5)`` (variables on the left, as a
    solution names its answer)."""
    m = _ASSIGN.match(a)
    return a[m.end() :] if m and a[m.end() :].strip() else a


_RESTATE = re.compile(r"\s*(?:,?\s*\(?\s*(?:i\.e\.|that is|in other words)\s*,?|(?<![<>!\\])=(?!=))\s*", re.I)
_APPROX = re.compile(r"\s*(?:\\approx|≈|,?\s*\(?\s*(?:about|approximately|roughly)\b).*$", re.S | re.I)


def restatements(a: str) -> list[str]:
    """The forms of one answer written several ways ("\\frac{3}{4}, i.e. 0.75", "2 + 3 = 5", "X (that is, Y)"),
    each cleaned; approximations ("\\approx 0.33", "about 0.33") are dropped. One form when nothing is restated."""
    a = strip_assignment(clean_answer(a))
    a = _APPROX.sub("", a)
    depth = _depths(a)
    cuts = [
        (m.start(), m.end()) for m in _RESTATE.finditer(a) if m.end() > m.start() and depth[m.start()] == 0
    ]
    forms, last = [], 0
    for s, e in cuts:
        forms.append(a[last:s])
        last = e
    forms.append(a[last:])
    forms = [clean_answer(f.strip().rstrip(")") if f.count(")") > f.count("(") else f) for f in forms]
    return [f for f in forms if f]


_CHOICE = re.compile(
    r"^(?:\\textbf\{|\\text\{|\\mathrm\{|\{)*\s*(?:option|choice)?\s*\(?\s*([A-Ea-e])\s*\)?\s*\}*"
    r"(?:\s*[:.)]?\s*(?P<rest>.*))?$",
    re.S,
)


def choice_letter(a: str, strict: bool = True) -> str | None:
    """The option letter of a multiple-choice answer ("B", "(B)", ``\\text{(B)}``, "option B"), upper-cased, or None.

    strict: the answer is the letter alone. Not strict: the letter may be followed by the option's content
    ("(B) 12", ``\\textbf{(B) }12``), as a completion often writes it; it must then be marked as a letter (a
    bracket, or the word option/choice) so that an expression such as "b + 1" is not read as option B.
    """
    a = unwrap_text(clean_answer(a)).strip()  # "(\\text{E})", "\\textbf{(B) }12"
    m = _CHOICE.match(a)
    if not m:
        return None
    rest = (m.group("rest") or "").strip()
    if not rest:
        return m.group(1).upper()
    if strict:
        return None
    marked = re.match(r"^(?:\\textbf\{|\\text\{|\{)*\s*(?:(?:option|choice)\s*\(?|\(|[A-E][):.])", a, re.I)
    return m.group(1).upper() if marked else None


_ARTICLES = re.compile(r"^(?:a|an|the)\s+")


def text_key(a: str) -> str:
    """A textual answer reduced for comparison: text commands unwrapped, lower case, a leading article ("a Sunday")
    and punctuation dropped, spaces collapsed."""
    a = unwrap_text(clean_answer(a)).lower()
    a = re.sub(r"[\\$]", " ", a)
    a = re.sub(r"[^\w\s]", " ", a)
    a = re.sub(r"\s+", " ", a).strip()
    return _ARTICLES.sub("", a)


# ----------------------------------------------------------------------------------------------------------------
# plain-text mathematics written as LaTeX

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_POWER_WORDS = re.compile(
    r"(\d+)\s+(?:to|raised to)\s+the\s+(?:power\s+of\s+(\d+)|(\d+)(?:st|nd|rd|th)\s+power)\b"
)
_SYMBOLS = {
    "−": "-",
    "×": "\\times ",
    "·": "\\cdot ",
    "÷": "\\div ",
    "∞": "\\infty ",
    "π": "\\pi ",
    "≤": "\\le ",
    "≥": "\\ge ",
    "≠": "\\ne ",
    "½": "\\frac{1}{2}",
    "⅓": "\\frac{1}{3}",
    "⅔": "\\frac{2}{3}",
    "¼": "\\frac{1}{4}",
    "¾": "\\frac{3}{4}",
}
_ROOT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\((?:[^()]|\([^()]*\))*\)|\{[^{}]*\})")


def plain_math(text: str) -> str:
    """Mathematics typed in plain text, as LaTeX: ``2⁵`` -> ``2^5``, ``2**5`` -> ``2^5``, "2 to the power of 5" ->
    ``2^{5}``, ``5√2`` -> ``5\\sqrt{2}``, ``√(x+1)`` -> ``\\sqrt{x+1}``, ``−∞`` -> ``-\\infty``, ``×``, ``÷``, ``π``,
    ``½``."""
    if text.isascii():
        return _POWER_WORDS.sub(lambda m: f"{m.group(1)}^{{{m.group(2) or m.group(3)}}}", _py_power(text))
    text = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+", lambda m: _superscript(m.group()), text)
    text = _ROOT.sub(lambda m: "\\sqrt{" + _inside(m.group(1)) + "}", text)
    text = "".join(_SYMBOLS.get(c, c) for c in text)
    return _POWER_WORDS.sub(lambda m: f"{m.group(1)}^{{{m.group(2) or m.group(3)}}}", _py_power(text))


def _inside(group: str) -> str:
    """A root's argument without its own brackets: "(x+1)" -> "x+1", "2" -> "2"."""
    return group[1:-1] if group[0] in "({" else group


def _superscript(digits: str) -> str:
    d = digits.translate(_SUPERSCRIPTS)
    return "^" + d if len(d) == 1 else "^{" + d + "}"


def _py_power(text: str) -> str:
    return re.sub(r"(?<=[\d)}])\*\*(?=[\d({])", "^", text)


__all__ = [
    "closing_brace",
    "boxed_spans",
    "last_boxed",
    "find_boxed",
    "DEGREE_MARK",
    "final_answer",
    "declaration_tail",
    "math_ranges",
    "ABBREVIATION",
    "clean_answer",
    "normalise",
    "unwrap_text",
    "strip_thousands",
    "answer_parts",
    "strip_assignment",
    "restatements",
    "choice_letter",
    "text_key",
    "plain_math",
]
