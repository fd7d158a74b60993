"""MWPBench's source files read into records (artifacts.Record): one reader per source, the official files, and
which datasets are present and how faithfully.

Sources (files under the shared data folder, see ``../shared/data/PROVENANCE.md``) and how each becomes records:

============================  ===========================================================================
MWPBench dataset              reader and reduction to question + short answer
============================  ===========================================================================
gsm8k                         ``gsm8k/{train,test}.jsonl``: answer = text after ``####``; solution = text
                              before it with the ``<<calc=result>>`` annotations removed
MATH                          ``math/{train,test}.jsonl``: answer = content of the last ``\\boxed{}`` of the
                              solution (rows with an empty box skipped: 7,498 train as in Table 1); data_topic
                              ``MATH.<Subject_with_underscores>``
college_math                  ``mwpbench/college_math_{train,test}.jsonl``: exact MWPBench rows
tal                           ``tal_scq5k_en/{train,test}.jsonl``: multiple choice -> word problem (below)
gaokao_bench_math_en          ``mwpbench/gaokao_bench_math_en_test.jsonl``: exact MWPBench rows (test only)
agieval.sat-math              ``agieval/sat-math.jsonl``: multiple choice -> word problem (test only)
agieval.math                  ``agieval/math.jsonl``: the ``answer`` field (test only)
math23k_en, ape210k_en,       only in the official ``full_{train,test}.json`` (MathScale's own English
agieval.gaokao-math-en        translations); missing without it
fresh_gaokao_math_2023        ``mwpbench/fresh_gaokao_math_2023.jsonl``: exact rows (30 questions)
============================  ===========================================================================

Multiple-choice -> word-problem conversion (METHOD.md §7.1, paper App. A.1): a question is *dropped* when its
lower-cased text contains one of the keywords below; otherwise it is kept and its short answer becomes the *content*
of its correct option. The paper lists six keywords; the five in ``MC_FILTER_KEYWORDS`` are known. The sixth is lost
in every text extraction of the PDF (shown as "?" or omitted): probably a non-ASCII phrase, possibly a literal "?",
which would remove almost every question (TAL test 1629 -> 452, SAT 111 -> 0), so it cannot be "?". With the five
known keywords the converted counts are TAL train 2712 / test 1629 and SAT 111, against the paper's 2638 / 1496 and
102; adding the bare keyword "which" gives SAT exactly 102 but TAL 2573 / 1472, so it is not the whole story either.
Hence TAL and SAT rebuilt here are *approximate* (a superset of unknown difference). ``extra_keywords`` lets a
user add a guess.

The official MWPBench files (``full_train.json``, ``full_test.json``, ``fresh_gaokao_math_2023.json``; JSON Lines
despite the name; rows ``{data_topic, data_source, question, answer, license, question_number}``) are read by
``read_official`` and grouped by ``data_topic`` into the ten datasets. When given, they make every dataset exact.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from mathscale_utils.core.artifacts import Record
from mathscale_utils.core.io import DataError, iter_jsonl
from mathscale_utils.grading.answers import find_boxed

# The ten MWPBench top-level entries, in the paper's Table 5 column order.
MWPBENCH_DATASETS: tuple[str, ...] = (
    "gsm8k", "MATH", "college_math", "tal", "math23k_en", "ape210k_en", "gaokao_bench_math_en",
    "agieval.gaokao-math-en", "agieval.sat-math", "agieval.math",
)  # fmt: skip
FRESH_GAOKAO = "fresh_gaokao_math_2023"
FRESH_GAOKAO_TOPIC = "FreshGaokaoMath2023"
CUSTOM = "custom"
ALL_DATASETS: tuple[str, ...] = MWPBENCH_DATASETS + (FRESH_GAOKAO, CUSTOM)

# Paper Table 1: (#train, #test) per dataset.
PAPER_COUNTS: dict[str, tuple[int, int]] = {
    "gsm8k": (7473, 1319), "MATH": (7498, 5000), "college_math": (1281, 2818), "tal": (2638, 1496),
    "math23k_en": (1000, 949), "ape210k_en": (967, 4874), "gaokao_bench_math_en": (0, 508),
    "agieval.gaokao-math-en": (0, 404), "agieval.sat-math": (0, 102), "agieval.math": (0, 938), FRESH_GAOKAO: (0, 30),
}  # fmt: skip

MATH_SUBJECTS: tuple[str, ...] = (
    "Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
    "Precalculus",
)  # fmt: skip
COLLEGE_MATH_TOPICS: tuple[str, ...] = (
    "algebra", "precalculus", "calculus", "vector_calculus", "probability", "linear_algebra", "differential_equation",
)  # fmt: skip

# The five known keywords of the paper's multiple-choice filter (the sixth is unknown; see the module docstring).
MC_FILTER_KEYWORDS: tuple[str, ...] = (
    "which of the following",
    "which one",
    "which is",
    "the following",
    "which statement",
)

# Relative locations of the shared data files.
SOURCE_FILES: dict[str, str] = {
    "gsm8k.train": "gsm8k/train.jsonl", "gsm8k.test": "gsm8k/test.jsonl",
    "MATH.train": "math/train.jsonl", "MATH.test": "math/test.jsonl",
    "college_math.train": "mwpbench/college_math_train.jsonl", "college_math.test": "mwpbench/college_math_test.jsonl",
    "tal.train": "tal_scq5k_en/train.jsonl", "tal.test": "tal_scq5k_en/test.jsonl",
    "gaokao_bench_math_en.test": "mwpbench/gaokao_bench_math_en_test.jsonl",
    "agieval.sat-math.test": "agieval/sat-math.jsonl", "agieval.math.test": "agieval/math.jsonl",
    f"{FRESH_GAOKAO}.test": "mwpbench/fresh_gaokao_math_2023.jsonl",
}  # fmt: skip

Split = Literal["train", "test"]


def dataset_of_topic(data_topic: str) -> str:
    """Map an MWPBench ``data_topic`` to its top-level dataset (``MATH.Algebra`` -> ``MATH``)."""
    if data_topic.startswith("MATH."):
        return "MATH"
    if data_topic.startswith("college_math."):
        return "college_math"
    if data_topic == FRESH_GAOKAO_TOPIC:
        return FRESH_GAOKAO
    if data_topic in MWPBENCH_DATASETS:
        return data_topic
    return CUSTOM


def math_topic(subject: str) -> str:
    """MATH subject -> MWPBench data_topic: "Counting & Probability" -> "MATH.Counting_&_Probability"."""
    return "MATH." + subject.strip().replace(" ", "_")


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _path(data_dir: str | Path, key: str) -> Path:
    return Path(data_dir) / SOURCE_FILES[key]


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(
            f"{path}: file not found (the shared data folder is set by $MATHSCALE_DATA_DIR or the params key "
            "data_root; see ../shared/data/PROVENANCE.md)"
        )
    return path


def _field(obj: dict, key: str, path: Path, line: int, types: type | tuple = str) -> Any:
    if key not in obj:
        raise DataError(f"{path}:{line}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, types):
        raise DataError(f"{path}:{line}: key '{key}' has type {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# readers, one per source


def read_gsm8k(data_dir: str | Path, split: Split) -> list[Record]:
    """GSM8K: answer = text after ``####``; solution = the text before it without ``<<...>>`` annotations."""
    path = _require(_path(data_dir, f"gsm8k.{split}"))
    out = []
    for idx, (line, obj) in enumerate(iter_jsonl(path)):
        question = _field(obj, "question", path, line)
        raw = _field(obj, "answer", path, line)
        if "####" not in raw:
            raise DataError(f"{path}:{line}: answer has no '####' final-answer marker")
        sol, ans = raw.rsplit("####", 1)
        sol = re.sub(r"<<[^<>]*>>", "", sol).strip()
        out.append(
            Record(
                id=f"gsm8k.{split}.{idx}",
                dataset="gsm8k",
                data_topic="gsm8k",
                question=question.strip(),
                answer=ans.strip(),
                solution=sol,
                meta={"split": split, "source_line": line},
            )
        )
    return out


def read_math(data_dir: str | Path, split: Split) -> list[Record]:
    """Hendrycks MATH: short answer = last ``\\boxed{}`` of the solution; data_topic ``MATH.<Subject>``.

    Rows whose last box is empty (``\\boxed{}``: two train problems, number_theory 7115 and 7117) are skipped,
    which gives exactly the paper's Table 1 counts (7,498 train, 5,000 test).
    """
    path = _require(_path(data_dir, f"MATH.{split}"))
    out = []
    for line, obj in iter_jsonl(path):
        problem = _field(obj, "problem", path, line)
        solution = _field(obj, "solution", path, line)
        subject = _field(obj, "type", path, line)
        answer = find_boxed(solution)
        if answer is None:
            raise DataError(f"{path}:{line}: solution has no \\boxed{{}} answer")
        if not answer:
            continue
        uid = obj.get("unique_id") or f"{split}/{subject}/{line}"
        out.append(
            Record(
                id=f"MATH.{uid}",
                dataset="MATH",
                data_topic=math_topic(subject),
                question=problem.strip(),
                answer=answer,
                solution=solution,
                meta={"split": split, "level": obj.get("level"), "type": subject, "unique_id": uid},
            )
        )
    return out


def _read_mwpbench_rows(path: Path, split: str) -> list[Record]:
    """Exact MWPBench rows (CollegeMath, GaokaoBench, Fresh-Gaokao, or the official files)."""
    out = []
    seen: Counter[str] = Counter()
    for line, obj in iter_jsonl(path):
        topic = _field(obj, "data_topic", path, line)
        question = _field(obj, "question", path, line)
        answer = obj.get("answer")
        if isinstance(answer, int | float) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise DataError(f"{path}:{line}: key 'answer' has type {type(answer).__name__}")
        qn = str(obj.get("question_number") or "")
        source = str(obj.get("data_source") or "")
        if topic.startswith("college_math."):
            base = f"{source}.{qn}" if qn else f"{topic}.line{line}"
        else:
            base = f"{topic}.{qn}" if qn else f"{topic}.line{line}"
        seen[base] += 1
        rid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(
            Record(
                id=rid,
                dataset=dataset_of_topic(topic),
                data_topic=topic,
                question=question,
                answer=answer,
                solution=None,
                meta={
                    "split": split,
                    "data_source": source,
                    "question_number": qn,
                    "license": obj.get("license", ""),
                    "source_line": line,
                },
            )
        )
    return out


def read_college_math(data_dir: str | Path, split: Split) -> list[Record]:
    """CollegeMath: the exact MWPBench rows (2,818 test / 1,281 train), licence kept in meta."""
    return _read_mwpbench_rows(_require(_path(data_dir, f"college_math.{split}")), split)


def read_gaokao_bench(data_dir: str | Path) -> list[Record]:
    """GaokaoBench-Math (English): the exact 508 MWPBench test rows."""
    return _read_mwpbench_rows(_require(_path(data_dir, "gaokao_bench_math_en.test")), "test")


def read_fresh_gaokao(data_dir: str | Path) -> list[Record]:
    """Fresh-GaokaoMath-2023: the exact 30 rows (dataset ``fresh_gaokao_math_2023``)."""
    return _read_mwpbench_rows(_require(_path(data_dir, f"{FRESH_GAOKAO}.test")), "test")


def mc_to_word(
    question: str,
    options: dict[str, str],
    label: str,
    extra_keywords: Sequence[str] = (),
    filter_text: str | None = None,
) -> tuple[str, str] | None:
    """The paper's multiple-choice -> word-problem conversion for one question.

    Returns ``(question, answer)`` with answer = the stripped *content* of the correct option, or None when the
    question is dropped: its lower-cased text contains a filter keyword (``MC_FILTER_KEYWORDS`` + extra_keywords),
    the correct label has no option, or the option is empty. ``filter_text`` (default: the question) is the text
    the keywords are looked for in (SAT: the question without its reading passage).
    """
    low = (question if filter_text is None else filter_text).lower()
    if any(k.lower() in low for k in (*MC_FILTER_KEYWORDS, *extra_keywords)):
        return None
    content = options.get(label)
    if content is None or not content.strip():
        return None
    return question.strip(), content.strip()


def read_tal(data_dir: str | Path, split: Split, extra_keywords: Sequence[str] = ()) -> list[Record]:
    """TAL-SCQ5K-EN converted to word problems (approximate: MWPBench's exact subset is unknown)."""
    path = _require(_path(data_dir, f"tal.{split}"))
    out = []
    for line, obj in iter_jsonl(path):
        problem = _field(obj, "problem", path, line)
        opts_raw = _field(obj, "answer_option_list", path, line, list)
        label = str(obj.get("answer_value") or "")
        options: dict[str, str] = {}
        for group in opts_raw:
            for opt in group if isinstance(group, list) else [group]:
                if isinstance(opt, dict) and "aoVal" in opt:
                    options[str(opt["aoVal"])] = str(opt.get("content") or "")
        conv = mc_to_word(problem, options, label, extra_keywords)
        if conv is None:
            continue
        analysis = obj.get("answer_analysis")
        solution = (
            "\n".join(a for a in analysis if isinstance(a, str)).strip()
            if isinstance(analysis, list)
            else None
        )
        out.append(
            Record(
                id=f"tal.{split}.{obj.get('queId') or line}",
                dataset="tal",
                data_topic="tal",
                question=conv[0],
                answer=conv[1],
                solution=solution or None,
                meta={
                    "split": split,
                    "qid": obj.get("qid"),
                    "difficulty": obj.get("difficulty"),
                    "options": options,
                    "label": label,
                },
            )
        )
    return out


def _agieval_options(raw: list) -> dict[str, str]:
    options = {}
    for i, opt in enumerate(raw):
        m = re.match(r"\s*\(([A-Z])\)\s*(.*)", str(opt), re.S)
        if m:
            options[m.group(1)] = m.group(2)
        else:
            options[chr(ord("A") + i)] = str(opt)
    return options


def read_agieval_sat(data_dir: str | Path, extra_keywords: Sequence[str] = ()) -> list[Record]:
    """AGIEval SAT-Math converted to word problems (approximate; passage, if any, placed before the question)."""
    path = _require(_path(data_dir, "agieval.sat-math.test"))
    out = []
    for line, obj in iter_jsonl(path):
        q = _field(obj, "question", path, line)
        passage = (obj.get("passage") or "").strip()
        text = f"{passage}\n{q.strip()}" if passage else q.strip()
        options = _agieval_options(_field(obj, "options", path, line, list))
        label = str(obj.get("label") or "")
        conv = mc_to_word(text, options, label, extra_keywords, filter_text=q)
        if conv is None:
            continue
        other = obj.get("other") or {}
        out.append(
            Record(
                id=f"agieval.sat-math.{line}",
                dataset="agieval.sat-math",
                data_topic="agieval.sat-math",
                question=conv[0],
                answer=conv[1],
                solution=other.get("solution") if isinstance(other, dict) else None,
                meta={"split": "test", "options": options, "label": label, "source_line": line},
            )
        )
    return out


def read_agieval_math(data_dir: str | Path) -> list[Record]:
    """AGIEval MATH: question + ``answer`` field (all 1,000 rows; the paper's 938-item subset is unknown)."""
    path = _require(_path(data_dir, "agieval.math.test"))
    out = []
    for line, obj in iter_jsonl(path):
        q = _field(obj, "question", path, line)
        ans = obj.get("answer")
        if not isinstance(ans, str) or not ans.strip():
            continue
        other = obj.get("other") or {}
        out.append(
            Record(
                id=f"agieval.math.{line}",
                dataset="agieval.math",
                data_topic="agieval.math",
                question=q.strip(),
                answer=ans.strip(),
                solution=other.get("solution"),
                meta={
                    "split": "test",
                    "level": other.get("level"),
                    "type": other.get("type"),
                    "source_line": line,
                },
            )
        )
    return out


def read_official(path: str | Path, split: str = "test") -> list[Record]:
    """The official MWPBench file (``full_train.json`` / ``full_test.json`` / ``fresh_gaokao_math_2023.json``).

    JSON Lines despite the extension. File order is kept (it matters: the per-task cap takes the first N).
    """
    return _read_mwpbench_rows(_require(Path(path)), split)


# ----------------------------------------------------------------------------------------------------------------
# the benchmark as a whole

# How each dataset is obtained without the official file: (status, reader).
_LOCAL_STATUS: dict[str, tuple[str, str]] = {
    "gsm8k": (
        "approximate",
        "gsm8k/ original rows; same items as MWPBench, short answer re-derived after '####'",
    ),
    "MATH": (
        "approximate",
        "math/ original rows; same test items, short answer re-derived from the last \\boxed{}",
    ),
    "college_math": ("exact", "exact MWPBench rows (mwpbench/college_math_*.jsonl)"),
    "tal": (
        "approximate",
        "TAL-SCQ5K-EN converted with the 5 known MC-filter keywords; MWPBench subset unknown",
    ),
    "math23k_en": ("missing", "only in the official full_*.json (MathScale's own translation)"),
    "ape210k_en": ("missing", "only in the official full_*.json (MathScale's own translation)"),
    "gaokao_bench_math_en": ("exact", "exact MWPBench rows (mwpbench/gaokao_bench_math_en_test.jsonl)"),
    "agieval.gaokao-math-en": (
        "missing",
        "only Chinese originals here; MWPBench's English translation is missing",
    ),
    "agieval.sat-math": (
        "approximate",
        "AGIEval SAT-Math converted with the 5 known keywords; subset unknown",
    ),
    "agieval.math": ("approximate", "all 1000 AGIEval MATH rows; MWPBench kept 938 (which ones is unknown)"),
    FRESH_GAOKAO: ("exact", "exact rows (mwpbench/fresh_gaokao_math_2023.jsonl)"),
}


def read_dataset(
    dataset: str, split: Split, data_dir: Path, extra_keywords: Sequence[str] = ()
) -> list[Record]:
    """One dataset's split from the shared data folder (empty when the folder cannot have it)."""
    if split == "train" and PAPER_COUNTS.get(dataset, (0, 0))[0] == 0:
        return []
    if dataset == "gsm8k":
        return read_gsm8k(data_dir, split)
    if dataset == "MATH":
        return read_math(data_dir, split)
    if dataset == "college_math":
        return read_college_math(data_dir, split)
    if dataset == "tal":
        return read_tal(data_dir, split, extra_keywords)
    if dataset == "gaokao_bench_math_en":
        return read_gaokao_bench(data_dir)
    if dataset == "agieval.sat-math":
        return read_agieval_sat(data_dir, extra_keywords)
    if dataset == "agieval.math":
        return read_agieval_math(data_dir)
    if dataset == FRESH_GAOKAO:
        return read_fresh_gaokao(data_dir)
    return []  # missing datasets


def _check_datasets(datasets: Iterable[str] | None) -> list[str]:
    if datasets is None:
        return list(MWPBENCH_DATASETS)
    ds = list(datasets)
    bad = [d for d in ds if d not in MWPBENCH_DATASETS and d != FRESH_GAOKAO]
    if bad:
        raise ValueError(f"unknown dataset(s) {bad}; known: {list(MWPBENCH_DATASETS) + [FRESH_GAOKAO]}")
    return ds


def load_mwpbench(
    split: Split,
    data_dir: str | Path | None,
    official_file: str | Path | None = None,
    datasets: Iterable[str] | None = None,
    extra_keywords: Sequence[str] = (),
) -> list[Record]:
    """MWPBench records of one split, grouped by dataset in ``MWPBENCH_DATASETS`` order, source order within.

    With ``official_file`` (``full_test.json`` / ``full_train.json``) every dataset is exact and its file order is
    kept. Without it, datasets are rebuilt from the shared data folder (``availability`` says how faithfully);
    missing datasets are simply absent. ``datasets`` restricts the load (default: all ten; "fresh_gaokao_math_2023"
    may be named too, test split only). A missing source file raises DataError.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    wanted = _check_datasets(datasets)
    if official_file is not None:
        recs = read_official(official_file, split)
        by_ds: dict[str, list[Record]] = defaultdict(list)
        for r in recs:
            by_ds[r.dataset].append(r)
        out = [r for d in wanted for r in by_ds.get(d, [])]
        if (
            FRESH_GAOKAO in wanted
            and not by_ds.get(FRESH_GAOKAO)
            and data_dir is not None
            and split == "test"
        ):
            out += read_fresh_gaokao(data_dir)
        return out
    if data_dir is None:
        raise DataError("no data folder and no official MWPBench file given")
    out = []
    for d in wanted:
        if d == FRESH_GAOKAO and split == "train":
            continue
        out += read_dataset(d, split, Path(data_dir), extra_keywords)
    return out


def availability(
    split: Split = "test",
    data_dir: str | Path | None = None,
    official_file: str | Path | None = None,
    include_fresh: bool = True,
    extra_keywords: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per dataset: status (exact / approximate / missing), count here vs the paper's Table 1, source.

    exact: the official file, or the exact MWPBench rows in the shared folder; approximate: rebuilt from the
    original source (same items but re-derived answers, or an unknown subset); missing: not obtainable here; none
    (train split only): MWPBench has no training split for this dataset. With ``official_file`` the statuses
    describe what ``load_mwpbench`` then loads: that file only.
    """
    names = list(MWPBENCH_DATASETS) + ([FRESH_GAOKAO] if include_fresh else [])
    counts: Counter[str] = Counter()
    status: dict[str, tuple[str, str]] = {}
    local = list(names)
    if official_file is not None:
        # load_mwpbench reads only the official file then (Fresh-Gaokao from the data folder if the file lacks it)
        for r in read_official(official_file, split):
            counts[r.dataset] += 1
        local = []
        for d in names:
            if counts[d]:
                status[d] = ("exact", f"official file {Path(official_file).name}")
            elif d == FRESH_GAOKAO:
                local.append(d)
            else:
                status[d] = ("missing", f"not in the official file {Path(official_file).name}")
    for d in local:
        st, note = _LOCAL_STATUS[d]
        n = 0
        if st != "missing" and data_dir is not None:
            try:
                n = len(read_dataset(d, split, Path(data_dir), extra_keywords))
            except DataError as e:
                st, note = "missing", str(e)
        elif data_dir is None and st != "missing":
            st, note = "missing", "no data folder"
        status[d] = (st, note)
        counts[d] = n
    for d in names:
        if split == "train" and PAPER_COUNTS[d][0] == 0:
            status[d] = ("none", "no training split in MWPBench")
    rows = []
    for d in names:
        paper = PAPER_COUNTS[d][0 if split == "train" else 1]
        st, note = status[d]
        rows.append(
            {
                "dataset": d,
                "status": st,
                "n_here": counts[d],
                "n_paper": paper,
                "count_matches_paper": counts[d] == paper,
                "note": note,
            }
        )
    return rows
