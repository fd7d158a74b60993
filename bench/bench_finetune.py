"""Benchmark: LoRA fine-tuning speed on CPU (fp32, r=16, all linear layers, batch 4) for the embedded students.

Each model trains a few real steps through `finetune.train` in its own process (so peak RSS is per model), on
GSM8K train questions in the chat format (solutions rewritten to end in "The answer is N"), or on synthetic
arithmetic when the shared data folder is absent. Step time is the median of the logged steps after the first.
Each model trains twice, side by side: with the logits of predicted positions only (`response`: what
finetune.train does, see examples.ResponseLogits) and with every position's logits and the model's own loss (`full`:
the former way); the losses must agree.

    .venv/bin/python bench/bench_finetune.py [--models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct] [--steps 4]

Writes bench/results/finetune.json and prints a table. The machine is shared: numbers are ballpark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathscale_utils.core.io import read_json, read_jsonl, write_json, write_jsonl  # noqa: E402


def bench_rows(n: int = 64) -> tuple[list[dict], str]:
    data = (
        Path(os.environ.get("MATHSCALE_DATA_DIR") or ROOT.parent / "shared" / "data")
        / "gsm8k"
        / "train.jsonl"
    )
    if data.exists():
        rows = []
        for i, r in enumerate(read_jsonl(data)[:n]):
            body, ans = r["answer"].split("####")
            sol = re.sub(r"<<[^>]*>>", "", body).strip() + f"\nThe answer is {ans.strip()}"
            rows.append(
                {"id": f"gsm8k-{i}", "question": r["question"], "solution": sol, "answer": ans.strip()}
            )
        return rows, "gsm8k train"
    rows = [
        {
            "id": f"syn-{i}",
            "question": f"What is {i} + {2 * i}?",
            "solution": f"{i} + {2 * i} = {3 * i}. The answer is {3 * i}",
            "answer": str(3 * i),
        }
        for i in range(n)
    ]
    return rows, "synthetic"


CHILD = """
import json, sys
import mathscale_utils.training.finetune as ft
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.training.finetune import train
if sys.argv[3] == "full":  # the former way: every position's logits, the model's own loss
    make = ft.make_collator
    ft.make_collator = lambda cfg, pad_id: make(cfg, pad_id).collate
    ft.response_loss = None
cfg = FinetuneConfig(**json.loads(sys.argv[1]))
card = train(cfg, sys.argv[2], resume=False)
print(json.dumps({k: card[k] for k in ("steps", "wall_time_s", "tokens_seen", "tokens_per_s", "peak_memory_gib")}))
"""


def run_one(model: str, steps: int, rows: list[dict], logits: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "mathscaleqa.jsonl", rows)
        cfg = {
            "base_model": model,
            "max_steps": steps,
            "save_steps": 10_000,
            "eval_holdout": 0,
            "per_device_batch": 4,
            "grad_accum": 1,
        }
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cfg), tmp, logits],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{model}: training failed\n{proc.stderr[-3000:]}")
        card = json.loads(proc.stdout.strip().splitlines()[-1])
        log = read_jsonl(Path(tmp) / "finetune" / "loss.jsonl")
    dts = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(log, log[1:], strict=False)]
    dtok = [b["tokens"] - a["tokens"] for a, b in zip(log, log[1:], strict=False)]
    step_s = statistics.median(dts) if dts else card["wall_time_s"] / max(card["steps"], 1)
    return {
        "model": model,
        "logits": logits,
        "steps": card["steps"],
        "s_per_step": round(step_s, 2),
        "steps_per_s": round(1 / step_s, 4),
        "tokens_per_step": round(statistics.mean(dtok), 1) if dtok else None,
        "tokens_per_s": round(sum(dtok) / sum(dts), 1) if dts else card["tokens_per_s"],
        "peak_rss_gib": card["peak_memory_gib"],
        "process_wall_s": round(time.time() - t0, 1),
        "losses": [round(r["loss"], 4) for r in log],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    rows, source = bench_rows()
    results = [run_one(m, a.steps, rows, logits) for m in a.models for logits in ("response", "full")]
    pairs = {m: [r for r in results if r["model"] == m] for m in a.models}
    agree = {
        m: all(abs(x - y) <= 1e-3 * max(abs(y), 1) for x, y in zip(r["losses"], f["losses"], strict=True))
        for m, (r, f) in pairs.items()
    }
    speedup = {m: round(f["s_per_step"] / r["s_per_step"], 3) for m, (r, f) in pairs.items()}
    out = {
        "losses_agree": agree,
        "speedup_response_over_full": speedup,
        "what": "fp32 LoRA r=16 all-linear, batch 4 (no accumulation), max_length 512, adamw_torch, CPU, chat format",
        "data": source,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "results": results,
    }
    path = ROOT / "bench" / "results" / "finetune.json"
    old = read_json(path) if path.exists() else None
    write_json(path, out)
    print(f"{'model':32s} {'logits':>8s} {'s/step':>7s} {'tok/step':>9s} {'tok/s':>7s} {'peak RSS GiB':>13s}")
    for r in results:
        print(
            f"{r['model']:32s} {r['logits']:>8s} {r['s_per_step']:7.2f} {r['tokens_per_step'] or 0:9.1f} {r['tokens_per_s']:7.1f} {r['peak_rss_gib']:13.2f}"
        )
    print(f"speed-up of response-only logits: {speedup}; losses agree: {agree}")
    print(f"wrote {path}" + (" (replacing the previous results)" if old else ""))


if __name__ == "__main__":
    main()
