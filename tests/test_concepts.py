"""Concept extraction: reply parsing, normalisation and the paper's frequency filter."""

import json

import pytest

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.method_config import ExtractConfig
from mathscale_utils.method.concepts import (
    Extraction,
    build_request,
    frequency_table,
    merge_case_variants,
    normalise,
    parse_reply,
    retry_request,
    summary,
    to_rows,
)

CFG = ExtractConfig()


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Ratio   and\nproportion. ", "Ratio and proportion"),
        ("Pythagorean theorem", "Pythagorean theorem"),
        ("Problem-solving", "Problem-solving"),  # near-duplicates are not merged, as in the paper
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_case_variants_merge_only_when_asked():
    exs = [
        _ex(1, ["Algebra"], ["Area of a circle"]),
        _ex(2, ["algebra"], ["Area of a Circle"]),
        _ex(3, ["Algebra"], ["x"]),
    ]
    merge_case_variants(exs)
    assert [e.topics for e in exs] == [["Algebra"], ["Algebra"], ["Algebra"]]
    assert exs[1].knowledge_points == ["Area of a circle"]  # tie: the first form seen wins
    assert parse_reply('{"topics": ["Geometry", "geometry"], "knowledge_points": ["k"]}', CFG)[0] == [
        "Geometry"
    ]


def test_parse_plain_and_fenced_json():
    topics, kps = parse_reply(
        '{"topics": ["Algebra"], "knowledge_points": ["Solving linear equations"]}', CFG
    )
    assert topics == ["Algebra"] and kps == ["Solving linear equations"]
    fenced = '```json\n{"topics": ["Geometry", "Geometry "], "knowledge_points": ["Area of a circle"]}\n```'
    assert parse_reply(fenced, CFG) == (["Geometry"], ["Area of a circle"])


def test_parse_enforces_limits():
    text = '{"topics": ["a", "b", "c"], "knowledge_points": ["1", "2", "3", "4", "5", "6", "7"]}'
    topics, kps = parse_reply(text, CFG)
    assert topics == ["a", "b"] and kps == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("Topics: algebra", "not a JSON object"),
        ('{"topics": ["a"]}', "missing key"),
        ('{"topics": [], "knowledge_points": ["k"]}', "at least one"),
        ('{"topics": "algebra", "knowledge_points": ["k"]}', "list of strings"),
        (None, "not a JSON object"),
    ],
)
def test_parse_rejects_malformed(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_reply(text, CFG)


def test_request_asks_for_json_schema_and_carries_retry_history():
    req = build_request("What is 2+2?", CFG)
    assert req.response_format["type"] == "json_object"
    assert req.response_format["schema"]["properties"]["topics"]["maxItems"] == 2
    assert "What is 2+2?" in req.messages[0]["content"]
    retry = retry_request(req, "x", "y", CFG)
    assert len(retry.messages) == 3 and retry.key("m") != req.key("m")


def _ex(i, topics, kps, error=None):
    return Extraction(
        Record(id=f"s{i}", dataset="custom", data_topic="custom", question=f"q{i}", answer=None),
        topics,
        kps,
        error,
        1,
    )


def test_frequency_filter_drops_concepts_seen_once():
    exs = [
        _ex(1, ["Algebra"], ["Linear equations", "Substitution"]),
        _ex(2, ["Algebra", "Geometry"], ["Linear equations"]),
        _ex(3, ["Geometry"], ["Area"]),
        _ex(4, [], [], error="request failed: 500"),
    ]
    rows = to_rows(exs, min_count=2)
    assert rows[0]["topics"] == ["Algebra"] and rows[0]["knowledge_points"] == ["Linear equations"]
    assert rows[0]["raw_knowledge_points"] == ["Linear equations", "Substitution"]
    assert rows[2]["topics"] == ["Geometry"] and rows[2]["knowledge_points"] == []
    assert rows[3]["status"] == "failed" and rows[3]["error"].startswith("request failed")
    s = summary(exs, 2)
    assert (s["seeds"], s["ok"], s["failed"]) == (4, 3, 1)
    assert (s["topics_before_filter"], s["topics_after_filter"]) == (2, 2)
    assert (s["knowledge_points_before_filter"], s["knowledge_points_after_filter"]) == (3, 1)
    table = {(r["type"], r["concept"]): (r["count"], r["kept"]) for r in frequency_table(exs, 2)}
    assert table[("knowledge_point", "Linear equations")] == (2, True)
    assert table[("knowledge_point", "Area")] == (1, False)


def test_min_count_one_keeps_everything():
    exs = [_ex(1, ["A"], ["k1"]), _ex(2, ["B"], ["k2"])]
    assert [r["knowledge_points"] for r in to_rows(exs, 1)] == [["k1"], ["k2"]]


def test_extract_sets_asks_once_and_merges_case_within_each_set(fake_openai, tmp_path):
    """The seeds and the coverage sample go out as one batch (the slots stay busy between them); a concept's case
    variants are merged within a set, never across sets (a test question must not rename a seed's concept)."""
    from mathscale_utils.core.llm_config import LLMConfig
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.method.concepts import extract_sets

    def answer(body: dict) -> str:
        q = body["messages"][-1]["content"].rsplit("\n", 1)[-1]
        topic = "algebra" if q in ("seed 2", "test 0") else "Algebra"
        return json.dumps({"topics": [topic], "knowledge_points": [f"KP of {q}"]})

    fake_openai.answer = answer
    seeds = [Record(f"s{i}", "custom", "custom", f"seed {i}", None) for i in range(3)]
    test = [Record(f"t{i}", "custom", "custom", f"test {i}", None) for i in range(2)]
    cfg = LLMConfig(model="fake", base_url=fake_openai.base_url, concurrency=8, retry_initial_s=0.01)
    with LLM(cfg, tmp_path, "t", progress=False) as llm:
        got_seeds, got_test = extract_sets([seeds, test], llm, ExtractConfig(case_fold=True))
    assert [e.record.id for e in got_seeds] == ["s0", "s1", "s2"] and [e.record.id for e in got_test] == [
        "t0",
        "t1",
    ]
    assert [e.topics for e in got_seeds] == [["Algebra"]] * 3  # 2 x "Algebra" beat 1 x "algebra"
    assert [e.topics for e in got_test] == [
        ["algebra"]
    ] * 2  # 1 : 1, the first seen wins, within the test set
    assert [e.knowledge_points for e in got_test] == [["KP of test 0"], ["KP of test 1"]]
    assert sum(fake_openai.received.values()) == 5
