"""Aggregate throughput of the embedded servers at 1, 2 and 4 concurrent requests (not part of the tests).

llama-cpp-python's Python server (one request at a time; it reuses the previous prompt's prefix) against
llama.cpp's own llama-server (one slot per concurrent request, continuous batching), the latter also with its prompt
cache off (``cache_prompt: false``, on the shapes whose prompts share a long prefix), side by side in one run: at
each level all servers are up at once and answer the same requests cell by cell, in rotating order, so that the
machine's load (it is shared) falls on all of them alike. The requests are the quickstart's
(params/quickstart.yaml): stage 01's extraction (JSON-schema constrained), stage 03's generation with two few-shot
seeds, both on the teacher, and stage 05's evaluation prompt (Alpaca template, greedy, stop strings) on the
student's base model. Within a repeat the requests of a cell are distinct (no answer can come from a cache); tokens
are the servers' usage counts. Writes bench/results/server.json after every cell (medians and min-max over the
repeats, the paired speed-up against the Python server, and the share of prompt tokens llama-server took from its
cache).

    .venv/bin/python bench/bench_server.py [--repeats 3] [--levels 1 2 4] [--servers python cpp cpp-nocache]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils import concepts  # noqa: E402
from mathscale_utils.core.io import read_json, write_json  # noqa: E402
from mathscale_utils.core.params import load_params  # noqa: E402
from mathscale_utils.core.templates import fill_template  # noqa: E402
from mathscale_utils.data.seeds import load_seeds  # noqa: E402
from mathscale_utils.evaluation.mwpbench import select_records  # noqa: E402
from mathscale_utils.inference.chat import ChatRequest, request_body  # noqa: E402
from mathscale_utils.inference.llama_build import llama_dir, server_binary  # noqa: E402
from mathscale_utils.inference.server import LocalServer  # noqa: E402
from mathscale_utils.inference.weights import ensure_model  # noqa: E402
from mathscale_utils.method.generate import build_prompt  # noqa: E402
from mathscale_utils.method.reply_format import parse_generation  # noqa: E402

SHAPES = ("extract", "generate", "evaluate")
NOCACHE_SHAPES = ("extract", "evaluate")  # cpp-nocache runs where prompts share a long prefix; generation is
# dominated by decoding (and, under load, a no-cache run of it took most of an hour)
# compositions in the form stage 02 writes them; the few-shot seeds are the built-in seed questions
TOPICS = [
    ["Ratio and proportion"],
    ["Percentages", "Money"],
    ["Geometry"],
    ["Algebra"],
    ["Rates"],
    ["Fractions"],
]
KPS = [
    ["Setting up a proportion", "Cross multiplication"],
    ["Converting percentages to decimals", "Computing a discount"],
    ["Area of a rectangle", "Perimeter of a rectangle"],
    ["Solving a linear equation", "Translating words into equations"],
    ["Distance equals speed times time", "Unit conversion"],
    ["Adding fractions with unlike denominators", "Simplifying fractions"],
]


FIXED_TOKENS = {
    "extract": 48,
    "generate": 128,
    "evaluate": 96,
}  # --fixed: replies of exactly this many tokens


def fixed_work(reqs: list[ChatRequest], shape: str) -> list[ChatRequest]:
    """The same prompts with a reply of exactly FIXED_TOKENS[shape] tokens (no grammar, no stop string; the end
    of turn is banned in run_cell): every server does the same work, in cells short enough to repeat often."""
    return [replace(r, max_tokens=FIXED_TOKENS[shape], response_format=None, stop=None) for r in reqs]


def requests_for(shape: str, n: int, offset: int, P, seeds, items) -> list[ChatRequest]:
    """n distinct requests of one quickstart shape, starting at item `offset` (cycling through the pool)."""
    out = []
    for k in range(offset, offset + n):
        if shape == "extract":
            out.append(concepts.build_request(seeds[k % len(seeds)].question, P.extract))
        elif shape == "generate":
            comp = {"topics": TOPICS[k % len(TOPICS)], "knowledge_points": KPS[(k // len(TOPICS)) % len(KPS)]}
            shots = [seeds[(2 * k) % len(seeds)].to_dict(), seeds[(2 * k + 1) % len(seeds)].to_dict()]
            out.append(
                ChatRequest(
                    messages=[{"role": "user", "content": build_prompt(comp, shots)}],
                    temperature=P.generate.temperature,
                    max_tokens=P.generate.max_tokens,
                    seed=k,
                )
            )
        else:
            q = items[k % len(items)].question
            out.append(
                ChatRequest(
                    messages=[{"role": "user", "content": fill_template(P.evaluate.template, q)}],
                    temperature=0.0,
                    max_tokens=P.evaluate.max_tokens,
                    stop=list(P.evaluate.stop) if P.evaluate.stop else None,
                )
            )
    return out


def usable(shape: str, text: str | None, P) -> bool:
    """The reply is what the stage can use: parsed concepts, a parsed question + solution, an answer line."""
    if not text:
        return False
    if shape == "extract":
        try:
            concepts.parse_reply(text, P.extract)
            return True
        except ValueError:
            return False
    if shape == "generate":
        return parse_generation(text, "stop").ok
    return "answer is" in text.lower() or "\\boxed" in text


class PythonServer:
    """llama-cpp-python's server as the project ran it before (python -m llama_cpp.server, same arguments)."""

    def __init__(self, model: Path, alias: str, n_ctx: int, log: Path):
        self.model, self.alias, self.n_ctx, self.log, self.proc = model, alias, n_ctx, log, None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> PythonServer:
        from mathscale_utils.inference.server import _free_port

        self.port = _free_port()
        args = ["--model", str(self.model), "--model_alias", self.alias, "--host", "127.0.0.1", "--port"]
        args += [str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(os.cpu_count() or 1)]
        # behind the project's watchdog, so that a stopped bench leaves no server running
        watchdog = [
            sys.executable,
            "-m",
            "mathscale_utils.inference.server",
            "--parent-pid",
            str(os.getpid()),
            "--",
        ]
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [*watchdog, sys.executable, "-m", "llama_cpp.server", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"python server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("python server not ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


async def run_cell(
    base_url: str, alias: str, reqs: list[ChatRequest], c: int, cache_prompt: bool, ban: list[int] = ()
) -> dict:
    """Send reqs with at most c in flight (the token ids in `ban` never generated); wall time, tokens, replies."""
    sem = asyncio.Semaphore(c)
    out: list[dict] = [{}] * len(reqs)

    async def one(i: int, req: ChatRequest, session: aiohttp.ClientSession) -> None:
        body = request_body(req, alias, "llama_cpp")
        if not cache_prompt:
            body["cache_prompt"] = False  # llama-server's per-request switch (the Python server ignores it)
        if ban:  # OpenAI's logit_bias, which both servers take
            body["logit_bias"] = {str(t): -100 for t in ban}
        async with sem:
            t0 = time.perf_counter()
            async with session.post(f"{base_url}{req.path}", json=body) as r:
                data = await r.json()
                lat = time.perf_counter() - t0
        if "choices" not in data:
            out[i] = {"error": str(data)[:300], "latency_s": lat}
            return
        u = data.get("usage") or {}
        text = data["choices"][0].get("message", {}).get("content")
        pt, ct = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)  # llama-server: prefix reused
        out[i] = {
            "text": text,
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "cached": cached,
            "latency_s": lat,
        }

    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, r, session) for i, r in enumerate(reqs)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "replies": out}


def summarize(shape: str, cell: dict, P) -> dict:
    rows = cell["replies"]
    ok = [r for r in rows if "text" in r]
    ct = sum(r["completion_tokens"] for r in ok)
    return {
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "wall_s": round(cell["wall_s"], 2),
        "completion_tokens": ct,
        "tok_s": round(ct / cell["wall_s"], 2),
        "req_s": round(len(ok) / cell["wall_s"], 4),
        "mean_latency_s": round(statistics.mean(r["latency_s"] for r in rows), 2),
        "prompt_tokens": [r["prompt_tokens"] for r in ok],
        "cached_prompt_tokens": sum(r["cached"] for r in ok),
        "usable": sum(usable(shape, r.get("text"), P) for r in ok),
    }


def summary_rows(raw: dict[str, list[dict]], model_of: dict[str, str]) -> list[dict]:
    """One row per server, shape and level: medians and min-max over the repeats, and the paired speed-up against
    the Python server (same requests, same repeat: tokens/s ratio, then its median)."""
    rows = []
    for key, reps in raw.items():
        variant, shape, c = key.split("|")
        ref = raw.get(f"python|{shape}|{c}", [])
        ratios = [r["tok_s"] / p["tok_s"] for r, p in zip(reps, ref, strict=False) if p["tok_s"]]
        tok, req = [r["tok_s"] for r in reps], [r["req_s"] for r in reps]
        rows.append(
            {
                "server": variant,
                "shape": shape,
                "model": model_of[shape],
                "concurrency": int(c),
                "requests_per_repeat": reps[0]["n"],
                "tok_s_median": round(statistics.median(tok), 2),
                "tok_s_min": min(tok),
                "tok_s_max": max(tok),
                "req_s_median": round(statistics.median(req), 4),
                "vs_python_median": round(statistics.median(ratios), 2) if ratios else None,
                "vs_python_per_repeat": [round(x, 2) for x in ratios],
                "usable": f"{sum(r['usable'] for r in reps)}/{sum(r['n'] for r in reps)}",
                "errors": sum(r["errors"] for r in reps),
                "mean_prompt_tokens": round(statistics.mean(t for r in reps for t in r["prompt_tokens"]), 1),
                "prompt_tokens_from_cache": round(
                    sum(r["cached_prompt_tokens"] for r in reps)
                    / max(1, sum(sum(r["prompt_tokens"]) for r in reps)),
                    3,
                ),
                "repeats": reps,
            }
        )
    return rows


def end_tokens(model: Path) -> list[int]:
    """The ids of the model's end-of-text / end-of-turn tokens (banned in --fixed cells)."""
    import gguf

    r = gguf.GGUFReader(model)
    tokens = r.fields["tokenizer.ggml.tokens"]
    names = {bytes(tokens.parts[i]).decode(errors="replace"): n for n, i in enumerate(tokens.data)}
    ids = {names[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>") if t in names}
    eos = r.fields.get("tokenizer.ggml.eos_token_id")
    return sorted(ids | ({int(eos.parts[eos.data[0]][0])} if eos else set()))


def start(kind: str, model: Path, alias: str, n_ctx: int, c: int, log: Path):
    """A started server of one kind, and its start-up time (launch to ready)."""
    t0 = time.perf_counter()
    if kind == "python":
        srv = PythonServer(model, alias, n_ctx, log).start()
    else:
        srv = LocalServer(model, alias, n_ctx=n_ctx, log_path=log, parallel=c).start()
    return srv, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="requests per cell: rounds x concurrency")
    ap.add_argument(
        "--fixed", action="store_true", help="replies of a fixed length (FIXED_TOKENS): same work"
    )
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--servers", nargs="+", default=["python", "cpp", "cpp-nocache"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--params", default=str(ROOT / "params" / "quickstart.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "server.json"))
    args = ap.parse_args()
    if "python" in args.servers and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: no Python-server rows", file=sys.stderr)
        args.servers.remove("python")
    P = load_params(args.params, check_files=False)
    seeds, _ = load_seeds(P.extract.seeds, P.data_dir)
    try:
        items, _ = select_records(P.evaluate, P.data_dir, P.seed)
    except Exception as e:  # no shared data: the seed questions have the same shape
        print(f"no MWPBench items ({e}); evaluating seed questions", file=sys.stderr)
        items = seeds
    teacher, student = P.llm.model, P.finetune.base_model
    model_of = {"extract": teacher, "generate": teacher, "evaluate": student}
    n_for = {c: args.rounds * c for c in args.levels}
    logs = Path(tempfile.mkdtemp(prefix="bench_server."))
    raw: dict[str, list[dict]] = {}
    starts: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    per_rep = sum(n_for.values())
    turn = 0
    for rep in range(args.repeats):
        for name in sorted({model_of[s] for s in args.shapes}, key=[teacher, student].index):
            shapes = [s for s in args.shapes if model_of[s] == name]
            path = ensure_model(name)
            ban = end_tokens(path) if args.fixed else []
            offset = rep * per_rep  # each repeat asks other questions; each server the same ones
            for c in args.levels:
                # every server is up at once (fresh ones for each level): cell by cell, in rotating order, so
                # that a change of the machine's load falls on all of them alike
                servers = {}
                try:
                    for variant in args.servers:
                        kind = variant.split("-")[0]
                        log = logs / f"{variant}.{name}.log"
                        servers[variant], startup = start(kind, path, name, P.llm.n_ctx, c, log)
                        starts.setdefault(f"{kind} {name}", []).append(startup)
                    for shape in shapes:
                        reqs = requests_for(shape, n_for[c], offset, P, seeds, items)
                        reqs = fixed_work(reqs, shape) if args.fixed else reqs
                        order = [v for v in args.servers if v != "cpp-nocache" or shape in NOCACHE_SHAPES]
                        turn += 1
                        for variant in order[turn % len(order) :] + order[: turn % len(order)]:
                            url, cache = servers[variant].base_url, variant != "cpp-nocache"
                            cell = asyncio.run(run_cell(url, name, reqs, c, cache, ban))
                            row = summarize(shape, cell, P)
                            key = f"{variant}|{shape}|{c}"
                            raw.setdefault(key, []).append(row)
                            print(
                                f"rep {rep} {key:28s} {row['tok_s']:6.1f} tok/s {row['req_s']:.3f} req/s "
                                f"usable {row['usable']}/{row['n']} err {row['errors']} "
                                f"load {os.getloadavg()[0]:.1f}",
                                flush=True,
                            )
                            write_results(args, raw, starts, model_of, load_before, rep)
                finally:
                    for srv in servers.values():
                        srv.stop()
                offset += n_for[c]
        write_results(args, raw, starts, model_of, load_before, rep + 1)
    rows = summary_rows(raw, model_of)
    print("\n| server | shape | c | tok/s median (min-max) | req/s | x python (median of repeats) | usable |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['shape']} | {r['concurrency']} | {r['tok_s_median']} ({r['tok_s_min']}-"
            f"{r['tok_s_max']}) | {r['req_s_median']} | {r['vs_python_median']} | {r['usable']} |"
        )


def write_results(args, raw: dict, starts: dict, model_of: dict, load_before: tuple, done: int) -> list[dict]:
    """bench/results/server.json (rewritten after every repeat, so that a stopped run keeps what it measured)."""
    try:
        build = read_json(llama_dir() / "build-info.json")
    except OSError:
        build = {"binary": str(server_binary())}
    rows = summary_rows(raw, model_of)
    doc = {
        "params": str(Path(args.params).resolve().relative_to(ROOT)),
        "repeats_done": done,
        "rounds": args.rounds,
        "fixed_tokens": FIXED_TOKENS if args.fixed else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "llama_server_build": build,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "startup_s": {k: [round(x, 2) for x in v] for k, v in starts.items()},
        "cpp_nocache_shapes": list(NOCACHE_SHAPES),
        "rows": rows,
    }
    write_json(Path(args.out), doc)
    return rows


if __name__ == "__main__":
    main()
