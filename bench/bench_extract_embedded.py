"""Extraction throughput of the embedded default teacher on this machine (seeds per minute).

    python bench/bench_extract_embedded.py [--model qwen2.5-coder-1.5b-instruct] [--n 20]

Uses a fresh cache directory so every call is real; server start-up is timed separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mathscale_utils.core.io import write_json
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import SeedsConfig
from mathscale_utils.data.seeds import load_seeds
from mathscale_utils.inference.chat import ChatRequest
from mathscale_utils.inference.llm import LLM
from mathscale_utils.method import concepts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    seeds, _ = load_seeds(SeedsConfig(source="builtin", limit=args.n), Path("."))
    cfg = concepts.ExtractConfig()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LLM(LLMConfig(model=args.model, concurrency=1), Path(tmp), "bench") as llm,
    ):
        t0 = time.perf_counter()
        llm.chat(ChatRequest(messages=[{"role": "user", "content": "Say OK."}], max_tokens=2))
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = concepts.extract(seeds, llm, cfg)
        wall = time.perf_counter() - t0
        usage = llm.usage()
    ok = sum(1 for e in out if not e.error)
    result = {
        "model": args.model,
        "seeds": len(seeds),
        "ok": ok,
        "server_start_and_first_call_s": round(startup, 2),
        "wall_s": round(wall, 2),
        "seeds_per_minute": round(60 * len(seeds) / wall, 2),
        "s_per_seed": round(wall / len(seeds), 2),
        "completion_tokens": usage[
            "completion_tokens"
        ],  # llm.usage(): this session's counters at the top level
    }
    print(
        "| "
        + " | ".join(result)
        + " |\n|"
        + "---|" * len(result)
        + "\n| "
        + " | ".join(map(str, result.values()))
        + " |"
    )
    write_json(Path(__file__).parent / "results" / "extract_embedded.json", result)


if __name__ == "__main__":
    main()
