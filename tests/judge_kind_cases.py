"""Labelled unit cases of the strict judge, by kind: the kinds it once missed on material it had not seen (issue 22),
each with the variants a careful grader accepts and the wrong answers that mention the right number.

Written by hand from the kinds' descriptions, not from the unseen cases. Shared by tests/test_strict_judge.py (each
case is a test) and bench/bench_judge_kinds.py (recall and precision per kind).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    kind: str
    completion: str
    gold: str
    label: bool  # what a careful grader says
    question: str | None = None  # given to the judge when set
    note: str = ""


_STEPS = "Let me work through this step by step.\n"

NAMED = [  # a declared answer written as an equation whose left side names the quantity
    Case("named_equation", _STEPS + "Adding the two equations, so $P+Q = 7$.", "7", True),
    Case("named_equation", _STEPS + "The answer is $P + Q = 7$.", "7", True),
    Case("named_equation", _STEPS + "Therefore, $a+b+c = 12$.", "12", True),
    Case("named_equation", "Final Answer: The final answer is $m+n=17$. I hope it is correct.", "17", True),
    Case("named_equation", _STEPS + "The answer is: $\\boxed{x+y=10}$", "10", True),
    Case("named_equation", _STEPS + "$$\\boxed{f(3) = 11}$$", "11", True),
    Case("named_equation", _STEPS + "So $m + n = 3 + 14 = 17$.", "17", True),
    Case("named_equation", _STEPS + "#### P+Q = 7", "7", True),
    Case("named_equation", _STEPS + "Thus $\\overline{AB} = 7$.", "7", True),
    Case("named_equation", _STEPS + "So $\\angle ABC = 30^\\circ$.", "30", True),
    Case("named_equation", _STEPS + "The answer is $\\text{Area} = 12 \\text{ cm}^2$.", "12", True),
    Case("named_equation", _STEPS + "So $P(A) = \\frac{1}{2}$.", "\\frac12", True),
    Case("named_equation", _STEPS + "So $E[X] = 3.5$.", "\\frac{7}{2}", True),
    Case("named_equation", _STEPS + "Thus $7 = P + Q$.", "7", True),
    Case("named_equation", _STEPS + "So $f(2) = 0$.", "0", True),
    Case("named_equation", _STEPS + "So $a + d + e = 0$.", "0", True),
    Case("named_equation", _STEPS + "So $1 + 2 + 3 + \\cdots + 100 = 5050$.", "5050", True),
    Case("named_equation", _STEPS + "So $1 + 2 + 3 + \\cdots + 100 = 5150$.", "5050", False),
    Case("named_equation", _STEPS + "So $P+Q = 8$.", "7", False, note="the wrong value"),
    Case(
        "named_equation", _STEPS + "The answer is $P+Q=7$.", "3", False, note="the gold is another quantity"
    ),
    Case("named_equation", _STEPS + "So $x + y = 7 - z$.", "7", False, note="no value on either side"),
    Case("named_equation", _STEPS + "So $x^2 - 7x = 0$.", "0", False, note="an equation set to zero"),
    Case("named_equation", _STEPS + "The answer is $a = 3, b = 4$.", "7", False),
    Case("named_equation", _STEPS + "So $P + Q = 3 + 5 = 7$.", "7", False, note="a wrong sum in the chain"),
]

QUESTION = [  # the same kind, with the question: the left side must be what it asks for
    Case("named_vs_question", "So $P+Q = 7$.", "7", True, "If $P-Q=1$ and $PQ=12$, what is $P+Q$?"),
    Case("named_vs_question", "So $a+b = 12$.", "12", True, "What is the sum of $a$ and $b$?"),
    Case("named_vs_question", "So $r^2 = 5+\\sqrt{2}$.", "5+\\sqrt{2}", True, "Find $r^2$."),
    Case("named_vs_question", "So $x = 5$.", "5", True, "Compute $\\sum_{k=1}^n k$ for $n = 2$, plus 2."),
    Case("named_vs_question", "So $P+Q = 7$.", "7", True, "A shop sells P pens and Q pencils ..."),
    Case("named_vs_question", "So $6b = 0$.", "0", True, "If $5a=-4b+5$ and $3a=-2b+3$, what is $6b$?"),
    Case("named_vs_question", "So $x^2 - 7x = 0$.", "0", False, "What is the smaller root of $x^2 = 7x$?"),
    Case("named_vs_question", "So $P+Q = 7$.", "7", False, "Find $P$ if $P+Q=7$ and $Q=0$."),
    Case("named_vs_question", "The answer is $a+b=12$.", "12", False, "Let $a+b=12$ and $b=0$. What is $a$?"),
    Case("named_vs_question", "Thus $r^2 = 4$.", "4", False, "Find $s$, where $s = r^2$ and $r = 2$."),
]

SQUARE = [  # an equation that restates a square that was asked for
    Case("square_equation", _STEPS + "The answer is $r^2 = 5 + \\sqrt{2}$.", "5+\\sqrt{2}", True),
    Case("square_equation", _STEPS + "Thus $\\boxed{r^2 = 5+\\sqrt2}$", "5 + \\sqrt{2}", True),
    Case("square_equation", _STEPS + "Hence, $r^2 = 5 + \\sqrt{2}$.", "5+\\sqrt{2}", True),
    Case("square_equation", _STEPS + "So $AB^2 = 52$.", "52", True),
    Case("square_equation", _STEPS + "So $x^2 + y^2 = 25$.", "25", True),
    Case("square_equation", _STEPS + "So $(a+b)^2 = 49$.", "49", True),
    Case("square_equation", _STEPS + "So $|z|^2 = 10$.", "10", True),
    Case("square_equation", _STEPS + "So $(a+b)^2 = 49$.", "7", False, note="the square, the root was asked"),
    Case("square_equation", _STEPS + "So $r^2 = 5+\\sqrt{2}$.", "\\sqrt{5+\\sqrt{2}}", False),
    Case("square_equation", _STEPS + "The answer is $r^2 = 5 - \\sqrt{2}$.", "5+\\sqrt{2}", False),
]

UNITS = [  # a unit word after ####, or a unit in \text{}
    Case("units", _STEPS + "#### 12 apples", "12", True),
    Case("units", _STEPS + "#### 12 apples.", "12", True),
    Case("units", _STEPS + "#### $12 apples", "12", True),
    Case("units", _STEPS + "#### 12 apples in total", "12", True),
    Case("units", _STEPS + "#### 12 pieces of candy", "12", True),
    Case("units", _STEPS + "#### 12 km/h", "12", True),
    Case("units", _STEPS + "#### 12 m/s", "12", True),
    Case("units", _STEPS + "#### 12 o'clock", "12", True),
    Case("units", _STEPS + "#### 12 (apples)", "12", True),
    Case("units", _STEPS + "#### 5 more apples", "5", True),
    Case("units", _STEPS + "#### 5 times", "5", True),
    Case("units", _STEPS + "#### 12 more than last year", "12", True),
    Case("units", _STEPS + "#### 12 dollars and 50 cents", "12.5", True),
    Case("units", _STEPS + "#### **12 apples**", "12", True),
    Case("units", _STEPS + "The answer is 15 \\text{ marbles}.", "15", True),
    Case("units", _STEPS + "The answer is $15 \\, \\text{marbles}$.", "15", True),
    Case("units", _STEPS + "The answer is $\\text{15 marbles}$.", "15", True),
    Case("units", _STEPS + "$$\\boxed{15\\,\\text{cm}^2}$$", "15", True),
    Case("units", _STEPS + "$$\\boxed{15 \\text{ thousand}}$$", "15000", True),
    Case("units", _STEPS + "$$\\boxed{12\\mathrm{~cm}}$$", "12", True),
    Case("units", _STEPS + "The answer is 15 \\textbf{marbles}.", "15", True),
    Case("units", _STEPS + "#### 12 apples and 3 pears", "12", False, note="two numbers"),
    Case("units", _STEPS + "#### 13 apples", "12", False),
    Case("units", _STEPS + "#### 12 more than x", "12", False, note="an expression"),
    Case("units", _STEPS + "#### 12 out of 20", "12", False),
    Case("units", _STEPS + "#### 5 to 7 apples", "5", False, note="a range"),
    Case("units", _STEPS + "#### at least 12 apples", "12", False, note="a bound"),
    Case("units", _STEPS + "$$\\boxed{15 \\text{ hundred}}$$", "15", False, note="a scale word"),
    Case("units", _STEPS + "$$\\boxed{15 \\text{ marbles and } 3 \\text{ balls}}$$", "15", False),
    Case("units", _STEPS + "$$\\boxed{1:15 \\text{ PM}}$$", "15", False),
]

TEXT = [  # a text answer stated in a sentence
    Case("text_sentence", _STEPS + "So the curve is a parabola.", "\\text{parabola}", True),
    Case("text_sentence", _STEPS + "The answer is: the curve is a parabola.", "parabola", True),
    Case("text_sentence", _STEPS + "It falls on a Wednesday.", "\\text{Wednesday}", True),
    Case(
        "text_sentence",
        _STEPS + "Therefore, it falls on a Wednesday.\n\nI hope this helps!",
        "Wednesday",
        True,
    ),
    Case(
        "text_sentence",
        _STEPS + "Thus, the graph of the equation is a **parabola**.",
        "\\text{parabola}",
        True,
    ),
    Case("text_sentence", _STEPS + "The equation represents a parabola.", "\\text{parabola}", True),
    Case("text_sentence", _STEPS + "This is the equation of a parabola.", "\\text{parabola}", True),
    Case("text_sentence", _STEPS + "So it will be Wednesday.", "\\text{Wednesday}", True),
    Case("text_sentence", _STEPS + "Therefore, $f(x)$ is an odd function.", "\\text{odd}", True),
    Case("text_sentence", _STEPS + "Since $f(-x) = -f(x)$ for all $x$, $f$ is odd.", "\\text{odd}", True),
    Case("text_sentence", _STEPS + "Thus, $f(x)$ is neither even nor odd.", "\\text{neither}", True),
    Case("text_sentence", _STEPS + "So the solid is a triangular prism.", "\\text{Triangular Prism}", True),
    Case("text_sentence", _STEPS + "So the series diverges.", "\\text{diverges}", True),
    Case("text_sentence", _STEPS + "So the equation has no solution.", "\\text{no solution}", True),
    Case("text_sentence", _STEPS + "No, it is not possible.", "\\text{No}", True),
    Case(
        "text_sentence",
        _STEPS + "This is the equation of a $\\text{circle}$ with center $(3,0)$.",
        "circle",
        True,
    ),
    Case(
        "text_sentence", _STEPS + "So we suspect this equation defines an $\\text{ellipse}$.", "ellipse", True
    ),
    Case(
        "text_sentence", _STEPS + "So we see that $x$ is even, and the whole sum is odd.", "\\text{odd}", True
    ),
    Case(
        "text_sentence", _STEPS + "So the curve is not a parabola.", "\\text{parabola}", False, note="negated"
    ),
    Case("text_sentence", _STEPS + "So the curve is a hyperbola.", "\\text{parabola}", False),
    Case(
        "text_sentence", _STEPS + "It falls on a Tuesday.\n\nI hope this helps!", "\\text{Wednesday}", False
    ),
    Case("text_sentence", _STEPS + "Is it a Wednesday? Let's check.", "\\text{Wednesday}", False),
    Case("text_sentence", _STEPS + "It is either a Wednesday or a Thursday.", "\\text{Wednesday}", False),
    Case("text_sentence", _STEPS + "It is not a Thursday but a Wednesday.", "\\text{Wednesday}", False),
    Case("text_sentence", _STEPS + "So the answer is the day after Wednesday.", "\\text{Wednesday}", False),
    Case("text_sentence", _STEPS + "Thus, $f(x)$ is neither even nor odd.", "\\text{odd}", False),
    Case("text_sentence", _STEPS + "Since $f(-x) = f(x)$, the function is even.", "\\text{odd}", False),
    Case("text_sentence", _STEPS + "Therefore, the series converges.", "\\text{diverges}", False),
    Case(
        "text_sentence", _STEPS + "If it were a leap year, it would fall on a Wednesday.", "Wednesday", False
    ),
    Case("text_sentence", _STEPS + "We need to check whether it is a Wednesday.", "Wednesday", False),
    Case("text_sentence", _STEPS + "The next one is either Monday or Wednesday.", "Wednesday", False),
]

POWER = [  # an unevaluated power
    Case("power", _STEPS + "So the number of subsets is $= 2^5$.", "32", True),
    Case("power", _STEPS + "The total number is $= 2^{10}$.", "1024", True),
    Case("power", _STEPS + "#### 2^5", "32", True),
    Case("power", _STEPS + "The answer is 2^5 subsets.", "32", True),
    Case("power", _STEPS + "The answer is 2**5.", "32", True),
    Case("power", _STEPS + "The answer is 2⁵.", "32", True),
    Case("power", _STEPS + "So there are 2⁵ possible subsets.", "32", True),
    Case("power", _STEPS + "The answer is 2 to the power of 5.", "32", True),
    Case("power", _STEPS + "Thus, $\\boxed{2^5}$ subsets.", "32", True),
    Case("power", _STEPS + "The answer is $5 \\cdot 2^3$.", "40", True),
    Case("power", _STEPS + "Then there are $2^{64}$ grains.", "18446744073709551616", True),
    Case("power", _STEPS + "The answer is $2^5$.", "25", False),
    Case("power", _STEPS + "The answer is $2^6$.", "32", False),
    Case("power", _STEPS + "#### 2^5 = 30", "32", False, note="a wrong evaluation"),
]

SENTENCE_NUMBER = [  # a declared answer that is a sentence holding the number
    Case("number_sentence", _STEPS + "The answer is: Janet makes $18 every day at the market.", "18", True),
    Case("number_sentence", _STEPS + "#### She has 12 apples left.", "12", True),
    Case("number_sentence", _STEPS + "Final Answer: Tom is 12 years old.", "12", True),
    Case("number_sentence", _STEPS + "Final Answer: Tom is 12 years older than Jane.", "12", True),
    Case("number_sentence", _STEPS + "#### 5 years ago", "5", True),
    Case("number_sentence", _STEPS + "The answer is: Tom has about 12 apples.", "12", False, note="about"),
    Case("number_sentence", _STEPS + "The answer is: Tom has more than 12 apples.", "12", False),
    Case("number_sentence", _STEPS + "The answer is: Tom has 12 apples and Jane has 5.", "12", False),
    Case("number_sentence", _STEPS + "The answer is: Tom does not have 12 apples.", "12", False),
    Case("number_sentence", _STEPS + "Final Answer: Tom is 12 years older than Jane, who is 5.", "12", False),
    Case("number_sentence", _STEPS + "The answer is: Tom has 13 apples.", "12", False),
]

PLAIN = [  # mathematics typed in plain text, and other everyday forms of a number
    Case("plain_forms", _STEPS + "The answer is 5 + √2.", "5+\\sqrt{2}", True),
    Case("plain_forms", _STEPS + "The answer is √50 = 5√2.", "5\\sqrt{2}", True),
    Case("plain_forms", _STEPS + "The answer is (−∞, 3).", "(-\\infty,3)", True),
    Case("plain_forms", _STEPS + "The answer is 2 1/2 cups.", "\\frac{5}{2}", True),
    Case("plain_forms", _STEPS + "The answer is 3:30 PM.", "3:30", True),
    Case("plain_forms", _STEPS + "The answer is 50%.", "\\frac{1}{2}", True),
    Case("plain_forms", _STEPS + "The answer is 0.25.", "25\\%", True),
    Case("plain_forms", _STEPS + "So, Janet makes \\$18 every day.", "18", True),
    Case("plain_forms", _STEPS + "The answer is 5 + √3.", "5+\\sqrt{2}", False),
    Case("plain_forms", _STEPS + "The answer is (−∞, 3].", "(-\\infty,3)", False),
    Case("plain_forms", _STEPS + "The answer is 2 1/3 cups.", "\\frac{5}{2}", False),
    Case("plain_forms", _STEPS + "The answer is 3:30 AM.", "3:30 PM", False),
    Case("plain_forms", _STEPS + "The answer is 25.", "0.25", False, note="no percent sign: 25, not 25%"),
]

CASES = NAMED + QUESTION + SQUARE + UNITS + TEXT + POWER + SENTENCE_NUMBER + PLAIN
