"""Client throughput of mathscale_utils.inference.llm.LLM next to bare aiohttp, side by side in one run (not part of the tests).

The shared harness (../shared/tools/throughput, or --tools) provides a loopback OpenAI-compatible server with a
fixed latency and optional 429/500 faults, a bare-aiohttp client (the ceiling: no retries, no cache, no SDK) and
project_client_probe.py, which drives LLM.chat_many from this checkout. Every repeat runs each row once, in turn,
against the same two servers (clean, and 10% faults), so that the load other work puts on the shared cores hits all
rows alike; the ratio ours / bare aiohttp is taken within each repeat, then the median and the spread (min-max).

    .venv/bin/python bench/bench_client.py [--repeats 3] [--baseline /path/to/other/checkout]

fraction of limit = completed requests / wall / (concurrency / latency). With faults, "lost" is requests that
never completed and "paid twice" is prompts the server answered more than once. Cache: the probe's second pass
(a new client on the full cache, per request) and single cached chat() calls here. --baseline adds the rows of
another checkout's client (e.g. the main branch, before this work). Writes bench/results/client.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import write_json  # noqa: E402
from mathscale_utils.core.llm_config import LLMConfig  # noqa: E402
from mathscale_utils.inference.chat import ChatRequest  # noqa: E402
from mathscale_utils.inference.llm import LLM  # noqa: E402

TOOLS = ROOT.parent / "shared" / "tools" / "throughput"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The harness's fake_openai_server.py in a child process."""

    def __init__(self, tools: Path, latency_ms: float, fail_rate: float):
        self.port = free_port()
        cmd = [sys.executable, str(tools / "fake_openai_server.py"), "--port", str(self.port)]
        cmd += ["--latency-ms", str(latency_ms), "--fail-rate", str(fail_rate), "--seed", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"fake server on port {self.port} did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_tool(args: list[str], cwd: Path, pythonpath: Path | None) -> dict:
    """One harness run in its own process -> its result record."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else dict(os.environ)
        cmd = [sys.executable, *args, "--out", out.name]
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def cached_chat_ms(n: int = 2000, calls: int = 2000) -> float:
    """Median time of one cached chat() on a cache of n answers (no server: answers put in the cache)."""
    cfg = LLMConfig(model="fake-model", base_url="http://127.0.0.1:9/v1")
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(n)]
    with tempfile.TemporaryDirectory() as d, LLM(cfg, Path(d), "bench", progress=False) as llm:
        for r in reqs:
            llm.cache.put(r.key(llm.model_id), llm.cfg.model, "cached answer", 10, 5, "stop")
        times = []
        for r in reqs[:calls]:
            t0 = time.perf_counter()
            assert llm.chat(r).cached
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def spread(xs: list[float]) -> dict:
    return {
        "median": round(statistics.median(xs), 3),
        "min": round(min(xs), 3),
        "max": round(max(xs), 3),
        "runs": [round(x, 3) for x in xs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--fail-rate", type=float, default=0.1)
    ap.add_argument("--tools", type=Path, default=TOOLS, help="the shared throughput harness")
    ap.add_argument(
        "--baseline", type=Path, default=None, help="another checkout whose client runs alongside"
    )
    ap.add_argument(
        "--openai", action="store_true", help="add the openai SDK row (AsyncOpenAI, aiohttp transport)"
    )
    a = ap.parse_args()
    if not (a.tools / "project_client_probe.py").exists():
        sys.exit(f"bench_client: the throughput harness is not at {a.tools} (give --tools)")
    common = ["-n", str(a.n), "-c", str(a.concurrency), "--latency-ms", str(a.latency_ms)]
    probe, client = str(a.tools / "project_client_probe.py"), str(a.tools / "throughput_openai_client.py")
    clean, faulty = Server(a.tools, a.latency_ms, 0.0), Server(a.tools, a.latency_ms, a.fail_rate)
    rows: list[tuple[str, list[str], Path, Path | None]] = [
        (
            "bare aiohttp (ceiling)",
            [client, "--base-url", clean.base_url, "--engine", "aiohttp", *common],
            ROOT,
            None,
        ),
        ("ours", [probe, "--base-url", clean.base_url, *common], ROOT, ROOT),
        (
            "ours, faults",
            [probe, "--base-url", faulty.base_url, "--fail-rate", str(a.fail_rate), *common],
            ROOT,
            ROOT,
        ),
    ]
    if a.openai:
        rows.append(
            (
                "openai SDK (aiohttp transport)",
                [client, "--base-url", clean.base_url, "--engine", "openai_aiohttp", *common],
                ROOT,
                None,
            )
        )
    if a.baseline:
        b = a.baseline.resolve()
        rows += [
            ("baseline", [probe, "--base-url", clean.base_url, *common], b, b),
            (
                "baseline, faults",
                [probe, "--base-url", faulty.base_url, "--fail-rate", str(a.fail_rate), *common],
                b,
                b,
            ),
        ]
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {label: [] for label, *_ in rows}
    try:
        for r in range(a.repeats):
            for label, args, cwd, pypath in rows:
                rec = run_tool(args, cwd, pypath)
                runs[label].append(rec)
                print(
                    f"repeat {r + 1}: {label}: {rec['fraction_of_limit']:.3f} of the limit, "
                    f"{rec['completed']}/{rec['n']} completed",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        clean.close()
        faulty.close()
    bare = [x["fraction_of_limit"] for x in runs["bare aiohttp (ceiling)"]]
    table = {}
    for label, recs in runs.items():
        fr = [x["fraction_of_limit"] for x in recs]
        table[label] = {
            "fraction_of_limit": spread(fr),
            "ratio_to_bare_aiohttp": spread([f / b for f, b in zip(fr, bare, strict=True)]),
            "client_cpu_ms_per_request": spread([x["client_cpu_ms_per_req"] for x in recs]),
            "lost": max(x["n"] - x["completed"] for x in recs),
            "paid_twice": max((x.get("server_by_status") or {}).get("200", 0) - x["completed"] for x in recs),
            "retries": spread([x["retries"] or 0 for x in recs]),
            "cached_pass_ms_per_request": spread([x["cached_pass_ms_per_request"] for x in recs])
            if "cached_pass_ms_per_request" in recs[0]
            else None,
            "errors": [x.get("errors") for x in recs],
        }
    out = {
        "what": "fraction of the limit (concurrency / latency) reached; ratios to bare aiohttp within each repeat",
        "n": a.n,
        "concurrency": a.concurrency,
        "latency_ms": a.latency_ms,
        "fail_rate": a.fail_rate,
        "repeats": a.repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "cached_chat_ms_single": round(cached_chat_ms(), 4),
        "rows": table,
        "raw": runs,
    }
    write_json(ROOT / "bench" / "results" / "client.json", out)
    print(
        f"\n{a.n} requests, concurrency {a.concurrency}, {a.latency_ms:g} ms per request (limit "
        f"{a.concurrency / a.latency_ms * 1e3:g}/s), faults {a.fail_rate:.0%} 429/500; median of {a.repeats} "
        f"repeats (min-max); {os.cpu_count()} CPUs, load {load_before[0]:.1f} before, {out['load_avg_after'][0]:.1f} "
        "after.\n"
    )
    print(
        "| row | fraction of limit | / bare aiohttp, same repeat | client CPU ms/req | lost | paid twice | "
        "cache pass ms/req |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, t in table.items():
        f, q, c = t["fraction_of_limit"], t["ratio_to_bare_aiohttp"], t["client_cpu_ms_per_request"]
        cache = t["cached_pass_ms_per_request"]
        print(
            f"| {label} | {f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}) | {q['median']:.3f} ({q['min']:.3f}-"
            f"{q['max']:.3f}) | {c['median']:.2f} | {t['lost']} | {t['paid_twice']} | "
            f"{cache['median'] if cache else '-'} |"
        )
    print(f"\nSingle cached chat(): {out['cached_chat_ms_single']} ms (median of 2,000).")


if __name__ == "__main__":
    main()
