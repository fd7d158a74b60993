"""The params sections of the method's stages (01-03): where the seeds come from and how concepts are extracted
(``extract:``), how the concept graph is built (``graph:``), how the random walk composes concepts (``compose:``),
what the views draw (``views:``), and how questions are generated and filtered (``generate:``). Defaults follow the
paper where it says something (METHOD.md), and the CPU quickstart where it does not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PAPER_PAIRS = 2_000_000  # MathScaleQA's generated pairs (paper §4.1)


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
    # decontamination against the MWPBench test questions (the official full_test.json: mwpbench_test_file, top level)
    decontaminate: bool = True
    decontam_datasets: list[str] | None = Field(
        None, description="MWPBench datasets to check; null = all available"
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
