"""Stage 03: reply parsing, few-shot choice, decontamination, dedup, funnel, export, resume after a kill, notebook."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_json, read_jsonl, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import GenerateConfig
from mathscale_utils.core.params import ROOT, ParamsError, load_params, parse_params
from mathscale_utils.method import filters, reply_format
from mathscale_utils.method import generate as gen
from mathscale_utils.method.filters import (
    Decontaminator,
    TestItem,
    filter_and_assemble,
    funnel_adds_up,
    near_duplicates,
)
from mathscale_utils.method.generate import FewShotIndex, composition_rng, plan_request, retry_request
from mathscale_utils.method.reply_format import parse_generation
from mathscale_utils.reporting import dataset_stats
from mathscale_utils.runs import stages

from fake_openai import FakeOpenAI

# ----------------------------------------------------------------------------------------------------------------
# synthetic inputs and a scripted teacher
# ----------------------------------------------------------------------------------------------------------------

VOCAB = (
    "apple train tank price ratio garden ladder coin marble circle square river bucket candle ticket baker "
    "farmer pencil bottle rope shelf window cookie orange basket bridge cart wheel stamp kite lamp clock "
    "desk chair book page road hill lake boat fence brick tile paint glass plate spoon cup bowl tray box"
).split()

PLANTED = [
    "Janet has sixteen ducks that lay eggs every single morning and she sells all of the remaining eggs at the "
    "local farmers market for two dollars each. How much does she make?",
    "A rectangular garden is twelve meters long and five meters wide and a wooden fence must go all the way "
    "around the whole garden with exactly one gate. How long is the fence?",
]


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)


def question_for(key: str) -> str:
    rng = random.Random(key)
    return "How many " + " ".join(rng.choice(VOCAB) for _ in range(26)) + " are there?"


def answer_for(question: str) -> int:
    return _h(question) % 97 + 3


def _kps_of(prompt: str) -> list[str]:
    block = prompt.split("Knowledge Points:\n", 1)[1].split("\n\n", 1)[0]
    return [x[2:] for x in block.split("\n") if x.startswith("- ")]


def scripted_generation(body: dict) -> str | dict:
    """A teacher whose behaviour is chosen by a "mode:..." knowledge point of the composition."""
    msgs = body["messages"]
    first = msgs[0]["content"]
    if first.startswith("Solve the following math problem"):
        q = first.split("Problem: ", 1)[1]
        a = answer_for(q) + (1 if "zebra" in q else 0)
        return f"Let us count.\nThe answer is {a}."
    kps = _kps_of(first)
    mode = next((k.split(":", 1)[1] for k in kps if k.startswith("mode:")), "ok")
    retry = len(msgs) > 1 or "Keep the whole reply short" in first
    q = question_for("|".join(kps))
    if mode == "exact":
        q = PLANTED[0]
    elif mode == "ngram":
        q = "Read this carefully first. " + PLANTED[1].replace("How long", "What length")
    elif mode in ("dupsrc", "dup"):
        q = question_for("DUP") + (" Explain." if mode == "dup" else "")
    elif mode == "checkwrong":
        q = question_for("|".join(kps)) + " zebra"
    a = answer_for(q)
    good = f"Question: {q}\nSolution: Count them one by one: there are {a} in all.\nThe answer is {a}."
    if mode == "malformed-once" and not retry:
        return "Sure! Here is a nice problem about counting things."
    if mode == "qonly":  # a question without a solution; asked to solve it, only the solution comes back
        return f"Question: {q}" if not retry else f"Count them one by one: {a} in all.\nThe answer is {a}."
    if mode == "malformed-always":
        return "I cannot follow that format."
    if mode == "noanswer":
        return f"Question: {q}\nSolution: Count them carefully."
    if mode == "truncated" and not retry:
        return {"content": f"Question: {q}\nSolution: Count them one", "finish_reason": "length"}
    if mode == "boxed":
        return f"**Question:** {q}\n\n**Solution:** Counting gives \\boxed{{{a}}}."
    return good


def make_seeds(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        kps = [f"KP {i % 4}", f"KP {(i + 1) % 4}"] + ([f"KP rare {i}"] if i % 3 == 0 else [])
        rows.append(
            {
                "seed_id": f"s{i}",
                "source": "builtin",
                "question": f"Seed question number {i}: how many {VOCAB[i]}s fit in {VOCAB[i + 1]}?",
                "solution": f"Work it out step by step. The answer is {i + 2}.",
                "answer": str(i + 2),
                "topics": [f"Topic {i % 3}"],
                "knowledge_points": kps,
                "raw_topics": [f"Topic {i % 3}"],
                "raw_knowledge_points": kps,
                "status": "ok",
                "error": None,
            }
        )
    return rows


def make_compositions(modes: list[str]) -> list[dict]:
    return [
        {
            "id": f"c{i:04d}",
            "topics": [f"Topic {i % 3}", f"Topic {(i + 1) % 3}"],
            "knowledge_points": [f"KP {i % 4}", f"KP {(i + 2) % 4}", f"mode:{m}", f"unique {i}"],
            "start_topic": f"Topic {i % 3}",
            "epoch": 0,
        }
        for i, m in enumerate(modes)
    ]


def make_run(
    tmp_path: Path,
    base_url: str,
    modes: list[str],
    data_root: Path | None = None,
    llm: dict | None = None,
    **generate,
) -> Path:
    """A params file and a run directory with concepts.jsonl + compositions.jsonl; returns the params path."""
    run_dir = tmp_path / "out" / "t"
    write_jsonl(run_dir / "concepts.jsonl", make_seeds())
    write_jsonl(run_dir / "compositions.jsonl", make_compositions(modes))
    g = {"n_questions": None, "shard_size": 4, "shots": 2, **generate}
    lines = [
        "run_name: t",
        f"outputs_dir: {tmp_path / 'out'}",
        f"data_root: {data_root or tmp_path / 'no-data'}",
        "llm:",
        "  model: fake-model",
        f"  base_url: {base_url}",
        "  api_key_env: MATHSCALE_TEST_KEY",
        "  concurrency: 2",
        "  max_retries: 2",
        "  retry_initial_s: 0.01",
        *[f"  {k}: {json.dumps(v)}" for k, v in (llm or {}).items()],
        "generate:",
    ] + [f"  {k}: {json.dumps(v)}" for k, v in g.items()]
    p = tmp_path / "params.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def make_data_dir(tmp_path: Path) -> Path:
    """A tiny data folder: GSM8K test holding the planted questions (other datasets are absent)."""
    d = tmp_path / "data"
    write_jsonl(
        d / "gsm8k" / "test.jsonl",
        [{"question": q, "answer": f"work #### {i}"} for i, q in enumerate(PLANTED)],
    )
    return d


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("MATHSCALE_DATA_DIR", raising=False)
    monkeypatch.setenv("MATHSCALE_TEST_KEY", "sk-test-key-0123456789")


def messages_counter(fake: FakeOpenAI) -> Counter:
    """Requests received per distinct request (all messages), server side."""
    return Counter(json.dumps(b["messages"], sort_keys=True) for b in fake.bodies)


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, q, a",
    [
        ("Question: What is 2+3?\nSolution: 2+3=5.\nThe answer is 5.", "What is 2+3?", "5"),
        ("Question: Cost?\nSolution: 2 + 3 = 5 dollars.\nThe answer is $5.", "Cost?", "5"),
        ("**Question:** What is 2+3?\n\n**Solution:** 2 + 3 = 5.\nThe answer is $5$.", "What is 2+3?", "5"),
        ("### New Question\nWhat is 7*6?\n### Solution\n7*6 = 42.\nFinal answer: 42", "What is 7*6?", "42"),
        ("```\nQuestion: Half of 9?\nSolution: 9/2 = 4.5\nThe answer is 4.5.\n```", "Half of 9?", "4.5"),
    ],
)
def test_parse_well_formed(text, q, a):
    p = parse_generation(text)
    assert p.ok and p.question == q and p.answer == a
    assert p.solution.rstrip().split("\n")[-1].lower().startswith("the answer is")


def test_parse_boxed_answers():
    p = parse_generation("Question: Find x if 2x = 1.\nSolution: x = 1/2, so \\boxed{\\frac{1}{2}}.")
    assert p.ok and p.answer == "\\frac{1}{2}"
    assert p.solution.endswith("The answer is \\frac{1}{2}.")
    p = parse_generation("Question: q?\nSolution: The answer is \\boxed{12}.")
    assert (
        p.ok and p.answer == "12" and p.solution == "The answer is \\boxed{12}."
    )  # already parseable: unchanged
    # a boxed answer after an intermediate "answer is" wins, and nothing after it is cut
    p = parse_generation(
        "Question: q?\nSolution: The answer is 3 for part one.\nThen doubling gives \\boxed{6}."
    )
    assert p.answer == "6" and "\\boxed{6}" in p.solution


def test_parse_cuts_trailing_chatter_and_keeps_first_pair():
    p = parse_generation(
        "Question: 1+1?\nSolution: 1+1=2.\nAnswer: 2\n\nI hope this helps!\nQuestion: another\nSolution: x"
    )
    assert p.ok and p.solution == "1+1=2.\nThe answer is 2." and p.question == "1+1?"


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        ("", None, "empty"),
        (None, None, "empty"),
        ("Here is a problem: what is 2+2? It is 4.", None, "no_question"),
        ("Question:\nSolution: 4. The answer is 4", None, "no_question"),
        ("Question: What is 2+2?", None, "no_solution"),
        ("Question: What is 2+2?\nSolution: add the numbers together", None, "no_final_answer"),
        ("Question: What is 2+2?\nSolution: 2+2 = 4. The answer is 4.", "length", "truncated"),
    ],
)
def test_parse_rejections(text, finish, reason):
    p = parse_generation(text, finish)
    assert not p.ok and p.reason == reason


def test_seed_solution_gets_a_final_line():
    assert reply_format.seed_solution({"solution": "16 - 3 = 13 eggs.", "answer": "13"}).endswith(
        "The answer is 13."
    )
    assert reply_format.seed_solution({"solution": "So \\boxed{13}.", "answer": "13"}) == "So \\boxed{13}."
    assert reply_format.seed_solution({"solution": None, "answer": "7"}) == "The answer is 7."


def test_answers_agree():
    assert filters.answers_agree("42", "$42$") and filters.answers_agree("\\frac{1}{2}", "0.5")
    assert filters.answers_agree("1,000", "1000") and filters.answers_agree("\\boxed{7}", "7.0")
    assert not filters.answers_agree("41", "42") and not filters.answers_agree(None, "1")


# ----------------------------------------------------------------------------------------------------------------
# few-shot choice
# ----------------------------------------------------------------------------------------------------------------


def _seed(i, kps):
    return {
        "seed_id": f"s{i}",
        "question": f"q{i}",
        "solution": f"s{i}. The answer is {i}.",
        "answer": str(i),
        "knowledge_points": kps,
    }


def test_fewshot_picks_nearest_kp_sets():
    seeds = [
        _seed(0, ["a", "b"]),
        _seed(1, ["a", "b", "c"]),
        _seed(2, ["x"]),
        _seed(3, ["a"]),
        _seed(4, ["b", "c", "d", "e"]),
    ]
    idx = FewShotIndex(seeds)
    near = idx.nearest(["a", "b", "c"], 2, composition_rng(0, "c1"))
    assert [i for i, _ in near] == [1, 0] and near[0][1] == 0.0
    assert near[1][1] == pytest.approx(gen.jaccard_distance(["a", "b"], ["a", "b", "c"]))
    # fewer overlapping seeds than k: the rest are drawn at random among the others (distance 1), no repeats
    near = idx.nearest(["x"], 3, composition_rng(0, "c2"))
    assert near[0] == (2, 0.0) and len({i for i, _ in near}) == 3 and all(d == 1.0 for _, d in near[1:])


def test_fewshot_ties_are_random_but_seeded():
    seeds = [_seed(i, ["a", f"u{i}"]) for i in range(10)]  # all at the same distance from {"a"}
    idx = FewShotIndex(seeds)

    def pick(seed, cid):
        return [i for i, _ in idx.nearest(["a"], 3, composition_rng(seed, cid))]

    assert pick(0, "c1") == pick(0, "c1")  # deterministic
    picks = {tuple(pick(s, "c1")) for s in range(8)} | {tuple(pick(0, f"c{j}")) for j in range(8)}
    assert len(picks) > 3  # ties really are broken at random


def test_prompt_has_slots_shots_and_deterministic_key():
    cfg = GenerateConfig(shots=2)
    idx = FewShotIndex(make_seeds())
    comp = make_compositions(["ok"])[0]
    a, b = plan_request(comp, idx, cfg, seed=3), plan_request(comp, idx, cfg, seed=3)
    assert a.request.key("m") == b.request.key("m") and a.shot_ids == b.shot_ids and len(a.shot_ids) == 2
    text = a.request.messages[0]["content"]
    assert "Topics:\n- Topic 0\n- Topic 1" in text and "Knowledge Points:\n- KP 0" in text
    assert "require the combined use" in text and "The answer is <the final answer>" in text
    shots = {s["seed_id"]: s for s in make_seeds()}
    for sid in a.shot_ids:
        assert shots[sid]["question"] in text and shots[sid]["solution"] in text
    assert plan_request(comp, idx, cfg, seed=4).request.key("m") != a.request.key("m")


def test_retry_requests_have_new_keys():
    cfg = GenerateConfig()
    first = plan_request(make_compositions(["ok"])[0], FewShotIndex(make_seeds()), cfg, seed=0).request
    fix = retry_request(first, "garbage", "no_question", cfg)
    short = retry_request(first, "cut", "truncated", cfg)
    keys = {first.key("m"), fix.key("m"), short.key("m")}
    assert len(keys) == 3
    assert (
        fix.messages[1] == {"role": "assistant", "content": "garbage"}
        and "Question:" in fix.messages[2]["content"]
    )
    assert short.seed == first.seed + 1 and len(short.messages) == 1


# ----------------------------------------------------------------------------------------------------------------
# decontamination and dedup
# ----------------------------------------------------------------------------------------------------------------

TEST_Q = (
    "Tom buys three boxes of pencils with twelve pencils in each box and then gives away seven pencils to his "
    "friends at school. How many pencils does he have left?"
)


def test_decontamination_exact_and_ngram_but_not_near_misses():
    items = [
        TestItem("gsm8k.test.5", "gsm8k", TEST_Q),
        TestItem("MATH.test.1", "MATH", "What is the sum of the roots of x^2 - 5x + 6 = 0?"),
    ]
    dec = Decontaminator(items, n=13)
    words = TEST_Q.split()
    qs = {
        "exact": "  TOM buys three boxes of pencils, with twelve pencils in each box -- and then gives away seven pencils "
        "to his friends at school! How many pencils does he have left  ",
        "short-exact": "what is the sum of the roots of x^2 - 5x + 6 = 0",  # too short for a 13-gram: exact only
        "ngram13": "Ann reads a note. " + " ".join(words[6:19]) + " Then she stops.",
        "ngram12": "Ann reads a note. " + " ".join(words[6:18]) + " Then she stops.",
        "paraphrase": "Tom purchased 3 packs holding 12 pencils each, gave 7 of them to classmates; how many remain?",
        "clean": "A car travels 60 km per hour for 3 hours. How far does it go?",
    }
    hits = {h["id"]: h for h in dec.check(list(qs.values()), list(qs))}
    assert set(hits) == {"exact", "short-exact", "ngram13"}
    assert hits["exact"]["kind"] == "exact" and hits["exact"]["test_id"] == "gsm8k.test.5"
    assert hits["short-exact"]["test_id"] == "MATH.test.1" and hits["short-exact"]["test_dataset"] == "MATH"
    h = hits["ngram13"]
    assert h["kind"] == "ngram" and h["test_id"] == "gsm8k.test.5" and len(h["ngram"].split()) == 13
    assert h["ngram"] in filters.normalize_text(TEST_Q)


def test_decontamination_against_real_mwpbench_files():
    data = Path(os.environ.get("MATHSCALE_DATA_DIR") or ROOT.parent / "shared" / "data")
    if not (data / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"no MWPBench data under {data} (set MATHSCALE_DATA_DIR)")
    items, notes = filters.load_test_questions(data)
    assert len(items) > 5000 and any(t.dataset == "gsm8k" for t in items)
    real = next(t for t in items if t.dataset == "gsm8k" and len(t.question.split()) > 30)
    math_q = next(t for t in items if t.dataset == "MATH" and len(t.question.split()) > 25)
    words = math_q.question.split()
    qs = [real.question, "As a warm-up: " + " ".join(words[:20]) + " and explain.", question_for("clean")]
    hits = Decontaminator(items).check(qs, ["a", "b", "c"])
    assert [(h["id"], h["kind"]) for h in hits] == [("a", "exact"), ("b", "ngram")]
    assert hits[0]["test_id"] == real.id


def test_minhash_dedup_reports_kept_id():
    base = question_for("base")
    qs = [
        base,
        question_for("other"),
        base.replace("are there?", "are there in total?"),
        base.upper(),
        question_for("third"),
    ]
    hits = near_duplicates(qs, ["q0", "q1", "q2", "q3", "q4"], threshold=0.8, num_perm=128, shingle=5)
    assert {h["id"]: h["duplicate_of"] for h in hits} == {"q2": "q0", "q3": "q0"}
    assert all(h["similarity"] >= 0.8 for h in hits)
    assert near_duplicates(qs, ["q0", "q1", "q2", "q3", "q4"], threshold=1.0, shingle=5) == [
        {"id": "q3", "duplicate_of": "q0", "similarity": 1.0}
    ]


# ----------------------------------------------------------------------------------------------------------------
# funnel and assembly (no server)
# ----------------------------------------------------------------------------------------------------------------


def _raw(cid, status="ok", q=None, reason=None, first=None):
    q = q or question_for(cid)
    return {
        "composition_id": cid,
        "status": status,
        "reason": reason,
        "first_reason": first,
        "question": q if status == "ok" else None,
        "solution": "s. The answer is 1.",
        "answer": "1",
        "topics": ["T"],
        "knowledge_points": ["K"],
        "prompt_hash": "h",
    }


def test_funnel_counts_add_up_with_every_filter():
    raw = [_raw(f"c{i}") for i in range(10)]
    raw += [
        _raw("e1", "error", reason="error: HTTP 500"),
        _raw("r1", "rejected", reason="no_question", first="no_question"),
    ]
    raw += [_raw("x1", q=TEST_Q), _raw("d1", q=question_for("c0") + " Explain.")]
    checks = {r["composition_id"]: {"agrees": r["composition_id"] != "c9"} for r in raw}
    cfg = GenerateConfig(answer_check=True, answer_check_action="drop")
    asm = filter_and_assemble(
        raw, make_seeds(3), cfg, "teacher", [TestItem("t1", "gsm8k", TEST_Q)], [], checks
    )
    steps = {s: (k, r) for s, k, r in asm.funnel}
    assert funnel_adds_up(asm.funnel)
    assert asm.funnel[0] == ("compositions", 14, 0)
    assert steps["teacher replied"] == (13, 1) and steps["parsed (one retry)"] == (12, 1)
    assert steps["answer check (teacher re-solve)"] == (11, 1)
    assert [v for s, v in steps.items() if s.startswith("decontamination")] == [(10, 1)]
    assert [v for s, v in steps.items() if s.startswith("near-duplicate")] == [(9, 1)]
    assert asm.rejections == {"no_question": 1} and asm.errors == {"error: HTTP 500": 1}
    assert asm.duplicates[0]["id"] == "gen-d1" and asm.duplicates[0]["duplicate_of"] == "gen-c0"
    assert sum(r["source"] == "generated" for r in asm.rows) == 9 and asm.n_seed_rows == 3
    # flag instead of drop: nothing removed by the check, but the rows say what it found
    asm = filter_and_assemble(
        raw,
        [],
        GenerateConfig(answer_check=True, answer_check_action="flag", dedup=False, decontaminate=False),
        "t",
        [],
        [],
        checks,
    )
    assert funnel_adds_up(asm.funnel) and any(r["check_agrees"] is False for r in asm.rows)
    assert [s for s, _, _ in asm.funnel][-1] == "parsed (one retry)"  # flagging removes nothing
    with pytest.warns(UserWarning, match="nothing was checked"):  # decontamination on, but no test questions
        filter_and_assemble(raw, [], GenerateConfig(dedup=False), "t", [], [], None)


def test_estimate_cost_uses_prices_and_batch_factor():
    llm = LLMConfig(
        base_url="http://x/v1", price_prompt_per_1m=1.0, price_completion_per_1m=2.0, budget_usd=1.0
    )
    cfg = GenerateConfig(est_completion_tokens=100, est_retry_rate=0.0)
    est = gen.estimate_cost(cfg, llm, 1000, prompt_chars=4000)
    assert est["calls"] == 1000 and est["prompt_tokens"] == 1_000_000 and est["completion_tokens"] == 100_000
    assert est["cost_usd"] == pytest.approx(1.2) and est["within_budget"] is False
    est_b = gen.estimate_cost(cfg, llm.model_copy(update={"backend": "batch"}), 1000, prompt_chars=4000)
    assert est_b["cost_usd"] == pytest.approx(0.6) and est_b["within_budget"]
    assert "hours_on_embedded_server" in gen.estimate_cost(cfg, LLMConfig(), 100)


def test_params_section_validates(tmp_path):
    p = parse_params(
        "run_name: x\ngenerate:\n  n_questions: 5\nllm:\n  backend: batch\n  batch:\n    poll_s: 1\n"
    )
    assert p.generate.n_questions == 5 and p.llm.batch.poll_s == 1
    with pytest.raises(ParamsError, match="generate.shotz"):
        parse_params("run_name: x\ngenerate:\n  shotz: 3\n")
    f = tmp_path / "p.yaml"
    f.write_text("run_name: x\ngenerate:\n  decontam_official_file: /nonexistent/full_test.json\n")
    with pytest.raises(ParamsError, match="generate.decontam_official_file"):
        load_params(f)


# ----------------------------------------------------------------------------------------------------------------
# end to end against a loopback server
# ----------------------------------------------------------------------------------------------------------------

E2E_MODES = [
    "ok",
    "malformed-once",
    "ok",
    "malformed-always",
    "noanswer",
    "truncated",
    "boxed",
    "exact",
    "ngram",
    "dupsrc",
    "dup",
    "ok",
    "checkwrong",
    "ok",
]


def test_end_to_end_funnel_exports_and_no_repeat(tmp_path, no_data_env):
    import datasets

    with FakeOpenAI(answer=scripted_generation) as fake:
        params = make_run(
            tmp_path, fake.base_url, E2E_MODES, data_root=make_data_dir(tmp_path), answer_check=True
        )
        P = load_params(params)
        summary = stages.generate(P, log=lambda s: None)
        calls = fake.total_completed
        # 14 first requests + 4 retries (malformed x2, noanswer, truncated) + 12 answer checks
        assert calls == 14 + 4 + 12
        assert max(messages_counter(fake).values()) == 1
        run_dir = P.run_dir
        rows = read_jsonl(run_dir / "mathscaleqa.jsonl")
        funnel = [(f["step"], f["kept"], f["removed"]) for f in summary["funnel"]]
        assert summary["funnel_adds_up"] and funnel_adds_up(funnel)
        assert funnel[:4] == [
            ("compositions", 14, 0),
            ("teacher replied", 14, 0),
            ("parsed (one retry)", 12, 2),
            ("answer check (teacher re-solve)", 11, 1),
        ]
        assert funnel[4][1:] == (9, 2) and funnel[5][1:] == (8, 1)
        assert summary["rejections"] == {"no_question": 1, "no_final_answer": 1}
        assert summary["first_attempt_rejections"] == {"no_question": 2, "no_final_answer": 1, "truncated": 1}
        dec = {h["id"]: h for h in summary["decontamination"]["hits"]}
        assert dec["gen-c0007"]["kind"] == "exact" and dec["gen-c0008"]["kind"] == "ngram"
        assert dec["gen-c0007"]["test_id"] == "gsm8k.test.0" and dec["gen-c0008"]["test_id"] == "gsm8k.test.1"
        assert summary["dedup"]["hits"] == [
            {
                "id": "gen-c0010",
                "duplicate_of": "gen-c0009",
                "similarity": summary["dedup"]["hits"][0]["similarity"],
            }
        ]
        gen_rows = [r for r in rows if r["source"] == "generated"]
        assert len(gen_rows) == 8 and sum(r["source"] == "seed" for r in rows) == 8
        assert {"gen-c0001", "gen-c0005", "gen-c0006"} <= {
            r["id"] for r in gen_rows
        }  # retried and boxed ones kept
        for r in rows:
            assert set(r) == {
                "id",
                "question",
                "solution",
                "answer",
                "topics",
                "knowledge_points",
                "composition_id",
                "teacher_model",
                "prompt_hash",
                "source",
                "check_agrees",
            }
            assert "answer is" in r["solution"].strip().split("\n")[-1].lower()
        assert all(r["teacher_model"] == "fake-model" and r["check_agrees"] is True for r in gen_rows)
        hf = datasets.load_from_disk(str(run_dir / "mathscaleqa_hf"))
        assert hf.num_rows == len(rows) and hf[0]["id"] == rows[0]["id"]
        card = (run_dir / "dataset_card.md").read_text()
        for step, kept, removed in funnel:
            assert f"| {step} | {kept} | {removed} |" in card
        assert "fake-model" in card and "Topics:" in card and "gsm8k.test.0" in card
        assert summary["usage"]["session"]["requests"] == calls and summary["estimate"]["compositions"] == 14
        assert len(read_jsonl(run_dir / "generation" / "decontamination.jsonl")) == 2
        # a second run repeats no call and gives the same rows
        stages.generate(load_params(params), log=lambda s: None)
        assert fake.total_completed == calls
        assert read_jsonl(run_dir / "mathscaleqa.jsonl") == rows


def test_transport_errors_leave_the_shard_unfinished(tmp_path, no_data_env):
    fails = {"on": True}

    def fault(prompt, n):
        return "500" if fails["on"] and "mode:broken" in prompt else None

    with FakeOpenAI(answer=scripted_generation, fault=fault) as fake:
        params = make_run(tmp_path, fake.base_url, ["ok", "broken", "ok", "ok", "ok"], decontaminate=False)
        with pytest.raises(stages.StageError, match="1 of 5 request"):  # a failed request fails the stage
            stages.generate(load_params(params), log=lambda s: None)
        s1 = read_json(load_params(params).run.generate_summary)  # and what it did is written
        assert s1["errors"] and s1["funnel"][1]["removed"] == 1 and s1["requests"]["failed"] == 1
        fails["on"] = False
        before = fake.total_completed
        s2 = stages.generate(load_params(params), log=lambda s: None)
        assert fake.total_completed == before + 1  # only the failed call is made again
        assert not s2["errors"] and s2["funnel"][-1]["kept"] == 5


def test_resume_after_kill_repeats_and_loses_nothing(tmp_path, no_data_env):
    modes = ["ok", "malformed-once", "ok", "ok", "ok", "ok", "boxed", "ok", "ok", "ok"]
    with FakeOpenAI(answer=scripted_generation, stall_after=6) as fake:
        params = make_run(tmp_path, fake.base_url, modes, decontaminate=False, shard_size=4)
        P = load_params(params)
        env = {k: v for k, v in os.environ.items() if k != "MATHSCALE_DATA_DIR"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mathscale_utils.runs.chain",
                str(params),
                "--only",
                "03",
                "--engine",
                "python",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            cache = P.run_dir / "cache" / "llm_cache.jsonl"
            while time.monotonic() < deadline:  # 6 answered (shard 0: 4 + 1 retry; shard 1: 1), the 7th hangs
                n_cached = len(cache.read_text().splitlines()) if cache.exists() else 0
                if len(fake.bodies) >= 7 and n_cached >= 6:
                    break
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.05)
            else:
                pytest.fail("the generation never reached the stalled request")
            assert (P.run_dir / "generation" / "shard-00000.jsonl").exists()
            assert not (P.run_dir / "generation" / "shard-00001.jsonl").exists()
            stalled = len(fake.bodies) - 6  # requests hanging (never answered) when the process is killed
        finally:
            proc.kill()
            proc.wait(10)
        assert fake.total_completed == 6
        fake.stall_after = None
        fake.release_stalled()
        summary = stages.generate(load_params(params), log=lambda s: None)
        counts = messages_counter(fake)
        # every distinct request reached the server once, except those left hanging by the kill, which never got
        # an answer; nothing was answered twice
        assert sum(v - 1 for v in counts.values()) == stalled and max(counts.values()) <= 2
        assert fake.total_completed == len(counts) == 11  # 10 first requests + 1 retry
        assert set(fake.completed.values()) == {1}
        assert summary["funnel"][-1]["kept"] == 10
        raw = gen.load_raw(P.run_dir)
        assert [r["composition_id"] for r in raw] == [f"c{i:04d}" for i in range(10)]


def test_notebook_runs_headless(tmp_path, no_data_env):
    import papermill as pm

    from mathscale_utils.runs.chain import ensure_kernel

    with FakeOpenAI(answer=scripted_generation) as fake:
        params = make_run(
            tmp_path, fake.base_url, E2E_MODES[:10], data_root=make_data_dir(tmp_path), shard_size=5
        )
        from mathscale_utils.method.graph import build_graph, save_graph

        save_graph(build_graph(make_seeds()), load_params(params).run_dir)  # coverage is measured against it
        out = tmp_path / "03.ipynb"
        pm.execute_notebook(
            str(ROOT / "notebooks" / "03_generate_questions.ipynb"),
            str(out),
            parameters={"params_file": str(params)},
            kernel_name=ensure_kernel(),
            cwd=str(ROOT),
            progress_bar=False,
        )
        run_dir = load_params(params).run_dir
        summary = read_json(run_dir / "generate_summary.json")
        assert summary["funnel_adds_up"] and summary["counts"]["generated_kept"] == 6
        assert (run_dir / "generate_funnel.png").stat().st_size > 1000
        assert (run_dir / "mathscaleqa_hf").is_dir() and (run_dir / "dataset_card.md").exists()
        text = out.read_text()
        assert "kp_coverage" in text and "MathScaleQA (this run)" in text
        cov = dataset_stats.coverage(
            read_jsonl(run_dir / "mathscaleqa.jsonl"), *dataset_stats.graph_vocabulary(run_dir)
        )
        assert cov["graph_topics"] == 3 and cov["graph_kps"] == 7 and 0 < cov["kp_coverage"] < 1


def test_budget_stops_the_run_and_a_rerun_continues(tmp_path, no_data_env):
    with FakeOpenAI(answer=scripted_generation) as fake:
        prices = {"price_prompt_per_1m": 1000.0, "price_completion_per_1m": 1000.0, "budget_usd": 3.0}
        params = make_run(tmp_path, fake.base_url, ["ok"] * 8, llm=prices, decontaminate=False, shard_size=2)
        with pytest.warns(UserWarning, match="budget"), pytest.raises(stages.StageError, match="budget_usd"):
            stages.generate(load_params(params), log=lambda s: None)  # not done: the stage fails, saying why
        s1 = read_json(load_params(params).run.generate_summary)  # what it made is written
        first = fake.total_completed
        assert s1["requests"]["budget_stopped"] == 8 - first and s1["requests"]["ok"] == first
        assert 0 < first < 8 and s1["funnel_adds_up"]
        assert s1["funnel"][-1]["kept"] == first
        assert any("budget" in k for k in s1["errors"]) or s1["funnel"][1]["step"].startswith("reached")
        params.write_text(params.read_text().replace("budget_usd: 3.0", "budget_usd: 1000.0"))
        s2 = stages.generate(load_params(params), log=lambda s: None)
        assert fake.total_completed == 8 and max(messages_counter(fake).values()) == 1
        assert s2["funnel"][-1]["kept"] == 8


def test_changed_shard_size_or_more_questions_reuse_the_cache(tmp_path, no_data_env):
    with FakeOpenAI(answer=scripted_generation) as fake:
        params = make_run(
            tmp_path, fake.base_url, ["ok"] * 7, decontaminate=False, shard_size=4, n_questions=5
        )
        stages.generate(load_params(params), log=lambda s: None)
        assert fake.total_completed == 5
        params.write_text(
            params.read_text()
            .replace("shard_size: 4", "shard_size: 3")
            .replace("n_questions: 5", "n_questions: 7")
        )
        P = load_params(params)
        stages.generate(P, log=lambda s: None)
        assert fake.total_completed == 7 and max(messages_counter(fake).values()) == 1  # only the 2 new ones
        raw = gen.load_raw(P.run_dir)
        assert [r["composition_id"] for r in raw] == [f"c{i:04d}" for i in range(7)]
        assert [r["shard"] for r in raw] == [0, 0, 0, 1, 1, 1, 2]


def test_question_without_solution_is_completed_by_the_retry(tmp_path, no_data_env):
    first = "Question: How many legs do 3 spiders have?"
    assert parse_generation(first).reason == "no_solution"
    cfg = GenerateConfig()
    req = plan_request(make_compositions(["qonly"])[0], FewShotIndex(make_seeds()), cfg, seed=0).request
    r = retry_request(req, first, "no_solution", cfg)
    assert r.messages[1]["content"] == first and "Now solve that question" in r.messages[2]["content"]
    p = reply_format.parse_retry(
        "Each spider has 8 legs, 3 x 8 = 24.\nThe answer is 24.", "stop", "no_solution", first
    )
    assert p.ok and p.question == "How many legs do 3 spiders have?" and p.answer == "24"
    p = reply_format.parse_retry("Solution: 3 x 8 = 24. The answer is 24", "stop", "no_solution", first)
    assert p.ok and p.solution == "3 x 8 = 24. The answer is 24"
    assert reply_format.parse_retry("no idea", "stop", "no_solution", first).reason == "no_final_answer"
    with FakeOpenAI(answer=scripted_generation) as fake:
        params = make_run(tmp_path, fake.base_url, ["qonly", "ok"], decontaminate=False)
        s = stages.generate(load_params(params), log=lambda s: None)
        assert fake.total_completed == 3 and s["funnel"][-1]["kept"] == 2
        row = gen.load_raw(load_params(params).run_dir)[0]
        assert (
            row["status"] == "ok"
            and row["first_reason"] == "no_solution"
            and row["question"].startswith("How many")
        )
