"""The reply format of stage 03 (paper §3.3; the prompt is Table 4 in our words): the prompts that ask the teacher for
"Question: / Solution: / The answer is X", and the parser that reads a reply back into question, solution and answer."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mathscale_utils.grading.answers import clean_answer, final_answer, last_boxed

# ----------------------------------------------------------------------------------------------------------------
# Prompt (paper Table 4, paraphrased)
# ----------------------------------------------------------------------------------------------------------------

PROMPT = """You are a math teacher. Create one new math question for your students, together with its worked solution.

The new question must:
1. stay within the topics listed under "Topics";
2. require the combined use of all the knowledge points listed under "Knowledge Points";
3. be self-contained and solvable, with one clear final answer, and differ from the examples.

{examples}Topics:
{topics}

Knowledge Points:
{knowledge_points}

Reply in exactly this format, with nothing before or after it:
Question: <the new question>
Solution: <a step-by-step solution>
The answer is <the final answer>"""

EXAMPLES_HEADER = "Here are example questions with their solutions:\n\n"
EXAMPLE = "Example {i}\nQuestion: {question}\nSolution: {solution}\n\n"

RETRY = """Your reply could not be used: {problem}. Write the new question again, in exactly this format:
Question: <the new question>
Solution: <a step-by-step solution>
The answer is <the final answer>"""

SOLVE = """Your reply has the question but no solution. Now solve that question: write "Solution:", then the steps, \
and end with a line of the form "The answer is X"."""

SHORTER = "\n\nKeep the whole reply short: at most about {words} words."

CHECK_PROMPT = """Solve the following math problem step by step. End your reply with a line of the form "The answer is X".

Problem: {question}"""

REASONS = {
    "empty": "it was empty",
    "no_question": "it had no part starting with 'Question:'",
    "no_solution": "it had no part starting with 'Solution:' after the question",
    "no_final_answer": "the solution did not end with a line 'The answer is ...'",
    "truncated": "it was cut off at the token limit",
}


def template_hash() -> str:
    """Identifies the prompt wording (recorded in the card and the shard fingerprints)."""
    return hashlib.sha256((PROMPT + EXAMPLE + RETRY + SHORTER).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Parsing a reply
# ----------------------------------------------------------------------------------------------------------------

_DECOR = r"[ \t>#*_]*"
_Q_LABEL = re.compile(
    rf"^{_DECOR}(?:new\s+|generated\s+)?(?:question|problem)(?:\s*\d+)?[ \t*_]*(?:[:：]|$)[ \t*_]*",
    re.I | re.M,
)
_S_LABEL = re.compile(
    rf"^{_DECOR}(?:step[- ]by[- ]step\s+|worked\s+|detailed\s+)?solution[ \t*_]*(?:[:：]|$)[ \t*_]*",
    re.I | re.M,
)
_ANSWER_LINE = re.compile(r"^\W*(?:the\s+)?(?:final\s+)?answer\s*[:=]", re.I)
_FENCE_LINE = re.compile(r"^\s*```[A-Za-z]*\s*$", re.M)


@dataclass
class Parsed:
    """A parsed reply: question, solution, answer; or reason (one of REASONS) when it cannot be used."""

    question: str | None = None
    solution: str | None = None
    answer: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def ensure_final_line(solution: str, answer: str) -> str:
    """Make the last line "The answer is X." unless it already says "answer is" (what MWPBench's extractor reads)."""
    lines = solution.rstrip().split("\n")
    last = lines[-1] if lines else ""
    if "answer is" in last.lower():
        return solution.rstrip()
    if _ANSWER_LINE.match(last):
        lines[-1] = f"The answer is {answer}."
        return "\n".join(lines).rstrip()
    return solution.rstrip() + f"\nThe answer is {answer}."


def parse_generation(text: str | None, finish_reason: str | None = None) -> Parsed:
    """Reply -> Parsed(question, solution, answer) or Parsed(reason=...): empty, truncated, no_question,
    no_solution, no_final_answer. Labels may carry Markdown (``**Question:**``); the first question/solution pair
    is used; the solution is cut after the line with its final answer, and ends in "The answer is X"."""
    if text is None or not text.strip():
        return Parsed(reason="empty")
    if finish_reason == "length":
        return Parsed(reason="truncated")
    text = _FENCE_LINE.sub("", text.replace("\r\n", "\n"))
    mq = _Q_LABEL.search(text)
    if mq is None:
        return Parsed(reason="no_question")
    ms = _S_LABEL.search(text, mq.end())
    if ms is None:
        return Parsed(reason="no_solution")
    question = text[mq.end() : ms.start()].strip()
    if not question:
        return Parsed(reason="no_question")
    rest = text[ms.end() :]
    nxt = _Q_LABEL.search(rest)
    if nxt:  # the model went on with another question: keep the first pair
        rest = rest[: nxt.start()]
    solution = rest.strip()
    if not solution:
        return Parsed(reason="no_solution")
    fa = final_answer(solution)
    if fa is None:
        return Parsed(reason="no_final_answer")
    answer, eol = fa
    solution = ensure_final_line(solution[:eol].strip(), answer)
    return Parsed(question=question, solution=solution, answer=answer)


def question_part(text: str | None) -> str | None:
    """The text after a "Question:" label, up to a "Solution:" label or the end (None if there is none)."""
    if not text:
        return None
    text = _FENCE_LINE.sub("", text.replace("\r\n", "\n"))
    mq = _Q_LABEL.search(text)
    if mq is None:
        return None
    ms = _S_LABEL.search(text, mq.end())
    q = text[mq.end() : ms.start() if ms else len(text)].strip()
    return q or None


def parse_retry(
    text: str | None, finish_reason: str | None, first_reason: str | None, first_text: str | None
) -> Parsed:
    """Parse the reply to a retry. After a question without a solution the retry asks only for the solution, so
    a reply that does not restate the question is joined to the first reply's question."""
    parsed = parse_generation(text, finish_reason)
    if parsed.ok or first_reason != "no_solution" or not text or finish_reason == "length":
        return parsed
    q = question_part(first_text)
    if q is None or _Q_LABEL.search(text):
        return parsed
    body = text if _S_LABEL.search(text) else "Solution: " + text.strip()
    return parse_generation(f"Question: {q}\n{body}", finish_reason)


# ----------------------------------------------------------------------------------------------------------------
# Seed solutions in the same format (few-shot examples and the appended seed rows)
# ----------------------------------------------------------------------------------------------------------------


def seed_solution(row: dict) -> str:
    """A seed's solution ending in a final-answer line (GSM8K solutions, for one, have none after loading)."""
    sol = (row.get("solution") or "").strip()
    ans = (row.get("answer") or "").strip()
    if not sol:
        return f"The answer is {ans}." if ans else ""
    return ensure_final_line(sol, ans) if ans and final_answer(sol) is None else sol


__all__ = [
    "Parsed",
    "PROMPT",
    "EXAMPLES_HEADER",
    "EXAMPLE",
    "RETRY",
    "SOLVE",
    "SHORTER",
    "CHECK_PROMPT",
    "REASONS",
    "template_hash",
    "parse_generation",
    "parse_retry",
    "question_part",
    "final_answer",
    "clean_answer",
    "last_boxed",
    "ensure_final_line",
    "seed_solution",
]
