"""The answer-text module: boxes, the declared final answer, normalisation and values (no data or model needed)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from mathscale_utils.grading import answers as A
from mathscale_utils.grading import numbers as N


def test_boxes_all_forms_in_order():
    text = "a \\boxed{x{y}} b \\fbox{z} c \\boxed {w} d \\boxed 5 e \\boxed{open"
    assert [c for c, _, _ in A.boxed_spans(text)] == ["x{y}", "z", "w", "5"]
    assert A.find_boxed(text) == "5" and A.find_boxed("none") is None
    content, start, end = A.last_boxed("so \\boxed{ 7 }.")
    assert (content, "so \\boxed{ 7 }."[start:end]) == ("7", "\\boxed{ 7 }")


def test_box_with_escaped_braces():
    assert A.find_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"


@pytest.mark.parametrize(
    "text, answer",
    [
        ("The answer is 90. Check: 90 + 55 = 145.", "90"),
        ("The answer is 90.\nCheck: 90 + 55 = 145, and 145 - 55 = 90.", "90"),
        ("Final Answer: The final answer is $90$. I hope it is correct.", "90"),
        ("So \\boxed{42}.\nTo check: 42 + 1 = 43", "42"),
        ("The answer is 40.\nWait, that is wrong. The answer is 42.", "42"),
        ("The answer is \\boxed{40}. Actually I made a mistake:\n\\boxed{42}", "42"),
        ("The answer is 3.5, since 7/2 = 3.5", "3.5"),
        ("She earns $18 and he earns $20, so the answer is $38.00.", "38.00"),
        ("#### 1,080", "1,080"),
        ("The answer is:\n$$ \\frac{3}{4} $$", "\\frac{3}{4}"),
        ("Answer: (B)", "(B)"),
        ("**Answer:** $x = 5$", "x = 5"),
        ("The answer is $(1, -2)$. Then we check it.", "(1, -2)"),
        ("\\boxed{90}\nWe can verify that the answer is correct: 90 + 55 = 145.", "90"),
        ("Let us check the answer: 90 + 55 = 145. So \\boxed{90}", "90"),
        ("The answers are 2 and -4.", "2 and -4"),
    ],
)
def test_final_answer_is_the_last_declaration(text, answer):
    assert A.final_answer(text)[0] == answer


def test_final_answer_none_and_line_end():
    assert A.final_answer("Janet makes 18 dollars.") is None
    assert A.final_answer("The answer is correct.") is None
    text = "Step 1.\nThe answer is 7.\nMore text"
    ans, end = A.final_answer(text)
    assert ans == "7" and text[:end].endswith("The answer is 7.")


def test_declaration_tail_keeps_math_and_decimals():
    assert A.declaration_tail("$a. b$. Next") == "$a. b$"
    assert A.declaration_tail("3.14 exactly") == "3.14 exactly"
    assert A.declaration_tail("5, because 2+3=5") == "5"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("\\boxed{7}.", "7"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\(x\\)", "x"),
        ("**12**", "12"),
        ("$5", "5"),
        ("\\$1,080.00", "1,080.00"),
        ("-$5", "-5"),
        ("The answer: ", "The answer"),
    ],
)
def test_clean_answer(raw, clean):
    assert A.clean_answer(raw) == clean


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\left( 1, -2 \\right)", "(1,-2)"),
        ("\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("\\dfrac{3}{4}", "\\frac34".replace("34", "{3}{4}")),
        ("1{,}000", "1000"),
        ("1\\,000", "1,000"),
        ("90^\\circ", "90"),
        ("\\text{Sunday}", "sunday"),
        ("$x = 5$.", "x=5"),
    ],
)
def test_normalise_equal(a, b):
    assert A.normalise(a) == A.normalise(b)


@pytest.mark.parametrize(
    "a, b", [("(1,2)", "[1,2]"), ("2,-4", "2-4"), ("12", "1,2"), ("\\sqrt{2}", "\\sqrt{3}")]
)
def test_normalise_keeps_differences(a, b):
    assert A.normalise(a) != A.normalise(b)


@pytest.mark.parametrize(
    "text, value",
    [
        ("864 \\text{ square inches}", 864),
        ("864 \\mbox{ inches}^2", 864),
        ("5 digits", 5),
        ("five digits", 5),
        ("twenty-five cents", 25),
        ("nine", 9),
        ("\\text{seven}", 7),
        ("three hundred and two", 302),
        ("\\$1,080.00", 1080),
        ("$1,080", 1080),
        ("25\\%", 25),
        ("25 percent", 25),
        ("x = 5", 5),
        ("2\\frac{1}{4}", Fraction(9, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("\\dfrac{6}{8}", Fraction(3, 4)),
        ("3/4", Fraction(3, 4)),
        ("1\\,000", 1000),
        ("1,000,000", 1000000),
        ("0.3333", Fraction(3333, 10000)),
        ("18 dollars", 18),
        ("90^\\circ", 90),
        (".5", Fraction(1, 2)),
        # units after "####" or in \text{}, spaced or not, and words that leave the number as it is
        ("12 apples", 12),
        ("12 apples in total", 12),
        ("15 \\text{ marbles}", 15),
        ("15\\text{marbles}", 15),
        ("15 \\, \\text{marbles}", 15),
        ("15\\,\\text{cm}^2", 15),
        ("\\text{15 marbles}", 15),
        ("12 km/h", 12),
        ("12 m/s^2", 12),
        ("12 m", 12),
        ("12 o'clock", 12),
        ("12 (apples)", 12),
        ("5 more apples", 5),
        ("5 times", 5),
        ("12 per cent", 12),
        # a scale word multiplies; dollars and cents add up
        ("5 hundred", 500),
        ("15 \\text{ thousand}", 15000),
        ("1.5 million", 1500000),
        ("2 dozen eggs", 24),
        ("12 dollars and 50 cents", Fraction(25, 2)),
    ],
)
def test_number_value(text, value):
    assert N.number_value(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "5x",
        "5 \\pi",
        "5 squared",
        "2 and 3",
        "\\sqrt{2}",
        "x+1",
        "1, 2",
        "5 more than x",
        "12 out of 20",
        "5 to 7",
        "12 apples and 3 pears",
        "12 apples for five people",
        "5 times 3",
        "5 \\text{ squared}",
        "12 x",
    ],
)
def test_number_value_refuses_what_is_not_one_number(text):
    assert N.number_value(text) is None


def test_words_to_number():
    assert N.words_to_number("forty-two") == 42 and N.words_to_number("one thousand and five") == 1005
    assert N.words_to_number("5 hundred") is None and N.words_to_number("and") is None
    assert N.words_to_number("nine lives") is None


@pytest.mark.parametrize(
    "text, strict, loose",
    [
        ("B", "B", "B"),
        ("(B)", "B", "B"),
        ("\\text{(B)}", "B", "B"),
        ("option B", "B", "B"),
        ("(B) 12", None, "B"),
        ("\\textbf{(B) }12", None, "B"),
        ("B) 4", None, "B"),
        ("b + 1", None, None),
        ("12", None, None),
    ],
)
def test_choice_letter(text, strict, loose):
    assert A.choice_letter(text) == strict and A.choice_letter(text, strict=False) == loose


def test_answer_parts():
    assert A.answer_parts("x = 5 \\text{ or } x = -3") == ["x = 5", "x = -3"]
    assert A.answer_parts("2, -4") == ["2", "-4"] and A.answer_parts("1,000,000") == ["1000000"]
    assert A.answer_parts("(1, -2)") == ["(1, -2)"] and A.answer_parts("[2, 5)") == ["[2, 5)"]
    assert A.answer_parts("\\{1, 2\\}") == ["\\{1, 2\\}"]
    assert A.answer_parts("\\begin{pmatrix} 1 & 2 \\end{pmatrix}") == [
        "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"
    ]


def test_text_key_and_assignment():
    assert A.text_key("a Sunday") == A.text_key("\\text{Sunday}") == "sunday"
    assert A.text_key("Triangular Prism.") == "triangular prism"
    assert A.strip_assignment("x = 5") == "5" and A.strip_assignment("f(x) = 2x") == "2x"
    assert A.strip_assignment("xy = 5") == "xy = 5" and A.strip_assignment("x = ") == "x = "


def test_plus_minus_is_two_values_and_a_bracketed_or_is_an_alternative():
    from mathscale_utils.grading.answers import answer_parts

    assert answer_parts("1 \\pm \\sqrt{19}") == ["1 + \\sqrt{19}", "1 - \\sqrt{19}"]
    assert answer_parts("\\pm 4") == ["+ 4", "- 4"] and answer_parts("(1 \\pm 2, 3)") == ["(1 \\pm 2, 3)"]
    assert answer_parts("1208 (or 1210 if we count the last one)") == [
        "1208",
        "1210 if we count the last one",
    ]
