"""Run the numbered notebooks with papermill from one params file and record a manifest.

    python -m mathscale_utils.runs.chain params/quickstart.yaml [--only 01,02] [--from 03] [--engine python]
    python -m mathscale_utils.runs.chain --sweep params/scaling_cpu.yaml
    python -m mathscale_utils.runs.chain params/paper.yaml --plan [--json]   # requests, cost, time, disk: nothing sent

Writes outputs/<run_name>/: executed notebooks under notebooks/, each stage's artifacts, and manifest.json (git
commit, params, package versions, seed, per-stage wall time, tokens, cost, status). Only the params file path is
passed to a notebook as a parameter, so nothing secret can be written into an executed notebook. Each notebook
calls its stage's function in ``stages.py``; ``--engine python`` calls those functions without Jupyter. A stage is
ok only when it wrote its summary and every output ``artifacts.STAGES`` lists for it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mathscale_utils.core.artifacts import STAGE_IDS, RunDir, stage
from mathscale_utils.core.io import Locked, locked, read_json, write_json, write_text
from mathscale_utils.core.params import (
    ROOT,
    Params,
    ParamsError,
    duplicate_keys,
    load_params,
    parse_params,
    resolve_path,
    safe_name,
)
from mathscale_utils.reporting.widget_state import final_progress_lines
from mathscale_utils.runs import stages
from mathscale_utils.runs.plan import format_plan, plan

KERNEL = "mathscale"
ENGINES = ("notebook", "python")
PACKAGES = [
    "mathscale",
    "openai",
    "llama_cpp_python",
    "papermill",
    "networkx",
    "pyvis",
    "pandas",
    "matplotlib",
    "transformers",
    "peft",
    "bitsandbytes",
    "torch",
    "datasketch",
    "math-verify",
    "datasets",
]


class StageFailed(RuntimeError):
    """A stage raised, or did not write what it must; the message names the notebook and cell, or the file."""


def select_stages(params: Params, only: str | None = None, start: str | None = None) -> list[str]:
    """The stages to run: the params file's list, narrowed by --only or --from."""
    stages = list(params.stages)
    if only:
        wanted = [s.strip().zfill(2) for s in only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STAGE_IDS]
        if unknown:
            raise ParamsError(f"--only: unknown stage(s) {unknown}; known: {list(STAGE_IDS)}")
        stages = [s for s in STAGE_IDS if s in wanted]
    if start:
        start = start.strip().zfill(2)
        if start not in STAGE_IDS:
            raise ParamsError(f"--from: unknown stage {start!r}; known: {list(STAGE_IDS)}")
        stages = [s for s in stages if s >= start]
    missing = [s for s in stages if not (ROOT / "notebooks" / stage(s).notebook).exists()]
    if missing:
        raise ParamsError(f"stage(s) {missing} have no notebook in {ROOT / 'notebooks'}")
    return stages


def ensure_kernel() -> str:
    """Make sure the project's kernel (this interpreter) is registered inside its own prefix, not in $HOME."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    path = specs.get(KERNEL)
    if path is None or sys.prefix not in str(Path(path).resolve()):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ipykernel",
                "install",
                "--sys-prefix",
                "--name",
                KERNEL,
                "--display-name",
                "MathScale (.venv)",
            ],
            check=True,
            capture_output=True,
        )
    return KERNEL


def git_state() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def stage_usage(run_dir: Path, stage: str) -> dict:
    """Sum the LLM usage files a stage's notebook wrote (usage/<stage>*.json): all sessions, and the latest one."""
    out: dict[str, dict] = {"total": {}, "session": {}}
    for f in sorted((run_dir / "usage").glob(f"{stage}*.json")):
        u = read_json(f)
        for part in out:
            for k, v in u.get(part, {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[part][k] = out[part].get(k, 0) + v
    return out


def _ipc_kernel_manager() -> type:
    """A kernel manager whose kernel talks to the chain over Unix sockets (files in Jupyter's runtime directory,
    removed at shutdown) instead of TCP ports on loopback: nothing else on the machine can reach the kernel, and
    ipykernel (7.4+) has no reason to print its warning about unencrypted TCP at every stage."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

    return IPCKernelManager


def run_notebook(stage_id: str, params_file: Path, run_dir: Path, kernel: str) -> Path:
    """Execute one notebook with papermill; raise StageFailed naming the notebook, cell and error."""
    import papermill as pm

    src = ROOT / "notebooks" / stage(stage_id).notebook
    dst = RunDir(run_dir).notebook(stage(stage_id).notebook)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters={"params_file": str(params_file)},
            kernel_name=kernel,
            cwd=str(ROOT),
            progress_bar=False,
            kernel_manager_class=_ipc_kernel_manager(),
        )
    except pm.PapermillExecutionError as e:
        raise StageFailed(
            f"stage {stage_id} failed in {dst} (cell {e.exec_count}): {e.ename}: {e.evalue}"
        ) from None
    finally:
        if dst.exists():
            finish_notebook(dst)
    return dst


def finish_notebook(path: Path) -> None:
    """What the chain does to a notebook papermill has written (failed ones too): each progress bar becomes its final
    line (``widget_state.final_progress_lines``), then the notebook is trusted (:func:`trust_notebook`). A signature
    store that cannot be written (a read-only home) costs the trust, not the stage: the message says what to run."""
    import sqlite3

    import nbformat

    nb = nbformat.read(path, as_version=4)
    if final_progress_lines(nb):
        nbformat.write(nb, path)
    try:
        trust_notebook(path)
    except (OSError, sqlite3.Error) as e:
        print(
            f"[chain] could not sign {path} ({e}); run `jupyter trust {path}` to see its views in JupyterLab",
            file=sys.stderr,
            flush=True,
        )


def trust_notebook(path: Path) -> None:
    """Sign an executed notebook, as `jupyter trust` does: it is the user's own output, and JupyterLab shows the HTML
    and JavaScript of a trusted notebook's outputs (the views' iframes, the widgets) where it would sanitise them away.

    The signature goes to nbformat's notary store (``nbsignatures.db`` and ``notebook_secret`` in Jupyter's data
    directory, ``jupyter --data-dir``), the store a JupyterLab started by the same user on this machine checks."""
    import nbformat
    from nbformat.sign import NotebookNotary

    nb = nbformat.read(path, as_version=4)
    with NotebookNotary() as notary:
        notary.sign(nb)


def run_python(stage_id: str, params_file: Path) -> None:
    """Call the stage's function directly (no Jupyter); raise StageFailed with the error."""
    try:
        stages.run(load_params(params_file), stage_id, log=lambda m: print(f"[{stage_id}] {m}", flush=True))
    except Exception as e:  # noqa: BLE001 - any error fails the stage, named
        raise StageFailed(f"stage {stage_id} failed: {type(e).__name__}: {e}") from e


def check_outputs(stage_id: str, run_dir: Path, started: float) -> None:
    """A stage is done only when its summary was written during this run and every listed output exists."""
    st, run = stage(stage_id), RunDir(run_dir)
    summary = getattr(run, st.summary)
    if not summary.exists() or summary.stat().st_mtime < started - 1:
        raise StageFailed(f"stage {stage_id} ended without writing {summary}")
    missing = [str(getattr(run, name)) for name in st.outputs if not getattr(run, name).exists()]
    if missing:
        raise StageFailed(f"stage {stage_id} ended without writing {', '.join(missing)}")


def stage_counts(run_dir: Path, stage_id: str, started: float, entry: dict) -> dict:
    """What the manifest records about a stage's LLM work: its items' counts (ok, failed, stopped by budget) from
    the summary it wrote in this run, and tokens per second of wall time from its usage."""
    out: dict = {}
    summary = getattr(RunDir(run_dir), stage(stage_id).summary)
    if summary.exists() and summary.stat().st_mtime >= started - 1:
        try:
            if counts := read_json(summary).get("requests"):
                out["requests"] = counts
        except (ValueError, OSError):
            pass
    tokens = sum(
        entry.get("llm", {}).get("session", {}).get(k, 0) for k in ("prompt_tokens", "completion_tokens")
    )
    if tokens and entry.get("wall_s"):
        out["tokens"] = tokens
        out["tokens_per_s"] = round(tokens / entry["wall_s"], 1)
    return out


def _describe_counts(entry: dict) -> str:
    parts = []
    if r := entry.get("requests"):
        parts.append(f"{r['ok']} ok, {r['failed']} failed, {r['budget_stopped']} stopped by budget")
    if entry.get("tokens"):
        parts.append(f"{entry['tokens']:,} tokens, {entry['tokens_per_s']:g} tokens/s")
    return f" ({'; '.join(parts)})" if parts else ""


def manifest_for(params: Params, params_file: str | Path | None = None, previous: dict | None = None) -> dict:
    """manifest.json as a chain starts on params: what ran (params, seed, git, packages) and where, status
    "running"; the stages a previous manifest recorded are kept, so a resumed run keeps its earlier stages."""
    return {
        "run_name": params.run_name,
        "params_file": str(params_file) if params_file is not None else params.source_file,
        "params": params.model_dump(mode="json"),
        "seed": params.seed,
        "run_dir": str(params.run_dir),
        "git": git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": package_versions(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "stages": (previous or {}).get("stages", {}),
        "status": "running",
    }


def stage_entry(stage_id: str, engine: str) -> dict:
    """A stage's entry in the manifest as it starts: its notebook, the engine that runs it, status "running"."""
    return {"notebook": stage(stage_id).notebook, "engine": engine, "status": "running"}


def record_stage(entry: dict, status: str | None, wall_s: float, llm: dict, error: str | None = None) -> dict:
    """Record how a stage ended in its manifest entry: status ("ok" or "failed"; None leaves "running", for an
    interrupted stage), its error, wall time in seconds and LLM usage (``stage_usage``), which stage 06 reads."""
    if status is not None:
        entry["status"] = status
    if error is not None:
        entry["error"] = error
    entry.update(wall_s=wall_s, llm=llm)
    return entry


def run_chain(
    params_file: str | Path, only: str | None = None, start: str | None = None, engine: str = "notebook"
) -> dict:
    """Run the selected stages in order, writing the manifest after each; stop at the first failure."""
    if engine not in ENGINES:
        raise ParamsError(f"--engine: {engine!r}; known: {list(ENGINES)}")
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    stages = select_stages(params, only, start)
    run = params.run
    if run.notebooks.resolve() == (ROOT / "notebooks").resolve():
        raise ParamsError(f"run directory {run.root} would write executed notebooks over the committed ones")
    run.root.mkdir(parents=True, exist_ok=True)
    cache = Path(params.llm_cache_dir)
    with locked(run.lock, f"run directory {run.root}"), locked(cache / ".lock", f"LLM cache {cache}"):
        return _run_stages(params, params_file, stages, engine)


def _run_stages(params: Params, params_file: Path, stages: list[str], engine: str) -> dict:
    """run_chain's loop, under the run's locks."""
    run_dir = params.run_dir
    manifest_path = run_dir / "manifest.json"
    previous = read_json(manifest_path) if manifest_path.exists() else {}
    manifest = manifest_for(params, params_file, previous)
    write_json(manifest_path, manifest)
    kernel = ensure_kernel() if engine == "notebook" else ""
    for sid in stages:
        t0, started = time.perf_counter(), time.time()
        entry = stage_entry(sid, engine)
        manifest["stages"][sid] = entry
        write_json(manifest_path, manifest)
        print(
            f"[chain] stage {sid}: {stage(sid).notebook if engine == 'notebook' else stage(sid).name} ...",
            flush=True,
        )
        status, error = None, None  # None: interrupted, the entry stays "running"
        try:
            if engine == "notebook":
                entry["executed"] = str(run_notebook(sid, params_file, run_dir, kernel))
            else:
                run_python(sid, params_file)
            check_outputs(sid, run_dir, started)
            status = "ok"
        except StageFailed as e:
            status, error = "failed", str(e)
            manifest["status"] = "failed"
            raise
        finally:
            record_stage(entry, status, round(time.perf_counter() - t0, 2), stage_usage(run_dir, sid), error)
            entry.update(stage_counts(run_dir, sid, started, entry))
            manifest["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
            write_json(manifest_path, manifest)
        print(f"[chain] stage {sid}: ok in {entry['wall_s']} s{_describe_counts(entry)}", flush=True)
    manifest["status"] = "ok"
    write_json(manifest_path, manifest)
    return manifest


class SweepSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    _name = field_validator("name")(safe_name)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted keys, e.g. {"generate.n_questions": 64}


class Sweep(BaseModel):
    """A list of settings run from one base params file, each in its own run directory, sharing one LLM cache.

    Sharing the cache is what shares the common stages: a setting re-extracts the same seeds and re-generates the
    same first compositions for free, so a larger size only pays for the pairs the smaller one did not have.
    """

    model_config = ConfigDict(extra="forbid")

    sweep_name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")

    _sweep_name = field_validator("sweep_name")(safe_name)
    base: str
    cache_dir: str | None = None  # default outputs/<sweep>/cache; another run's cache reuses its calls
    common: dict[str, Any] = Field(default_factory=dict)  # dotted keys set in every setting (before its own)
    settings: list[SweepSetting]


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set a dotted key in a params dict, to a copy: a `common` section is shared by every setting of a sweep, and a
    setting that overrides one of its keys must not change it for the settings after."""
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ParamsError(f"sweep: key '{dotted}': '{k}' is not a section")
    d[keys[-1]] = copy.deepcopy(value)


def sweep_params(sweep_file: str | Path, write: bool = True) -> list[Path]:
    """Write one full params file per setting (outputs/<sweep>/params/<name>.yaml), validated before any run;
    with write=False only validate them and return the paths they would have."""
    return [path for path, _ in sweep_settings(sweep_file, write)]


def sweep_settings(sweep_file: str | Path, write: bool = False) -> list[tuple[Path, Params]]:
    """(params file, validated params) of every setting of a sweep; the files are written only with write=True."""
    sweep_file = resolve_path(sweep_file)
    try:
        text = sweep_file.read_text(encoding="utf-8")
        if dups := duplicate_keys(yaml.compose(text)):
            raise ParamsError(
                "; ".join(
                    f"{sweep_file}:{ln}: key '{k}': given twice (first on line {f})" for k, ln, f in dups
                )
            )
        sweep = Sweep.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError, OSError) as e:
        raise ParamsError(f"{sweep_file}: invalid sweep file: {e}") from None
    base_file = resolve_path(sweep.base)
    base = load_params(base_file)
    base_dict = yaml.safe_load(base_file.read_text(encoding="utf-8"))
    sweep_dir = base.run_dir.parent / sweep.sweep_name
    out = []
    for setting in sweep.settings:
        d = json.loads(json.dumps(base_dict))
        for k, v in {**sweep.common, **setting.set}.items():
            _set_dotted(d, k, v)
        d["run_name"] = f"{sweep.sweep_name}-{setting.name}"
        d["outputs_dir"] = str(sweep_dir / "runs")
        d["cache_dir"] = str(resolve_path(sweep.cache_dir) if sweep.cache_dir else sweep_dir / "cache")
        d["tags"] = {**d.get("tags", {}), "sweep": sweep.sweep_name, "setting": setting.name, **setting.set}
        text = yaml.safe_dump(d, sort_keys=False)
        path = sweep_dir / "params" / f"{setting.name}.yaml"
        params = parse_params(text, source=f"{sweep_file} (setting {setting.name})")
        if write:
            write_text(path, text)
        out.append((path, params))
    return out


def run_sweep(sweep_file: str | Path, engine: str = "notebook") -> list[dict]:
    """Run every setting of a sweep in order; a setting already completed with the same params is skipped."""
    manifests = []
    for params_file in sweep_params(sweep_file):
        params = load_params(params_file)
        manifest_path = params.run_dir / "manifest.json"
        if manifest_path.exists():
            m = read_json(manifest_path)
            if m.get("status") == "ok" and m.get("params") == params.model_dump(mode="json"):
                print(f"[sweep] {params.run_name}: already done, skipped", flush=True)
                manifests.append(m)
                continue
        print(f"[sweep] {params.run_name}", flush=True)
        manifests.append(run_chain(params_file, engine=engine))
    return manifests


def print_plans(params: list[Params], as_json: bool) -> int:
    """--plan: print the plan of one params file, or of each setting of a sweep (they share one LLM cache, so the
    calls a smaller setting shares with a larger one are paid once); 1 when a budget falls short."""
    plans = [plan(P) for P in params]
    print(
        json.dumps(plans if len(plans) > 1 else plans[0], indent=1)
        if as_json
        else "\n\n".join(map(format_plan, plans))
    )
    return 0 if all(p["budget_covers"] for p in plans) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.runs.chain", description=__doc__.split("\n")[0]
    )
    ap.add_argument("params", nargs="?", help="params YAML file, e.g. params/quickstart.yaml")
    ap.add_argument("--sweep", help="sweep YAML file: run every setting in it (see params/scaling_cpu.yaml)")
    ap.add_argument("--only", help="comma-separated stages to run, e.g. 01,02")
    ap.add_argument("--from", dest="start", help="run from this stage on, e.g. 03")
    ap.add_argument(
        "--engine",
        choices=ENGINES,
        default="notebook",
        help="notebook: execute the notebooks with papermill (default); python: call stages.py directly",
    )
    ap.add_argument(
        "--plan",
        action="store_true",
        help="print each stage's requests, tokens, cost (live and Batch API), wall time, disk and GPU-hours, and "
        "whether llm.budget_usd covers them; run nothing",
    )
    ap.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    args = ap.parse_args(argv)
    if bool(args.params) == bool(args.sweep):
        ap.error("give either a params file or --sweep FILE")
    if args.json and not args.plan:
        ap.error("--json goes with --plan")
    try:
        if args.plan:
            settings = [P for _, P in sweep_settings(args.sweep)] if args.sweep else []
            return print_plans(settings or [load_params(args.params, check_files=False)], args.json)
        if args.sweep:
            ms = run_sweep(args.sweep, engine=args.engine)
            print(f"[sweep] done: {len(ms)} setting(s)")
            return 0
        manifest = run_chain(args.params, only=args.only, start=args.start, engine=args.engine)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StageFailed, Locked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[chain] done: {Path(manifest['params_file']).name} -> {manifest['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
