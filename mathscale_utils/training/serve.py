"""Serving the student (stage 04 -> 05): the LoRA adapter in llama.cpp's form, the server stage 05 starts for the
student and what identifies it, and the before/after answers of the held-out questions, all through the project's
one LLM client.

On CPU the student is the embedded GGUF base with ``adapter/adapter.gguf`` (llama.cpp's ``convert_lora_to_gguf.py``
turns the peft adapter into it, against the materialised base's config), served by the embedded llama.cpp server,
about ten times faster than transformers. On a GPU box the student is served by vLLM, the way it was trained
(``serving_plan``, recorded in the training card): a QLoRA adapter on the base quantized to 4-bit NF4 as it loads, in
training's compute dtype.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mathscale_utils.core.artifacts import stage
from mathscale_utils.core.io import DataError, read_json, read_jsonl, sha256_file, write_jsonl
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.params import Params
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.core.templates import alpaca_prompt
from mathscale_utils.inference.chat import ChatRequest
from mathscale_utils.inference.llm import LLM
from mathscale_utils.inference.server import LocalServer, ServerProcess
from mathscale_utils.inference.weights import REGISTRY, base_path, ensure_model
from mathscale_utils.training.examples import split_rows, train_file

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
            f"{script} missing; run once: python -m mathscale_utils.training.serve setup-converter"
        )
    out = Path(out) if out else Path(adapter_dir) / "adapter.gguf"
    part = out.with_name(out.name + ".part")  # renamed when whole: an adapter.gguf that exists is complete
    args = ["--base", base_path(base_model), "--outfile", str(part), "--outtype", "f32", str(adapter_dir)]
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if res.returncode != 0 or not part.exists():
        raise RuntimeError(f"convert_lora_to_gguf.py failed ({res.returncode}):\n{res.stderr[-3000:]}")
    part.replace(out)
    return out


# in adapter/, next to the weights but not part of them
CARD_FILES = ("training_card.json", "training_card.md")


def serving_plan(cfg: FinetuneConfig) -> dict:
    """How the student trained with cfg is served so that it computes what it computed in training; stage 04 writes
    it into the training card ("serving") and stage 05 starts the server from it.

    - qlora: the adapter, unmerged, on the base quantized to 4-bit NF4 with double quantization as vLLM loads it
      (`--quantization bitsandbytes`: vLLM's in-flight quantization is bitsandbytes' quantize_4bit, nf4, with
      compressed statistics, the same call on the same bf16 weights as transformers' BitsAndBytesConfig in
      finetune.load_base). Merging was the other way; it is not taken: peft's merge into a 4-bit layer quantizes the
      merged weight again (the adapter's update is lost to 4-bit rounding), and a merge into a bf16 copy of the
      dequantized base is GPU-only code and 14 GB more on disk for a 7B model, to serve the same function.
    - lora: the adapter, unmerged, on the base in the compute dtype (on CPU with an embedded base: llama.cpp with
      adapter.gguf on the GGUF file the training weights were dequantized from).
    - full: the saved model directory.

    The dtype is training's compute dtype: bfloat16 with bf16 (a full fine-tune's fp32 master weights would be
    served in fp16 by vLLM's "auto"), else float32."""
    dtype = "bfloat16" if cfg.bf16 else "float32"
    if cfg.method == "full":
        how = f"the whole fine-tuned model, served by vLLM in {dtype} (training's compute dtype)"
        return {"engine": "vllm", "weights": "model", "quantization": None, "dtype": dtype, "how": how}
    if cfg.method == "qlora":
        how = (
            "the LoRA adapter, not merged, on the base quantized to 4-bit NF4 (double quantization) as it loads, "
            f"as in training: vLLM --quantization bitsandbytes --dtype {dtype}"
        )
        return {
            "engine": "vllm",
            "weights": "adapter",
            "quantization": "bitsandbytes",
            "dtype": dtype,
            "how": how,
        }
    if cfg.base_model in REGISTRY:
        how = "the LoRA adapter as adapter.gguf on the embedded GGUF base the training weights came from (llama.cpp)"
        return {"engine": "llama_cpp", "weights": "adapter", "quantization": None, "dtype": None, "how": how}
    how = f"the LoRA adapter, not merged, on the base in {dtype} (training's compute dtype): vLLM --dtype {dtype}"
    return {"engine": "vllm", "weights": "adapter", "quantization": None, "dtype": dtype, "how": how}


def trained_serving(P: Params) -> dict:
    """The serving plan stage 04 recorded in the training card, else the one of the finetune section."""
    try:
        card = read_json(P.run.training_card) if P.run.training_card.exists() else {}
    except DataError:
        card = {}
    return card.get("serving") or serving_plan(P.finetune)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay (a 7B model is 14-28 GB)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def student_id(P: Params) -> str | None:
    """What stage 04 trained, for cache keys and prediction rows: the base and a content hash of the trained weights
    (the peft adapter, else the GGUF adapter; for a full fine-tune every file of the saved model directory but the
    training card), the same however it is served; None when there is no trained student. A later student,
    retrained, is then never answered from the cache."""
    run, base = P.run, P.finetune.base_model
    weights = sorted(run.adapter.glob("adapter_model*.safetensors")) or sorted(run.adapter.glob("*.gguf"))
    if weights:
        h = hashlib.sha256()
        for w in weights:
            h.update(w.read_bytes())
        return f"{base}+lora:{h.hexdigest()[:16]}"
    if not (run.adapter / "config.json").exists() or (run.adapter / "adapter_config.json").exists():
        return None
    files = sorted(
        f
        for f in run.adapter.iterdir()
        if f.is_file() and f.name not in CARD_FILES and not f.name.startswith(".")
    )
    if not any(f.suffix in (".safetensors", ".bin") for f in files):
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
    return f"{base}+full:{h.hexdigest()[:16]}"


def request_kind(P: Params, student: bool) -> str:
    """chat or completion for stage 05's requests (see EvalConfig.request)."""
    if P.evaluate.request != "auto":
        return P.evaluate.request
    return "completion" if student and P.finetune.prompt_format == "alpaca" else "chat"


def serve_mode(P: Params, sid: str | None) -> str:
    """Who serves the student in stage 05: evaluate.serve, with "auto" resolved to llama_cpp when stage 04 planned
    llama.cpp for it and wrote adapter.gguf (and no evaluate.model names a server of yours), else to off."""
    ev = P.evaluate
    if ev.serve != "auto":
        return ev.serve
    as_trained = bool(sid) and trained_serving(P).get("engine") == "llama_cpp"
    return "llama_cpp" if as_trained and not ev.model and P.run.adapter_gguf.exists() else "off"


def vllm_base_args(P: Params) -> list[str]:
    """`vllm serve` arguments for the untrained base as the student's base is served: 4-bit NF4 for a QLoRA
    student, training's dtype."""
    plan = trained_serving(P)
    quant = ["--quantization", plan["quantization"]] if plan.get("quantization") else []
    dtype = ["--dtype", plan["dtype"]] if plan.get("dtype") else []
    return [base_path(P.finetune.base_model), *quant, *dtype]


@contextmanager
def serving(P: Params) -> Iterator[tuple[LLMConfig, str]]:
    """The model stage 05 asks, as an llm section, and a line saying why; a student server this starts (llama.cpp's
    server with the GGUF base and adapter.gguf, or `vllm serve` with the LoRA or the full model) runs on 127.0.0.1
    for the length of the block and is stopped after it (evaluate.serve):

    - evaluate.model: that model at evaluate.base_url (a server you run), keyed by the trained student when
      stage 04 made one, so that another student behind the same name is asked again;
    - else the trained student, served here;
    - else the llm section's model itself (evaluating the teacher). A trained adapter that cannot be served here
      is an error rather than a silent evaluation of the teacher."""
    ev, run = P.evaluate, P.run
    sid = student_id(P) if ev.use_adapter else None
    plan = trained_serving(P) if sid else {}
    mode = serve_mode(P, sid)
    plain = {"lora_path": None, "backend": "chat", "identity": None}
    if mode == "off":
        if ev.model:
            where = ev.base_url or P.llm.base_url or "the embedded server"
            identity = f"{ev.model}@{where}" + (f"|{sid}" if sid else "")
            update = {**plain, "model": ev.model, "identity": identity}
            if ev.base_url:
                update["base_url"] = ev.base_url
            how = f"; stage 04's student is meant to be served as {plan['how']}" if sid else ""
            yield P.llm.model_copy(update=update), f"evaluate.model = {ev.model} at {where}{how}"
            return
        if sid:
            raise ValueError(
                f"stage 04 trained a student ({run.adapter}) that this stage cannot serve: set evaluate.serve: vllm "
                "(on a GPU box), or serve it yourself and set evaluate.model and evaluate.base_url, or set "
                "evaluate.use_adapter: false to evaluate the llm section's model"
            )
        yield P.llm, f"the llm section's model {P.llm.model} (no trained student in {run.adapter})"
        return
    if not sid:
        raise ValueError(f"evaluate.serve: {mode} needs a student trained by stage 04 in {run.adapter}")
    if mode == "llama_cpp":
        _check_llama_cpp(plan)
    server = _student_server(P, mode)
    try:
        server.start()
        update = {
            **plain,
            "model": "student",
            "base_url": server.base_url,
            "identity": f"{sid}@{mode}",
            "concurrency": server.parallel,
        }
        yield (
            P.llm.model_copy(update=update),
            f"the fine-tuned student {sid}, served by {mode} at {server.base_url}: "
            + (plan["how"] if mode == plan["engine"] else f"not the engine stage 04 planned ({plan['how']})"),
        )
    finally:
        server.stop()


def _check_llama_cpp(plan: dict) -> None:
    """llama.cpp serves an adapter on the GGUF base; refuse an adapter trained on another base (a 4-bit one)."""
    if plan.get("quantization"):
        raise ValueError(
            f"this student is {plan['how']}; llama.cpp would serve its adapter on the GGUF base, not the base it was "
            "trained on: set evaluate.serve: vllm (on a GPU box), or train with finetune.method: lora"
        )


def vllm_args(P: Params) -> list[str]:
    """`vllm serve` arguments for the trained student as it was trained (trained_serving): the model directory of a
    full fine-tune (no adapter_config.json in it), or the base with the LoRA as module "student" (4-bit NF4 for
    QLoRA), in training's dtype."""
    run, ft, plan = P.run, P.finetune, trained_serving(P)
    dtype = ["--dtype", plan["dtype"]] if plan.get("dtype") else []
    if not (run.adapter / "adapter_config.json").exists():
        return [str(run.adapter), "--served-model-name", "student", *dtype]
    lora = ["--enable-lora", "--max-lora-rank", str(ft.lora_r), "--lora-modules", f"student={run.adapter}"]
    return [*vllm_base_args(P), *lora]


def _student_server(P: Params, mode: str):
    """llama.cpp's server with the GGUF base and adapter.gguf, or vLLM with the LoRA (or the full model)."""
    run, ft = P.run, P.finetune
    log = run.root / "student_server.log"
    if mode == "llama_cpp":
        if not run.adapter_gguf.exists():
            raise ValueError(f"evaluate.serve: llama_cpp needs {run.adapter_gguf} (an embedded base model)")
        gguf = ensure_model(ft.base_model)
        return LocalServer(
            gguf, "student", P.llm.n_ctx, P.llm.n_threads, run.adapter_gguf, log, parallel=P.llm.concurrency
        )
    return CommandServer([*P.evaluate.vllm_command, *vllm_args(P)], log, P.evaluate.server_startup_s)


class CommandServer(ServerProcess):
    """A server started as `command --host 127.0.0.1 --port N` (vLLM's form), ready when /v1/models answers."""

    name = "student server"
    parallel = 64  # requests in flight: vLLM batches what it is sent

    def __init__(self, command: list[str], log_path: Path, startup_s: float):
        super().__init__(log_path, startup_s, CommandServer.parallel)
        self.base_command = command

    def command(self) -> list[str]:
        return [*self.base_command, "--host", "127.0.0.1", "--port", str(self.port)]


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
    client (cached, counted): the GGUF base without, then with, adapter/adapter.gguf, exactly as stage 05 asks. An
    adapter trained on another base than the GGUF one (QLoRA's 4-bit base) is refused rather than misrepresented."""
    cfg, run = P.finetune, P.run
    _check_llama_cpp(trained_serving(P))
    _, held = split_rows(read_jsonl(train_file(cfg, run.root)), cfg)
    held = held[: n or cfg.eval_holdout]
    reqs = [answer_request(r["question"], cfg.prompt_format, cfg.max_new_tokens) for r in held]
    base_cfg = LLMConfig(
        model=cfg.base_model, concurrency=P.llm.concurrency, n_ctx=P.llm.n_ctx, n_threads=P.llm.n_threads
    )
    answers, errors = [], []
    for lora in (None, run.adapter_gguf):
        student = base_cfg.model_copy(update={"lora_path": lora and str(lora)})
        with LLM.for_stage(P, stage("04").label, student) as llm:
            results = llm.chat_many(reqs)
        answers.append([(r.text or f"(request failed: {r.error})").strip() for r in results])
        errors.append([r.error for r in results])
    out = [
        {
            "id": r.get("id"),
            "question": r["question"],
            "reference": r.get("answer"),
            "base": b,
            "tuned": t,
            "errors": [e for e in es if e],
        }
        for r, b, t, *es in zip(held, *answers, *errors, strict=True)
    ]
    write_jsonl(run.before_after, out)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mathscale_utils.training.serve")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "setup-converter", help="fetch llama.cpp's convert_lora_to_gguf.py (llama-cpp-python sdist)"
    )
    a = ap.parse_args()
    print(setup_converter())
