"""Stage 04's trainings over time: which checkpoint a run resumes (its resume key: config and data), whether it
already finished, and what happens to a training that cannot be resumed: stage 03 wrote other rows, or the
config changed. Such a training is never deleted: its checkpoints and saved student move to
finetune/superseded/<UTC time>/ with why.json, the log says so loudly and the training card lists it.

Moving aside rather than refusing: a re-run of stage 03 that changes rows means to train on them, and the chain
should go on doing so, yet the earlier student cost GPU hours and may be the one a paper number came from. Renaming
within the run directory is instant and loses nothing; the log names the folder and its size, to delete by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_json, read_jsonl, sha256_file, write_json, write_jsonl, write_text
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.training.examples import train_file
from mathscale_utils.training.launch import LAUNCH_FILES


def resume_key(cfg: FinetuneConfig, data_sha: str) -> str:
    """What must match for a checkpoint to be resumed (step budget and save cadence may change)."""
    d = cfg.model_dump(exclude={"epochs", "max_steps", "save_steps", "save_total_limit", "max_new_tokens"})
    return hashlib.sha256(json.dumps([d, data_sha], sort_keys=True).encode()).hexdigest()


def checkpoint(cfg: FinetuneConfig, run: RunDir, key: str, resume: bool) -> str | None:
    """The last checkpoint to resume from, when its resume key matches (read only: every rank asks)."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = get_last_checkpoint(str(run.checkpoints)) if run.checkpoints.is_dir() else None
    ok = resume and ckpt and _saved_key(run)[0] == key
    return ckpt if ok else None


SUPERSEDED = "superseded"  # finetune/superseded/<UTC time>/: earlier trainings this run did not resume
KEPT_ON_START = (*LAUNCH_FILES, SUPERSEDED)  # in finetune/, left in place by a fresh start


def _saved_key(run: RunDir) -> tuple[str | None, dict]:
    """(resume key, inputs) of the training whose checkpoints are in finetune/: resume_key.txt's first line is the
    key, the rest the JSON of what it was computed from (data file, its sha256, config); older files hold the key."""
    if not run.resume_key.exists():
        return None, {}
    key, _, rest = run.resume_key.read_text(encoding="utf-8").partition("\n")
    try:
        inputs = json.loads(rest) if rest.strip() else {}
    except json.JSONDecodeError:
        inputs = {}
    return key.strip(), inputs if isinstance(inputs, dict) else {}


def _why_not_resumed(run: RunDir, inputs: dict, resume: bool) -> str:
    """Why a fresh start does not continue the training in finetune/: data, config, or a start over asked for."""
    if not resume:
        return "a fresh start was asked for (resume off, --no-resume)"
    _, old = _saved_key(run)
    if not old:
        return "the earlier training's resume key does not match this config and data (its inputs were not recorded)"
    if old.get("data_sha256") != inputs["data_sha256"]:
        return (
            f"the training data changed: {inputs['data_file']} has sha256 {inputs['data_sha256'][:12]} now, "
            f"{str(old.get('data_sha256'))[:12]} when the earlier training ran (stage 03 wrote other rows)"
        )
    before, now = old.get("config") or {}, inputs["config"]
    changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    if changed:
        return "the finetune config changed: " + ", ".join(
            f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed
        )
    return "the earlier training left no checkpoint to resume from"


def _trained_something(run: RunDir) -> bool:
    """Whether finetune/ holds a checkpoint or adapter/ a saved student (weights), the work a fresh start replaces."""
    if run.checkpoints.is_dir() and any(run.checkpoints.glob("checkpoint-*")):
        return True
    return run.adapter.is_dir() and any(run.adapter.glob(pat) for pat in ("*.safetensors", "*.bin", "*.gguf"))


def _set_aside(run: RunDir, inputs: dict, resume: bool, log) -> None:
    """Rank 0, on a fresh start over a training that saved something (_trained_something): move its files (all of
    finetune/ but the launch files, and adapter/) to finetune/superseded/<UTC time>/ with why.json, and say so
    loudly. Hours of GPU work are never deleted by a re-run of stage 03 or a config edit: the log names the folder
    and the disk it holds, to free by hand."""
    if not _trained_something(run):
        return
    reason = _why_not_resumed(run, inputs, resume)
    moved = (
        [p for p in run.finetune.iterdir() if p.name not in KEPT_ON_START] if run.finetune.is_dir() else []
    )
    moved += [run.adapter] if run.adapter.is_dir() else []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest, n = run.finetune / SUPERSEDED / stamp, 1
    while dest.exists():
        dest, n = run.finetune / SUPERSEDED / f"{stamp}-{n}", n + 1
    dest.mkdir(parents=True)
    size = sum(f.stat().st_size for p in moved for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    for p in moved:
        os.replace(p, dest / p.name)
    names = sorted(p.name for p in moved)
    record = {"path": str(dest), "reason": reason, "moved": names, "bytes": size, "at": stamp}
    write_json(dest / "why.json", record)
    log(
        f"WARNING: stage 04 starts its training over, because {reason}. The earlier training ({', '.join(names)}; "
        f"{size / 2**30:.2f} GiB) is kept in {dest}, neither resumed nor deleted: delete it by hand to free the disk."
    )


def superseded(run: RunDir) -> list[dict]:
    """The records (why.json) of the earlier trainings set aside in this run, oldest first."""
    return [read_json(f) for f in sorted((run.finetune / SUPERSEDED).glob("*/why.json"))]


def start_or_resume(run: RunDir, ckpt: str | None, key: str, inputs: dict, resume: bool, log=print) -> None:
    """Rank 0: a fresh start sets an earlier training aside (_set_aside) and clears the rest of finetune/ (but the
    launch files); a resume drops loss rows after the checkpoint. Then the resume key and its inputs are written."""
    if not ckpt:
        _set_aside(run, inputs, resume, log)
        for p in run.finetune.glob("*") if run.finetune.is_dir() else []:
            if p.name not in KEPT_ON_START:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        done = int(Path(ckpt).name.split("-")[-1])
        rows = read_jsonl(run.loss, tolerate_torn_tail=True) if run.loss.exists() else []
        write_jsonl(run.loss, [r for r in rows if r["step"] <= done])
    write_text(run.resume_key, key + "\n" + json.dumps(inputs, sort_keys=True))


def finished_card(cfg: FinetuneConfig, run: RunDir) -> dict | None:
    """The saved card when a run with this very config and data already trained to its last step, else None.

    Resuming from the final checkpoint would make transformers' Trainer take one step more (it checks the step budget
    only after a step), so a re-run of a finished run would train again and change the student. The checkpoint must
    match the resume key (checkpoint), and the card the step budget (which the key leaves out so it can grow)."""
    if not run.training_card.exists():
        return None
    ckpt = checkpoint(cfg, run, resume_key(cfg, sha256_file(train_file(cfg, run.root))), resume=True)
    state_file = Path(ckpt or "", "trainer_state.json")
    if not state_file.is_file():
        return None
    state, card = read_json(state_file), read_json(run.training_card)
    hp = card.get("hyperparameters") or {}
    same_budget = all(hp.get(k) == getattr(cfg, k) for k in ("epochs", "max_steps"))
    done = card.get("steps") == state.get("global_step", -1) >= state.get("max_steps", float("inf"))
    return card if same_budget and done and any(run.adapter.glob("*.safetensors")) else None
