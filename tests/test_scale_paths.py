"""The data path at paper scale (2M pairs; bench/bench_scale.py measures it): what each stage keeps in memory is
bounded (the reply cache, the JSONL reader and writer, the raw and assembled rows, the Batch API request chunks, the
training data), and every fast path writes and finds exactly what the simple one did."""

from __future__ import annotations

import json
import random
import tracemalloc
import warnings

import numpy as np
import pytest

from mathscale_utils.core.io import DataError, iter_jsonl, read_jsonl, write_jsonl
from mathscale_utils.inference import cache as cache_mod
from mathscale_utils.inference.cache import ReplyCache
from mathscale_utils.method.composition_file import CompositionTable, write_walk
from mathscale_utils.method.near_duplicates import NearDuplicates, near_duplicates
from mathscale_utils.method.text_hashing import Words, normalize_text, normalized_words, stable_hash


def _retained(make) -> tuple[object, int]:
    """(make(), bytes it still holds once made), by tracemalloc."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = make()
        return out, tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def _peak(run) -> int:
    """Peak bytes allocated while run() runs."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ---- the reply cache ------------------------------------------------------------------------------------------------


def _entry(i: int, text: str | None = None) -> dict:
    usage = {"prompt_tokens": i, "completion_tokens": 2 * i}
    return {
        "key": f"k{i:06d}",
        "model": "m",
        "text": text or f"reply {i} " + "x" * 1000,
        "usage": usage,
        "finish_reason": "stop",
    }


def test_cache_holds_an_index_not_the_replies(tmp_path):
    """20K cached replies of 1 KB: the old cache kept every parsed line (~2.5 KB each here, 4.7 KB at 2M in real
    runs); the index keeps ~20 bytes a line."""
    write_jsonl(tmp_path / "llm_cache.jsonl", (_entry(i) for i in range(20_000)))
    cache, held = _retained(lambda: ReplyCache(tmp_path))
    assert held < 2_000_000, f"{held / 20_000:.0f} bytes per cached reply"
    hit = cache.get("k012345")
    assert hit.text.startswith("reply 12345 ") and (hit.prompt_tokens, hit.completion_tokens) == (
        12345,
        24690,
    )
    assert hit.cached and hit.finish_reason == "stop" and cache.get("nope") is None


def test_cache_last_line_wins_and_puts_are_found_before_and_after_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_MERGE", 3)  # merge the recent lines into the sorted index often
    write_jsonl(tmp_path / "llm_cache.jsonl", [_entry(1, "old"), _entry(2), _entry(1, "new")])
    c = ReplyCache(tmp_path)
    assert c.get("k000001").text == "new"
    c.put("k000003", "m", "three", 1, 2, "length", flush=False)
    assert c.unsaved == 1 and c.get("k000003").finish_reason == "length"
    for i in range(4, 12):
        c.put(f"k{i:06d}", "m", f"t{i}")
    c.put("k000001", "m", "newest")
    assert c.unsaved == 0 and c.get("k000003").text == "three" and c.get("k000007").text == "t7"
    assert c.get("k000001").text == "newest"
    c.close()
    again = ReplyCache(tmp_path)  # the file is the record: the same answers from a fresh open
    assert again.get("k000001").text == "newest" and again.get("k000011").text == "t11"
    assert len(read_jsonl(tmp_path / "llm_cache.jsonl")) == 13


def test_cache_reads_other_key_orders_escaped_keys_and_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "llm_cache.jsonl"
    odd = {
        "model": "m",
        "text": "key last",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "finish_reason": None,
        "key": "k-last",
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(_entry(1)) + "\n\n" + json.dumps(odd) + "\n")
        f.write(json.dumps(_entry(2) | {"key": 'q"uo\\te é'}, ensure_ascii=False) + "\n")
        f.write('{"key": "torn", "text": "cut by a cra')
    with pytest.warns(UserWarning, match="torn"):
        c = ReplyCache(tmp_path)
    assert c.get("k-last").text == "key last" and c.get('q"uo\\te é').prompt_tokens == 2
    assert c.get("torn") is None and path.read_text().endswith("\n")
    c.put("after", "m", "appended on a fresh line")
    c.close()
    assert ReplyCache(tmp_path).get("after").text == "appended on a fresh line"


def test_cache_names_the_file_for_a_broken_line(tmp_path):
    path = tmp_path / "llm_cache.jsonl"
    path.write_text(json.dumps(_entry(1)) + "\nnot json\n" + json.dumps(_entry(2)) + "\n")
    with pytest.raises(DataError, match=r"llm_cache.jsonl:2: not valid JSON"):
        ReplyCache(tmp_path)
    path.write_text('{"key": "k1", "text": broken}\n')  # starts like a good line: found when read
    with pytest.raises(DataError, match="llm_cache.jsonl: the line at byte 0"):
        ReplyCache(tmp_path).get("k1")


# ---- JSON Lines reading and writing --------------------------------------------------------------------------------


def test_jsonl_is_read_and_written_a_line_at_a_time(tmp_path):
    rows = ({"i": i, "text": "y" * 1000} for i in range(20_000))  # 20 MB
    path = tmp_path / "big.jsonl"
    assert _peak(lambda: write_jsonl(path, rows)) < 15_000_000  # the whole text was one 20 MB string
    n = 0

    def read():
        nonlocal n
        for _ in iter_jsonl(path):
            n += 1

    assert _peak(read) < 5_000_000 and n == 20_000  # readlines() held every line
    with open(path, "a") as f:
        f.write('{"torn": ')
    assert sum(1 for _ in iter_jsonl(path, tolerate_torn_tail=True)) == 20_000
    with pytest.raises(DataError, match=r"big.jsonl:20001: not valid JSON"):
        list(iter_jsonl(path))


# ---- compositions.jsonl --------------------------------------------------------------------------------------------


def _walk(n: int, rng: np.random.Generator, n_topics: int = 7, n_kps: int = 9):
    topics = rng.integers(-1, n_topics, size=(n, 3)).astype(np.int32)
    topics[:, 0] = rng.integers(0, n_topics, size=n)
    kps = rng.integers(-1, n_kps, size=(n, 5)).astype(np.int32)  # -1 anywhere: blanked repeats
    return topics, kps, topics[:, 0].copy(), rng.integers(0, 12, size=n).astype(np.int32)


def test_compositions_file_is_what_json_dumps_writes(tmp_path):
    rng = np.random.default_rng(0)
    topics, kps, start, epoch = _walk(300_000, rng)  # more than one block of lines
    tl = ["Algebra", 'quo"te', "back\\slash", "é accent", "tab\there", "new\nline", "日本"]
    kl = [f"kp {i}" for i in range(8)] + ["\u2028 sep"]
    path = write_walk(tmp_path / "c.jsonl", topics, kps, start, epoch, tl, kl)
    expected = "".join(
        json.dumps(
            {
                "id": f"c{i:07d}",
                "topics": [tl[t] for t in topics[i] if t >= 0],
                "knowledge_points": [kl[k] for k in kps[i] if k >= 0],
                "start_topic": tl[start[i]],
                "epoch": int(epoch[i]),
            },
            ensure_ascii=False,
        )
        + "\n"
        for i in range(len(start))
    )
    assert path.read_text(encoding="utf-8") == expected


def test_composition_table_reads_compactly_with_clear_errors(tmp_path):
    rows = [
        {"id": f"c{i}", "topics": [f"t{i % 5}"], "knowledge_points": [f"k{i % 7}", "k"], "epoch": 0}
        for i in range(20_000)
    ]
    write_jsonl(tmp_path / "c.jsonl", rows)
    table, held = _retained(lambda: CompositionTable.read(tmp_path / "c.jsonl"))
    assert held < 2_000_000  # as dicts: ~15 MB
    want = [{k: r[k] for k in ("id", "topics", "knowledge_points")} for r in rows]
    assert len(table) == 20_000 and list(table) == want and table[-1] == want[-1]
    part = table[100:110]
    assert len(part) == 10 and list(part) == want[100:110] and part[2:4][1] == want[103]
    assert list(table[:0]) == [] and list(table[19_990:30_000]) == want[19_990:]
    write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"id": "x", "topics": "t", "knowledge_points": []}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected keys id, topics"):
        CompositionTable.read(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "ints.jsonl", [{"id": 7, "topics": [], "knowledge_points": ["a"]}])
    assert CompositionTable.read(tmp_path / "ints.jsonl")[0]["id"] == 7  # an id keeps its JSON type


# ---- text, decontamination, near-duplicates ------------------------------------------------------------------------

TRICKY = [
    "Ｆｕｌｌ　ｗｉｄｔｈ",
    "ΣΑΣ ends in Σ",
    "İstanbul",
    "a\nb\r\nc",
    "x_y-z",
    "",
    "  ",
    "½ ﬁne",
    "é",
    "\u0301e",
    "tab\tand\x1fsep",
    "what?!",
    "2+2=4",
    "\u2028line",
    "日本語のテキスト",
    "İ̇",
    "ΌΣΟΣ",
    None,
]


def test_block_normalisation_is_normalize_text_per_question():
    rng = random.Random(0)
    pieces = [t or "" for t in TRICKY] + ["word", "Word.", "NUM 12", "x"]
    qs = TRICKY + [" ".join(rng.choices(pieces, k=rng.randint(0, 6))) for _ in range(2000)]
    expected = [normalize_text(q).split() for q in qs]
    assert normalized_words(qs) == expected
    w = Words.of_questions(qs)
    assert w.toks == expected and [w.text(j) for j in range(len(qs))] == [normalize_text(q) for q in qs]
    flat = [x for t in expected for x in t]
    assert w.hashes.tolist() == [stable_hash(x) % 2**64 for x in flat]
    keep = [j for j in range(len(qs)) if j % 3]
    sub = w.subset(keep)
    assert (
        sub.toks == [expected[j] for j in keep]
        and sub.ngrams(2)[0].tolist() == Words.of(sub.toks).ngrams(2)[0].tolist()
    )


def _reference_near_duplicates(questions, ids, threshold=0.8, num_perm=128, shingle=3):
    """The greedy MinHashLSH loop (datasketch insert/query per question) that NearDuplicates reproduces."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm)
    template = MinHash(num_perm=num_perm, hashfunc=int)
    toks = [normalize_text(q).split() for q in questions]
    h, doc, _ = Words.of(toks).ngrams(shingle)
    h32 = (h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))
    bounds = np.searchsorted(doc, np.arange(len(toks) + 1))
    sigs, hits = {}, []
    for i, words in enumerate(toks):
        part = [int(x) for x in h32[bounds[i] : bounds[i + 1]]]
        if not part:
            if not words:
                continue
            part = [stable_hash(" ".join(words)) & 0xFFFFFFFF]
        m = template.copy()
        m.update_batch(part)
        sigs[i] = m.hashvalues
        best, best_sim = None, 0.0
        for j in lsh.query(m):
            sim = float(np.mean(sigs[j] == sigs[i]))
            if sim >= threshold and (sim > best_sim or (sim == best_sim and j < best)):
                best, best_sim = j, sim
        if best is None:
            lsh.insert(i, m)
        else:
            hits.append({"id": ids[i], "duplicate_of": ids[best], "similarity": round(best_sim, 4)})
    return hits


def _questions(n: int, seed: int) -> list[str]:
    """Short questions from a small vocabulary, many edited or exact copies of earlier ones, some empty."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(150)]
    qs: list[str] = []
    for _ in range(n):
        r = rng.random()
        if qs and r < 0.25:
            q = rng.choice(qs).split() or ["x"]
            q[rng.randrange(len(q))] = rng.choice(vocab)
            qs.append(" ".join(q))
        elif qs and r < 0.32:
            qs.append(rng.choice(qs).upper() + "!")
        elif r < 0.34:
            qs.append(rng.choice(["", "  ", "?!", "one", "two words"]))
        else:
            qs.append(" ".join(rng.choices(vocab, k=rng.randint(1, 30))))
    return qs


@pytest.mark.parametrize(
    "settings", [{}, {"threshold": 1.0}, {"threshold": 0.5, "shingle": 5, "num_perm": 64}]
)
def test_near_duplicates_are_datasketch_minhash_lsh_exactly(settings):
    qs = _questions(1500, seed=len(settings))
    ids = [f"q{i}" for i in range(len(qs))]
    ref = _reference_near_duplicates(qs, ids, **settings)
    assert len(ref) > 100
    assert near_duplicates(qs, ids, **settings) == ref
    assert near_duplicates(qs, ids, chunk=37, **settings) == ref  # blocks: earlier blocks through the index


def test_a_huge_bucket_is_split_and_gives_the_same_result(monkeypatch):
    import mathscale_utils.method.near_duplicates as nd_mod

    qs = _questions(600, seed=9)
    ids = [f"q{i}" for i in range(len(qs))]
    ref = _reference_near_duplicates(qs, ids)
    monkeypatch.setattr(nd_mod, "_MAX_PAIRS", 3)
    assert near_duplicates(qs, ids, chunk=600) == ref


def test_near_duplicate_memory_is_a_signature_per_kept_question():
    """What NearDuplicates keeps: uint32 signatures, the band index and ids (datasketch's index: ~4 KB a question)."""
    qs = [" ".join(f"w{(i * 7919 + k * 104729) % 5003}" for k in range(40)) for i in range(10_000)]
    nd = NearDuplicates()

    def feed():
        for c in range(0, len(qs), 2000):
            nd.add(Words.of_questions(qs[c : c + 2000]), [f"g{i}" for i in range(c, c + 2000)])

    _, held = _retained(feed)
    assert held < 10_000 * 1500, f"{held / 10_000:.0f} bytes per question"


# ---- assembly over raw rows on disk --------------------------------------------------------------------------------


def _raw(i: int, status: str = "ok") -> dict:
    q = f"question number {i} about apples and pears " + "word " * 150
    return {
        "composition_id": f"c{i:06d}",
        "status": status,
        "reason": None if status == "ok" else "no_question",
        "first_reason": None,
        "question": q,
        "solution": "s " * 300 + "The answer is 1.",
        "answer": "1",
        "topics": ["t"],
        "knowledge_points": ["k"],
        "prompt_hash": "h",
        "shard": 0,
        "shard_fp": "f",
    }


def test_assembly_keeps_positions_and_reads_the_rows_again(tmp_path):
    from mathscale_utils.core.method_config import GenerateConfig
    from mathscale_utils.method import generate as gen
    from mathscale_utils.method.filters import filter_and_assemble, training_row

    run = tmp_path
    rows = [_raw(i, "ok" if i % 10 else "rejected") for i in range(6000)]
    rows[77]["question"] = rows[76]["question"]
    for s in range(3):
        write_jsonl(run / "generation" / f"shard-{s:05d}.jsonl", rows[s * 2000 : (s + 1) * 2000])
    raw = gen.RawRows(run, [0, 1, 2], [2000] * 3)
    assert len(raw) == 6000 and raw[4321] == rows[4321] and raw[-1] == rows[-1] and raw[10:12] == rows[10:12]
    cfg = GenerateConfig(decontaminate=False, include_seed_train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asm, held = _retained(lambda: filter_and_assemble(raw, [], cfg, "teacher", log=lambda s: None))
    assert held < 3_000_000  # the kept rows as dicts: ~10 MB
    kept = [r for i, r in enumerate(rows) if i % 10 and i != 77]
    assert asm.n_generated == len(asm.rows) == len(kept) and asm.duplicates[0]["id"] == "gen-c000077"
    assert list(asm.rows) == [training_row(r, "teacher", None) for r in kept]
    assert asm.rows[100] == training_row(kept[100], "teacher", None)
    assert [s for s, _, _ in asm.funnel][-1].startswith("near-duplicate")


def test_batch_requests_are_built_and_submitted_in_bounded_chunks(tmp_path, monkeypatch):
    """prefetch takes an iterator and hands the Batch API at most max_requests_per_job requests at a time (before,
    all 2M requests of stage 03 were built into one list first)."""
    from mathscale_utils.core.llm_config import LLMConfig
    from mathscale_utils.inference import batch
    from mathscale_utils.inference.chat import ChatRequest
    from mathscale_utils.inference.llm import LLM

    from fake_batch import FakeBatchAPI

    sizes, made = [], []
    real = batch.BatchRunner.submit

    def submit(self, requests, desc=""):
        sizes.append((len(requests), len(made)))
        return real(self, requests, desc)

    def requests():
        for i in range(25):
            made.append(i)
            yield ChatRequest(messages=[{"role": "user", "content": f"q{i}"}])

    monkeypatch.setattr(batch.BatchRunner, "submit", submit)
    with FakeBatchAPI() as api:
        cfg = LLMConfig(
            model="m", base_url=api.base_url, backend="batch", batch={"poll_s": 0, "max_requests_per_job": 10}
        )
        with LLM(cfg, tmp_path / "cache", "t", progress=False) as llm:
            assert llm.prefetch(requests(), "first")
            assert all(
                llm.cache.get(ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]).key("m"))
                for i in range(25)
            )
    assert sizes == [(10, 10), (10, 20), (5, 25)]  # each chunk submitted as soon as it is made


def test_a_resumed_batch_run_goes_straight_to_the_shard_loop(tmp_path, monkeypatch):
    """Once the Batch API work of the shards is collected, the manifest says so: a resumed generate_shards does not
    build 2M requests twice more only to find them cached."""
    from test_generate import make_compositions, make_seeds, scripted_generation

    from mathscale_utils.core.llm_config import LLMConfig
    from mathscale_utils.core.method_config import GenerateConfig
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.method import generate as gen

    from fake_batch import FakeBatchAPI

    comps = make_compositions(["ok", "malformed-once", "ok", "ok", "ok"])
    index, cfg = gen.FewShotIndex(make_seeds()), GenerateConfig(shard_size=2)
    built = []
    real = gen.first_requests
    monkeypatch.setattr(gen, "first_requests", lambda *a: (built.append(1), real(*a))[1])
    with FakeBatchAPI(answer=scripted_generation) as api:
        llm_cfg = LLMConfig(model="m", base_url=api.base_url, backend="batch", batch={"poll_s": 0})
        with LLM(llm_cfg, tmp_path / "cache", "03_generate", progress=False) as llm:
            first = list(gen.generate_shards(tmp_path, comps, index, llm, cfg, log=lambda s: None))
        assert len(built) == 2  # the Batch API submission, then the retry check
        for f in (tmp_path / "generation").glob("shard-*.jsonl"):
            f.unlink()  # as if killed before the shards were written
        with LLM(llm_cfg, tmp_path / "cache", "03_generate", progress=False) as llm:
            again = list(gen.generate_shards(tmp_path, comps, index, llm, cfg, log=lambda s: None))
            assert llm.usage()["requests"] == 0
    assert len(built) == 2 and again == first and [r["status"] for r in again] == ["ok"] * 5
    assert api.calls["batches.create"] == 2  # first requests, one retry


# ---- what the notebooks and stage 04 read ---------------------------------------------------------------------------


def test_samples_and_coverage_stream_the_file(tmp_path):
    from mathscale_utils.method.dataset_card import export_hf, sample_jsonl
    from mathscale_utils.reporting.dataset_stats import coverage

    rows = [
        {
            "id": f"r{i}",
            "source": "seed" if i % 4 == 0 else "generated",
            "topics": [f"t{i % 3}"],
            "knowledge_points": [f"k{i % 50}"],
            "question": "q" * 500,
        }
        for i in range(10_000)
    ]
    write_jsonl(tmp_path / "m.jsonl", rows)
    peak = _peak(lambda: sample_jsonl(tmp_path / "m.jsonl", 50, seed=3))
    n, sample = sample_jsonl(tmp_path / "m.jsonl", 50, seed=3)
    assert n == 10_000 and len(sample) == 50 and peak < 2_000_000  # the file as dicts: ~10 MB
    pos = [int(r["id"][1:]) for r in sample]
    assert pos == sorted(pos) and sample == sample_jsonl(tmp_path / "m.jsonl", 50, seed=3)[1]
    assert {r["source"] for r in sample} == {"seed", "generated"}
    cov = coverage((r for _, r in iter_jsonl(tmp_path / "m.jsonl")), {"t0", "t1", "t2", "t9"}, {"k1", "k0"})
    assert cov["generated_questions"] == 7500 and cov["topics_used"] == 3 and cov["kps_used"] == 2
    import datasets

    full = [
        {
            "id": "g1",
            "question": "q",
            "solution": "s",
            "answer": "1",
            "topics": ["t"],
            "knowledge_points": [],
            "composition_id": "c1",
            "teacher_model": "m",
            "prompt_hash": "h",
            "source": "generated",
            "check_agrees": None,
        },
        {
            "id": "s1",
            "question": "q2",
            "solution": "s2",
            "answer": "",
            "topics": [],
            "knowledge_points": ["k"],
            "composition_id": None,
            "teacher_model": None,
            "prompt_hash": None,
            "source": "seed",
            "check_agrees": True,
        },
    ] * 15_000
    export_hf(iter(full), tmp_path / "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 30_000 and ds[0] == full[0] and ds[29_999] == full[1]


@pytest.fixture(scope="module")
def small_tok():
    from mathscale_utils.core.student_config import FinetuneConfig
    from mathscale_utils.inference.weights import ModelError, ensure_model
    from mathscale_utils.training.finetune import load_tokenizer

    try:
        ensure_model("smollm2-135m-instruct")
    except ModelError as e:
        pytest.skip(f"embedded model missing: {e}")
    return load_tokenizer(FinetuneConfig(base_model="smollm2-135m-instruct"))


@pytest.mark.parametrize("fmt, cap", [("chat", None), ("alpaca", 37)])
def test_training_set_is_split_rows_encoded_and_memory_mapped(tmp_path, small_tok, fmt, cap):
    from mathscale_utils.core.io import sha256_file
    from mathscale_utils.core.student_config import FinetuneConfig
    from mathscale_utils.training import examples as tex

    rng = random.Random(0)
    rows = [
        {
            "id": f"r{i}",
            "question": f"How many {rng.choice(['apples', 'pens'])} in box {i}? " * rng.randint(1, 9),
            "solution": f"Count them: {i} + 1 = {i + 1}. " * rng.randint(1, 20) + f"The answer is {i + 1}",
        }
        for i in range(300)
    ]
    rows[5]["solution"] = "  "  # not usable
    path = tmp_path / "d.jsonl"
    write_jsonl(path, rows)
    cfg = FinetuneConfig(
        base_model="smollm2-135m-instruct",
        prompt_format=fmt,
        max_length=64,
        eval_holdout=7,
        max_examples=cap,
        seed=3,
    )
    train, held = tex.split_rows(read_jsonl(path), cfg)
    want = [tex.encode_example(small_tok, r["question"], r["solution"], 64, fmt) for r in train]
    ts = tex.training_set(cfg, path, sha256_file(path), small_tok, tmp_path / "cache")
    assert ts.n_examples == len(train) == (cap or 292)
    assert ts.n_truncated == sum(e["n_tokens"] > 64 for e in want) > 0
    assert ts.dataset.column_names == ["input_ids", "labels"]
    assert ts.dataset[:]["input_ids"] == [e["input_ids"] for e in want]
    assert ts.dataset[:]["labels"] == [e["labels"] for e in want]
    assert all(f["filename"].startswith(str(tmp_path / "cache")) for f in ts.dataset.cache_files)  # on disk
    again = tex.training_set(cfg, path, sha256_file(path), small_tok, tmp_path / "cache")  # another rank
    assert again.dataset.cache_files == ts.dataset.cache_files and again.n_truncated == ts.n_truncated
    n, shown, held2 = tex.sample_rows(path, cfg, k=10)
    assert n == 299 and shown == train[:10] and held2 == held
