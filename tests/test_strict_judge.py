"""The strict judge: the kinds a careful grader accepts, the hard negatives, the time limit (no data or model needed)."""

from __future__ import annotations

import threading
import time

import pytest
from judge_kind_cases import CASES

from mathscale_utils.grading import symbolic
from mathscale_utils.grading.answers import plain_math
from mathscale_utils.grading.judges import judge, strict_judge
from mathscale_utils.grading.numbers import is_unit_tail
from mathscale_utils.grading.statements import (
    asked_spans,
    concluding_sentence,
    is_name,
    is_word_answer,
    name_asked,
    sentence_number,
    states_text,
)
from mathscale_utils.grading.symbolic import (
    SymbolicTimeout,
    symbolic_equal,
    time_limit,
    too_costly,
)

ACCEPTED = [  # (completion, gold): a careful grader accepts each
    ("The answer is 90. Check: 90 + 55 = 145.", "90"),
    ("The answer is 90.\nTo verify: 145 - 55 = 90, and 2 * 45 = 90. So 145 it is not.", "90"),
    ("So $\\boxed{42}$.\n\nCheck: 42 + 8 = 50.", "42"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("The answer is 40.\nWait, I made an error. The answer is 42.", "42"),
    (
        "The answer is $\\begin{bmatrix} 1 \\\\ -2 \\end{bmatrix}$.",
        "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}",
    ),
    ("The answer is $(1, -2)$.", "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}"),
    ("The answer is $\\left[ 2, 5 \\right)$.", "[2,5)"),
    ("The answer is $864 \\mbox{ inches}^2$.", "864 \\text{ square inches}"),
    ("The answer is 5.", "5\\text{ digits}"),
    ("The answer is 18 dollars.", "18"),
    ("The answer is nine.", "9"),
    ("The answer is a Sunday.", "\\text{Sunday}"),
    ("Answer: B", "\\text{(B)}"),
    ("The correct option is $\\textbf{(B) }12$.", "\\text{(B)}"),
    ("The answer is $\\tan 60^\\circ$.", "\\sqrt{3}"),
    ("The answer is $2\\sqrt{3}$.", "\\sqrt{12}"),
    ("The answer is $\\$1,080.00$.", "1080"),
    ("The answer is 25%.", "25\\%"),
    ("The answer is $1{,}000{,}000$.", "1000000"),
    ("The answer is $x = 5$.", "5"),
    ("The answer is $x = -2$ or $x = 6$.", "6, -2"),
    ("The answer is $\\frac{3}{4}$, i.e. $0.75$.", "\\frac{3}{4}"),
    ("The answer is \u22123.", "-3"),
    ("So she makes $18 every day.", "18"),
    ("#### 1,080", "1080"),
    ("The answer is 70, 110.", "70,110"),
]

REJECTED = [  # (completion, gold): a careful grader rejects each
    ("The answer is $x = 5$ or $x = -3$.", "5"),  # an extraneous root kept
    ("The answer is 5, -3.", "5"),
    ("The answer is 1008.", "1080"),  # a near miss
    ("The answer is 0.3333.", "\\frac{1}{3}"),
    ("The answer is 1.73.", "\\sqrt{3}"),
    ("The answer is 3.14.", "\\pi"),
    (
        "The answer is 90.\nWait, that is wrong. The answer is 95.",
        "90",
    ),  # right value, then a wrong final answer
    ("We get 90 here.\nThe answer is 95.", "90"),
    ("The answer is 85. Check: 90 - 5 = 85.", "90"),  # the gold only after the declared answer
    (
        "The answer is $\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}$.",
        "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}",
    ),
    ("The answer is $(3, 4)$.", "(3,4]"),
    ("The answer is $(2, 1)$.", "(1,2)"),
    ("Answer: C", "\\text{(B)}"),
    ("The answer is a Monday.", "\\text{Sunday}"),
    ("The answer is eight.", "9"),
    ("The answer is $\\tan 30^\\circ$.", "\\sqrt{3}"),
    ("The answer is $\\frac{1}{2}$.", "$2$"),  # the paper judge's substring false positive
    ("The answer is $x + 12$.", "$2$"),
    ("The answer is $\\frac{3}{4}$, i.e. $0.7$.", "\\frac{3}{4}"),  # a wrong restatement
    ("The answer is 7:20.", "7"),
    ("The answer is 5 hundred.", "5"),
    ("The answer is $5x$.", "5"),
]


@pytest.mark.parametrize("completion,gold", ACCEPTED)
def test_accepts(completion, gold):
    v = strict_judge(completion, gold)
    assert v.correct, v


@pytest.mark.parametrize("completion,gold", REJECTED)
def test_rejects(completion, gold):
    v = strict_judge(completion, gold)
    assert not v.correct, v


def test_declared_answer_is_reported():
    v = strict_judge("The answer is 90. Check: 90 + 55 = 145.", "90")
    assert (v.extracted, v.source, v.method) == ("90", "declared", "exact")
    v = strict_judge("So she makes $18 every day.", "18")
    assert v.source == "last" and v.correct
    row = judge("The answer is 90. Check: 90 + 55 = 145.", "90")
    assert row["strict_correct"] and not row["paper_correct"] and row["strict_source"] == "declared"


# ---------------------------------------------------------------------------------------------------------------
# the kinds it once missed (tests/judge_kind_cases.py): each variant, right and wrong


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}-{i}" for i, c in enumerate(CASES)])
def test_kind_case(case):
    v = strict_judge(case.completion, case.gold, case.question)
    assert v.correct is case.label, (case, v)


def test_every_kind_has_right_and_wrong_cases():
    kinds = {c.kind for c in CASES}
    assert len(kinds) >= 7
    for kind in kinds:
        labels = {c.label for c in CASES if c.kind == kind}
        assert labels == {True, False}, kind


def test_the_question_decides_what_a_named_equation_answers():
    """Without the question the judge takes the equation's value; with it, the left side must be what is asked."""
    completion, gold = "So $P+Q = 7$.", "7"
    assert strict_judge(completion, gold).correct
    assert strict_judge(completion, gold, "What is $P+Q$?").correct
    v = strict_judge(completion, gold, "Find $P$ if $P+Q=7$ and $Q=0$.")
    assert not v.correct and v.method == "named_other"
    row = judge(completion, gold, "Find $P$ if $P+Q=7$ and $Q=0$.")
    assert not row["strict_correct"] and row["strict_method"] == "named_other"


def test_new_rules_report_what_they_read():
    v = strict_judge("Work.\nSo the curve is a parabola.", "\\text{parabola}")
    assert (v.method, v.source, v.extracted) == ("stated_text", "last", "So the curve is a parabola.")
    v = strict_judge("Work.\n#### She has 12 apples left.", "12")
    assert (v.method, v.source) == ("sentence_number", "declared")
    assert strict_judge("The answer is $P+Q = 7$.", "7").method == "named"


@pytest.mark.parametrize(
    "question, spans",
    [
        ("Find $P$ if $P+Q=7$ and $Q=0$.", ["P"]),
        ("If $P+Q=7$, find $P$.", ["P"]),
        ("What is the sum of $a$ and $b$?", ["a", "b"]),
        ("What is the value of $(x+y)^2$ when $x = 1$?", ["(x+y)^2"]),
        ("Tom has 5 apples. How many does he have now?", []),
    ],
)
def test_asked_spans(question, spans):
    assert asked_spans(question) == spans


@pytest.mark.parametrize(
    "name, question, expected",
    [
        ("P+Q", "What is $P+Q$?", True),
        ("a+b", "What is the sum of $a$ and $b$?", True),
        ("P+Q", "Find $P$ if $P+Q=7$.", False),
        ("P+Q", None, None),
        ("P+Q", "How many pens are there?", None),
        ("\\text{total}", "Find $P$.", None),
    ],
)
def test_name_asked(name, question, expected):
    assert name_asked(name, question) is expected


@pytest.mark.parametrize("form", ["P+Q", "r^2", "f(3)", "\\text{Total}", "\\overline{AB}", "5x"])
def test_is_name(form):
    assert is_name(form)


@pytest.mark.parametrize("form", ["7", "5 + \\sqrt{2}", "2^5", "\\frac{\\pi}{2}", "12 apples", "\\log_2 8"])
def test_is_not_name(form):
    assert not is_name(form)


@pytest.mark.parametrize(
    "sentence, gold, expected",
    [
        ("So the curve is a parabola.", "parabola", True),
        ("It falls on a Wednesday.", "\\text{Wednesday}", True),
        ("Therefore, $f$ is an even function.", "even", True),
        ("So the curve is not a parabola.", "parabola", False),
        ("It is a parabola or a hyperbola.", "parabola", False),
        ("Is it a parabola?", "parabola", False),
        ("The vertex of the parabola is at the origin.", "parabola", False),
    ],
)
def test_states_text(sentence, gold, expected):
    assert states_text(sentence, gold) is expected


def test_concluding_sentence_passes_over_closing_remarks():
    text = "Some work.\nSo it falls on a Sunday. I hope it helps! Let me know if you have any questions."
    assert concluding_sentence(text) == "So it falls on a Sunday."
    assert concluding_sentence("Which day is it? ") is None


@pytest.mark.parametrize(
    "sentence, number",
    [
        ("Tom has 12 apples left", "12"),
        ("She pays $\\$1,250$ in total", "1250"),
        ("Tom is 12 years older than Jane", "12"),
        ("Tom has about 12 apples", None),
        ("Tom has 12 more than x", None),
        ("Tom has 12 apples and Jane has 5", None),
        ("Tom has 12 apples and five pears", None),
        ("In the 3rd week Tom has 12 apples", None),
    ],
)
def test_sentence_number(sentence, number):
    assert sentence_number(sentence) == number


def test_word_answers_and_unit_tails():
    assert is_word_answer("\\text{Triangular Prism}") and is_word_answer("neither")
    assert not is_word_answer("69\\text{ degrees}") and not is_word_answer(
        "\\begin{pmatrix} 1 \\end{pmatrix}"
    )
    assert is_unit_tail(["km/h"]) and is_unit_tail(["more", "than", "last", "year"])
    assert not is_unit_tail(["more", "than", "x"]) and not is_unit_tail(["hundred"])


def test_plain_math():
    assert plain_math("2⁵ and 10¹²") == "2^5 and 10^{12}"
    assert plain_math("2**5") == "2^5" and plain_math("2 to the power of 5") == "2^{5}"
    assert plain_math("**Answer:** 5") == "**Answer:** 5"
    assert plain_math("5√2 and √(x+1)") == "5\\sqrt{2} and \\sqrt{x+1}"
    assert plain_math("(−∞, 3)") == "(-\\infty , 3)" and plain_math("2½") == "2\\frac{1}{2}"


# ---------------------------------------------------------------------------------------------------------------
# the time limit


@pytest.mark.parametrize(
    "text",
    [
        "2003^{2002^{2001}}",
        "10^{10^{10}}",
        "9^{99999999}",
        "(10^{5})!",
        "30000!",
        "x^{2^{2002^{2001}}}",
        "a" * 2000,
    ],
)
def test_too_costly(text):
    assert too_costly(text)


@pytest.mark.parametrize("text", ["2^{2005}", "x^{y^2}", "e^{x^2}", "10!", "\\frac{1}{2}", "3^{100} + 1"])
def test_not_too_costly(text):
    assert not too_costly(text)


def _in_thread(fn, timeout: float = 30.0):
    """Run fn in a worker thread; (result, seconds)."""
    out: dict = {}
    t0 = time.perf_counter()
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call did not return"
    return out["v"], time.perf_counter() - t0


@pytest.mark.parametrize(
    "completion,gold,expected",
    [
        ("The answer is $2003^{2002^{2001}}$.", "5", False),
        ("The answer is $7$.", "2003^{2002^{2001}}", False),
        (
            "So we get $2003^{2002^{2001}}$ in the end.",
            "5",
            False,
        ),  # no declaration: math-verify's extraction
        (
            "The answer is $2003^{2002^{2001}}$.",
            "2003^{2002^{2001}}",
            True,
        ),  # the same text needs no arithmetic
    ],
)
def test_pathological_expression_fails_fast_in_a_thread(completion, gold, expected):
    v, seconds = _in_thread(lambda: strict_judge(completion, gold))
    assert v.correct is expected and seconds < 5, (v, seconds)


def test_time_limit_interrupts_a_thread():
    def busy() -> str:
        try:
            with time_limit(0.3):
                while True:
                    pass
        except SymbolicTimeout:
            return "timed out"
        return "finished"

    result, seconds = _in_thread(busy)
    assert result == "timed out" and seconds < 3


def test_time_limit_does_not_fire_after_the_block():
    with time_limit(0.2):
        done = "quick"
    t0, spins = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.6:  # a late SymbolicTimeout would be raised inside this loop
        spins += 1
    assert done == "quick" and spins > 0


def test_slow_symbolic_check_is_cut_in_a_thread(monkeypatch):
    import math_verify

    def endless(*args, **kwargs):
        while True:
            pass

    monkeypatch.setattr(math_verify, "verify", endless)
    symbolic.parse_gold.cache_clear()
    result, seconds = _in_thread(lambda: symbolic_equal("\\sqrt{3}", "\\tan 60^\\circ", seconds=0.5))
    assert result is False and seconds < 5
