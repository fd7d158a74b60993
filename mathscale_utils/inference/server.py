"""A model server in a child process on loopback: ServerProcess (a free port, a log, a readiness check, a watchdog
that ends the server when this process dies, a process-group stop), and LocalServer, llama-server on a GGUF file.

    with LocalServer(ensure_model(name), alias=name, parallel=4) as srv: ... srv.base_url ...   # OpenAI-compatible

The watchdog is this module run as a program: python -m mathscale_utils.inference.server --parent-pid N -- CMD...
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mathscale_utils.inference.llama_build import server_binary
from mathscale_utils.inference.weights import ModelError, model_dir

MAX_SLOTS = 8  # parallel slots at most: each holds n_ctx tokens of KV cache


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
            "mathscale_utils.inference.server",
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
    """The watchdog: --parent-pid PID -- the server's command line."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.inference.server", description="the server's watchdog"
    )
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("server_args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    _serve(a.parent_pid, a.server_args[1:] if a.server_args[:1] == ["--"] else a.server_args)


if __name__ == "__main__":
    main()
