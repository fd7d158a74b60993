"""MWPBench's prompt templates and decoding settings (METHOD.md §8.1-8.2): what evaluation sends and what
fine-tuning trains on, so that the student sees at evaluation exactly the prompt it was trained with."""

from __future__ import annotations

from typing import Literal

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


def alpaca_prompt(question: str) -> str:
    """The evaluation template `alpaca` (METHOD.md §8.1): nothing after "### Response:". The student is trained on
    it (stage 04) and asked with it (stage 05)."""
    return fill_template("alpaca", question)
