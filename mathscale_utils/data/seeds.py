"""Seed questions for concept extraction (stage 01): the built-in set, your own JSONL file, or MWPBench train.

A bad row of a seed file is skipped and reported with its file and line; a sample (``limit``) is nested, so that a
smaller one keeps a subset of a larger one's seeds and ablations compare subsets.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.io import DataError
from mathscale_utils.core.method_config import SeedsConfig
from mathscale_utils.core.params import resolve_path
from mathscale_utils.data.benchmarks import CUSTOM, read_dataset, read_official

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def _tolerant_rows(path: Path) -> Iterable[tuple[int, Any, str | None]]:
    """(line number, parsed object or None, error) for every non-blank line: bad lines are reported, not raised."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                continue
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _seed_rows(path: Path, dataset: str, data_topic: str, warnings: list[str]) -> list[Record]:
    """Validate a seed JSONL (rows need "question"; may have "id", "solution", "answer"); skip and report bad rows."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out: list[Record] = []
    ids: set[str] = set()
    for line, obj, err in _tolerant_rows(path):
        where = f"{path}:{line}"
        if err is not None:
            warnings.append(f"{where}: skipped: {err}")
            continue
        if not isinstance(obj, dict):
            warnings.append(f"{where}: skipped: expected a JSON object, got {type(obj).__name__}")
            continue
        q = obj.get("question")
        if q is None:
            warnings.append(f"{where}: skipped: missing key 'question'")
            continue
        if not isinstance(q, str):
            warnings.append(
                f"{where}: skipped: key 'question' has type {type(q).__name__}, expected a string"
            )
            continue
        if not q.strip():
            warnings.append(f"{where}: skipped: empty 'question'")
            continue
        bad = None
        vals: dict[str, str | None] = {}
        for key, allow_num in (("id", True), ("solution", False), ("answer", True)):
            v = obj.get(key)
            if v is None or isinstance(v, str):
                vals[key] = v
            elif allow_num and isinstance(v, int | float) and not isinstance(v, bool):
                vals[key] = str(v)
            else:
                bad = f"key '{key}' has type {type(v).__name__}, expected a string"
                break
        if bad:
            warnings.append(f"{where}: skipped: {bad}")
            continue
        rid = vals["id"] or f"{path.stem}.{line}"
        if rid in ids:
            warnings.append(f"{where}: skipped: duplicate id {rid!r}")
            continue
        ids.add(rid)
        out.append(
            Record(
                id=rid,
                dataset=dataset,
                data_topic=data_topic,
                question=q.strip(),
                answer=(vals["answer"] or "").strip(),
                solution=vals["solution"],
                meta={"source_file": str(path), "source_line": line},
            )
        )
    return out


def _sample_rank(sample_seed: int, record_id: str) -> bytes:
    """A seed's place in the random order: a hash of its own id, so samples are nested across limits and datasets."""
    return hashlib.sha256(f"{sample_seed}\0{record_id}".encode()).digest()


def load_seeds(cfg: SeedsConfig, data_dir: str | Path | None) -> tuple[list[Record], list[str]]:
    """Seed questions for concept extraction, and human-readable warnings (skipped rows, sampling notes).

    builtin: ``mathscale_utils/resources/seeds.jsonl``; jsonl: ``cfg.path`` (malformed rows are skipped and each is
    reported with file and line in the warnings); gsm8k / math / college_math / tal: that train split of the shared
    data; mwpbench: the official full_train.json when ``cfg.path`` is set, else every available train split
    (gsm8k, MATH, college_math, TAL converted). With ``limit`` below the number available, a random sample seeded by
    ``sample_seed`` is kept (in source order). Each seed's place in the sample order is a hash of its id, so a smaller
    limit keeps a subset of a larger one's seeds, and filtering by ``datasets`` keeps the others' relative order: the
    GSM8K+MATH seeds among a 48-seed sample are exactly a ``datasets=[gsm8k, MATH]`` sample of that count. An empty
    result raises DataError.
    """
    warnings: list[str] = []
    src = cfg.source
    if src == "builtin":
        recs = _seed_rows(RESOURCES / "seeds.jsonl", CUSTOM, "builtin", warnings)
    elif src == "jsonl":
        if not cfg.path:
            raise DataError("seeds: source 'jsonl' needs 'path'")
        recs = _seed_rows(resolve_path(cfg.path), CUSTOM, CUSTOM, warnings)
    else:
        if src == "mwpbench" and cfg.path:
            recs = read_official(resolve_path(cfg.path), "train")
        else:
            if data_dir is None or not Path(data_dir).exists():
                raise DataError(f"seeds: source {src!r} needs the shared data folder, not found: {data_dir}")
            names = {
                "gsm8k": ["gsm8k"],
                "math": ["MATH"],
                "college_math": ["college_math"],
                "tal": ["tal"],
                "mwpbench": ["gsm8k", "MATH", "college_math", "tal"],
            }[src]
            recs = []
            for d in names:
                recs += read_dataset(d, "train", Path(data_dir))
            if src == "mwpbench":
                warnings.append(
                    "seeds: MWPBench train rebuilt from the shared data (gsm8k, MATH, college_math, TAL); math23k_en and "
                    "ape210k_en train are only in the official full_train.json (give it as seeds.path)"
                )
    if cfg.datasets is not None:
        have = sorted({r.dataset for r in recs})
        unknown = sorted(set(cfg.datasets) - set(have))
        if unknown:
            raise DataError(f"seeds: key 'datasets': {unknown} not among the seeds' datasets {have}")
        recs = [r for r in recs if r.dataset in cfg.datasets]
    if cfg.limit is not None and cfg.limit < len(recs):
        keep = sorted(
            heapq.nsmallest(
                cfg.limit, range(len(recs)), key=lambda i: _sample_rank(cfg.sample_seed, recs[i].id)
            )
        )
        warnings.append(
            f"seeds: using a random sample of {cfg.limit} of {len(recs)} (sample_seed={cfg.sample_seed})"
        )
        recs = [recs[i] for i in keep]
    elif cfg.limit is not None and cfg.limit > len(recs):
        warnings.append(f"seeds: limit {cfg.limit} is more than the {len(recs)} available; using all")
    if not recs:
        raise DataError(
            f"seeds: no usable seed questions from source {src!r}" + (f" ({cfg.path})" if cfg.path else "")
        )
    return recs, warnings
