"""llama.cpp's own server (llama-server), compiled once per machine from the llama.cpp sources inside the
llama-cpp-python sdist on PyPI (checked against its sha256), into ~/.cache/mathscale where every venv finds it.

python -m mathscale_utils.inference.llama_build                         # a portable (AVX2) build, skipped when there
python -m mathscale_utils.inference.llama_build --force --cmake-args=   # a native build
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from mathscale_utils.core.io import read_json, write_json
from mathscale_utils.inference.weights import ModelError

# llama-server is built from the llama.cpp sources inside this PyPI sdist (vendor/llama.cpp; serve.py takes its LoRA
# converter from the same sdist), checked against its sha256 so that a re-upload cannot change what is compiled
LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_X86 = platform.machine().lower() in ("x86_64", "amd64")
# VMs can report AMX or AVX-512 without enabling them, and a native build then dies with SIGSEGV on the first request
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" if _X86 else ""
)
SERVER_CMAKE_ARGS = (  # llama-server alone, statically linked, no web UI, no network code
    "-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF "
    "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF"
)


def llama_dir() -> Path:
    """Where the built server lives: $MATHSCALE_LLAMA_DIR, default ~/.cache/mathscale/llama.cpp-<version>.

    Outside the venv on purpose: a new venv (or a second clone) reuses the build instead of compiling again."""
    env = os.environ.get("MATHSCALE_LLAMA_DIR")
    return (
        Path(env).expanduser()
        if env
        else Path.home() / ".cache" / "mathscale" / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    )


def _build_hint() -> str:
    return (
        f"build it with:  make setup  (or: {sys.executable} -m mathscale_utils.inference.llama_build), "
        "or set MATHSCALE_LLAMA_SERVER to a llama-server binary"
    )


def server_binary() -> Path:
    """The llama-server to run: $MATHSCALE_LLAMA_SERVER, else the one build_server() made."""
    env = os.environ.get("MATHSCALE_LLAMA_SERVER")
    path = Path(env).expanduser() if env else llama_dir() / "bin" / "llama-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ModelError(f"llama.cpp's server is not built ({path} missing); {_build_hint()}")
    return path


def _run_logged(cmd: list[str], log: Path) -> None:
    """Run one build command with its output appended to `log`; on failure raise with the log's end."""
    with open(log, "ab") as f:
        f.write(f"\n+ {' '.join(cmd)}\n".encode())
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_bytes()[-3000:].decode(errors="replace")
        raise ModelError(f"building llama-server failed ({cmd[0]} exited with {code}); end of {log}:\n{tail}")


def build_server(cmake_args: str = PORTABLE_CMAKE_ARGS, force: bool = False, jobs: int | None = None) -> Path:
    """Compile llama-server from the llama.cpp sources in the llama-cpp-python sdist (PyPI) into llama_dir().

    Skipped when a build with the same cmake_args is there (unless force). About 6 minutes on 2 cores."""
    dest = llama_dir()
    binary, info_path = dest / "bin" / "llama-server", dest / "build-info.json"
    try:
        same = read_json(info_path)["cmake_args"] == cmake_args and binary.is_file()
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same and not force:
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise ModelError(f"building llama-server needs {tool} (Debian: apt-get install cmake g++)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / f"{dest.name}.build.log"
    log.write_bytes(b"")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp_dir:
        tmp = Path(tmp_dir)
        req = tmp / "requirements.txt"
        req.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON} --hash=sha256:{LLAMA_CPP_SDIST_SHA256}\n")
        # --no-binary for this one package only: with :all: pip also compiles the sdist's build requirements
        # (scikit-build-core's) from source just to read its metadata, which took over 10 minutes on a fresh venv
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python"]
        pip += ["--require-hashes"]
        _run_logged([*pip, "-d", str(tmp), "-r", str(req)], log)
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tf:
            tf.extractall(tmp / "src", filter="data")
        src = next((tmp / "src").glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        args = [*SERVER_CMAKE_ARGS.split(), *cmake_args.split()]
        _run_logged(["cmake", "-S", str(src), "-B", str(tmp / "build"), *gen, *args], log)
        n = str(jobs or os.cpu_count() or 1)
        _run_logged(["cmake", "--build", str(tmp / "build"), "--target", "llama-server", "-j", n], log)
        stage = tmp / "out"
        (stage / "bin").mkdir(parents=True)
        shutil.copy2(tmp / "build" / "bin" / "llama-server", stage / "bin" / "llama-server")
        shutil.copy2(src / "LICENSE", stage / "LICENSE")  # llama.cpp is MIT-licensed: its notice goes along
        info = {"llama_cpp_python_sdist": LLAMA_CPP_PYTHON, "sdist_sha256": LLAMA_CPP_SDIST_SHA256}
        info |= {
            "cmake_args": cmake_args,
            "build_s": round(time.monotonic() - t0, 1),
            "built": time.strftime("%F %T"),
        }
        write_json(stage / "build-info.json", info)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(stage, dest)
    return binary


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.inference.llama_build", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--cmake-args", default=PORTABLE_CMAKE_ARGS, help="default: a portable (AVX2) x86-64 build"
    )
    ap.add_argument("--force", action="store_true", help="build again even if the same build is there")
    a = ap.parse_args(argv)
    try:
        print(build_server(a.cmake_args, force=a.force))
    except ModelError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
