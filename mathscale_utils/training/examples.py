"""Training examples for stage 04: the prompt as the student sees it at evaluation, prompt and response tokenised
apart with the loss on the response only, the collators (padded, or padding-free packing) and that loss computed
from the response positions' logits alone. The train / held-out split and the training file are here too.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import iter_jsonl
from mathscale_utils.core.params import resolve_path
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.core.templates import alpaca_prompt

# open-instruct joins prompt and completion with one space (prompt_format "alpaca"): the first token is " The"
RESPONSE_SEP = " "


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
    return (
        f'<pre style="white-space:pre-wrap"><span style="color:#999">{dec[0]}</span>'
        f'<span style="color:#070;font-weight:bold">{dec[1]}</span></pre>'
    )


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


def make_collator(cfg: FinetuneConfig, pad_id: int):
    """PadCollator, or with packing transformers' padding-free DataCollatorWithFlattening.

    Packing flattens the per_device_batch examples of a micro-batch into one row with position_ids restarting at 0
    for each, and no attention mask: transformers then builds a block-diagonal causal mask from the position ids
    (flash-attention: one varlen segment per example), so no example attends to another, and a batch still counts
    examples, not blocks. This needs the model's use_cache off in training (prepare_model; Trainer does it too): with
    a cache the position-id mask is skipped and the examples would see each other."""
    if not cfg.packing:
        return ResponseLogits(PadCollator(pad_id))
    from transformers import DataCollatorWithFlattening

    return ResponseLogits(DataCollatorWithFlattening(return_tensors="pt"))


@dataclass
class ResponseLogits:
    """Adds logits_to_keep to a collator's batch: the model projects onto the vocabulary only the positions whose next
    token is a response token, the only ones the loss reads (response_loss). Projecting the prompt's positions too
    made a CPU step 1.21x as long for the 0.5B model (152K-token vocabulary; bench/results/finetune.json)."""

    collate: Any

    def __call__(self, batch: list[dict]) -> dict:
        out = self.collate(batch)
        out["logits_to_keep"] = predicted_positions(out["labels"])
        return out


def predicted_positions(labels):
    """Positions (over the sequence axis, shared by the batch) whose next label is trained; at least one."""
    import torch

    keep = (labels[..., 1:] != -100).reshape(-1, labels.shape[-1] - 1).any(0).nonzero().flatten()
    return keep if len(keep) else torch.zeros(1, dtype=torch.long, device=labels.device)


def response_loss(outputs, labels, num_items_in_batch=None):
    """The causal-LM loss from logits kept at predicted_positions: the same sum of cross-entropies as transformers'
    own loss, over the same tokens, divided by the tokens of the whole accumulated batch (or of this one)."""
    import torch

    logits = outputs["logits"].float()
    targets = labels[..., 1:][..., predicted_positions(labels)].to(logits.device)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    n = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum().clamp(min=1)
    return loss / (n.to(loss.device) if torch.is_tensor(n) else n)


def _usable(r: dict) -> bool:
    return bool(str(r.get("question", "")).strip() and str(r.get("solution", "")).strip())


def split_rows(rows: list[dict], cfg: FinetuneConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out): usable rows shuffled by seed; the first eval_holdout are held out, max_examples caps train."""
    rows = [r for r in rows if _usable(r)]
    random.Random(cfg.seed).shuffle(rows)
    held, train = rows[: cfg.eval_holdout], rows[cfg.eval_holdout :]
    return (train[: cfg.max_examples] if cfg.max_examples else train), held


def split_positions(usable: list[int], cfg: FinetuneConfig) -> tuple[list[int], list[int]]:
    """split_rows on row positions: shuffling the list of usable positions permutes it exactly as shuffling the
    rows would (the shuffle depends only on the length and the seed), so the same rows come out, in the same order."""
    usable = list(usable)
    random.Random(cfg.seed).shuffle(usable)
    held, train = usable[: cfg.eval_holdout], usable[cfg.eval_holdout :]
    return (train[: cfg.max_examples] if cfg.max_examples else train), held


def sample_rows(path: str | Path, cfg: FinetuneConfig, k: int) -> tuple[int, list[dict], list[dict]]:
    """(usable rows in the file, up to k training rows, the held-out rows) for a notebook: the split of split_rows,
    with only the rows shown read back (two passes over the file, none of it held)."""
    usable = [i for i, (_, r) in enumerate(iter_jsonl(path)) if _usable(r)]
    train, held = split_positions(usable, cfg)
    want = {p: n for n, p in enumerate(train[:k])} | {p: k + n for n, p in enumerate(held)}
    got: dict[int, dict] = {}
    for i, (_, r) in enumerate(iter_jsonl(path)):
        if i in want:
            got[want[i]] = r
    return len(usable), [got[n] for n in range(min(k, len(train)))], [got[k + n] for n in range(len(held))]


@dataclass
class TrainSet:
    """Stage 04's training examples as a memory-mapped ``datasets.Dataset`` (input_ids, labels), in split_rows'
    order, and what the training card says about them."""

    dataset: Any
    n_examples: int
    n_truncated: int


_ROWS_SCHEMA = {"question": "string", "solution": "string"}


def _rows_arrow(path: Path, out: Path) -> list[int]:
    """Every row's question and solution into an Arrow file (a block at a time); returns the usable positions."""
    import pyarrow as pa

    schema = pa.schema([(k, getattr(pa, v)()) for k, v in _ROWS_SCHEMA.items()])
    usable, block = [], []
    tmp = out.with_name(out.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for i, (_, r) in enumerate(iter_jsonl(path)):
            if _usable(r):
                usable.append(i)
            block.append({"question": str(r.get("question") or ""), "solution": str(r.get("solution") or "")})
            if len(block) == 10_000:
                writer.write_table(pa.Table.from_pylist(block, schema=schema))
                block = []
        writer.write_table(pa.Table.from_pylist(block, schema=schema))
    tmp.replace(out)
    return usable


def _encode_batch(batch: dict, tok, max_length: int, fmt: str) -> dict:
    """encode_example for a batch of rows (the tokenizer encodes each text on its own: the same ids)."""
    prompts = tok([render_prompt(tok, q, fmt) for q in batch["question"]], add_special_tokens=fmt == "alpaca")
    sep = RESPONSE_SEP if fmt == "alpaca" else ""
    resp = tok([sep + s for s in batch["solution"]], add_special_tokens=False)
    out: dict[str, list] = {"input_ids": [], "labels": [], "n_tokens": []}
    for p, r in zip(prompts["input_ids"], resp["input_ids"], strict=True):
        r = [*r, tok.eos_token_id]
        out["input_ids"].append((p + r)[:max_length])
        out["labels"].append(([-100] * len(p) + r)[:max_length])
        out["n_tokens"].append(len(p) + len(r))
    return out


def training_set(
    cfg: FinetuneConfig, path: str | Path, data_sha: str, tok, cache_dir: str | Path
) -> TrainSet:
    """The training rows of `path` (split_rows' choice and order) tokenised by encode_example, as Arrow files
    under cache_dir/<data sha>/ that are memory-mapped, not lists: 2M rows take a few GB on disk and little memory.
    Made once; every later call (another rank, a resumed run) with the same data and settings reuses them."""
    import datasets

    path = Path(path)
    where = Path(cache_dir) / data_sha[:16]
    where.mkdir(parents=True, exist_ok=True)
    rows_file, usable_file = where / "rows.arrow", where / "usable.npy"
    if not (rows_file.exists() and usable_file.exists()):
        usable = _rows_arrow(path, rows_file)
        np.save(usable_file.with_name("usable.tmp.npy"), np.asarray(usable, dtype=np.int64))
        usable_file.with_name("usable.tmp.npy").replace(usable_file)
    train, _ = split_positions(np.load(usable_file).tolist(), cfg)
    settings = [
        cfg.base_model,
        cfg.prompt_format,
        cfg.max_length,
        cfg.seed,
        cfg.eval_holdout,
        cfg.max_examples,
    ]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    ds = datasets.Dataset.from_file(str(rows_file)).select(train)
    ds = ds.map(
        _encode_batch,
        batched=True,
        remove_columns=list(_ROWS_SCHEMA),
        fn_kwargs={"tok": tok, "max_length": cfg.max_length, "fmt": cfg.prompt_format},
        cache_file_name=str(where / f"tokens-{key}.arrow"),
        new_fingerprint=key,
        desc="tokenising",
    )
    n_tokens = ds.with_format("numpy", columns=["n_tokens"])["n_tokens"]
    n_truncated = int((np.asarray(n_tokens) > cfg.max_length).sum()) if len(ds) else 0
    return TrainSet(ds.remove_columns("n_tokens"), len(ds), n_truncated)


def train_file(cfg: FinetuneConfig, run_dir: str | Path) -> Path:
    """finetune.train_file, else the run's mathscaleqa.jsonl (stage 03)."""
    return resolve_path(cfg.train_file) if cfg.train_file else RunDir(run_dir).mathscaleqa
