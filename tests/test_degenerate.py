"""Degenerate answers (evaluation/degenerate.py): loops found in completions of the kind small students write, no
false alarm on ordinary solutions, lists or repeated sub-results; the flags in rows and their counts in metrics."""

from __future__ import annotations

import pytest

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.student_config import EvalConfig
from mathscale_utils.evaluation import degenerate
from mathscale_utils.evaluation.mwpbench import compute_metrics, prediction_row, rejudge, run_eval

SOLUTION = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4, so she uses "
    "3 + 4 = 7 eggs. She sells the remaining 16 - 7 = 9 eggs at $2 each, making 9 * 2 = $18 every day.\n"
    "The answer is 18."
)
LOOPS = {
    # the refrain after an answer, cut off mid-word by max_tokens
    "refrain": SOLUTION
    + "\n\nThe answer is 18.\n\nThe answer is 18.\n\nThe answer is 18.\n\nThe answer is 18."
    "\n\nThe answer is 18.\n\nThe ans",
    # a whole paragraph written again, cut in its third copy
    "paragraph": "To find the area we first find the side. "
    + (
        "Since the perimeter of the square is 20 cm, each side is 20 / 4 = 5 cm, and the area of the square "
        "is therefore 5 * 5 = 25 square centimeters. "
    )
    * 2
    + "Since the perimeter of the square is 20 cm, each si",
    # a display equation restated until the cap
    "latex": "We solve $2x + 3 = 7$.\n" + "\\[ 2x = 4 \\implies x = 2 \\]\n" * 6 + "\\[ 2x = 4 \\imp",
    # one symbol on repeat
    "symbols": "Let me compute the sum step by step: " + "= " * 40,
    # a run of digits inside one word
    "digits": "So the probability is 0.1" + "6" * 60,
    # a counting loop that stopped counting: the same line over and over
    "lines": "Step 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\n" + "Step 3: 14 - 2 = 12\n" * 5,
    # Qwen2.5-Coder-0.5B-Instruct, untrained, on a CollegeMath item of the quickstart (greedy, cut at 384 tokens)
    "qwen_equation": "$\\frac{c^2 b^6 \\cdot 2 a^{-3} b^2}{a^3 b^{-2} c^3}"
    + " = \\frac{c^2 b^6}{a^3 b^{-2} c^3}" * 16,
}
NOT_LOOPS = {
    "solution": SOLUTION,
    # the answer stated twice is a restatement, not a loop
    "twice": SOLUTION + "\nSo the answer is 18. The answer is 18.",
    # a list of different numbers
    "count": "The multiples of 3 below 60 are " + ", ".join(str(3 * i) for i in range(1, 20)) + ".",
    # the same sub-result used in several steps, with text between
    "steps": "First, 2 + 2 = 4. Then 4 + 4 = 8, and 8 + 8 = 16. Finally 16 + 16 = 32. The answer is 32.",
    # a matrix with repeated entries
    "matrix": "The matrix is $\\begin{pmatrix} 0 & 0 & 0 \\\\ 0 & 1 & 0 \\\\ 0 & 0 & 0 \\end{pmatrix}$.",
    # a repeating decimal written with a sensible number of digits
    "decimal": "1/3 = 0.3333333333333333, so the answer is $\\frac{1}{3}$.",
    "empty": "",
    # the same model on a MATH item: a long solution cut at 384 tokens (finish "length"), with restated factors
    "qwen_cut": "2. **Roots of the Polynomial:**\n   - Since \\( p(x) \\) has roots at \\( x = 2009, 9002, \\) and "
    "\\( 2009 + 9002\\pi i \\), we can write:\n     \\[\n     p(x) = (x - 2009)(x - 9002)(x + 9002\\pi i)\n     "
    "\\]\n\n3. **Simplifying the Polynomial:**\n   - Expand the product:\n     \\[\n     p(x) = (x - 2009)(x - 9002)"
    "(x + 9002\\pi i) = x^3 - (2009 + 9002\\pi i)(x - 9002) - (2009 + 9002\\pi i)(x + 9002\\pi i)\n     \\]\n"
    "     \\[\n     p(x) = x^3 - (2009^2 + 18004\\pi i)(x - 9002) - (2009^2 + 18004\\pi",
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_loops_are_found(name):
    tail = degenerate.loop_tail(LOOPS[name])
    assert tail is not None, name
    assert tail["copies"] >= 2


@pytest.mark.parametrize("name", list(NOT_LOOPS))
def test_ordinary_answers_are_not_loops(name):
    assert degenerate.loop_tail(NOT_LOOPS[name]) is None, name


def test_the_reported_unit_is_the_repeated_phrase():
    tail = degenerate.loop_tail(LOOPS["refrain"])
    assert tail["unit"] == "The answer is 18 ." and tail["unit_tokens"] == 5 and tail["copies"] >= 6


def test_flags_of_an_answer():
    assert degenerate.flags(SOLUTION, "stop") == {"loop": False, "length": False, "no_answer": False}
    assert degenerate.flags(LOOPS["paragraph"], "length") == {"loop": True, "length": True, "no_answer": True}
    assert degenerate.flags(LOOPS["refrain"], "length")["no_answer"] is False  # it declares 18, then loops
    assert degenerate.flags("", None, error="HTTP 500") == {
        "loop": False,
        "length": False,
        "no_answer": False,
    }


def test_rows_carry_flags_and_metrics_count_them_per_dataset(tmp_path):
    recs = [
        Record("g0", "gsm8k", "gsm8k", "Janet's ducks?", "18"),
        Record("g1", "gsm8k", "gsm8k", "Area?", "25"),
        Record("m0", "MATH", "MATH.Algebra", "Solve 2x+3=7.", "2"),
        Record("m1", "MATH", "MATH.Algebra", "Sum?", "3"),
    ]
    replies = {
        "Janet's ducks?": (SOLUTION, "stop"),
        "Area?": (LOOPS["paragraph"], "length"),
        "Solve 2x+3=7.": (LOOPS["latex"], "length"),
    }

    class LLM:
        model_id = "student"

        def chat_many(self, requests, desc=""):
            out = []
            for r in requests:
                q = next((q for q in replies if q in r.messages[0]["content"]), None)
                text, finish = replies[q] if q else (None, None)
                out.append(_Result(text, None if q else "HTTP 500", finish))
            return out

    rows = run_eval(recs, LLM(), EvalConfig(max_tokens=64), tmp_path / "p.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert by_id["g0"]["finish_reason"] == "stop" and not by_id["g0"]["loop"]
    assert by_id["g1"]["loop"] and by_id["g1"]["length"] and by_id["g1"]["no_answer"]
    assert by_id["m1"]["error"] and not by_id["m1"]["loop"]
    d = compute_metrics(rows)["degenerate"]
    assert (d["n"], d["loop"], d["length"], d["no_answer"], d["any"]) == (3, 2, 2, 2, 2)
    assert d["datasets"]["gsm8k"] == {"n": 2, "loop": 1, "length": 1, "no_answer": 1, "any": 1}
    assert d["datasets"]["MATH"] == {"n": 1, "loop": 1, "length": 1, "no_answer": 1, "any": 1}
    again = rejudge([{**r, "loop": False} for r in rows])  # flags are recomputed with the verdicts
    assert [r["loop"] for r in again] == [r["loop"] for r in rows]


def test_flagged_examples_show_the_loop():
    rows = [
        prediction_row(Record("a", "gsm8k", "gsm8k", "q", "18"), "p", LOOPS["refrain"], None, "length"),
        prediction_row(Record("b", "gsm8k", "gsm8k", "q", "18"), "p", SOLUTION, None, "stop"),
    ]
    ex = degenerate.flagged_examples(rows, "loop")
    assert [e["id"] for e in ex] == ["a"] and ex[0]["unit"] == "The answer is 18 ."


class _Result:
    def __init__(self, text, error=None, finish_reason=None):
        self.text, self.error, self.finish_reason, self.cached = text, error, finish_reason, False
