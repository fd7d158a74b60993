"""Stage 04: data format and masking, real LoRA steps on the 135M embedded model, resume, adapter, LoRA GGUF."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mathscale_utils import finetune as ft
from mathscale_utils.io import read_json, read_jsonl, write_jsonl

SMALL = "smollm2-135m-instruct"
ROWS = [  # a tiny repeated dataset: the loss must go down
    {"id": "a", "question": "Sam has 3 apples and buys 4 more. How many apples does he have?",
     "solution": "Sam has 3 + 4 = 7 apples. The answer is 7", "answer": "7"},
    {"id": "b", "question": "A box holds 5 pens. How many pens are in 2 boxes?",
     "solution": "2 boxes hold 2 * 5 = 10 pens. The answer is 10", "answer": "10"},
]  # fmt: skip


def _model_ready() -> str | None:
    from mathscale_utils.models import ModelError, ensure_model

    try:
        ensure_model(SMALL)
    except ModelError as e:
        return str(e)
    return None


_why = _model_ready()
needs_model = pytest.mark.skipif(_why is not None, reason=f"embedded model missing: {_why}")


def _cfg(**kw) -> ft.FinetuneConfig:
    base = dict(base_model=SMALL, per_device_batch=2, grad_accum=1, max_steps=6, save_steps=3, lr=2e-3,
                lora_dropout=0.0, eval_holdout=2, max_new_tokens=12, max_length=128)  # fmt: skip
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
    p = ft.alpaca_prompt("What is 1+1?")
    assert p == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhat is 1+1?\n\n### Response:"
    )
    try:
        from mathscale_utils.templates import fill_template
    except ImportError:
        return
    assert fill_template("alpaca", "What is 1+1?") == p


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_prompt_tokens_are_masked(tok, fmt):
    q, s = ROWS[0]["question"], ROWS[0]["solution"]
    ex = ft.encode_example(tok, q, s, 512, fmt)
    prompt_ids = tok(ft.render_prompt(tok, q, fmt), add_special_tokens=fmt == "alpaca")["input_ids"]
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
        assert ft.alpaca_prompt(q) in tok.decode(prompt_ids)


def test_truncation_keeps_the_prompt(tok):
    ex = ft.encode_example(tok, "Q?", "word " * 400, 64, "alpaca")
    assert len(ex["input_ids"]) == len(ex["labels"]) == 64
    assert ex["labels"][0] == -100 and ex["labels"][-1] != -100


def test_collator_pads_with_masked_labels():
    batch = ft.PadCollator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pack_keeps_examples_whole():
    exs = [
        {"input_ids": [i] * n, "labels": [-100] + [i] * (n - 1)} for i, n in enumerate([3, 4, 2, 5], start=1)
    ]
    blocks = ft.pack(exs, 7)
    assert [len(b["input_ids"]) for b in blocks] == [7, 7]
    assert sum((b["input_ids"] for b in blocks), []) == sum((e["input_ids"] for e in exs), [])
    assert blocks[0]["labels"] == [-100, 1, 1, -100, 2, 2, 2]


def test_split_rows_holds_out_and_caps():
    rows = [{"id": i, "question": f"q{i}", "solution": f"s{i}"} for i in range(20)] + [
        {"id": "x", "question": ""}
    ]
    train, held = ft.split_rows(rows, ft.FinetuneConfig(eval_holdout=3, max_examples=10))
    assert len(held) == 3 and len(train) == 10 and not {r["id"] for r in held} & {r["id"] for r in train}
    assert (train, held) == ft.split_rows(rows, ft.FinetuneConfig(eval_holdout=3, max_examples=10))


def test_config_section_and_gpu_recipe(tmp_path):
    from mathscale_utils.params import ParamsError, input_files, parse_params

    with pytest.raises(ValueError):
        ft.FinetuneConfig(lr_typo=1)
    g = ft.FinetuneConfig.gpu_recipe()
    assert g.method == "qlora" and g.per_device_batch * g.grad_accum == 128 and g.epochs == 3 and g.bf16
    p = parse_params(f"run_name: t\nfinetune:\n  base_model: {SMALL}\n  train_file: {tmp_path}/d.jsonl\n")
    assert p.finetune.base_model == SMALL
    assert ("finetune.train_file", tmp_path / "d.jsonl") in input_files(p)
    with pytest.raises(ParamsError, match="finetune.nope"):
        parse_params("run_name: t\nfinetune:\n  nope: 1\n")


# ---- real training on the 135M model -------------------------------------------------------------------------------


@needs_model
def test_loss_goes_down_and_card_is_written(trained):
    cfg, run_dir, card = trained
    log = read_jsonl(run_dir / "finetune" / "loss.jsonl")
    assert [r["step"] for r in log] == list(range(1, 7))
    assert card["steps"] == 6 and card["final_loss"] < 0.5 * card["initial_loss"]
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
    from mathscale_utils.params import parse_params
    from mathscale_utils.serve import CONVERTER_DIR, compare, convert_adapter_to_gguf

    if not (CONVERTER_DIR / "convert_lora_to_gguf.py").exists():
        pytest.skip("converter missing: python -m mathscale_utils.serve setup-converter")
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
    enc = tok([ft.render_prompt(tok, ROWS[0]["question"])], return_tensors="pt").to(model.device)
    assert model.generate(**enc, max_new_tokens=8, do_sample=False).shape[1] > enc["input_ids"].shape[1]
