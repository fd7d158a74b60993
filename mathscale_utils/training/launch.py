"""Stage 04 through `accelerate launch`: the ranks run `python -m mathscale_utils.training.finetune` (finetune.main) as
subprocesses; this process writes their config, follows their log and loss rows, and returns rank 0's training card.
Used by finetune.train when finetune.launcher is "accelerate" (several GPUs, FSDP, or CPU ranks over gloo)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import read_json, read_jsonl, write_json
from mathscale_utils.core.params import resolve_path
from mathscale_utils.core.student_config import FinetuneConfig
from mathscale_utils.inference.weights import base_path

LAUNCH_FILES = ("launch_config.json", "launch.log")  # in finetune/, kept when a fresh start clears it
REPO_ROOT = Path(__file__).resolve().parents[2]


def accelerate_command(
    cfg: FinetuneConfig, config_json: Path, run_dir: Path, resume: bool = True
) -> list[str]:
    """`accelerate launch` of mathscale_utils.training.finetune for a saved config: cfg.num_processes ranks, with cfg.accelerate_config.

    Without a config file, several processes go through torchrun (--multi_gpu), which on a machine without CUDA
    starts CPU ranks that join over gloo (accelerate's MULTI_CPU launcher needs mpirun); port 0 picks a free one."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes)]
    if cfg.accelerate_config:
        cmd += ["--config_file", str(resolve_path(cfg.accelerate_config))]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--multi_gpu", "--main_process_port", "0"] if cfg.num_processes > 1 else []
    cmd += ["-m", "mathscale_utils.training.finetune", str(config_json), "--run-dir", str(run_dir)]
    return cmd + ([] if resume else ["--no-resume"])


def launch_env(cfg: FinetuneConfig) -> dict[str, str]:
    """The ranks' environment: this checkout first on PYTHONPATH, offline hub, and on CPU an even share of the
    cores per rank (OMP_NUM_THREADS, unless set) so that ranks do not oversubscribe them."""
    import torch

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.num_processes)))
    return env


def launch(
    cfg: FinetuneConfig, run_dir: str | Path, resume: bool = True, callbacks: list | None = None, log=print
) -> dict:
    """Train through `accelerate launch` (cfg.num_processes ranks) and return rank 0's training card.

    The ranks' output goes to run_dir/finetune/launch.log and, line by line, to log; a failed launch raises with
    the log's tail. callbacks get on_log(None, None, None, logs=row) for each new loss.jsonl row (live_loss_plot)."""
    run = RunDir(run_dir)
    base_path(cfg.base_model)  # materialise an embedded base here, not in racing ranks
    run.finetune.mkdir(parents=True, exist_ok=True)
    config_json, log_path = (run.finetune / name for name in LAUNCH_FILES)
    write_json(config_json, cfg.model_dump())
    cmd = accelerate_command(cfg, config_json, run.root.resolve(), resume)
    with open(log_path, "w", encoding="utf-8") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=launch_env(cfg), start_new_session=True
        )
    try:
        _follow(proc, log_path, run.loss, callbacks or [], log)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # an interrupted notebook leaves no rank training
        proc.wait()
        raise
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"accelerate launch failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    return read_json(run.training_card)


def _follow(proc, log_path: Path, loss_path: Path, callbacks: list, log) -> None:
    """Until proc exits: pass new log lines to log, and new loss rows to the callbacks."""
    pos, n_rows, size, buf = 0, 0, -1, ""
    while True:
        done = proc.poll() is not None
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(pos)
            buf += f.read()
            pos = f.tell()
        *lines, buf = buf.split("\n")
        for line in lines:
            log(line)
        if callbacks and loss_path.exists() and loss_path.stat().st_size != size:
            size = loss_path.stat().st_size
            rows = read_jsonl(loss_path, tolerate_torn_tail=True)
            for row in rows[n_rows:]:
                for cb in callbacks:
                    cb.on_log(None, None, None, logs=row)
            n_rows = len(rows)
        if done:
            if buf:
                log(buf)
            return
        time.sleep(1.0)
