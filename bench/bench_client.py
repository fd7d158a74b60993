"""Client throughput of mathscale_utils.llm.LLM against the loopback fake server (not part of the tests).

The fake server (tests/fake_openai.py) runs in its own process with a fixed latency, so what limits throughput is
the client's CPU: fraction = achieved requests/s / (concurrency / latency). A bare-aiohttp row measures the
ceiling of the machine at the time of the run (the machine may be shared). Writes bench/results/client.json.

    .venv/bin/python bench/bench_client.py [--repeats 3] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.chat import ChatRequest  # noqa: E402
from mathscale_utils.io import write_json  # noqa: E402
from mathscale_utils.llm import LLM  # noqa: E402
from mathscale_utils.params import LLMConfig  # noqa: E402

SYSTEM = (
    "You are a math teacher. Read the math question below and list the topics and knowledge points needed to "
    'solve it. Reply with a JSON object {"topics": [...], "knowledge_points": [...]}; topics are short '
    '"Area - Subarea" labels.'
)
QUESTION = (
    "Question {i}: A baker sells {a} loaves of bread in the morning and {b} loaves in the afternoon. Each loaf "
    "costs ${c}. In the evening she sells half as many loaves as in the morning. How much money does she make?"
)


def prompts(n: int, tag: str) -> list[ChatRequest]:
    """n distinct extraction-shaped requests (system prompt + one question, JSON mode)."""
    return [
        ChatRequest(
            messages=[
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": QUESTION.format(i=f"{tag}-{i}", a=20 + i % 50, b=7 + i % 13, c=2 + i % 5),
                },
            ],
            max_tokens=256,
            response_format={"type": "json_object"},
        )
        for i in range(n)
    ]


class Server:
    """tests/fake_openai.py in a child process."""

    def __init__(self, latency: float, fault_rate: float = 0.0):
        cmd = [
            sys.executable,
            str(ROOT / "tests" / "fake_openai.py"),
            "--latency",
            str(latency),
            "--json-reply",
        ]
        cmd += ["--fault-rate", str(fault_rate)] if fault_rate else []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats") as r:
            return json.load(r)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def summary(n: int, concurrency: int, latency: float, wall: float, cpu: float, **extra) -> dict:
    rps, limit = n / wall, concurrency / latency
    return {
        "n": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "rps": round(rps, 1),
        "limit_rps": round(limit, 1),
        "fraction": round(rps / limit, 3),
        "client_cpu_ms_per_request": round(cpu / n * 1e3, 3),
        **extra,
    }


def run_bare(n: int, concurrency: int, latency: float, **_: object) -> dict:
    """The ceiling reference: bare aiohttp POSTs, no retries, no cache, no SDK."""
    server = Server(latency)
    reqs = prompts(n, f"bare-{time.time_ns()}")

    async def go() -> None:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(r: ChatRequest) -> dict:
                async with sem:
                    body = {"model": "fake", "messages": r.messages, "max_tokens": r.max_tokens}
                    async with session.post(f"{server.base_url}/chat/completions", json=body) as resp:
                        return await resp.json()

            await asyncio.gather(*(one(r) for r in reqs))

    try:
        t0, c0 = time.perf_counter(), time.process_time()
        asyncio.run(go())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        server.close()
    return summary(n, concurrency, latency, wall, cpu, lost=0, attempts=n)


def run_llm(
    n: int,
    concurrency: int,
    latency: float,
    fault_rate: float = 0.0,
    max_retries: int = 8,
    warm: bool = False,
) -> dict:
    """LLM.chat_many on n fresh prompts (empty cache), then the same prompts again (all cached).

    The timed batch includes the client's start-up (~0.2 s: SSL context, connections) unless `warm`, where
    one untimed batch of other prompts runs first on the same LLM, as later shards of a stage would."""
    server = Server(latency, fault_rate)
    try:
        cfg = LLMConfig(
            model="fake",
            base_url=server.base_url,
            concurrency=concurrency,
            max_retries=max_retries,
            retry_initial_s=0.05,
        )
        with tempfile.TemporaryDirectory() as d, LLM(cfg, Path(d), "bench") as llm:
            reqs = prompts(n, f"c{concurrency}-f{fault_rate}-{time.time_ns()}")
            if warm:
                llm.chat_many(prompts(concurrency, f"warm-{time.time_ns()}"), desc="warm-up")
            t0, c0 = time.perf_counter(), time.process_time()
            results = llm.chat_many(reqs, desc=f"c={concurrency}")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            t1 = time.perf_counter()
            again = llm.chat_many(reqs)
            cached_batch_ms = (time.perf_counter() - t1) / n * 1e3
            t2 = time.perf_counter()
            for r in reqs[:200]:
                llm.chat(r)
            cached_single_ms = (time.perf_counter() - t2) / min(n, 200) * 1e3
            attempts = llm.usage()["attempts"] - (concurrency if warm else 0)
        stats = server.stats()
    finally:
        server.close()
    lost = sum(r.error is not None for r in results)
    return summary(
        n,
        concurrency,
        latency,
        wall,
        cpu,
        fault_rate=fault_rate,
        lost=lost,
        attempts=attempts,
        all_cached_again=all(r.cached for r in again),
        server=stats,
        cached_ms_per_item_batch=round(cached_batch_ms, 4),
        cached_ms_per_single_chat=round(cached_single_ms, 4),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    ap.add_argument("--max-retries", type=int, default=8, help="attempts per request in total (LLMConfig)")
    a = ap.parse_args()
    rows_spec = [  # (label, runner, n, concurrency, fault_rate, warm)
        ("bare aiohttp, c=64 (ceiling reference)", run_bare, 2000, 64, 0.0, False),
        ("LLM c=1 (50 requests)", run_llm, 50, 1, 0.0, False),
        ("LLM c=8 (400 requests)", run_llm, 400, 8, 0.0, False),
        ("LLM c=64 (client start-up included)", run_llm, 2000, 64, 0.0, False),
        ("LLM c=64, warm client", run_llm, 2000, 64, 0.0, True),
        ("LLM c=64, 10% 429/500 injected", run_llm, 2000, 64, 0.1, False),
    ]
    load_before = os.getloadavg()
    rows = []
    for label, runner, n, c, f, warm in rows_spec:
        kw = {"fault_rate": f, "max_retries": a.max_retries, "warm": warm}
        runs = [runner(n, c, a.latency, **kw) for _ in range(a.repeats)]
        med = sorted(runs, key=lambda r: r["fraction"])[len(runs) // 2]
        fractions = [r["fraction"] for r in runs]
        rows.append({"label": label, **med, "fractions": fractions, "lost_max": max(r["lost"] for r in runs)})
        print(f"{label}: fractions {fractions}", file=sys.stderr, flush=True)
    llm_rows = [r for r in rows if "cached_ms_per_item_batch" in r]
    out = {
        "latency_s": a.latency,
        "max_retries": a.max_retries,
        "repeats": a.repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "cached_ms_per_item_batch": statistics.median(r["cached_ms_per_item_batch"] for r in llm_rows),
        "cached_ms_per_single_chat": statistics.median(r["cached_ms_per_single_chat"] for r in llm_rows),
        "rows": rows,
    }
    write_json(ROOT / "bench" / "results" / "client.json", out)
    print(
        f"\nFake server: {a.latency * 1e3:g} ms per request, own process. Median of {a.repeats} runs; "
        f"max_retries={a.max_retries}; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{out['load_avg_after'][0]:.1f} after.\n"
    )
    print(
        "| run | requests | req/s | limit | fraction of limit (each run) | client CPU ms/req | attempts | lost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fr = ", ".join(f"{x:.2f}" for x in r["fractions"])
        cells = [r["label"], r["n"], r["rps"], r["limit_rps"], f"**{r['fraction']:.2f}** ({fr})"]
        cells += [r["client_cpu_ms_per_request"], r["attempts"], r["lost_max"]]
        print("| " + " | ".join(str(x) for x in cells) + " |")
    print(
        f"\nCached call: {out['cached_ms_per_item_batch']:.4f} ms per request in a cached batch, "
        f"{out['cached_ms_per_single_chat']:.4f} ms per single cached chat()."
    )


if __name__ == "__main__":
    main()
