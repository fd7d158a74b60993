"""The dataset card and notebook 03 say how many generated pairs no answer check backs, and show a verified pair
first (method/dataset_card.py), so that a wrong unchecked pair is never the first example without a warning."""

from __future__ import annotations

from pathlib import Path

from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.method import dataset_card
from mathscale_utils.method.filters import filter_and_assemble

QUESTIONS = {
    "c0": "What is the remainder when 12345 is divided by 3?",  # the teacher said 3; its re-solve says 0
    "c1": "A shop sells 4 pens for $2. How much do 10 pens cost?",
    "c2": "How many minutes are there in 3.5 hours?",
}


def _raw(cid: str) -> dict:
    return {
        "composition_id": cid,
        "status": "ok",
        "reason": None,
        "first_reason": None,
        "question": QUESTIONS[cid],
        "solution": "Some steps. The answer is 3.",
        "answer": "3",
        "topics": ["Arithmetic"],
        "knowledge_points": ["Division"],
        "prompt_hash": "h",
    }


def _card(cfg: GenerateConfig, checks=None):
    asm = filter_and_assemble(
        [_raw(c) for c in QUESTIONS], [], cfg, "teacher", [], [], checks, log=lambda m: None
    )
    summary = dataset_card.build_summary(asm, cfg, None, None, Path("/nonexistent"))
    return asm, summary, dataset_card.dataset_card(asm, summary, cfg, LLMConfig(), [], 0)


def test_without_the_check_every_pair_is_unverified_and_says_so():
    cfg = GenerateConfig(decontaminate=False, dedup=False, include_seed_train=False, card_examples=3)
    asm, summary, card = _card(cfg)
    assert summary["verification"] == {
        "generated": 3,
        "verified": 0,
        "disagree": 0,
        "unverified": 3,
        "check": "off",
    }
    assert "**3 of 3 generated pairs are unverified**" in card
    assert card.count("(unverified: no answer check ran)") == 3
    assert "3 of 3 generated pairs were never re-solved" in card


def test_a_verified_pair_is_shown_first():
    """With the check on (action flag: disagreeing pairs kept, marked), the card's first example and notebook 03's
    first pair are verified ones, though the first composition's pair disagrees."""
    cfg = GenerateConfig(
        decontaminate=False,
        dedup=False,
        include_seed_train=False,
        answer_check=True,
        answer_check_action="flag",
        card_examples=3,
    )
    checks = {"c0": {"agrees": False}, "c1": {"agrees": True}, "c2": {"agrees": True}}
    asm, summary, card = _card(cfg, checks)
    assert summary["verification"]["verified"] == 2 and summary["verification"]["disagree"] == 1
    shown = dataset_card.pairs_to_show(asm.rows, 3, seed=0)
    assert [r["check_agrees"] for r in shown] == [True, True, False]
    examples = card.split("## Examples", 1)[1]
    assert examples.index("verified: the teacher's re-solve agrees") < examples.index("re-solve disagrees")
    assert examples.index(QUESTIONS["c0"]) > examples.index("verified: the teacher")
    assert "2 of 3 generated pairs are verified" in card


def test_no_pair_kept_says_so():
    v = dataset_card.verification([], GenerateConfig())
    assert v["generated"] == 0 and dataset_card.verification_line(v).startswith("No generated pair was kept")
