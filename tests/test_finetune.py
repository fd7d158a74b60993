"""Stage 04: data format and masking, packing without cross-attention, real LoRA / full steps on the 135M embedded
model, resume, adapter, LoRA GGUF, and training as two `accelerate launch` DDP ranks on CPU (gloo)."""

from __future__ import annotations

import os
import shutil
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from mathscale_utils.core.io import read_json, read_jsonl, write_jsonl
from mathscale_utils.core.templates import alpaca_prompt
from mathscale_utils.training import examples as tex
from mathscale_utils.training import finetune as ft
from mathscale_utils.training import launch

SMALL = "smollm2-135m-instruct"
ROWS = [  # a tiny repeated dataset: the loss must go down
    {
        "id": "a",
        "question": "Sam has 3 apples and buys 4 more. How many apples does he have?",
        "solution": "Sam has 3 + 4 = 7 apples. The answer is 7",
        "answer": "7",
    },
    {
        "id": "b",
        "question": "A box holds 5 pens. How many pens are in 2 boxes?",
        "solution": "2 boxes hold 2 * 5 = 10 pens. The answer is 10",
        "answer": "10",
    },
]


def _model_ready() -> str | None:
    from mathscale_utils.inference.weights import ModelError, ensure_model

    try:
        ensure_model(SMALL)
    except ModelError as e:
        return str(e)
    return None


_why = _model_ready()
needs_model = pytest.mark.skipif(_why is not None, reason=f"embedded model missing: {_why}")


def _cfg(**kw) -> ft.FinetuneConfig:
    base = dict(
        base_model=SMALL,
        per_device_batch=2,
        grad_accum=1,
        max_steps=6,
        save_steps=3,
        lr=2e-3,
        lora_dropout=0.0,
        eval_holdout=2,
        max_new_tokens=12,
        max_length=128,
    )
    return ft.FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tok():
    if _why:
        pytest.skip(_why)
    return ft.load_tokenizer(_cfg())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real 6-step LoRA run on the 135M model (checkpoints at steps 3 and 6)."""
    if _why:
        pytest.skip(_why)
    run_dir = tmp_path_factory.mktemp("ft") / "run"
    write_jsonl(run_dir / "mathscaleqa.jsonl", [dict(r, id=f"{r['id']}{i}") for i in range(8) for r in ROWS])
    cfg = _cfg()
    return cfg, run_dir, ft.train(cfg, run_dir)


# ---- data format (tokenizer only) ---------------------------------------------------------------------------------


def test_alpaca_prompt_is_the_evaluation_template():
    p = alpaca_prompt("What is 1+1?")
    assert p == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhat is 1+1?\n\n### Response:"
    )
    try:
        from mathscale_utils.core.templates import fill_template
    except ImportError:
        return
    assert fill_template("alpaca", "What is 1+1?") == p


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_prompt_tokens_are_masked(tok, fmt):
    q, s = ROWS[0]["question"], ROWS[0]["solution"]
    ex = tex.encode_example(tok, q, s, 512, fmt)
    prompt_ids = tok(tex.render_prompt(tok, q, fmt), add_special_tokens=fmt == "alpaca")["input_ids"]
    n = len(prompt_ids)
    assert ex["input_ids"][:n] == prompt_ids  # exactly what the evaluator sends
    assert ex["labels"][:n] == [-100] * n
    assert -100 not in ex["labels"][n:]
    assert ex["labels"][n:] == ex["input_ids"][n:] and ex["labels"][-1] == tok.eos_token_id
    response = tok.decode(ex["labels"][n:-1])
    assert response == (" " + s if fmt == "alpaca" else s)
    if fmt == "alpaca":
        assert tok.decode(prompt_ids).endswith("### Response:")
    else:
        assert alpaca_prompt(q) in tok.decode(prompt_ids)


def test_truncation_keeps_the_prompt(tok):
    ex = tex.encode_example(tok, "Q?", "word " * 400, 64, "alpaca")
    assert len(ex["input_ids"]) == len(ex["labels"]) == 64
    assert ex["labels"][0] == -100 and ex["labels"][-1] != -100


def test_collator_pads_with_masked_labels():
    batch = tex.PadCollator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_split_rows_holds_out_and_caps():
    rows = [{"id": i, "question": f"q{i}", "solution": f"s{i}"} for i in range(20)] + [
        {"id": "x", "question": ""}
    ]
    train, held = tex.split_rows(rows, ft.FinetuneConfig(eval_holdout=3, max_examples=10))
    assert len(held) == 3 and len(train) == 10 and not {r["id"] for r in held} & {r["id"] for r in train}
    assert (train, held) == tex.split_rows(rows, ft.FinetuneConfig(eval_holdout=3, max_examples=10))


def test_config_section_and_gpu_recipe(tmp_path):
    from mathscale_utils.core.params import ParamsError, input_files, parse_params

    with pytest.raises(ValueError):
        ft.FinetuneConfig(lr_typo=1)
    g = ft.FinetuneConfig.gpu_recipe()
    assert g.method == "qlora" and g.effective_batch == 128 and g.epochs == 3 and g.bf16
    for n in (8, 4, 2, 1):
        f = ft.FinetuneConfig.full_recipe(num_processes=n)
        assert (f.method, f.lr, f.epochs, f.effective_batch, f.num_processes) == ("full", 2e-5, 3, 128, n)
    with pytest.raises(ValueError, match="divides 32"):
        ft.FinetuneConfig.full_recipe(num_processes=3)
    with pytest.raises(ValueError, match="launcher: accelerate"):
        ft.FinetuneConfig(num_processes=2)
    p = parse_params(f"run_name: t\nfinetune:\n  base_model: {SMALL}\n  train_file: {tmp_path}/d.jsonl\n")
    assert p.finetune.base_model == SMALL
    assert ("finetune.train_file", tmp_path / "d.jsonl") in input_files(p)
    with pytest.raises(ParamsError, match="finetune.nope"):
        parse_params("run_name: t\nfinetune:\n  nope: 1\n")


@pytest.mark.parametrize(
    ("params_file", "recipe", "distributed"),
    [("params/paper.yaml", "gpu_recipe", "NO"), ("params/paper_full_ft.yaml", "full_recipe", "FSDP")],
)
def test_paper_params_train_on_128_examples_per_step(params_file, recipe, distributed):
    """The paper's batch (METHOD.md §6) in examples, with the accelerate config each file names, as accelerate
    reads it: the same number of processes, FSDP gathering a full state dict for the full fine-tuning."""
    from accelerate.commands.config.config_args import load_config_from_file

    from mathscale_utils.core.params import ROOT, load_params, resolve_path

    P = load_params(ROOT / params_file, check_files=False)
    cfg = P.finetune
    assert cfg.effective_batch == 128 and cfg.epochs == 3 and cfg.packing and cfg.launcher == "accelerate"
    assert cfg.model_copy(update={"train_file": None}) == getattr(ft.FinetuneConfig, recipe)()
    acc = load_config_from_file(str(resolve_path(cfg.accelerate_config)))
    assert acc.num_processes == cfg.num_processes and str(acc.distributed_type).endswith(distributed)
    if cfg.method == "full":
        assert cfg.lr == 2e-5 and acc.mixed_precision == "bf16" and cfg.bf16
        assert acc.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_accelerate_command_and_rank_environment(tmp_path, monkeypatch):
    from mathscale_utils.core.params import ROOT

    cfg = ft.FinetuneConfig(launcher="accelerate", num_processes=2)
    cmd = launch.accelerate_command(cfg, tmp_path / "c.json", tmp_path, resume=False)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "0"
    assert cmd[-6:] == [
        "-m",
        "mathscale_utils.training.finetune",
        str(tmp_path / "c.json"),
        "--run-dir",
        str(tmp_path),
        "--no-resume",
    ]
    cfg = cfg.model_copy(update={"accelerate_config": "configs/accelerate/cpu_ddp_2proc.yaml"})
    cmd = launch.accelerate_command(cfg, tmp_path / "c.json", tmp_path)
    assert cmd[cmd.index("--config_file") + 1] == str(ROOT / "configs/accelerate/cpu_ddp_2proc.yaml")
    assert "--multi_gpu" not in cmd and cmd[-1] == str(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = launch.launch_env(cfg)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"] and env["HF_HUB_OFFLINE"] == "1"
    if not __import__("torch").cuda.is_available():
        assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_ranks_must_match_num_processes(tmp_path):
    """A params file's batch in examples holds only with as many ranks as it says: one process is refused."""
    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS * 4)
    cfg = _cfg(launcher="accelerate", num_processes=2)
    with pytest.raises(ValueError, match="effective batch 4.* 1 processes were launched"):
        ft.train_here(cfg, tmp_path)


@needs_model
def test_packing_keeps_examples_apart_and_a_batch_counts_examples(tmp_path):
    """Packed micro-batches from the Trainer's own dataloader hold per_device_batch examples each (not blocks of
    many), and the summed loss of a packed batch equals the sum of its examples' losses computed alone: no example
    attends to another. The same row with running positions (naive packing) gives another loss."""
    import torch

    from mathscale_utils.core.artifacts import RunDir

    cfg = _cfg(packing=True, per_device_batch=3, grad_accum=1)
    model, tok = ft.prepare_model(cfg)
    rows = [*ROWS, {"question": "What is 12 divided by 4?", "solution": "12 / 4 = 3. The answer is 3"}] * 2
    examples = [tex.encode_example(tok, r["question"], r["solution"], 128, "chat") for r in rows]
    examples = [{k: e[k] for k in ("input_ids", "labels")} for e in examples]
    trainer = ft.build_trainer(cfg, ft.training_args(cfg, RunDir(tmp_path)), examples, model, tok, [])
    batches = list(trainer.get_train_dataloader())
    assert [int((b["labels"] == tok.eos_token_id).sum()) for b in batches] == [3, 3]  # one EOS per example
    model.eval()

    def summed(
        **batch,
    ) -> float:  # total loss over the predicted tokens, by the model's own (full-logits) loss
        batch.pop("logits_to_keep", None)
        with torch.no_grad():
            loss = model(**batch).loss.item()
        return loss * int((batch["labels"][:, 1:] != -100).sum())

    b = batches[0]
    assert b["input_ids"].shape[0] == 1 and "attention_mask" not in b
    starts = (b["position_ids"][0] == 0).nonzero().flatten().tolist() + [b["input_ids"].shape[1]]
    alone = sum(
        summed(input_ids=b["input_ids"][:, i:j], labels=b["labels"][:, i:j]) for i, j in pairwise(starts)
    )
    assert len(starts) == 4 and summed(**b) == pytest.approx(alone, rel=1e-4)
    naive = summed(input_ids=b["input_ids"], labels=b["labels"])
    assert abs(naive - alone) > 0.01 * alone


@needs_model
@pytest.mark.parametrize("packing", [False, True])
def test_the_loss_from_response_logits_is_the_full_loss(packing):
    """The Trainer's loss (response_loss over the logits of predicted positions only) equals the model's own loss
    over every position's logits, for a padded batch and a packed one, and the prompt positions are skipped."""
    import torch

    cfg = _cfg(packing=packing, per_device_batch=2, grad_accum=1)
    model, tok = ft.prepare_model(cfg)
    rows = [*ROWS, {"question": "What is 12 divided by 4?", "solution": "12 / 4 = 3. The answer is 3"}]
    examples = [tex.encode_example(tok, r["question"], r["solution"], 128, "chat") for r in rows[-2:]]
    batch = tex.make_collator(cfg, tok.pad_token_id)(
        [{k: e[k] for k in ("input_ids", "labels")} for e in examples]
    )
    keep = batch["logits_to_keep"]
    n_prompt = min(sum(x == -100 for x in e["labels"]) for e in examples)
    assert len(keep) <= batch["input_ids"].shape[1] - n_prompt < batch["input_ids"].shape[1] - 1
    n = (batch["labels"][:, 1:] != -100).sum()
    model.eval()
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "logits_to_keep"}, num_items_in_batch=n).loss
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        assert out.logits.shape[1] == len(keep)
        assert tex.response_loss(out, batch["labels"], n).item() == pytest.approx(full.item(), rel=1e-5)
        mean = tex.response_loss(
            out, batch["labels"]
        ).item()  # without the accumulated count: this batch's mean
        assert mean == pytest.approx(full.item(), rel=1e-5)


# ---- real training on the 135M model -------------------------------------------------------------------------------


@needs_model
def test_loss_goes_down_and_card_is_written(trained):
    cfg, run_dir, card = trained
    log = read_jsonl(run_dir / "finetune" / "loss.jsonl")
    assert [r["step"] for r in log] == list(range(1, 7))
    assert card["steps"] == 6 and card["final_loss"] < 0.5 * card["initial_loss"]
    assert (card["world_size"], card["effective_batch"], card["saved"]) == (1, 2, "adapter")
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    saved = read_json(run_dir / "adapter" / "training_card.json")
    for key in [
        "base_model",
        "data_sha256",
        "n_examples",
        "wall_time_s",
        "tokens_per_s",
        "peak_memory_gib",
        "loss_curve",
    ]:
        assert saved[key] is not None, key
    assert (
        saved["n_examples"] == 14 and "final_loss" in (run_dir / "adapter" / "training_card.md").read_text()
    )


TRAINED_STARTS = ("Sam has 3 + 4", "2 boxes hold 2 * 5")


@needs_model
def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    cfg, run_dir, card = trained
    killed = tmp_path / "run"
    shutil.copytree(run_dir, killed)
    shutil.rmtree(killed / "adapter")
    shutil.rmtree(killed / "finetune" / "checkpoints" / "checkpoint-6")  # as if killed between steps 3 and 6
    before = read_jsonl(killed / "finetune" / "loss.jsonl")
    card2 = ft.train(cfg, killed)
    assert Path(card2["resumed_from"]).name == "checkpoint-3" and card2["steps"] == 6
    log = read_jsonl(killed / "finetune" / "loss.jsonl")
    assert [r["step"] for r in log] == list(range(1, 7))
    assert log[:3] == before[:3]  # steps 1-3 were not redone
    for a, b in zip(
        log[3:], before[3:], strict=True
    ):  # steps 4-6 redone: same data order and optimizer state
        assert a["loss"] == pytest.approx(b["loss"], rel=0.05, abs=0.02)
    assert card2["tokens_seen"] == card["tokens_seen"]


@needs_model
def test_a_finished_run_is_not_trained_again(trained, tmp_path):
    """A re-run of the chain finds the training done and keeps the student as it is (transformers' Trainer, resumed
    from its final checkpoint, would take one step more); a larger step budget continues from that checkpoint."""
    cfg, run_dir, card = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    log = read_jsonl(run / "finetune" / "loss.jsonl")
    lines: list[str] = []
    again = ft.train(cfg, run, log=lines.append)
    assert again == read_json(run_dir / "adapter" / "training_card.json") and again["steps"] == 6
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert read_jsonl(run / "finetune" / "loss.jsonl") == log
    assert lines and "already finished (6 steps" in lines[0]
    more = ft.train(cfg.model_copy(update={"max_steps": 7}), run)
    assert Path(more["resumed_from"]).name == "checkpoint-6" and more["steps"] == 7
    assert [r["step"] for r in read_jsonl(run / "finetune" / "loss.jsonl")] == list(range(1, 8))


@needs_model
def test_changed_config_starts_over(trained, tmp_path):
    cfg, run_dir, _ = trained
    shutil.copytree(run_dir, tmp_path / "run")
    card = ft.train(cfg.model_copy(update={"lr": 1e-3, "max_steps": 1}), tmp_path / "run")
    assert card["resumed_from"] is None and card["steps"] == 1


@pytest.mark.slow
@needs_model
def test_adapter_loads_in_llama_cpp_and_changes_the_output(trained):
    """adapter.gguf from the peft adapter; the held-out questions answered by the Q4 GGUF base without and with it,
    through the embedded llama.cpp server and the LLM client, as stage 05 asks."""
    from mathscale_utils.core.params import parse_params
    from mathscale_utils.training.serve import CONVERTER_DIR, compare, convert_adapter_to_gguf

    if not (CONVERTER_DIR / "convert_lora_to_gguf.py").exists():
        pytest.skip("converter missing: python -m mathscale_utils.training.serve setup-converter")
    cfg, run_dir, _ = trained
    gguf = convert_adapter_to_gguf(run_dir / "adapter", cfg.base_model)
    assert gguf == run_dir / "adapter" / "adapter.gguf" and gguf.stat().st_size > 0
    finetune = ", ".join(
        f"{k}: {v}" for k, v in cfg.model_dump(exclude={"target_modules"}).items() if v is not None
    )
    P = parse_params(f"run_name: {run_dir.name}\noutputs_dir: {run_dir.parent}\nfinetune: {{{finetune}}}\n")
    rows = compare(P)
    assert len(rows) == 2 and read_jsonl(run_dir / "finetune" / "before_after.jsonl") == rows
    for r in rows:
        assert r["tuned"] != r["base"] and r["tuned"].startswith(TRAINED_STARTS)


@pytest.mark.slow
@needs_model
def test_qlora_path_runs_on_cpu(tmp_path):
    """The GPU recipe's code path (4-bit nf4 base, prepare_model_for_kbit_training) on CPU with fp32 compute."""
    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS * 4)
    card = ft.train(_cfg(method="qlora", optim="adamw_torch", max_steps=2, save_steps=100), tmp_path)
    assert card["steps"] == 2 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@needs_model
def test_two_ddp_ranks_on_cpu_through_accelerate_launch(tmp_path):
    """Stage 04 as two `accelerate launch` ranks on CPU (gloo): 16 examples, 2 per rank x 2 accumulation x 2 ranks
    = 8 per step, so 2 steps (one process would take 4); the tokens counted are both ranks' shares; rank 0 alone
    writes loss rows and the adapter. The losses equal one process's with the same 8 examples per step: step 2's
    follows step 1's update (no warmup), which only the two ranks' averaged gradients reproduce."""
    import torch

    from mathscale_utils.core.artifacts import RunDir

    write_jsonl(
        tmp_path / "ddp" / "mathscaleqa.jsonl", [dict(r, id=f"{r['id']}{i}") for i in range(9) for r in ROWS]
    )
    cfg = _cfg(
        grad_accum=2,
        max_steps=None,
        epochs=1,
        warmup_ratio=0.0,
        packing=True,
        launcher="accelerate",
        num_processes=2,
        accelerate_config="configs/accelerate/cpu_ddp_2proc.yaml",
    )
    seen, lines = [], []

    class Seen:  # what a notebook's live plot gets while the ranks train
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(logs["step"])

    card = ft.train(cfg, tmp_path / "ddp", callbacks=[Seen()], log=lines.append)
    run = RunDir(tmp_path / "ddp")
    assert seen == [1, 2] and "rank 1/2 trained" in lines
    assert (card["world_size"], card["distributed"], card["backend"]) == (2, "MULTI_CPU", "gloo")
    assert (card["n_examples"], card["effective_batch"], card["steps"]) == (16, 8, 2)
    tok = ft.load_tokenizer(cfg)
    train_rows, _ = tex.split_rows(read_jsonl(run.mathscaleqa), cfg)
    tokens = [
        len(tex.encode_example(tok, r["question"], r["solution"], 128)["input_ids"]) for r in train_rows
    ]
    assert card["tokens_seen"] == sum(tokens)
    assert [r["step"] for r in read_jsonl(run.loss)] == [1, 2]
    assert (run.adapter / "adapter_model.safetensors").exists() and run.training_card_md.exists()
    log = (run.finetune / "launch.log").read_text()
    assert (
        "rank 0/2 trained" in log and "rank 1/2 trained" in log and log.count("rank 0 saved the adapter") == 1
    )
    single = {
        "grad_accum": 4,
        "launcher": "none",
        "num_processes": 1,
        "accelerate_config": None,
        "train_file": str(run.mathscaleqa),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank had: two OMP threads on 2 busy cores are several times slower
    try:
        one = ft.train(cfg.model_copy(update=single), tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert (one["world_size"], one["effective_batch"], one["steps"]) == (1, 8, 2)
    for (_, a), (_, b) in zip(card["loss_curve"], one["loss_curve"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.slow
def test_a_failed_launch_raises_with_the_end_of_its_log(tmp_path):
    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS * 4)
    cfg = _cfg(base_model=str(tmp_path / "no-such-model"), launcher="accelerate")
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="accelerate launch failed") as e:
        launch.launch(cfg, tmp_path, log=lines.append)
    assert "no-such-model" in str(e.value) and any("no-such-model" in line for line in lines)
    assert (tmp_path / "finetune" / "launch.log").read_text().startswith(sys.executable)


@pytest.mark.slow
@needs_model
def test_full_finetuning_saves_a_loadable_model(tmp_path):
    """method full: every weight trained, and adapter/ is a whole HF model directory (what vLLM serves)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathscale_utils.inference.weights import base_path

    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS * 4)
    card = ft.train(_cfg(method="full", lr=1e-4, warmup_ratio=0.0, max_steps=2, save_steps=100), tmp_path)
    out = tmp_path / "adapter"
    assert (card["method"], card["saved"], card["steps"]) == ("full", "model", 2)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    tuned, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_path(SMALL)).state_dict()
    params = dict(tuned.named_parameters())
    changed = [n for n, p in params.items() if not torch.equal(p, base[n])]
    assert len(changed) > 0.9 * len(params)
    enc = tok([tex.render_prompt(tok, ROWS[0]["question"])], return_tensors="pt")
    assert tuned.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] > enc["input_ids"].shape[1]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@needs_model
def test_qlora_on_gpu(tmp_path):
    write_jsonl(tmp_path / "mathscaleqa.jsonl", ROWS * 8)
    cfg = _cfg(method="qlora", bf16=True, gradient_checkpointing=True, optim="paged_adamw_8bit", max_steps=4)
    card = ft.train(cfg, tmp_path)
    assert card["device"] == "cuda" and card["steps"] == 4 and card["final_loss"] < card["initial_loss"]
    from peft import PeftModel  # the adapter loads on its 4-bit base and generates

    model, tok = ft.load_base(cfg, quantize=True)
    model = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    enc = tok([tex.render_prompt(tok, ROWS[0]["question"])], return_tensors="pt").to(model.device)
    assert model.generate(**enc, max_new_tokens=8, do_sample=False).shape[1] > enc["input_ids"].shape[1]


# ---- how the student is served, and trainings that cannot be resumed ------------------------------------------


def test_each_recipe_is_served_as_it_was_trained():
    """serve.serving_plan, which stage 04 writes into the training card: QLoRA on the 4-bit NF4 base (vLLM's
    bitsandbytes quantization), training's compute dtype, a CPU LoRA on an embedded base through llama.cpp."""
    from mathscale_utils.training.serve import serving_plan

    q = serving_plan(ft.FinetuneConfig.gpu_recipe())
    assert (q["engine"], q["weights"], q["quantization"], q["dtype"]) == (
        "vllm",
        "adapter",
        "bitsandbytes",
        "bfloat16",
    )
    f = serving_plan(ft.FinetuneConfig.full_recipe())
    assert (f["engine"], f["weights"], f["quantization"], f["dtype"]) == ("vllm", "model", None, "bfloat16")
    cpu = serving_plan(_cfg())
    assert (cpu["engine"], cpu["weights"]) == ("llama_cpp", "adapter")
    hf = serving_plan(_cfg(base_model="org/base-7b"))
    assert (hf["engine"], hf["quantization"], hf["dtype"]) == ("vllm", None, "float32")


@needs_model
def test_the_training_card_says_how_the_student_is_served(trained):
    cfg, run_dir, card = trained
    saved = read_json(run_dir / "adapter" / "training_card.json")
    assert saved["serving"]["engine"] == "llama_cpp" and saved["superseded"] == []
    assert (
        f"**Served as:** {saved['serving']['how']}." in (run_dir / "adapter" / "training_card.md").read_text()
    )


@needs_model
def test_a_stage_03_change_never_deletes_the_earlier_training(trained, tmp_path):
    """One row changed in mathscaleqa.jsonl: the run cannot resume, so it trains afresh, but the earlier
    checkpoints, loss rows and student move to finetune/superseded/<time>/ with why.json, the log says so, and
    the new card (JSON and Markdown) lists them."""
    from mathscale_utils.core.artifacts import RunDir

    cfg, run_dir, _ = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(run_dir, run.root)
    weights = (run.adapter / "adapter_model.safetensors").read_bytes()
    old_loss, old_card = read_jsonl(run.loss), read_json(run.training_card)
    rows = read_jsonl(run.mathscaleqa)
    rows[5] = {**rows[5], "solution": rows[5]["solution"] + "."}
    write_jsonl(run.mathscaleqa, rows)
    lines: list[str] = []
    one_step = cfg.model_copy(update={"max_steps": 1})  # the step budget is not part of the resume key
    new = ft.train(one_step, run.root, log=lines.append)
    assert new["resumed_from"] is None and new["steps"] == 1
    (aside,) = (run.finetune / "superseded").iterdir()
    assert (aside / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert read_jsonl(aside / "loss.jsonl") == old_loss
    assert read_json(aside / "adapter" / "training_card.json") == old_card
    why = read_json(aside / "why.json")
    assert "training data changed" in why["reason"] and why["path"] == str(aside) and why["bytes"] > 0
    assert {"adapter", "checkpoints", "loss.jsonl", "resume_key.txt"} <= set(why["moved"])
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1 and str(aside) in warning[0] and "training data changed" in warning[0]
    assert new["superseded"] == [why] and read_json(run.training_card)["superseded"] == [why]
    assert str(aside) in run.training_card_md.read_text()
    assert [r["step"] for r in read_jsonl(run.loss)] == [1]  # the new training's own rows only
    config = ft.train(one_step.model_copy(update={"lr": 1e-3}), run.root, log=lines.append)
    assert len(config["superseded"]) == 2 and "lr 0.002 -> 0.001" in config["superseded"][1]["reason"]


@needs_model
def test_a_resume_key_written_before_its_inputs_were_recorded_still_resumes(trained, tmp_path):
    from mathscale_utils.core.artifacts import RunDir
    from mathscale_utils.core.io import sha256_file
    from mathscale_utils.training import resume

    cfg, run_dir, _ = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(run_dir, run.root)
    key = resume.resume_key(cfg, sha256_file(run.mathscaleqa))
    assert run.resume_key.read_text().split("\n")[0] == key  # the key, then the inputs it was computed from
    run.resume_key.write_text(key)  # as written before
    assert Path(resume.checkpoint(cfg, run, key, resume=True)).name == "checkpoint-6"


@needs_model
def test_a_finished_run_writes_its_card_again(trained, tmp_path):
    """The training card is stage 04's summary, which the chain requires each run of the stage to write: a re-run
    over a finished training (the GPU path has no conversion step after it that would write the card) writes the
    same card again, with how the student is served."""
    from mathscale_utils.core.artifacts import RunDir

    cfg, run_dir, _ = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(run_dir, run.root)
    before = read_json(run.training_card)
    for card in (run.training_card, run.training_card_md):
        os.utime(card, (1, 1))
    again = ft.train(cfg, run.root, log=lambda m: None)
    assert run.training_card.stat().st_mtime > 1 and run.training_card_md.stat().st_mtime > 1
    assert again == read_json(run.training_card) == before
