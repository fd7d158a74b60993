"""The ``llm:`` section of a params file: which model answers (the embedded server or an OpenAI-compatible endpoint),
how hard the client pushes it, what it costs and how much the run may spend; and ``llm.batch:``, the Batch API jobs.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BatchConfig(BaseModel):
    """The `llm.batch:` section: how Batch API jobs are cut, polled and retried."""

    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(60.0, ge=0.0, description="seconds between status polls")
    max_wait_s: float | None = Field(
        None, ge=0.0, description="stop waiting after this long (state is kept); null = wait"
    )
    max_requests_per_job: int = Field(50_000, ge=1, description="OpenAI: at most 50,000 requests per batch")
    max_bytes_per_job: int = Field(190_000_000, ge=1_000, description="OpenAI: input files up to 200 MB")
    max_rounds: int = Field(
        3,
        ge=1,
        description="submissions per request in all (first + resubmissions); a job the provider refused for a "
        "limit (token_limit_exceeded) is sent again later and does not count",
    )
    max_enqueued_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens (prompt + max_tokens, as the provider counts them) in jobs not finished yet, at most: "
        "OpenAI's per-model batch queue limit (platform.openai.com/settings/organization/limits); more jobs are "
        "submitted as others finish. null: no limit",
    )
    live_fallback: bool = Field(
        False,
        description="send the requests the Batch API gave up on (after max_rounds) as live calls, at the live "
        "price; false: they fail, and the stage says so",
    )
    completion_window: Literal["24h"] = "24h"
    endpoint: str = "/v1/chat/completions"
    price_factor: float = Field(0.5, gt=0.0, description="batch price / live price (OpenAI: 0.5)")
    adopt_scan: int = Field(1000, ge=0, description="batches listed to re-find one whose id was not saved")


class CapabilityOverrides(BaseModel):
    """The `llm.capabilities:` section: what the model accepts, where the table in inference/capabilities.py does
    not know it (a model served by vLLM, another provider) or is out of date. Fields left null keep the table's."""

    model_config = ConfigDict(extra="forbid")

    structured_outputs: bool | None = Field(None, description="accepts response_format json_schema")
    json_mode: bool | None = Field(None, description="accepts response_format json_object")
    context_window: int | None = Field(None, ge=1, description="prompt + completion tokens at most")
    max_output_tokens: int | None = Field(None, ge=1, description="max_tokens at most")
    max_stop: int | None = Field(None, ge=0, description="stop strings per request at most")
    seed: bool | None = Field(None, description="accepts the seed parameter")


class LLMConfig(BaseModel):
    """Which model answers and how hard we push it. base_url None means the embedded local server."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "qwen2.5-coder-1.5b-instruct",
        description="the model's name: an embedded one (inference/weights.py) or the endpoint's model id",
    )
    base_url: str | None = Field(
        None,
        description="an OpenAI-compatible http(s) URL, e.g. http://127.0.0.1:8000/v1; null: the embedded server",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="the environment variable holding the API key (never the key itself)"
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at most")
    max_retries: int = Field(6, ge=1, description="attempts in total per request, the first one included")
    timeout_s: float = Field(600.0, gt=0, description="seconds one attempt may take")
    n_ctx: int = Field(4096, description="context tokens per slot of the embedded server")
    n_threads: int | None = Field(None, description="threads of the embedded server; null: every core")
    price_prompt_per_1m: float = Field(0.0, ge=0, description="dollars per million prompt tokens (live)")
    price_completion_per_1m: float = Field(
        0.0, ge=0, description="dollars per million completion tokens (live)"
    )
    budget_usd: float | None = Field(
        None, ge=0, description="cap on the run's spend, all stages and sessions; null: no cap"
    )
    retry_initial_s: float = Field(
        0.25, ge=0, description="wait after failed attempt n: uniform in [0, this * 2^(n-1)] seconds"
    )
    retry_max_wait_s: float = Field(
        30.0, ge=0, description="cap on one backoff and on an honoured Retry-After"
    )
    max_connect_failures: int = Field(
        10, ge=1, description="failed connections in a row that stop a batch: the endpoint is down"
    )
    response_format_style: Literal["auto", "llama_cpp", "openai"] = Field(
        "auto",
        description="how a JSON schema is asked for: llama_cpp ({type: json_object, schema}) or openai "
        "({type: json_schema}); auto: llama_cpp for the embedded server, else openai",
    )
    capabilities: CapabilityOverrides = Field(
        default_factory=CapabilityOverrides,
        description="what the model accepts, over the table of known models (inference/capabilities.py)",
    )
    lora_path: str | None = Field(None, description="a GGUF LoRA adapter for the embedded server")
    identity: str | None = Field(
        None,
        description="what answers, for cache keys, when the model name does not say it (a served student)",
    )
    cache_fsync: bool = Field(
        False, description="fsync every cache append: survives power loss, not only a killed process"
    )
    backend: Literal["chat", "batch"] = Field(
        "chat", description="chat: live requests; batch: the provider's Batch API (half price, up to 24 h)"
    )
    batch: BatchConfig = Field(default_factory=BatchConfig)
    allowed_failures: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of a stage's requests that may fail (or be stopped by the budget) "
        "before the stage fails; 0: any failure fails the stage, which then says how to resume",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        """Refuse what is not an http(s) URL with a host: a typo would otherwise fail only when sending."""
        if v is None:
            return v
        bad = ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, not {v!r}")
        u = urlparse(v)
        try:
            u.port  # noqa: B018 (raises ValueError on a port that is not a number)
        except ValueError:
            raise bad from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise bad
        return v
