"""The MWPBench judges and prompt templates (no data folder or model needed)."""

from __future__ import annotations

import pytest

from mathscale_utils.core.templates import TEMPLATES, fill_template
from mathscale_utils.grading.judges import strict_judge
from mathscale_utils.grading.paper_judge import (
    extract_answer,
    extract_boxed_all,
    is_equiv,
    is_number,
    paper_judge,
    strip_string,
)

# ---------------------------------------------------------------------------------------------------------------
# the paper's judge: (completion, reference, expected verdict), grouped by rule

METHOD_MICRO_EXAMPLES = [  # METHOD.md §8.6, each with its stated verdict
    ("\\boxed{25\\%}", "25", True),
    ("\\boxed{25%}", "25", False),  # the bare % survives
    ("The answer is 25%.", "25", True),  # numeric reference: last number
    ("so the total is 1,000,000 dollars", "1000000", False),  # ",000" -> "000" -> 0
    ("The answer is \\frac{3}{4}", "0.75", False),  # last number is 4
    ("The answer is 0.75", "$\\frac{3}{4}$", False),
    ("The answer is 3/4", "$\\frac{3}{4}$", True),
    ("\\boxed{\\frac{1}{2}}", "$2$", True),  # false positive through the inline-math substring rule
    ("\\boxed{\\frac{1}{2}}", "2", False),
    ("\\boxed{x+12}", "$2$", True),  # another false positive
    ("41 degrees", "$41^{\\circ}$", True),
    ("The answer is (1, -2)", "$(1,-2)$", True),
    ("The answer is 2 and -4", "$2,-4$", False),
    ("The answer is abc", "ab", False),
    ("The answer is ab", "abc", False),
    ("it is a triangle", "Triangular Prism", False),
    ("\\fbox{7}", "7", True),  # through the last-number path, not the box
    ("\\boxed {7}", "7", True),
    ("1e3", "1000", False),  # last number is 3
]

SEPARATORS = [
    ("The answer is 1,000.", "1000", True),
    ("The total is 1080 dollars.", "1,080", True),
    ("The answer is 1,000,000.", "1000000", False),
    ("\\boxed{1,000,000}", "1000000", True),  # the box keeps the whole string; commas deleted on both sides
    ("The answer is 7.0", "7", True),
    ("The answer is 0.3333", "1/3", False),  # exact float equality only
    ("The answer is -5.", "-5", True),
]

FRACTIONS = [
    ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{\\dfrac{3}{4}}", "$\\frac{3}{4}$", True),
    ("\\boxed{3/4}", "\\frac{3}{4}", True),  # a/b -> \frac{a}{b}
    ("\\boxed{\\frac34}", "\\frac{3}{4}", True),  # bare fraction arguments braced
    ("\\boxed{\\frac1{72}}", "\\frac{1}{72}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),  # the one decimal rewritten
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{((3)/(4))}", "\\frac{3}{4}", True),
    ("\\boxed{0.75}", "\\frac{3}{4}", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", True),
]

PERCENT_UNITS = [
    ("\\boxed{25\\%}", "25\\%", True),
    ("\\boxed{5 \\text{ cm}}", "5", True),  # unit removal needs "\text{ " with a space
    ("\\boxed{5\\text{cm}}", "5", False),
    ("The answer is 12 meters.", "12", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("The price is \\$4.50, so \\boxed{\\$4.50}", "4.50", True),
]

BOXED = [
    ("\\boxed{7}", "7", True),
    ("The answer is 7.", "7", True),
    ("first \\boxed{3}, finally \\boxed{4}", "4", True),  # the last box wins
    ("first \\boxed{3}, finally \\boxed{4}", "3", False),
    ("\\boxed{3} and then \\boxed{4", "3", True),  # an unbalanced box is skipped
    ("\\boxed{x^{2}+1}", "x^2+1", False),  # no brace normalisation
    ("\\boxed{x^{2}+1}", "$x^{2}+1$", True),
]

ASSIGNMENTS = [
    ("\\boxed{x = 5}", "5", True),  # "lhs=rhs" with len(lhs) <= 2 -> rhs
    ("The answer is x = 5", "5", True),
    ("\\boxed{xyz = 5}", "5", False),
    ("\\boxed{y=2x+1}", "y = 2x+1", True),
]

MULTIPLE_CHOICE = [  # MC questions are turned into word problems: the gold is the option's content
    (
        "The answer is Kathy starts each week with 108 phones to fix.",
        "Kathy starts each week with 108 phones to fix.",
        True,
    ),
    ("The answer is C", "10", False),  # a letter instead of the content
    ("The answer is (B)", "B", False),  # one-character references never match by substring
    ("\\boxed{-1+12i}", "$-1+12 i$", True),
]

INTERVALS_TUPLES = [
    ("\\boxed{(3,4]}", "(3,4]", True),
    ("\\boxed{[2, 5)}", "[2,5)", True),
    ("\\boxed{(2,1)}", "(1,2)", False),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", True),
]

NEGATIVES = [
    ("\\boxed{-5}", "-5", True),
    ("\\boxed{-x}", "-x+1", False),  # substring rules are off when either side starts with "-"
    ("\\boxed{x+1}", "-x+1", False),
]

ALL_PAPER_CASES = (
    METHOD_MICRO_EXAMPLES
    + SEPARATORS
    + FRACTIONS
    + PERCENT_UNITS
    + BOXED
    + ASSIGNMENTS
    + MULTIPLE_CHOICE
    + NEGATIVES
)


@pytest.mark.parametrize("completion,reference,expected", ALL_PAPER_CASES)
def test_paper_judge(completion, reference, expected):
    v = paper_judge(completion, reference)
    assert v.correct is expected, v


@pytest.mark.parametrize("completion,reference,expected", INTERVALS_TUPLES)
def test_paper_judge_intervals_and_tuples(completion, reference, expected):
    assert paper_judge(completion, reference).correct is expected


def test_inline_math_reference_is_a_substring_test():
    # "$(1,2),(3,4)$" normalises to "$(12)(34)$": its inside is not a substring of "(12)" -> wrong; the other way
    # round (the prediction contains the whole reference) is right
    assert not paper_judge("\\boxed{(1,2)}", "$(1,2),(3,4)$").correct
    assert paper_judge("\\boxed{(1,2),(3,4),(5,6)}", "$(1,2),(3,4)$").correct


def test_extraction_order_and_methods():
    assert extract_answer("\\boxed{1} the answer is 2", True) == ("1", "boxed")
    assert extract_answer("the answer is 2, not 3", True) == ("3", "last_number")  # "answer is" ignored
    assert extract_answer("no digits here", True) == (None, "last_number")
    assert extract_answer("the solution is abc.\nthe answer is xyz.", False) == ("xyz", "answer_phrase")
    assert extract_answer("the solution is abc.\nmore", False) == ("abc", "answer_phrase")
    assert extract_answer("the answer is: foo.\nbar", False) == ("foo", "answer_phrase")
    assert extract_answer("we consider this region", False) == ("region", "last_is")  # "is" inside "this"
    assert extract_answer("nothing to see", False) == (None, "none")


def test_lower_casing_applies_to_both_sides():
    assert paper_judge("THE ANSWER IS TRIANGULAR PRISM", "triangular prism").correct
    # "\\Boxed{" is lower-cased to "\\boxed{" before extraction, so the box is found
    assert paper_judge("The Answer Is \\Boxed{ABC}", "ABC").correct
    assert paper_judge("\\boxed{ABC}", "abc").correct


def test_boxed_extraction():
    assert extract_boxed_all("\\boxed{a{b}c} x \\boxed{d}") == ["a{b}c", "d"]
    assert extract_boxed_all("\\fbox{1} \\boxed {2}") == []
    assert extract_boxed_all("\\boxed{open") == []


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("1,000", "1000"),
        ("(1, -2)", "(1-2)"),
        ("\\left( 1 \\right)", "(1)"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("50\\%", "50"),
        ("50%", "50%"),
        ("\\$5", "5"),
        ("$5$", "$5$"),
        ("5 \\text{ cm}", "5"),
        (".5", "\\frac{1}{2}"),  # leading zero, then the 0.5 rule
        ("0.5", "\\frac{1}{2}"),
        ("0.50", "0.50"),
        ("x = 5", "5"),
        ("xy=5", "5"),
        ("abc = 5", "abc=5"),
        ("a=b=c", "a=b=c"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\sqrt 3", "\\sqrt{}3"),  # the space is the "single character" (then deleted)
        ("a\\quad b", "ab"),
        ("\\frac1b", "\\frac{1}{b}"),
        ("\\frac{72}1", "\\frac{72}1"),
        ("\\frac1", "\\frac1"),  # one character after \frac: the whole string is returned unchanged
        ("3/4", "\\frac{3}{4}"),
        ("03/4", "03/4"),
        ("4 .", "40."),  # " ." -> " 0." then spaces deleted
        ("((3)/(4))", "\\frac{3}{4}"),
        ("x^{\\circ}", "x"),
        ("a\\!b", "ab"),
        ("", ""),
    ],
)
def test_strip_string_steps(raw, clean):
    assert strip_string(raw) == clean


@pytest.mark.parametrize("bad", ["a \\text{ b} \\text{ c}", "2\\sqrt", "\\frac", "1+\\frac"])
def test_strip_string_raises_where_upstream_crashed(bad):
    with pytest.raises(ValueError):
        strip_string(bad)


def test_reference_crash_is_judged_wrong_and_flagged():
    v = paper_judge("\\boxed{a \\text{ b} \\text{ c}}", "a \\text{ b} \\text{ c}")
    assert v.correct is False and v.method == "reference_error" and v.reference_error
    v = paper_judge("whatever", "2\\sqrt")
    assert v.method == "reference_error"


def test_prediction_crash_falls_back_to_raw_equality():
    ok, p, r, rule = is_equiv("3\\sqrt", "abc")
    assert (ok, rule) == (False, "raw_fallback")
    ok, _, _, rule = is_equiv("2\\sqrt", "2\\sqrt")
    assert ok and rule == "raw_fallback"


def test_is_equiv_missing_values():
    assert is_equiv(None, None)[0] is True
    assert is_equiv(None, "5")[0] is False
    assert is_equiv("5", None)[0] is False


def test_is_number_follows_python_float():
    assert is_number("$5$") and is_number("1e3") and is_number("-2.5") and is_number("inf")
    assert not is_number("1/2") and not is_number("\\frac{1}{2}") and not is_number("")


def test_failed_request_is_wrong():
    assert paper_judge(None, "5").correct is False
    assert paper_judge("", "abc").correct is False
    assert strict_judge(None, "5").correct is False


# ---------------------------------------------------------------------------------------------------------------
# the strict judge (math-verify)

STRICT_CASES = [
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("The answer is $\\frac{3}{4}$", "0.75", True),
    ("\\boxed{(1,-2)}", "$(1,-2)$", True),
    ("The answer is (1, -2)", "$(1,-2)$", True),  # via the final-answer span
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
    ("The answer is 1,000,000.", "1000000", True),
    ("\\boxed{x+1}", "1+x", True),
    ("\\boxed{[2,5)}", "[2, 5)", True),
    ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}", True),
    ("so \\boxed{y = 2x + 1}", "y=2x+1", True),
    ("\\fbox{7}", "7", True),
    ("\\boxed{\\text{Triangular Prism}}", "Triangular Prism", True),  # textual gold: text match
    # the paper judge's false positives are rejected
    ("\\boxed{\\frac{1}{2}}", "$2$", False),
    ("\\boxed{x+12}", "$2$", False),
    ("\\boxed{(2,1)}", "(1,2)", False),
    ("The answer is 0.3333", "\\frac{1}{3}", False),
    ("it is a triangle", "Triangular Prism", False),
    ("\\boxed{7}", "\\text{seven}", True),  # a number word is its number (issue 15)
    ("\\boxed{8}", "\\text{seven}", False),
    ("", "5", False),
]


@pytest.mark.parametrize("completion,reference,expected", STRICT_CASES)
def test_strict_judge(completion, reference, expected):
    v = strict_judge(completion, reference)
    assert v.correct is expected, v


def test_strict_judge_in_a_thread_runs_without_signal_timeouts():
    import threading

    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", strict_judge("\\boxed{\\frac{1}{2}}", "0.5")))
    t.start()
    t.join(60)
    assert out["v"].correct is True and out["v"].error is None


# ---------------------------------------------------------------------------------------------------------------
# templates and decoding

Q = "What is $1+{x}$?\nGive a number."
PRE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_templates_byte_exact():
    assert fill_template("none", Q) == Q
    assert fill_template("alpaca", Q) == PRE + "\n\n### Instruction:\n" + Q + "\n\n### Response:"
    assert fill_template("alpaca_force_ans", Q) == (
        PRE
        + "\n\n### Instruction:\n"
        + Q
        + "\n\nTry to conclude your response with 'The answer is ...'.\n### Response:"
    )
    assert (
        fill_template("alpaca_cot", Q)
        == PRE + "\n\n### Instruction:\n" + Q + "\n\n### Response: Let's think step by step."
    )
    assert fill_template("alpaca", Q).encode().endswith(b"### Response:")
    assert set(TEMPLATES) == {"none", "alpaca", "alpaca_force_ans", "alpaca_cot"}
    with pytest.raises(ValueError):
        fill_template("vicuna", Q)
