"""What answers stage 05, checked and compared (beside ``serve.py``, which serves the student):

- ``check_served``: a server you run (``evaluate.serve: off``) must serve what stage 05 records its answers as,
  before anything is asked: the model name in its ``GET /v1/models``, and for a trained student the weights it
  loaded (vLLM names each model's files as its ``root``; llama.cpp's server lists its adapters at
  ``GET /lora-adapters``), compared by content with what stage 04 wrote, and loaded after stage 04 wrote them (the
  start time of a server on this machine). A server that cannot be checked is refused unless
  ``evaluate.accept_unverified_server`` is set, and the answers are then recorded as unverified.
- the untrained base student, for stage 05's baseline, asked on the same kind of server as the student:
  ``base_on_server`` (the student's own vLLM server, which serves the base beside the LoRA, or the base's name at
  the URL of a server you run) and ``base_server`` (a server this stage starts: llama.cpp with the same GGUF base
  and no adapter, or ``vllm serve BASE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.params import Params, resolve_path
from mathscale_utils.training.serve import CommandServer, trained_serving, vllm_base_args

_TIMEOUT_S = 10.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CLOCK_SLACK_S = 2.0  # a process's start time is known to about a second (clock ticks since boot)


class ServedModelError(ValueError):
    """The server stage 05 would ask does not serve the student it would record the answers as (or cannot say)."""


# ---- what a server says it serves ------------------------------------------------------------------------------


def _root(base_url: str) -> str:
    """The server's root URL: base_url without its trailing /v1."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def fetch_json(url: str, api_key_env: str | None = None, timeout_s: float = _TIMEOUT_S) -> Any:
    """GET url -> parsed JSON, with the API key from the environment when one is set (never logged)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if api_key_env and (key := os.environ.get(api_key_env)):
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())


def served_models(base_url: str, api_key_env: str | None = None) -> list[dict]:
    """The models an OpenAI-compatible server lists (GET {base_url}/models, its "data"); raises OSError or
    ValueError when it cannot say."""
    doc = fetch_json(base_url.rstrip("/") + "/models", api_key_env)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
        raise ValueError("GET /models did not answer a list of models")
    return data


def lora_adapters(base_url: str) -> list[dict]:
    """The LoRA adapters llama.cpp's server applies (GET /lora-adapters: {id, path, scale}); [] when the server has
    no such endpoint (vLLM, a provider)."""
    try:
        doc = fetch_json(_root(base_url) + "/lora-adapters")
    except (OSError, ValueError):
        return []
    return [a for a in doc if isinstance(a, dict) and a.get("path")] if isinstance(doc, list) else []


def weights_digest(path: str | Path) -> str:
    """A content hash of model weights: a file's bytes, or a directory's *.safetensors (else *.bin, else *.gguf)
    files, names and bytes, in name order."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = (
            sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(path.glob("*.gguf"))
        )
    if not files:
        raise FileNotFoundError(f"{path}: no weights (*.safetensors, *.bin or *.gguf)")
    for f in files:
        h.update(f.name.encode() if len(files) > 1 else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def server_started_at(base_url: str) -> float | None:
    """When the process listening at base_url started (epoch seconds), for a server on this machine; None when it
    is elsewhere or cannot be seen."""
    u = urlparse(base_url)
    if u.hostname not in _LOOPBACK:
        return None
    import psutil

    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return psutil.Process(c.pid).create_time()
    except (psutil.Error, OSError):
        return None
    return None


def _written_at(path: Path) -> float:
    """When the weights at path were last written (the newest weight file)."""
    if path.is_file():
        return path.stat().st_mtime
    files = [f for ext in ("*.safetensors", "*.bin", "*.gguf") for f in path.glob(ext)]
    return max((f.stat().st_mtime for f in files), default=path.stat().st_mtime)


# ---- the check ---------------------------------------------------------------------------------------------------


def check_served(P: Params, cfg: LLMConfig, student: str | None) -> dict[str, Any]:
    """Check, before stage 05 asks anything, that the server at cfg.base_url serves cfg.model, and for a trained
    ``student`` (serve.student_id) the weights stage 04 wrote, loaded after it wrote them. Returns what metrics.json
    records: {"verified", "how", "models" (ids listed), "weights" (the path the server named)}. Raises
    ServedModelError on a mismatch, and when the server cannot be checked unless evaluate.accept_unverified_server.
    """
    url, run = cfg.base_url, P.run
    if url is None:
        return {"verified": True, "how": "the embedded server, started by this stage"}

    def unverified(why: str, **seen: Any) -> dict[str, Any]:
        if not P.evaluate.accept_unverified_server:
            raise ServedModelError(
                f"stage 05: cannot check what the server at {url} serves ({why}), so its answers cannot be recorded "
                f"as {cfg.identity or cfg.model!r}: a stale server would be cached as the new student. Restart the "
                "server with the student's files so that it names them (vLLM: --lora-modules NAME=PATH or the model "
                "PATH; llama.cpp: --lora PATH), or set evaluate.accept_unverified_server: true to accept it "
                "unchecked (metrics.json then says so)"
            )
        return {
            "verified": False,
            "how": f"accepted unchecked (evaluate.accept_unverified_server): {why}",
            **seen,
        }

    try:
        models = served_models(url, cfg.api_key_env)
    except (OSError, ValueError) as e:
        return unverified(f"GET {url.rstrip('/')}/models failed: {e}")
    ids = [str(m["id"]) for m in models]
    entry = next((m for m in models if m["id"] == cfg.model), None)
    if entry is None:
        raise ServedModelError(
            f"stage 05: the server at {url} serves {ids}, not {cfg.model!r} (evaluate.model): start it with that "
            "name (vLLM: --served-model-name or --lora-modules NAME=PATH), or set evaluate.model to what it serves"
        )
    if student is None:
        return {"verified": True, "how": f"{cfg.model!r} is listed at {url}", "models": ids}
    paths = [a["path"] for a in lora_adapters(url) if a.get("scale", 1.0)]
    if entry.get("root") and entry["root"] != entry["id"]:
        paths.append(entry["root"])
    if not paths:
        return unverified(f"it lists {cfg.model!r} but not which weights it loaded", models=ids)
    for served in paths:
        local = resolve_path(served)
        if not local.exists():
            return unverified(f"it serves {served}, which is not on this machine", models=ids, weights=served)
        expected = run.adapter_gguf if local.is_file() and local.suffix == ".gguf" else run.adapter
        same_place = expected.exists() and local.resolve() == expected.resolve()
        if not same_place and (not expected.exists() or weights_digest(local) != weights_digest(expected)):
            raise ServedModelError(
                f"stage 05: the server at {url} serves {served}, whose weights differ from the student stage 04 "
                f"trained ({expected}); its answers would be recorded as {student}. Restart it with {expected}"
            )
        started = server_started_at(url)
        if started is not None and started < _written_at(expected) - _CLOCK_SLACK_S:
            raise ServedModelError(
                f"stage 05: the server at {url} started before stage 04 wrote {expected}: it still holds the "
                "previous student's weights. Restart it, then run stage 05 again"
            )
    when = "" if server_started_at(url) is not None else " (its start time is not visible from here)"
    return {
        "verified": True,
        "how": f"{cfg.model!r} at {url} serves {', '.join(paths)}, the weights stage 04 wrote{when}",
        "models": ids,
        "weights": paths,
    }


# ---- the base student --------------------------------------------------------------------------------------------


def base_identity(P: Params, where: str) -> str:
    """The base student's identity for cache keys and prediction rows: its name and how it is served (a QLoRA
    student's base is served in 4 bits, as it was trained)."""
    quant = trained_serving(P).get("quantization") if where == "vllm" else None
    return f"{P.finetune.base_model}@{where}" + (f"+{quant}" if quant else "")


def base_on_server(P: Params, student_cfg: LLMConfig, mode: str) -> LLMConfig | None:
    """The base student on the student's own server, when that server has it: vLLM serving a LoRA lists the base as
    the LoRA's parent; a server you run (serve: off) serves it as evaluate.baseline_model (default: finetune's
    base_model) at evaluate.baseline_base_url (default: the student's URL), where it must be listed. None when the base needs a server of its own (base_server)."""
    url = student_cfg.base_url
    if mode == "vllm" and url:
        models = served_models(url, student_cfg.api_key_env)
        parent = next((m.get("parent") for m in models if m["id"] == student_cfg.model), None)
        if not parent:  # a full fine-tune: the server holds only the trained model
            return None
        return student_cfg.model_copy(update={"model": parent, "identity": base_identity(P, "vllm")})
    if mode == "off" and url:
        name = P.evaluate.baseline_model or P.finetune.base_model
        url = P.evaluate.baseline_base_url or url
        try:
            ids = [m["id"] for m in served_models(url, student_cfg.api_key_env)]
        except (OSError, ValueError) as e:
            raise ServedModelError(f"stage 05's baseline: cannot list the models at {url} ({e})") from None
        if name not in ids:
            raise ServedModelError(
                f"stage 05's baseline: the server at {url} serves {ids}, not the base model {name!r}: serve it (at "
                "evaluate.baseline_base_url, default evaluate.base_url) and name it in evaluate.baseline_model, or "
                "set evaluate.baseline: false"
            )
        update = {"model": name, "base_url": url, "identity": f"{name}@{url}"}
        return student_cfg.model_copy(update=update)
    return None


@contextmanager
def base_server(P: Params, mode: str) -> Iterator[LLMConfig]:
    """A server for the base student: llama.cpp's server with the same GGUF base as the student and no adapter (mode
    llama_cpp; the LLM client starts it on the first request not in the cache, so a cached baseline costs nothing),
    or ``vllm serve BASE``, started here and stopped after the block (mode vllm, after a full fine-tune)."""
    ft, run, ev = P.finetune, P.run, P.evaluate
    if mode == "llama_cpp":
        update = {"model": ft.base_model, "base_url": None, "lora_path": None, "backend": "chat"}
        yield P.llm.model_copy(update={**update, "identity": base_identity(P, mode)})
        return
    if mode != "vllm":
        raise ValueError(
            f"stage 05's baseline: no server for the base student with evaluate.serve: {mode} (set "
            "evaluate.baseline_model and evaluate.base_url, or evaluate.baseline: false)"
        )
    server = CommandServer(
        [*ev.vllm_command, *vllm_base_args(P)], run.root / "base_server.log", ev.server_startup_s
    )
    try:
        server.start()
        update = {
            "model": served_models(server.base_url)[0]["id"],
            "base_url": server.base_url,
            "identity": base_identity(P, mode),
            "lora_path": None,
            "backend": "chat",
            "concurrency": server.parallel,
        }
        yield P.llm.model_copy(update=update)
    finally:
        server.stop()
