"""Stands in for `vllm serve MODEL [options] --host H --port N` in tests: records its arguments in the file named by
$VLLM_SHIM_ARGS (and appends them as a JSON line to $VLLM_SHIM_LOG when set: every server a run started) and serves the loopback fake OpenAI server (tests/fake_openai.py) on that port."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai import FakeOpenAI  # noqa: E402


def main(argv: list[str]) -> None:
    Path(os.environ["VLLM_SHIM_ARGS"]).write_text(json.dumps(argv))
    if log := os.environ.get("VLLM_SHIM_LOG"):
        with open(log, "a") as f:
            f.write(json.dumps(argv) + "\n")
    port = int(argv[argv.index("--port") + 1])
    fake = FakeOpenAI(answer=lambda body: " The answer is 18.", model="student")
    asyncio.run(fake._serve(port))


if __name__ == "__main__":
    main(sys.argv[1:])
