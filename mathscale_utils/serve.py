"""Serving the student (stage 04 -> 05): the LoRA adapter in llama.cpp's form, which model stage 05 asks, and the
before/after answers of the held-out questions, all through the project's one LLM client.

On CPU the student is the embedded GGUF base with ``adapter/adapter.gguf`` (llama.cpp's ``convert_lora_to_gguf.py``
turns the peft adapter into it, against the materialised base's config), served by the embedded llama.cpp server,
about ten times faster than transformers. On a GPU box the adapter is served by vLLM (``evaluate.model`` and
``evaluate.base_url``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mathscale_utils.artifacts import stage
from mathscale_utils.chat import ChatRequest
from mathscale_utils.finetune import alpaca_prompt, split_rows, train_file
from mathscale_utils.io import read_jsonl, write_jsonl
from mathscale_utils.llm import LLM
from mathscale_utils.models import REGISTRY, base_path
from mathscale_utils.params import LLMConfig, Params

LLAMA_CPP_VERSION = "0.3.36"
CONVERTER_DIR = Path.home() / ".cache" / "mathscale" / f"llama_cpp_convert-{LLAMA_CPP_VERSION}"


def can_convert(base_model: str) -> bool:
    """The LoRA GGUF needs an embedded base model and llama.cpp's converter (serve.setup_converter, once)."""
    return base_model in REGISTRY and (CONVERTER_DIR / "convert_lora_to_gguf.py").exists()


def setup_converter(version: str = LLAMA_CPP_VERSION, dest: Path = CONVERTER_DIR) -> Path:
    """Fetch the llama-cpp-python sdist from PyPI once and keep llama.cpp's LoRA converter (with its gguf-py and
    conversion/ package) in dest. Returns the path of convert_lora_to_gguf.py."""
    script = dest / "convert_lora_to_gguf.py"
    if script.exists():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python"]
        pip += ["-d", tmp]  # --no-binary :all: would compile the sdist's build requirements too (minutes)
        subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name[: -len('.tar.gz')]}/vendor/llama.cpp/"
        keep = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "gguf-py/", "conversion/", "LICENSE")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.removeprefix(prefix).startswith(keep)]
            for m in members:
                m.name = m.name[len(prefix) :]
            tf.extractall(staging, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return script


def convert_adapter_to_gguf(adapter_dir: str | Path, base_model: str, out: str | Path | None = None) -> Path:
    """adapter/adapter.gguf from the peft adapter, against the materialised base's config (llama.cpp's script)."""
    script = CONVERTER_DIR / "convert_lora_to_gguf.py"
    if not script.exists():
        raise FileNotFoundError(
            f"{script} missing; run once: python -m mathscale_utils.serve setup-converter"
        )
    out = Path(out) if out else Path(adapter_dir) / "adapter.gguf"
    args = ["--base", base_path(base_model), "--outfile", str(out), "--outtype", "f32", str(adapter_dir)]
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"convert_lora_to_gguf.py failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return out


def student_llm(P: Params) -> tuple[LLMConfig, str]:
    """Which model stage 05 asks, as an llm section, and a line saying why.

    1. `evaluate.model` names one: that model, no adapter, at `evaluate.base_url` when given (e.g. vLLM serving the
       student with its LoRA), else at llm.base_url.
    2. Else, with `evaluate.use_adapter` and the LoRA GGUF that stage 04 wrote (run_dir/adapter/adapter.gguf): the
       student, `finetune.base_model` on the embedded server with that adapter.
    3. Else the llm section's model itself (evaluating the teacher, or any endpoint model). A peft adapter without
       its llama.cpp form (a GPU run) is an error here rather than a silent evaluation of the teacher.
    """
    cfg = P.evaluate
    if cfg.model:
        update = {"model": cfg.model, "lora_path": None, "backend": "chat"}
        if cfg.base_url:
            update["base_url"] = cfg.base_url
        where = f" at {cfg.base_url}" if cfg.base_url else ""
        return P.llm.model_copy(update=update), f"evaluate.model = {cfg.model}{where}"
    adapter = P.run.adapter_gguf
    if cfg.use_adapter and not adapter.exists() and (adapter.parent / "adapter_config.json").exists():
        raise ValueError(
            f"stage 04 wrote a LoRA adapter ({adapter.parent}) but no llama.cpp form of it, so the embedded server "
            "cannot serve the student: serve it (e.g. vllm serve BASE --enable-lora --lora-modules "
            f"student={adapter.parent}) and set evaluate.model: student and evaluate.base_url, or set "
            "evaluate.use_adapter: false to evaluate the llm section's model"
        )
    if cfg.use_adapter and adapter.exists():
        student = P.finetune.base_model
        update = {
            "model": student,
            "base_url": None,
            "lora_path": str(adapter),
            "backend": "chat",
        }
        return P.llm.model_copy(update=update), f"the fine-tuned student: {student} + LoRA {adapter}"
    return P.llm, f"the llm section's model {P.llm.model} (no adapter found at {adapter})"


def answer_request(question: str, fmt: str, max_tokens: int) -> ChatRequest:
    """The held-out question as the student was trained on it: the filled Alpaca template as one user message
    ("chat"), or the bare template as a text completion ("alpaca"); greedy."""
    prompt = alpaca_prompt(question)
    if fmt == "alpaca":
        return ChatRequest(prompt=prompt, temperature=0.0, max_tokens=max_tokens)
    return ChatRequest(messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=max_tokens)


def compare(P: Params, n: int | None = None) -> list[dict]:
    """Before/after on held-out questions: {"id", "question", "reference", "base", "tuned"} per question, also
    written to finetune/before_after.jsonl. Both answers come from the embedded llama.cpp server through the LLM
    client (cached, counted): the GGUF base without, then with, adapter/adapter.gguf, exactly as stage 05 asks."""
    cfg, run = P.finetune, P.run
    _, held = split_rows(read_jsonl(train_file(cfg, run.root)), cfg)
    held = held[: n or cfg.eval_holdout]
    reqs = [answer_request(r["question"], cfg.prompt_format, cfg.max_new_tokens) for r in held]
    base_cfg = LLMConfig(
        model=cfg.base_model, concurrency=P.llm.concurrency, n_ctx=P.llm.n_ctx, n_threads=P.llm.n_threads
    )
    answers = []
    for lora in (None, run.adapter_gguf):
        with LLM.for_stage(
            P, stage("04").label, base_cfg.model_copy(update={"lora_path": lora and str(lora)})
        ) as llm:
            answers.append([(r.text or f"(request failed: {r.error})").strip() for r in llm.chat_many(reqs)])
    out = [{"id": r.get("id"), "question": r["question"], "reference": r.get("answer"), "base": b, "tuned": t}
           for r, b, t in zip(held, *answers, strict=True)]  # fmt: skip
    write_jsonl(run.before_after, out)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mathscale_utils.serve")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "setup-converter", help="fetch llama.cpp's convert_lora_to_gguf.py (llama-cpp-python sdist)"
    )
    a = ap.parse_args()
    print(setup_converter())
