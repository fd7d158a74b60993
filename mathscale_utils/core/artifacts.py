"""What a run writes, by name: the run directory's paths, the stages that write them, and the rows they pass on.

Every writer, reader, notebook and test finds a file through ``RunDir`` (``P.run.concepts``, ``P.run.metrics``, ...),
never through a file-name literal, and the chain, the tests and the README find the stages through ``STAGES``.
This module imports nothing from the package: it is the map of the data flow, readable on its own::

    01 extract   seeds -> concepts.jsonl (ConceptRow)
    02 graph     concepts -> concept_graph.graphml, views/, compositions.jsonl (CompositionRow)
    03 generate  compositions + seeds -> generation/shard-*.jsonl (GeneratedRow) -> mathscaleqa.jsonl (PairRow)
    04 finetune  mathscaleqa.jsonl -> adapter/ (+ adapter.gguf), finetune/loss.jsonl
    05 evaluate  the student (and its untrained base) -> predictions.jsonl (PredictionRow), metrics.json
    06 scaling   every run's manifest and metrics -> scaling_curves.png, scaling_summary.json
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict


class RunDir:
    """The files of one run directory (``outputs/<run_name>/``), one attribute each."""

    def __init__(self, root: str | Path):
        r = self.root = Path(root)
        # the chain
        self.manifest = r / "manifest.json"
        self.lock = r / ".lock"
        self.notebooks = r / "notebooks"
        self.cache = r / "cache"  # the default LLM cache (a sweep shares another one)
        self.usage = r / "usage"  # usage/<stage>.json: LLM requests, tokens and cost per stage
        self.batches = r / "batches"  # batches/<stage>/: Batch API jobs and their state
        # 01 extract
        self.concepts = r / "concepts.jsonl"
        self.concept_frequencies = r / "concept_frequencies.csv"
        self.extract_summary = r / "extract_summary.json"
        self.top_concepts_png = r / "top_concepts.png"
        self.test_concepts = r / "test_concepts.jsonl"  # concepts of a sample of test questions (coverage)
        # 02 graph
        self.graph = r / "concept_graph.graphml"
        self.graph_summary = r / "graph_summary.json"
        self.views = r / "views"
        self.degree_png = r / "degree_distribution.png"
        self.heatmap_png = r / "topic_kp_heatmap.png"
        self.compositions = r / "compositions.jsonl"
        self.compositions_stats = r / "compositions_stats.json"
        # 03 generate
        self.generation = r / "generation"
        self.generation_manifest = self.generation / "manifest.json"
        self.decontamination = self.generation / "decontamination.jsonl"
        self.duplicates = self.generation / "duplicates.jsonl"
        self.mathscaleqa = r / "mathscaleqa.jsonl"
        self.mathscaleqa_hf = r / "mathscaleqa_hf"
        self.dataset_card = r / "dataset_card.md"
        self.generate_summary = r / "generate_summary.json"
        self.funnel_png = r / "generate_funnel.png"
        # 04 finetune
        self.finetune = r / "finetune"
        self.loss = self.finetune / "loss.jsonl"
        self.checkpoints = self.finetune / "checkpoints"
        self.resume_key = self.finetune / "resume_key.txt"
        self.before_after = self.finetune / "before_after.jsonl"
        self.adapter = r / "adapter"
        self.adapter_gguf = self.adapter / "adapter.gguf"
        self.training_card = self.adapter / "training_card.json"
        self.training_card_md = self.adapter / "training_card.md"
        # 05 evaluate
        self.predictions = r / "predictions.jsonl"
        self.baseline_predictions = r / "baseline_predictions.jsonl"  # the untrained base student's answers
        self.metrics = r / "metrics.json"
        self.accuracy_png = r / "mwpbench_accuracy.png"
        self.fresh_gaokao_check = r / "fresh_gaokao_check.html"
        # 06 scaling
        self.scaling_png = r / "scaling_curves.png"
        self.concept_growth_png = r / "concept_growth.png"
        self.scaling_summary = r / "scaling_summary.json"

    def shard(self, i: int) -> Path:
        """generation/shard-NNNNN.jsonl: the raw teacher replies of one shard of compositions."""
        return self.generation / f"shard-{i:05d}.jsonl"

    def usage_file(self, stage: str) -> Path:
        return self.usage / f"{stage}.json"

    def notebook(self, name: str) -> Path:
        return self.notebooks / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class Stage:
    """One step of the chain: its notebook, the function in ``stages.py`` that does its work (``name``), the JSON
    summary it writes last and the files it must leave behind (``RunDir`` attribute names)."""

    id: str
    name: str
    notebook: str
    summary: str
    outputs: tuple[str, ...]
    llm: bool = False  # calls an LLM (its usage is counted and reported)

    @property
    def label(self) -> str:
        """The stage's name in usage files, LLM logs and Batch API jobs: "01_extract", "03_generate", ..."""
        return f"{self.id}_{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage(
        "01",
        "extract",
        "01_extract_concepts.ipynb",
        "extract_summary",
        ("concepts", "concept_frequencies", "top_concepts_png"),
        llm=True,
    ),
    Stage(
        "02",
        "graph",
        "02_concept_graph.ipynb",
        "graph_summary",
        ("graph", "compositions", "compositions_stats", "degree_png", "heatmap_png"),
    ),
    Stage(
        "03",
        "generate",
        "03_generate_questions.ipynb",
        "generate_summary",
        ("mathscaleqa", "dataset_card", "funnel_png"),
        llm=True,
    ),
    Stage(
        "04",
        "finetune",
        "04_finetune.ipynb",
        "training_card",
        ("adapter", "training_card_md", "loss"),
        llm=True,
    ),
    Stage(
        "05",
        "evaluate",
        "05_mwpbench_eval.ipynb",
        "metrics",
        ("predictions", "accuracy_png", "fresh_gaokao_check"),
        llm=True,
    ),
    Stage(
        "06", "scaling", "06_scaling_curves.ipynb", "scaling_summary", ("scaling_png", "concept_growth_png")
    ),
)
STAGE_IDS: tuple[str, ...] = tuple(s.id for s in STAGES)


def stage(stage_id: str) -> Stage:
    """The registered stage with this id ("01" or "1")."""
    sid = str(stage_id).strip().zfill(2)
    for s in STAGES:
        if s.id == sid:
            return s
    raise KeyError(f"unknown stage {stage_id!r}; known: {list(STAGE_IDS)}")


# ---- rows that cross stages ---------------------------------------------------------------------------------


@dataclass
class Record:
    """One question with its short answer: a seed (stage 01) or a benchmark item (stage 05).

    ``dataset`` is one of the MWPBench datasets, "fresh_gaokao_math_2023" or "custom"; ``data_topic`` MWPBench's
    finer task key ("gsm8k", "MATH.Algebra", ...); ``answer`` the short final answer as MWPBench keeps it (often
    LaTeX); ``meta`` source-specific extras (split, level, original options, source file and line, ...)."""

    id: str
    dataset: str
    data_topic: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            id=str(d["id"]),
            dataset=d["dataset"],
            data_topic=d["data_topic"],
            question=d["question"],
            answer=d["answer"],
            solution=d.get("solution"),
            meta=dict(d.get("meta") or {}),
        )


class ConceptRow(TypedDict):
    """concepts.jsonl (stage 01): one seed question and its concepts, before (raw_*) and after the frequency filter."""

    seed_id: str
    source: str
    question: str
    solution: str | None
    answer: str | None
    raw_topics: list[str]
    raw_knowledge_points: list[str]
    topics: list[str]
    knowledge_points: list[str]
    status: str  # "ok" | "failed"
    error: str | None
    attempts: int


class CompositionRow(TypedDict):
    """compositions.jsonl (stage 02): the concepts one random walk collected, in walk order."""

    id: str
    topics: list[str]
    knowledge_points: list[str]
    start_topic: str
    epoch: int


class GeneratedRow(TypedDict):
    """generation/shard-*.jsonl (stage 03): what the teacher replied for one composition, parsed."""

    composition_id: str
    shard: int
    shard_fp: str
    topics: list[str]
    knowledge_points: list[str]
    shot_ids: list[str]
    prompt_hash: str
    status: str | None  # "ok" | "rejected" | "error"
    reason: str | None
    first_reason: str | None
    attempts: int
    question: str | None
    solution: str | None
    answer: str | None
    finish_reason: str | None
    reply: str | None  # only when not ok
    request_keys: list[str]
    prompt_tokens: int
    completion_tokens: int


class PairRow(TypedDict):
    """mathscaleqa.jsonl (stage 03 -> 04): one training pair, generated or a seed."""

    id: str
    question: str
    solution: str
    answer: str
    topics: list[str]
    knowledge_points: list[str]
    composition_id: str | None
    teacher_model: str | None
    prompt_hash: str | None
    source: str  # "generated" | "seed"
    check_agrees: bool | None


class PredictionRow(TypedDict, total=False):
    """predictions.jsonl (stage 05): one benchmark item, the student's completion and both judges' verdicts."""

    id: str
    dataset: str
    data_topic: str
    question: str
    prompt: str
    completion: str  # "" when the request failed
    gold: str
    extracted: str | None
    paper_correct: bool
    paper_method: str
    paper_rule: str
    clean_prediction: str | None
    clean_reference: str | None
    reference_error: str | None
    strict_correct: bool
    strict_extracted: str | None
    strict_method: str
    strict_error: str | None
    error: str | None  # the request's error, if it failed
    finish_reason: str | None  # "stop", or "length" when max_tokens cut the answer
    loop: bool  # the answer ends in a repetition loop (evaluation/degenerate.py)
    length: bool  # it hit max_tokens
    no_answer: bool  # it declares no final answer
    cached: bool
    template: str
    model: str  # the student's identity: name, + "+lora:<hash>" with an adapter
    max_tokens: int
    request: str  # "chat" or "completion"
    request_key: str  # hash of everything that shapes the request (resume asks again when it changes)
