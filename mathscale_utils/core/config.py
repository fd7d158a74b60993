"""Every params section: one pydantic model per section of a params file (``llm:``, ``extract:``, ``graph:``, ...).

This module imports no stage: each stage imports its section from here, and ``params.Params`` puts them together.
Defaults follow the paper where it says something (METHOD.md), and the CPU quickstart where it does not.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mathscale_utils.core.templates import PAPER_MAX_TOKENS, STOP_STRINGS, TemplateName

PAPER_PAIRS = 2_000_000  # MathScaleQA's generated pairs (paper §4.1)


class BatchConfig(BaseModel):
    """The `llm.batch:` section: how Batch API jobs are cut, polled and retried."""

    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(60.0, ge=0.0, description="seconds between status polls")
    max_wait_s: float | None = Field(
        None, ge=0.0, description="stop waiting after this long (state is kept); null = wait"
    )
    max_requests_per_job: int = Field(50_000, ge=1, description="OpenAI: at most 50,000 requests per batch")
    max_bytes_per_job: int = Field(190_000_000, ge=1_000, description="OpenAI: input files up to 200 MB")
    max_rounds: int = Field(3, ge=1, description="submissions per request in all (first + resubmissions)")
    completion_window: Literal["24h"] = "24h"
    endpoint: str = "/v1/chat/completions"
    price_factor: float = Field(0.5, gt=0.0, description="batch price / live price (OpenAI: 0.5)")
    adopt_scan: int = Field(1000, ge=0, description="batches listed to re-find one whose id was not saved")


class LLMConfig(BaseModel):
    """Which model answers and how hard we push it. base_url None means the embedded local server."""

    model_config = ConfigDict(extra="forbid")

    model: str = "qwen2.5-coder-1.5b-instruct"
    base_url: str | None = None  # an OpenAI-compatible http(s) URL; None: the embedded server
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)  # requests in flight at most
    max_retries: int = Field(6, ge=1)  # attempts in total per request, the first one included
    timeout_s: float = Field(600.0, gt=0)  # seconds one attempt may take
    n_ctx: int = 4096
    n_threads: int | None = None
    price_prompt_per_1m: float = Field(0.0, ge=0)
    price_completion_per_1m: float = Field(0.0, ge=0)
    budget_usd: float | None = Field(None, ge=0)  # cap on the run's spend, all stages and sessions
    retry_initial_s: float = Field(0.25, ge=0)  # wait after failed attempt n: uniform in [0, this * 2^(n-1)]
    retry_max_wait_s: float = Field(30.0, ge=0)  # cap on one backoff and on an honoured Retry-After
    max_connect_failures: int = Field(10, ge=1)  # failed connections in a row that stop a batch
    response_format_style: Literal["auto", "llama_cpp", "openai"] = "auto"  # auto: llama_cpp when embedded
    lora_path: str | None = None  # a GGUF LoRA adapter for the embedded server
    identity: str | None = (
        None  # what answers, for cache keys, when the model name does not say it (a student)
    )
    cache_fsync: bool = False  # fsync every cache append: survives power loss, not only a killed process
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
        try:
            u = urlparse(v or "http://embedded")  # u.port raises on a port that is not a number
            if u.scheme in ("http", "https") and u.hostname and (u.port or 0) >= 0:
                return v
        except ValueError:
            pass
        raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, not {v!r}")


class SeedsConfig(BaseModel):
    """Where stage 01 takes its seed questions from (the ``extract.seeds`` params section)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["builtin", "jsonl", "gsm8k", "math", "college_math", "tal", "mwpbench"] = Field(
        "builtin",
        description="builtin: seeds shipped with the package; jsonl: your own file (path); gsm8k/math/college_math/"
        "tal: that train split from the data folder; mwpbench: all available MWPBench train splits, or the official "
        "full_train.json given as path",
    )
    path: str | None = Field(
        None, description="JSONL file for source jsonl, or full_train.json for source mwpbench"
    )
    datasets: list[str] | None = Field(
        None,
        description="keep only seeds of these datasets, e.g. [gsm8k, MATH] for the paper's GSM8K+MATH-only ablation",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="use at most this many seeds: a seeded random sample, nested (a smaller limit keeps a subset of a "
        "larger one's seeds, and the datasets filter keeps the same order, so ablations compare subsets)",
    )
    sample_seed: int = Field(0, description="seed of that sample")

    @model_validator(mode="after")
    def _jsonl_needs_a_path(self) -> SeedsConfig:
        if self.source == "jsonl" and not self.path:
            raise ValueError("source 'jsonl' needs 'path' (your JSON Lines file of seed questions)")
        return self


class ExtractConfig(BaseModel):
    """The `extract:` section of a params file."""

    model_config = ConfigDict(extra="forbid")

    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    min_count: int = Field(
        2, ge=1, description="keep concepts extracted from at least this many seeds (paper: 2)"
    )
    max_topics: int = Field(2, ge=1)
    max_knowledge_points: int = Field(5, ge=1)
    temperature: float = 0.0
    max_tokens: int = 256
    json_schema: bool = True
    case_fold: bool = Field(
        False, description="merge concepts differing only in case (shown in their most common form)"
    )
    coverage_sample: int = Field(
        0,
        ge=0,
        description="test questions (stage 05's first items) whose concepts are extracted too, so that "
        "stage 06 can measure how much of them the generated data covers; 0 = none",
    )


class GraphConfig(BaseModel):
    """How the concept graph is built. Defaults follow the paper (Eq. 1) and METHOD.md §3."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(default=1e-5, gt=0, description="weight = log(count + epsilon) (paper: 1e-5)")
    min_freq: int = Field(
        default=1,
        ge=1,
        description="drop concepts seen in fewer seed questions; stage 01 already drops singletons, so 1 = no extra filter",
    )
    n_examples: int = Field(default=3, ge=0, description="seed ids kept per node and per edge (for tooltips)")
    louvain_resolution: float = Field(default=1.0, gt=0, description="resolution of the Louvain communities")
    drop_topics: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="ablation (paper Table 6): remove this fraction of distinct topics",
    )
    drop_kps: float = Field(
        default=0.0, ge=0, lt=1, description="ablation (paper Table 6): remove this fraction of distinct KPs"
    )
    drop_seed: int = Field(
        default=0, description="seed of the random choice of concepts the ablation removes"
    )


class ComposeConfig(BaseModel):
    """The random walk that composes concepts (METHOD.md §4). Each choice the paper leaves open is a parameter."""

    model_config = ConfigDict(extra="forbid")

    n_compositions: int | None = Field(
        default=None,
        ge=1,
        description="unique compositions wanted: the walk stops when it has them (paper: 2M); "
        "null = walk all the epochs",
    )
    epochs: int = Field(
        default=1000,
        ge=1,
        description="passes over all topics as start nodes (paper: ~1K); with n_compositions, "
        "only an upper bound, and the stage says when it stopped short",
    )
    n_topic_steps: tuple[int, int] = Field(default=(1, 2), description="inclusive range of topic-graph steps")
    n_kp_steps: tuple[int, int] = Field(
        default=(0, 4), description="inclusive range of KP-graph steps after the first KP"
    )
    include_start_topic: bool = Field(default=True, description="the start topic belongs to the composition")
    hybrid_from: Literal["last", "random"] = Field(
        default="last",
        description="topic -> KP step from the last topic reached, or a random collected topic",
    )
    allow_revisits: bool = Field(default=False, description="False: a walk never visits a node twice")
    drop_without_kp: bool = Field(default=True, description="drop compositions with no KP")
    dedup: bool = Field(default=True, description="drop compositions already produced (as unordered sets)")
    shuffle_topics: bool = Field(default=True, description="shuffle the start-topic order in every epoch")
    max_rejections: int = Field(
        default=8, ge=0, description="resample a visited neighbour this often before exact masked sampling"
    )
    chunk_walkers: int = Field(
        default=1 << 18, ge=1, description="walkers advanced together (memory vs. speed)"
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> ComposeConfig:
        for name in ("n_topic_steps", "n_kp_steps"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.n_topic_steps[1] == 0 and not self.include_start_topic:
            raise ValueError(
                "no topic steps and include_start_topic=False would give compositions without topics"
            )
        return self


class ViewsConfig(BaseModel):
    """Params section ``views:``: what the notebook draws and how big the views may get."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="write the HTML views into run_dir/views/")
    top_topics: int = Field(default=100, ge=1, description="topics in the topic-graph view")
    ego_topic: str | None = Field(default=None, description="topic of the ego view; None = the most frequent")
    ego_max_kps: int = Field(default=30, ge=0, description="strongest KP neighbours shown in the ego view")
    ego_max_topics: int = Field(
        default=15, ge=0, description="strongest topic neighbours shown in the ego view"
    )
    walk_context: int = Field(default=4, ge=0, description="strongest extra neighbours shown per walk node")
    physics_max_nodes: int = Field(
        default=300, ge=0, description="above this many nodes: precomputed positions, physics off"
    )
    whole_graph: bool = Field(default=True, description="write the whole-graph HTML (pyvis, fixed positions)")
    whole_graph_max_edges: int = Field(
        default=20_000,
        ge=0,
        description="strongest edges kept in the whole-graph HTML (every node keeps one)",
    )
    tooltip_questions: int = Field(default=3, ge=0, description="example seed questions per tooltip")
    tooltip_chars: int = Field(default=300, ge=20, description="each tooltip question is cut to this length")
    height: str = Field(default="720px", description="height of every view")
    seed: int | None = Field(default=None, description="layout / community seed; None = the params seed")


class GenerateConfig(BaseModel):
    """The `generate:` section of a params file. Defaults suit the embedded quickstart (about 13 s per question)."""

    model_config = ConfigDict(extra="forbid")

    n_questions: int | None = Field(20, ge=1, description="compositions to use, in file order; null = all")
    shots: int = Field(2, ge=0, le=8, description="few-shot seed examples per prompt (paper: not reported)")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=16)
    shard_size: int = Field(200, ge=1, description="compositions per resumable shard")
    # optional validation (the paper tried GPT-4 validation and dropped it; off by default)
    answer_check: bool = False
    answer_check_action: Literal["drop", "flag"] = "drop"
    answer_check_max_tokens: int = Field(1024, ge=16)
    # decontamination against the MWPBench test questions
    decontaminate: bool = True
    decontam_datasets: list[str] | None = Field(
        None, description="MWPBench datasets to check; null = all available"
    )
    decontam_official_file: str | None = Field(
        None, description="the official MWPBench full_test.json, if you have it"
    )
    ngram: int = Field(13, ge=3, description="word n-gram length for overlap decontamination")
    # near-duplicate removal among generated questions
    dedup: bool = True
    dedup_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="MinHash-estimated Jaccard of word shingles"
    )
    dedup_shingle: int = Field(3, ge=1, description="words per shingle for MinHash (3 suits short questions)")
    num_perm: int = Field(128, ge=16)
    # assembly and export
    include_seed_train: bool = Field(
        True, description="append the seed set, as the paper appends MWPBench train"
    )
    export_hf: bool = True
    card_examples: int = Field(3, ge=0)
    # cost estimate (before a run): prompt tokens = prompt characters / chars_per_token
    chars_per_token: float = Field(4.0, gt=0)
    est_completion_tokens: int = Field(300, ge=1, description="expected tokens per reply")
    est_retry_rate: float = Field(0.1, ge=0.0, le=1.0, description="expected share of replies retried")
    est_seconds_per_call: float = Field(13.0, gt=0, description="for the embedded server's time estimate")


class FinetuneConfig(BaseModel):
    """The `finetune:` params section. Defaults are the CPU quickstart: fp32 LoRA r=16 on all linear layers of
    qwen2.5-coder-0.5b-instruct, the smallest embedded model that answers sensibly (the 135M one only checks
    plumbing), so that stage 05 compares a real student before and after. LoRA trains the 0.5B model at 40-60 tokens/s
    on 2 cores and an example is 200-300 tokens, so 20 optimizer steps of 2 examples (batch 1 x accumulation 2: no
    padding) take 2.5-5 minutes (measured: 143 s): enough for the loss to fall and the answers to take the trained
    format, not to change accuracy. lr 2e-4 is the usual LoRA rate. gpu_recipe() is the paper-scale setting on one
    GPU (QLoRA), full_recipe() the paper's own full fine-tuning on several GPUs (FSDP).

    An optimizer step sees per_device_batch x grad_accum x num_processes examples (`effective_batch`), with or
    without packing. launcher "accelerate" trains in `accelerate launch` subprocesses (launch.py)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = "qwen2.5-coder-0.5b-instruct"  # embedded registry name, HF id or local HF directory
    train_file: str | None = None  # default: <run_dir>/mathscaleqa.jsonl from stage 03
    prompt_format: Literal["chat", "alpaca"] = "chat"  # see render_prompt
    method: Literal["lora", "qlora", "full"] = "lora"  # full: every weight trained, a whole HF model saved
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = 20  # when set, overrides epochs
    per_device_batch: int = Field(1, ge=1)  # examples per process per micro-batch
    grad_accum: int = Field(2, ge=1)
    max_length: int = 512
    packing: bool = False  # padding-free: a micro-batch is one row, attention stays inside each example
    warmup_ratio: float = 0.03
    scheduler: str = "linear"
    optim: str | None = None  # None: adamw_torch for lora/full, paged_adamw_8bit for qlora
    seed: int = 0
    gradient_checkpointing: bool = False
    bf16: bool = False  # CPUs here have none; with method full: fp32 weights, bf16 compute
    save_steps: int = 10
    save_total_limit: int = 2
    eval_holdout: int = 4  # questions held out of training, answered before/after
    max_examples: int | None = None  # cap on training rows
    max_new_tokens: int = 256  # for the before/after answers
    launcher: Literal["none", "accelerate"] = "none"  # none: in this process; accelerate: `accelerate launch`
    num_processes: int = Field(1, ge=1)  # ranks: GPUs, or CPU processes on gloo (overrides the config's)
    accelerate_config: str | None = None  # accelerate config file (configs/accelerate/), launcher accelerate

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step: per_device_batch x grad_accum x num_processes (the paper's 128)."""
        return self.per_device_batch * self.grad_accum * self.num_processes

    @model_validator(mode="after")
    def _launch_settings(self) -> FinetuneConfig:
        if self.launcher == "none" and (self.num_processes > 1 or self.accelerate_config):
            raise ValueError("num_processes > 1 and accelerate_config need launcher: accelerate")
        return self

    @classmethod
    def gpu_recipe(cls, base_model: str = "mistralai/Mistral-7B-v0.1") -> FinetuneConfig:
        """QLoRA on one GPU, as close to the paper's full fine-tuning as LoRA allows (see finetune.py)."""
        return cls(base_model=base_model, prompt_format="alpaca", method="qlora", lora_r=64, lora_alpha=16, lr=1e-4,
                   epochs=3, max_steps=None, per_device_batch=8, grad_accum=16, max_length=2048, packing=True,
                   gradient_checkpointing=True, bf16=True, optim="paged_adamw_8bit", save_steps=500,
                   eval_holdout=64, launcher="accelerate", accelerate_config="configs/accelerate/one_gpu_qlora.yaml")  # fmt: skip

    @classmethod
    def full_recipe(
        cls, base_model: str = "mistralai/Mistral-7B-v0.1", num_processes: int = 8
    ) -> FinetuneConfig:
        """The paper's full fine-tuning (lr 2e-5, 3 epochs, 128 examples per step) with FSDP on num_processes GPUs."""
        if 128 % (4 * num_processes):
            raise ValueError(
                f"128 examples per step need a number of GPUs that divides 32, not {num_processes}"
            )
        return cls(base_model=base_model, prompt_format="alpaca", method="full", lr=2e-5, epochs=3, max_steps=None,
                   per_device_batch=4, grad_accum=128 // (4 * num_processes), max_length=2048, packing=True,
                   bf16=True, optim="adamw_torch", save_steps=500, save_total_limit=1, eval_holdout=64,
                   launcher="accelerate", num_processes=num_processes,
                   accelerate_config="configs/accelerate/fsdp_full.yaml")  # fmt: skip


class EvalConfig(BaseModel):
    """Stage 05: MWPBench evaluation. Defaults reproduce the paper's protocol on whatever data is available."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] | None = Field(
        None,
        description="MWPBench datasets to evaluate (default: all available); names as in data.MWPBENCH_DATASETS",
    )
    n_per_dataset: int | None = Field(
        None, ge=1, description="stratified subset size per dataset; null = all"
    )
    template: TemplateName = Field(
        "alpaca", description="prompt template (paper: alpaca; OpenAI models: alpaca_force_ans)"
    )
    max_tokens: int = Field(PAPER_MAX_TOKENS, ge=1, description="max new tokens (paper: 2048)")
    stop: list[str] | None = Field(
        default_factory=lambda: list(STOP_STRINGS),
        description="stop strings (paper's vLLM driver); null for the OpenAI API, which takes at most 4",
    )
    cap_per_task: int | None = Field(
        2000, description="first N items per data_topic in file order (paper: 2000); null or -1 = no cap"
    )
    official_test_file: str | None = Field(
        None, description="the official MWPBench full_test.json (makes every dataset exact)"
    )
    include_fresh_gaokao: bool = Field(
        False, description="also evaluate Fresh-GaokaoMath-2023 (30 items, scored apart)"
    )
    model: str | None = Field(
        None, description="override the llm section's model for this stage (e.g. a fine-tuned one)"
    )
    base_url: str | None = Field(
        None,
        description="the endpoint serving evaluate.model (e.g. vLLM with the LoRA); default: llm.base_url",
    )
    use_adapter: bool = Field(
        True, description="use run_dir/adapter when it exists (wired by the fine-tuning stage)"
    )
    serve: Literal["auto", "off", "llama_cpp", "vllm"] = Field(
        "auto",
        description="who serves the trained student: llama_cpp (the GGUF base + adapter.gguf) or vllm, "
        "started by this stage and stopped after it; off: evaluate.model at evaluate.base_url, served by you; "
        "auto: llama_cpp when stage 04 wrote adapter.gguf, else off",
    )
    request: Literal["auto", "chat", "completion"] = Field(
        "auto",
        description="completion: the bare template to /v1/completions (base models have no chat template, "
        "and a student trained with prompt_format alpaca saw exactly that); chat: one user message; auto: "
        "completion for a student trained on prompt_format alpaca, else chat",
    )
    vllm_command: list[str] = Field(
        default_factory=lambda: ["vllm", "serve"],
        description="how to start vLLM (serve: vllm), before its arguments",
    )
    server_startup_s: float = Field(
        900.0, gt=0, description="how long a started student server may take to be ready"
    )
    chunk_size: int = Field(
        32, ge=1, description="requests per chat_many call; predictions are saved after each"
    )
    mc_extra_keywords: list[str] = Field(
        default_factory=list,
        description="extra multiple-choice filter keywords for TAL / SAT (the paper's 6th is unknown)",
    )


class ScalingConfig(BaseModel):
    """The `scaling:` section: which runs stage 06 compares, and the data size its cost table extrapolates to."""

    model_config = ConfigDict(extra="forbid")

    runs_dir: str | None = None  # where to look for runs; default: the params file's outputs_dir
    target_pairs: int = PAPER_PAIRS
