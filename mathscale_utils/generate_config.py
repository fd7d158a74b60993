"""Stage 03's settings (the `generate:` section of a params file; paper §3.3, §4.1) and the names of its files.
METHOD.md §5 and §11 give the fill-ins for what the paper leaves open (k, temperature, max tokens, thresholds)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mathscale_utils.batch import BatchConfig

STAGE = "03_generate"
GEN_DIR = "generation"
OUTPUT_FILE = "mathscaleqa.jsonl"
HF_DIR = "mathscaleqa_hf"
CARD_FILE = "dataset_card.md"
SUMMARY_FILE = "generate_summary.json"


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
    # backend: live chat calls through the LLM client, or the provider's Batch API (then the same cache)
    backend: Literal["chat", "batch"] = "chat"
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # cost estimate (before a run): prompt tokens = prompt characters / chars_per_token
    chars_per_token: float = Field(4.0, gt=0)
    est_completion_tokens: int = Field(300, ge=1, description="expected tokens per reply")
    est_retry_rate: float = Field(0.1, ge=0.0, le=1.0, description="expected share of replies retried")
    est_seconds_per_call: float = Field(13.0, gt=0, description="for the embedded server's time estimate")


__all__ = [
    "STAGE",
    "GEN_DIR",
    "OUTPUT_FILE",
    "HF_DIR",
    "CARD_FILE",
    "SUMMARY_FILE",
    "GenerateConfig",
]
