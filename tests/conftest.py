"""Shared fixtures. `fake_openai`: a loopback OpenAI-compatible server (see tests/fake_openai.py) for scripted answers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started FakeOpenAI; set .answer / .fault / .latency_s on it in the test. Its base_url goes in LLMConfig."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MATHSCALE_STRICT_SKIPS=1 (CI), a skip for a missing prerequisite fails: only the GPU tests may skip."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MATHSCALE_STRICT_SKIPS") == "1":
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "CUDA" not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped in strict mode (a prerequisite is missing): {reason}"
