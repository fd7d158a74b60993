"""Benchmark: the whole data path of stages 02-04 at 20K, 200K and 2M generated pairs, through a loopback Batch API.

    .venv/bin/python bench/bench_scale.py [--sizes 20000 200000 2000000] [--work DIR] [--keep]

Per size: a synthetic concept graph of paper size (20K seed questions -> ~2K topics and ~9K knowledge points, as in
bench_walk.py, with question and solution texts), then the project's own code for every step, each step in its own
process reading what the previous one wrote (``--stage NAME``), so that its peak RSS (its own VmHWM) and CPU time
(``os.wait4``) are its own:

    walk        stage 02: the graph from concepts.jsonl, the random walk to N compositions, compositions.jsonl
    requests    stage 03: the first request of every composition, built and submitted in bounded chunks (the Batch
                API request files, uploads and batches); the fake holds the batches, so this step only submits
    collect     stage 03: poll, download the output files, every reply into the LLM cache (llm_cache.jsonl)
    retries     stage 03: the retries the unusable first replies need (built from the cache), submitted, collected
    parse       stage 03: generate_shards as a resumed run calls it: every reply a cache hit, parsed, shards written
    decontaminate, dedup   the two filters alone over the usable questions (their own throughput and memory)
    assemble    stage 03's end as stages.generate runs it: filter_and_assemble (decontamination and dedup again),
                then mathscaleqa.jsonl, the hit lists, generate_summary.json and dataset_card.md
    hf_export   the Hugging Face copy of mathscaleqa.jsonl (export_hf, as stage 03 writes it)
    tokenize    stage 04's training data: split, tokenised by the student's tokenizer (Arrow, memory-mapped)

The Batch API is tests/fake_batch.py's FakeBatchAPI in this process (loopback, no waiting: poll_s 0), storing its
files on disk; its synthetic teacher answers every prompt deterministically, with unusable first replies (retried),
near-duplicates and questions that copy MWPBench test text planted at fixed rates. The path's total counts each
step once: decontaminate and dedup are measured alone but also run inside assemble, so the total leaves them out.
Writes bench/results/scale.json (sizes run before are kept) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

STAGES = [
    "walk",
    "requests",
    "collect",
    "retries",
    "parse",
    "decontaminate",
    "dedup",
    "assemble",
    "hf_export",
    "tokenize",
]
MEASURED_ALONE = {"decontaminate", "dedup"}  # also inside assemble: not added to the path's total
STREAMING = ["requests", "collect", "retries", "parse", "decontaminate", "hf_export", "tokenize"]
TARGETS = {
    "peak_rss_mib_per_stage_at_2m": 4096,
    "total_seconds_at_2m": 5400,
    "streaming_growth_200k_to_2m": 1.5,
    "walk_and_write_seconds_at_2m": 10,
    "filter_questions_per_s_at_2m": 20_000,
}
STAGE03 = "03_generate"
TOKENIZER_MODEL = "qwen2.5-coder-0.5b-instruct"  # the embedded student: its tokenizer is local

# ---- synthetic inputs -------------------------------------------------------------------------------------------


def vocabulary(data_dir: Path | None) -> list[str]:
    """Words to write questions with: those of the MWPBench test questions (real word lengths and tokens for the
    tokenizer), else a synthetic list."""
    from mathscale_utils.method.filters import load_test_questions

    items, _ = load_test_questions(data_dir) if data_dir else ([], [])
    words = [w for t in items[:5000] for w in t.question.split() if w.isalpha()]
    return words or [f"word{i}" for i in range(3000)]


def synthetic_seeds(n: int, vocab: list[str]) -> list[dict]:
    """concepts.jsonl rows: bench_walk's synthetic extractions (paper-size graph) with question, solution, answer."""
    from bench_walk import synthetic_extractions

    rows = synthetic_extractions(n_seeds=n)
    rng = random.Random(1)
    for r in rows:
        r["question"] = " ".join(rng.choices(vocab, k=rng.randint(20, 60))) + "?"
        ans = rng.randint(1, 999)
        r["solution"] = " ".join(rng.choices(vocab, k=rng.randint(30, 90))) + f".\nThe answer is {ans}."
        r["answer"] = str(ans)
    return rows


class Teacher:
    """A deterministic synthetic teacher for the fake Batch API: the reply depends only on the request body.

    First replies, by a hash of the prompt: 3% without a "Question:" label, 1% cut off (finish_reason length),
    1% a question without its solution (all three are retried), 2% a one-word edit of one of 500 base questions
    (near-duplicates), 0.2% a question carrying a 15-word span of an MWPBench test question; the rest are new.
    Retries are answered well, except 5% of them (those rows end rejected)."""

    def __init__(self, vocab: list[str], test_questions: list[str]):
        self.vocab, self.tests = vocab, [q for q in test_questions if len(q.split()) >= 15] or vocab
        self.answered = 0

    def _words(self, rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(rng.choices(self.vocab, k=rng.randint(lo, hi)))

    def _question(self, rng: random.Random, kps: list[str]) -> str:
        return f"{self._words(rng, 15, 40)} using {' and '.join(kps)}, {self._words(rng, 5, 20)}?"

    def _solution(self, rng: random.Random) -> str:
        return f"{self._words(rng, 30, 90)}.\nThe answer is {rng.randint(1, 9999)}."

    def __call__(self, body: dict) -> str | dict:
        self.answered += 1
        msgs = body["messages"]
        prompt = msgs[0]["content"]
        h = int(hashlib.blake2b(json.dumps(msgs).encode(), digest_size=8).hexdigest(), 16)
        rng = random.Random(h)
        k0 = prompt.rfind("Knowledge Points:\n")
        kps = [x[2:] for x in prompt[k0:].split("\n\n")[0].splitlines()[1:] if x.startswith("- ")][:5]
        if len(msgs) > 1 or "Keep the whole reply short" in prompt:  # a retry
            if h % 100 < 5:
                return "Sorry, I cannot write that question."
            if "Now solve that question" in msgs[-1]["content"]:
                return self._solution(rng)
            return f"Question: {self._question(rng, kps)}\nSolution: {self._solution(rng)}"
        fate = h % 1000
        if fate < 30:
            return f"Here is a problem: {self._question(rng, kps)} {self._solution(rng)}"
        if fate < 40:
            cut = f"Question: {self._question(rng, kps)}\nSolution: {self._words(rng, 50, 80)}"
            return {"content": cut, "finish_reason": "length"}
        if fate < 50:
            return f"Question: {self._question(rng, kps)}"
        if fate < 70:  # a near-duplicate of one of 500 base questions
            base = random.Random((h // 1000) % 500).choices(self.vocab, k=40)
            base[rng.randrange(len(base))] = rng.choice(self.vocab)
            return f"Question: {' '.join(base)}?\nSolution: {self._solution(rng)}"
        if fate < 72:  # a span of a test question inside new text
            t = rng.choice(self.tests).split()
            a = rng.randrange(len(t) - 14)
            q = f"{self._words(rng, 5, 10)} {' '.join(t[a : a + 15])} {self._words(rng, 5, 10)}?"
            return f"Question: {q}\nSolution: {self._solution(rng)}"
        return f"Question: {self._question(rng, kps)}\nSolution: {self._solution(rng)}"


def write_params(path: Path, size: int, work: Path, base_url: str) -> Path:
    text = f"""run_name: scale
seed: 0
outputs_dir: {work}
stages: ["02", "03", "04"]
llm:
  model: gpt-3.5-turbo
  base_url: {base_url}
  backend: batch
  price_prompt_per_1m: 0.5
  price_completion_per_1m: 1.5
  batch: {{poll_s: 0, max_bytes_per_job: 50000000}}   # the fake takes uploads up to 64 MiB
compose: {{n_compositions: {size}, epochs: 5000}}
generate: {{n_questions: null, shard_size: 5000}}
finetune: {{base_model: {TOKENIZER_MODEL}, prompt_format: alpaca, max_length: 2048, eval_holdout: 64}}
"""
    path.write_text(text)
    return path


# ---- the steps, each in its own process ---------------------------------------------------------------------------


def _inputs(P):
    from mathscale_utils.method import generate as gen

    seeds, comps = gen.load_inputs(P.run)
    return seeds, gen.select_compositions(comps, P.generate), gen.FewShotIndex(seeds)


def step_walk(P) -> dict:
    from mathscale_utils.core.io import read_jsonl
    from mathscale_utils.method import compose
    from mathscale_utils.method import graph as cg

    t0 = time.perf_counter()
    G = cg.build_graph(read_jsonl(P.run.concepts), P.graph)
    t1, c1 = time.perf_counter(), time.process_time()
    comps = compose.compose(G, P.compose, seed=P.seed)
    t2 = time.perf_counter()
    compose.write_compositions(comps, P.run)
    t3 = time.perf_counter()
    return {
        "build_graph_s": round(t1 - t0, 2),
        "compose_s": round(t2 - t1, 2),
        "write_s": round(t3 - t2, 2),
        "walk_and_write_s": round(t3 - t1, 2),
        "walk_and_write_cpu_s": round(time.process_time() - c1, 2),
        "compositions": len(comps),
        "file_mib": round(P.run.compositions.stat().st_size / 2**20, 1),
    }


def step_requests(P) -> dict:
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.method import generate as gen

    seeds, comps, index = _inputs(P)
    cfg = P.llm.model_copy(update={"batch": P.llm.batch.model_copy(update={"max_wait_s": 0})})
    t0 = time.perf_counter()
    with LLM.for_stage(P, STAGE03, cfg, progress=False) as llm:
        llm.prefetch(gen.first_requests([comps], index, P.generate, P.seed), "first requests")
    files = list((P.run.batches / STAGE03).glob("requests-*.jsonl"))
    jobs = len(files)
    return {
        "submit_s": round(time.perf_counter() - t0, 2),
        "requests": len(comps),
        "jobs": jobs,
        "request_files_mib": round(sum(f.stat().st_size for f in files) / 2**20, 1),
    }


def step_collect(P) -> dict:
    from mathscale_utils.inference.llm import LLM

    with LLM.for_stage(P, STAGE03, progress=False) as llm:
        done = llm.prefetch([], "collect")
    cache = P.llm_cache_dir / "llm_cache.jsonl"
    return {"done": done, "cache_mib": round(cache.stat().st_size / 2**20, 1)}


def step_retries(P) -> dict:
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.method import generate as gen

    seeds, comps, index = _inputs(P)
    n = 0

    def counted(requests):
        nonlocal n
        for r in requests:
            n += 1
            yield r

    with LLM.for_stage(P, STAGE03, progress=False) as llm:
        done = llm.prefetch(counted(gen.retry_requests([comps], index, llm, P.generate, P.seed)), "retries")
    return {"retries": n, "done": done}


def step_parse(P) -> dict:
    from collections import Counter

    from mathscale_utils.core.io import read_json, write_json
    from mathscale_utils.inference.llm import LLM
    from mathscale_utils.method import generate as gen

    seeds, comps, index = _inputs(P)
    # the Batch API work is done (the steps before did what generate_shards' _prefetch does): say so in the
    # manifest, as a run that did them itself would have, so the shard loop runs as it would in that run
    man = P.run.generation_manifest
    if man.exists():
        m = read_json(man)
        write_json(man, {**m, "batch_collected": m["fingerprints"]})
    with LLM.for_stage(P, STAGE03, progress=False) as llm:
        raw = gen.generate_shards(P.run, comps, index, llm, P.generate, P.seed, log=lambda s: None)
        usage = llm.usage()
    status = Counter(r["status"] for r in raw)
    return {"rows": len(raw), "status": dict(status), "new_requests": usage.get("requests", 0)}


def _usable(P):
    """(id, question) of every usable raw row, read from the shards."""
    from mathscale_utils.method import generate as gen

    for r in gen.load_raw(P.run):
        if r["status"] == "ok":
            yield f"gen-{r['composition_id']}", r["question"]


def _blocks(it, n: int = 20_000):
    block = []
    for x in it:
        block.append(x)
        if len(block) == n:
            yield block
            block = []
    if block:
        yield block


def step_decontaminate(P) -> dict:
    from mathscale_utils.method.decontamination import Decontaminator, load_test_questions
    from mathscale_utils.method.text_hashing import Words

    items, _ = load_test_questions(P.data_dir)
    dec = Decontaminator(items, P.generate.ngram)
    n, hits, busy, cpu = 0, [], 0.0, 0.0
    for block in _blocks(_usable(P)):
        t0, c0 = time.perf_counter(), time.process_time()
        words = Words.of_questions([q for _, q in block])
        hits += dec.check_words(words, [q for _, q in block], [g for g, _ in block])
        busy, cpu = busy + time.perf_counter() - t0, cpu + time.process_time() - c0
        n += len(block)
    (P.run.root / "bench_decontaminated.json").write_text(json.dumps([h["id"] for h in hits]))
    return _rate(n, busy, cpu) | {"removed": len(hits)}


def _rate(n: int, busy: float, cpu: float) -> dict:
    """Questions through a filter: per second of its wall time, and per second of its CPU time (which a busy
    shared machine inflates less)."""
    return {
        "questions": n,
        "filter_s": round(busy, 2),
        "filter_cpu_s": round(cpu, 2),
        "questions_per_s": round(n / busy),
        "questions_per_cpu_s": round(n / cpu),
    }


def step_dedup(P) -> dict:
    from mathscale_utils.method.near_duplicates import NearDuplicates
    from mathscale_utils.method.text_hashing import Words

    cfg = P.generate
    bad = set(json.loads((P.run.root / "bench_decontaminated.json").read_text()))
    nd = NearDuplicates(cfg.dedup_threshold, cfg.num_perm, cfg.dedup_shingle)
    n, dups, busy, cpu = 0, 0, 0.0, 0.0
    for block in _blocks((g, q) for g, q in _usable(P) if g not in bad):
        t0, c0 = time.perf_counter(), time.process_time()
        dups += len(nd.add(Words.of_questions([q for _, q in block]), [g for g, _ in block]))
        busy, cpu = busy + time.perf_counter() - t0, cpu + time.process_time() - c0
        n += len(block)
    return _rate(n, busy, cpu) | {"removed": dups}


def step_assemble(P) -> dict:
    from mathscale_utils.method import dataset_card, filters
    from mathscale_utils.method import generate as gen

    cfg = P.generate
    seeds, comps, index = _inputs(P)
    items, notes = filters.load_test_questions(P.data_dir, cfg.decontam_official_file, cfg.decontam_datasets)
    raw = gen.load_raw(P.run)
    t0 = time.perf_counter()
    asm = filters.filter_and_assemble(
        raw, seeds, cfg, P.llm.model, items, notes, None, n_compositions=len(comps)
    )
    t1 = time.perf_counter()
    no_hf = cfg.model_copy(update={"export_hf": False})  # the Hugging Face copy is the next step
    summary = dataset_card.export(P.run, asm, no_hf, P.llm, seeds, P.seed, None, None, asm.extra)
    return {
        "filter_s": round(t1 - t0, 2),
        "export_s": round(time.perf_counter() - t1, 2),
        "inner_s": asm.extra["filter_seconds"],
        "funnel": summary["funnel"],
        "rows": summary["counts"]["total_rows"],
        "mathscaleqa_mib": round(P.run.mathscaleqa.stat().st_size / 2**20, 1),
    }


def step_hf_export(P) -> dict:
    from mathscale_utils.core.io import iter_jsonl
    from mathscale_utils.method.dataset_card import export_hf

    export_hf((r for _, r in iter_jsonl(P.run.mathscaleqa)), P.run.mathscaleqa_hf)
    size = sum(f.stat().st_size for f in P.run.mathscaleqa_hf.iterdir())
    return {"hf_mib": round(size / 2**20, 1)}


def step_tokenize(P) -> dict:
    from mathscale_utils.core.io import sha256_file
    from mathscale_utils.training import examples as tex
    from mathscale_utils.training.finetune import load_tokenizer

    cfg = P.finetune
    tok = load_tokenizer(cfg)
    path = tex.train_file(cfg, P.run.root)
    cache = P.run.root / "tokenized"  # not the user's datasets cache: the bench starts cold and cleans up
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    ts = tex.training_set(cfg, path, sha256_file(path), tok, cache)
    dt = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return {
        "examples": ts.n_examples,
        "truncated": ts.n_truncated,
        "tokenize_s": round(dt, 2),
        "examples_per_s": round(ts.n_examples / dt),
        "arrow_mib": round(size / 2**20, 1),
    }


# ---- orchestration ------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class _AnonPeak:
    """The largest RssAnon seen, sampled every 50 ms: the step's private memory, without the pages of files it
    maps (a memory-mapped Arrow file counts in VmHWM as far as it was read, though the kernel may drop those pages
    at any time).

    A step's peak_rss_mib is VmHWM of its own address space. Not wait4's ru_maxrss: at exec Linux folds the forking
    parent's peak into the child's, so every step would report at least this orchestrator's."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _status_kib("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _status_kib("RssAnon"))


def run_step(name: str, params: Path, report: Path) -> dict:
    """One step in a child process: wall seconds, CPU seconds (wait4), peak RSS and private memory (the child's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--stage", name, "--params", str(params), "--report", str(report)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed (exit {proc.returncode})")
    return {
        "seconds": round(wall, 2),
        "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **json.loads(report.read_text()),
    }


def run_size(size: int, work: Path, keep: bool, log) -> dict:
    from mathscale_utils.core.io import write_jsonl
    from mathscale_utils.core.params import load_params
    from mathscale_utils.method.filters import load_test_questions

    from fake_batch import FakeBatchAPI

    data_dir = Path(os.environ["MATHSCALE_DATA_DIR"]) if os.environ.get("MATHSCALE_DATA_DIR") else None
    d = work / str(size)
    shutil.rmtree(d, ignore_errors=True)
    (d / "fake").mkdir(parents=True)
    vocab = vocabulary(data_dir)
    tests = [t.question for t in load_test_questions(data_dir)[0]] if data_dir else []
    teacher = Teacher(vocab, tests)
    stages: dict[str, dict] = {}
    with FakeBatchAPI(answer=teacher, store=d / "fake") as fake:
        params = write_params(d / "params.yaml", size, d, fake.base_url)
        P = load_params(params)
        write_jsonl(P.run.concepts, synthetic_seeds(20_000, vocab))
        for name in STAGES:
            fake.hold = name == "requests"  # submitted only; collect finds them finished
            stages[name] = run_step(name, params, d / f"{name}.json")
            s = stages[name]
            log(
                f"{size:>9,} {name:<14} {s['seconds']:>8.1f} s {s['cpu_seconds']:>8.1f} cpu-s "
                f"{s['peak_rss_mib']:>7.0f} MiB ({s['peak_anon_mib']:.0f} private)"
            )
        calls = dict(fake.calls)
    total = sum(s["seconds"] for n, s in stages.items() if n not in MEASURED_ALONE)
    if not keep:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "stages": stages,
        "total_seconds": round(total, 1),
        "total_cpu_seconds": round(
            sum(s["cpu_seconds"] for n, s in stages.items() if n not in MEASURED_ALONE), 1
        ),
        "teacher_replies": teacher.answered,
        "batch_api_calls": calls,
    }


def checks(sizes: dict) -> dict:
    """The targets, where the sizes they need were run."""
    out: dict = {}
    big, mid = sizes.get("2000000"), sizes.get("200000")
    if big:
        st = big["stages"]
        out["max_peak_rss_mib_at_2m"] = max(s["peak_rss_mib"] for s in st.values())
        out["every_stage_within_4gib"] = (
            out["max_peak_rss_mib_at_2m"] <= TARGETS["peak_rss_mib_per_stage_at_2m"]
        )
        out["total_within_90_min"] = big["total_seconds"] <= TARGETS["total_seconds_at_2m"]
        out["walk_and_write_s"] = st["walk"]["walk_and_write_s"]
        out["walk_and_write_cpu_s"] = st["walk"].get("walk_and_write_cpu_s")
        out["total_cpu_seconds_at_2m"] = big["total_cpu_seconds"]
        out["walk_and_write_within_10_s"] = (
            st["walk"]["walk_and_write_s"] < TARGETS["walk_and_write_seconds_at_2m"]
        )
        for f in ("decontaminate", "dedup"):
            out[f"{f}_questions_per_cpu_s"] = st[f].get("questions_per_cpu_s")
            out[f"{f}_questions_per_s"] = st[f]["questions_per_s"]
            out[f"{f}_at_least_20k_per_s"] = (
                st[f]["questions_per_s"] >= TARGETS["filter_questions_per_s_at_2m"]
            )
    for key, what in (("peak_rss_mib", "rss"), ("peak_anon_mib", "private")):
        if big and mid and all(key in s for v in (big, mid) for s in v["stages"].values()):
            growth = {n: round(big["stages"][n][key] / mid["stages"][n][key], 2) for n in STAGES}
            out[f"{what}_growth_200k_to_2m"] = growth
            out[f"streaming_stages_{what}_within_1_5x"] = all(
                growth[n] <= TARGETS["streaming_growth_200k_to_2m"] for n in STREAMING
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    ap.add_argument("--work", default="/tmp/bench_scale", help="scratch folder (the 2M run needs ~25 GB)")
    ap.add_argument("--keep", action="store_true", help="keep each size's files")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:  # a child: one step
        from mathscale_utils.core.params import load_params

        anon = _AnonPeak()
        out = globals()[f"step_{a.stage}"](load_params(a.params))
        out["peak_rss_mib"] = round(_status_kib("VmHWM") / 1024, 1)
        out["peak_anon_mib"] = round(anon.stop() / 1024, 1)
        Path(a.report).write_text(json.dumps(out))
        return
    from mathscale_utils.core.io import write_json

    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    sizes = results.get("sizes", {})
    for size in a.sizes:
        sizes[str(size)] = run_size(size, Path(a.work), a.keep, lambda s: print(s, flush=True))
        sizes[str(size)]["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        sizes[str(size)]["commit"] = commit.stdout.strip()
        results = {
            "sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
            "targets": TARGETS,
            "checks": checks(sizes),
            "machine": {
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "note": "a shared machine: see load_average_1m per step; cpu_seconds is less sensitive to it",
            },
        }
        write_json(out, results)
    print_table(results)
    print(f"wrote {out}")


def print_table(results: dict) -> None:
    sizes = list(results["sizes"])
    print(f"{'stage':<14}" + "".join(f"{int(s):>24,}" for s in sizes))
    for name in STAGES:
        cells = []
        for s in sizes:
            st = results["sizes"][s]["stages"].get(name)
            cells.append(f"{st['seconds']:>10.1f} s {st['peak_rss_mib']:>7.0f} MiB" if st else " " * 24)
        print(f"{name:<14}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'total':<14}" + "".join(f"{results['sizes'][s]['total_seconds']:>22.1f} s" for s in sizes))
    for k, v in results["checks"].items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
