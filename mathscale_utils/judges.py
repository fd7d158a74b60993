"""The two MWPBench answer judges (MathScale §4.2, METHOD.md §8): the prompt templates and stop strings, the
paper's judge (normalisation, answer extraction, equivalence; bug-for-bug) and a strict judge (math-verify).

Written from the protocol description in ``docs/METHOD.md`` §8 (the official driver: microsoft/unilm
``mathscale/MWPBench/eval_vllm``); no upstream code is copied.

Quirks of the paper's judge, kept on purpose because they are part of the published numbers (see each function):

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
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

from mathscale_utils.paper_judge import (  # noqa: F401 - re-exported for existing callers
    _LAST_NUMBER,
    NormalisationError,
    PaperVerdict,
    _clean_tail,
    extract_answer,
    extract_boxed_all,
    is_equiv,
    is_number,
    paper_judge,
    strip_string,
)

log = logging.getLogger(__name__)

# ================================================================================================================
# prompt templates and decoding (METHOD.md §8.1-8.2)

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

TEMPLATES: dict[str, str] = {
    # the raw question
    "none": "{question}",
    # default; used for every open model in the paper. Nothing after "### Response:" (no space, no newline).
    "alpaca": ALPACA_PREAMBLE + "\n\n### Instruction:\n{question}\n\n### Response:",
    # used for the OpenAI models: one extra sentence, then a *single* newline before "### Response:"
    "alpaca_force_ans": ALPACA_PREAMBLE
    + "\n\n### Instruction:\n{question}\n\nTry to conclude your response with 'The answer is ...'.\n### Response:",
    # offered by the driver, not used in the paper
    "alpaca_cot": ALPACA_PREAMBLE
    + "\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step.",
}
TemplateName = Literal["none", "alpaca", "alpaca_force_ans", "alpaca_cot"]

# The vLLM driver's stop strings, case-sensitive. The bare words also cut a completion at any capitalised use of
# them ("Response", "Question", ...). The OpenAI driver used no stop strings (and the OpenAI API accepts at most 4):
# set ``evaluate.stop: null`` for such endpoints.
STOP_STRINGS: tuple[str, ...] = (
    "Question:",
    "Question",
    "USER:",
    "USER",
    "ASSISTANT:",
    "ASSISTANT",
    "Instruction:",
    "Instruction",
    "Response:",
    "Response",
    "</s>",
)
PAPER_MAX_TOKENS = 2048


def fill_template(template: str, question: str) -> str:
    """The prompt for one question; the question is inserted verbatim (no strip, no escaping)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template].replace("{question}", question)


# ================================================================================================================
# the paper's judge (METHOD.md §8.4-8.6): frozen, bug for bug, in ``paper_judge.py``; re-exported here


# ================================================================================================================
# the strict judge (math-verify)

_FUNCTION_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln",
    "exp", "lim", "max", "min", "det", "gcd", "lcm", "mod", "sqrt", "frac", "pmod", "bmod", "deg",
}  # fmt: skip


def is_textual(gold: str) -> bool:
    """A reference that is words rather than mathematics ("Triangular Prism", "diverges", "\\text{yes}")."""
    t = re.sub(r"\\(?!text)[A-Za-z]+", " ", gold)
    t = t.replace("\\text", " ")
    return any(w.lower() not in _FUNCTION_WORDS for w in re.findall(r"[A-Za-z]{3,}", t))


def _norm_text(s: str) -> str:
    s = s.lower()
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"[\s$\\{}]", "", s)
    return s.strip(".,;:")


def _final_answer_span(text: str) -> str | None:
    """The explicit final answer of a completion, original case: last boxed (``\\boxed{}``, ``\\boxed {}`` or
    ``\\fbox{}``), else the cleaned text after the last "answer is"; None otherwise."""
    from mathscale_utils.data import find_boxed

    boxed = find_boxed(text)
    if boxed is not None:
        return boxed
    low = text.lower()
    k = low.rfind("answer is")
    if k < 0:
        return None
    span = _clean_tail(text[k + len("answer is") :]).strip("$ ")
    return span or None


def _timeouts() -> int | None:
    """math-verify times out with signal.alarm, which only works in the main thread: elsewhere run without."""
    return 5 if threading.current_thread() is threading.main_thread() else None


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@lru_cache(maxsize=8192)
def _parse_gold(gold: str, timeout: int | None) -> tuple[list, ...]:
    """The gold's readings for math-verify (empty tuple: unparseable). A trailing sentence period is dropped; a gold
    with math delimiters is parsed as is, else as ``\\boxed{gold}``; a gold with (unescaped) ``$`` also gets a second
    reading with every such ``$`` removed, inside one box (textbook answers split one expression over several ``$`` spans)."""
    from math_verify import parse

    g = re.sub(r"[\s.]+$", "", gold.strip()) or gold.strip()
    readings = []
    dollars = _UNESCAPED_DOLLAR.search(g) is not None  # "\\$40" is a price, not a math delimiter
    if dollars or any(d in g for d in ("\\(", "\\[", "\\boxed")):
        readings.append(parse(g, parsing_timeout=timeout))
        if dollars:
            readings.append(parse("\\boxed{" + _UNESCAPED_DOLLAR.sub("", g) + "}", parsing_timeout=timeout))
    else:
        readings.append(
            parse("\\boxed{" + g + "}", parsing_timeout=timeout) or parse(g, parsing_timeout=timeout)
        )
    return tuple(r for r in readings if r)


@dataclass
class StrictVerdict:
    correct: bool
    extracted: str | None
    method: str
    error: str | None = None


def strict_judge(completion: str | None, reference: str) -> StrictVerdict:
    """A stricter, symbolic judge: math-verify ``parse`` on both sides and ``verify(gold, prediction)``.

    The gold is parsed as is when it carries math delimiters, else as ``\\boxed{gold}`` (so intervals, tuples and
    ``\\infty`` parse); a trailing period is dropped and a gold with ``$`` is also read with its dollars removed
    (see ``_parse_gold``); matching any reading counts. Textual golds (words, see ``is_textual``) and golds math-verify cannot parse use the "text"
    method: the prediction's last ``\\boxed{}`` or "answer is" tail must equal the gold after lower-casing and
    removing spaces, ``$``, braces and ``\\text{}``. When math-verify's own extraction from the whole completion
    does not verify, the explicit final answer (last box, or the "answer is" tail; see ``_final_answer_span``) is
    parsed as ``$span$`` and verified too (method "math_verify_span"): math-verify misreads plain-text tuples such as
    "The answer is (1, -2)" and does not see ``\\fbox{}``. Timeouts (5 s per parse / comparison) apply in the main thread
    only (math-verify uses signal.alarm); any error is caught and judged wrong, with ``error`` set.
    """
    text = completion or ""
    if not text.strip():
        return StrictVerdict(False, None, "none")
    try:
        timeout = _timeouts()
        gold = () if is_textual(reference) else _parse_gold(reference, timeout)
        if not gold:
            low = text.lower()
            boxed = extract_boxed_all(low)
            cand = (
                boxed[-1]
                if boxed
                else (_clean_tail(low.rsplit("answer is", 1)[1]) if "answer is" in low else None)
            )
            ok = (
                cand is not None and bool(_norm_text(reference)) and _norm_text(cand) == _norm_text(reference)
            )
            return StrictVerdict(ok, cand, "text")
        from math_verify import parse, verify

        pred = parse(text, parsing_timeout=timeout)
        extracted = (str(pred[1]) if len(pred) > 1 else str(pred[0])) if pred else None
        if pred and any(verify(g, pred, timeout_seconds=timeout) for g in gold):
            return StrictVerdict(True, extracted, "math_verify")
        cand = _final_answer_span(text)
        if cand and cand != extracted:
            pred2 = parse("$" + cand + "$", parsing_timeout=timeout)
            if pred2 and any(verify(g, pred2, timeout_seconds=timeout) for g in gold):
                return StrictVerdict(True, cand, "math_verify_span")
        return StrictVerdict(False, extracted, "math_verify")
    except BaseException as e:  # math-verify's TimeoutException derives from BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        return StrictVerdict(False, None, "error", f"{type(e).__name__}: {e}")


def judge(completion: str | None, reference: str) -> dict[str, Any]:
    """Both judges side by side, as the flat fields of a predictions.jsonl row."""
    pv = paper_judge(completion, reference)
    sv = strict_judge(completion, reference)
    return {
        "extracted": pv.extracted,
        "paper_correct": pv.correct,
        "paper_method": pv.method,
        "paper_rule": pv.rule,
        "clean_prediction": pv.clean_prediction,
        "clean_reference": pv.clean_reference,
        "reference_error": pv.reference_error,
        "strict_correct": sv.correct,
        "strict_extracted": sv.extracted,
        "strict_method": sv.method,
        "strict_error": sv.error,
    }


# the judges' names: the prefix of their verdict fields in predictions.jsonl and their keys in metrics.json
JUDGES = ("paper", "strict")


def verdict_dict(v: PaperVerdict | StrictVerdict) -> dict[str, Any]:
    return asdict(v)
