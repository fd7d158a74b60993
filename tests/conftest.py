"""Shared fixtures. `fake_openai`: a loopback OpenAI-compatible server (see tests/fake_openai.py) for scripted answers."""

from __future__ import annotations

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
