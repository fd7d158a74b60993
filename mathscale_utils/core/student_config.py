"""The params sections of the student's stages (04-06): how it is fine-tuned (``finetune:``), how it is evaluated on
MWPBench (``evaluate:``) and which runs the scaling curves compare (``scaling:``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import PAPER_PAIRS
from mathscale_utils.core.templates import PAPER_MAX_TOKENS, STOP_STRINGS, TemplateName


class FinetuneConfig(BaseModel):
    """The `finetune:` params section. Defaults are the CPU quickstart: fp32 LoRA r=16 on all linear layers of
    qwen2.5-coder-0.5b-instruct, the smallest embedded model that answers sensibly (the 135M one only checks
    plumbing), so that stage 05 compares a real student before and after. LoRA trains the 0.5B model at 40-60 tokens/s
    on 2 cores and an example is 200-300 tokens, so 20 optimizer steps of 2 examples (batch 1 x accumulation 2: no
    padding) take 2.5-5 minutes (measured: 143 s): enough for the loss to fall and the answers to take the trained
    format, not to change accuracy. lr 2e-4 is the usual LoRA rate. gpu_recipe() is the paper-scale setting on one
    GPU (QLoRA), full_recipe() the paper's own full fine-tuning on several GPUs (FSDP).

    An optimizer step sees per_device_batch x grad_accum x num_processes examples (`effective_batch`), with or
    without packing. launcher "accelerate" trains in `accelerate launch` subprocesses (training/launch.py)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        "qwen2.5-coder-0.5b-instruct",
        description="an embedded model's name, a Hugging Face id or a local HF directory",
    )
    train_file: str | None = Field(None, description="default: <run_dir>/mathscaleqa.jsonl from stage 03")
    prompt_format: Literal["chat", "alpaca"] = Field(
        "chat",
        description="alpaca: the bare template continued by the solution (base models); chat: the template as one "
        "user message through the chat template (examples.render_prompt)",
    )
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="full: every weight trained, a whole HF model saved"
    )
    lora_r: int = Field(16, description="LoRA rank")
    lora_alpha: int = Field(32, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = Field(0.05, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field("all-linear", description="layers that get an adapter")
    lr: float = Field(2e-4, description="peak learning rate")
    epochs: float = Field(1.0, description="passes over the training rows (unless max_steps is set)")
    max_steps: int | None = Field(20, description="optimizer steps; when set, overrides epochs")
    per_device_batch: int = Field(1, ge=1, description="examples per process per micro-batch")
    grad_accum: int = Field(2, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(512, description="tokens per example at most; longer ones are cut from the right")
    packing: bool = Field(
        False, description="padding-free: a micro-batch is one row, attention stays inside each example"
    )
    warmup_ratio: float = Field(0.03, description="share of the steps with a rising learning rate")
    scheduler: str = Field("linear", description="transformers' lr_scheduler_type")
    optim: str | None = Field(None, description="null: adamw_torch for lora/full, paged_adamw_8bit for qlora")
    seed: int = Field(0, description="seed of the split, the shuffling and the adapter's initialisation")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations: less memory, slower steps"
    )
    bf16: bool = Field(
        False, description="bf16 compute (CPUs here have none); with method full: fp32 weights"
    )
    save_steps: int = Field(10, description="a resumable checkpoint every this many steps")
    save_total_limit: int = Field(2, description="checkpoints kept")
    eval_holdout: int = Field(4, description="questions held out of training, answered before and after")
    max_examples: int | None = Field(None, description="cap on training rows")
    max_new_tokens: int = Field(256, description="tokens of the before / after answers")
    launcher: Literal["none", "accelerate"] = Field(
        "none", description="none: train in this process; accelerate: as `accelerate launch` ranks"
    )
    num_processes: int = Field(
        1, ge=1, description="ranks: GPUs, or CPU processes on gloo (overrides the accelerate config's)"
    )
    accelerate_config: str | None = Field(
        None, description="accelerate config file (configs/accelerate/), with launcher accelerate"
    )

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
        return cls(
            base_model=base_model,
            prompt_format="alpaca",
            method="qlora",
            lora_r=64,
            lora_alpha=16,
            lr=1e-4,
            epochs=3,
            max_steps=None,
            per_device_batch=8,
            grad_accum=16,
            max_length=2048,
            packing=True,
            gradient_checkpointing=True,
            bf16=True,
            optim="paged_adamw_8bit",
            save_steps=500,
            eval_holdout=64,
            launcher="accelerate",
            accelerate_config="configs/accelerate/one_gpu_qlora.yaml",
        )

    @classmethod
    def full_recipe(
        cls, base_model: str = "mistralai/Mistral-7B-v0.1", num_processes: int = 8
    ) -> FinetuneConfig:
        """The paper's full fine-tuning (lr 2e-5, 3 epochs, 128 examples per step) with FSDP on num_processes GPUs."""
        if 128 % (4 * num_processes):
            raise ValueError(
                f"128 examples per step need a number of GPUs that divides 32, not {num_processes}"
            )
        return cls(
            base_model=base_model,
            prompt_format="alpaca",
            method="full",
            lr=2e-5,
            epochs=3,
            max_steps=None,
            per_device_batch=4,
            grad_accum=128 // (4 * num_processes),
            max_length=2048,
            packing=True,
            bf16=True,
            optim="adamw_torch",
            save_steps=500,
            save_total_limit=1,
            eval_holdout=64,
            launcher="accelerate",
            num_processes=num_processes,
            accelerate_config="configs/accelerate/fsdp_full.yaml",
        )


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
    baseline: bool = Field(
        True,
        description="also evaluate the untrained base student (finetune.base_model) on the same items with the same "
        "prompt, on the same kind of server, when stage 04 trained a student (metrics.json: baseline)",
    )
    baseline_model: str | None = Field(
        None,
        description="with serve: off, the base student's name at baseline_base_url (default: finetune.base_model)",
    )
    baseline_base_url: str | None = Field(
        None,
        description="with serve: off, the endpoint serving the base student (default: evaluate.base_url; vLLM "
        "serves one full model per server, so a fully fine-tuned student's base needs its own)",
    )
    accept_unverified_server: bool = Field(
        False,
        description="with serve: off, ask a server whose model and weights cannot be checked against what stage 04 "
        "trained (metrics.json records the answers as unverified); false: such a server is refused",
    )
    request: Literal["auto", "chat", "completion"] = Field(
        "auto",
        description="completion: the bare template to /v1/completions (base models have no chat template, "
        "and a student trained with prompt_format alpaca saw exactly that); chat: one user message; auto: "
        "completion for a student trained on prompt_format alpaca, else chat",
    )

    @field_validator("baseline_base_url")
    @classmethod
    def _baseline_url(cls, v: str | None) -> str | None:
        return LLMConfig._http_url(v)

    @field_validator("serve", mode="before")
    @classmethod
    def _off_is_off(cls, v: object) -> object:
        """YAML 1.1 reads an unquoted `serve: off` as false: it means "off"."""
        return "off" if v is False else v

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
