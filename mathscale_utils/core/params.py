"""The one params loader: one YAML file per experiment, validated before anything runs.

Every stage reads the same file; ``Params`` gathers the sections defined in ``llm_config.py`` (the ``llm:`` section),
``method_config.py`` (stages 01-03) and ``student_config.py`` (04-06), and each stage imports only its own section.
Unknown keys, wrong types and missing files are reported with the key path and the line in the YAML file. Secrets
never live here: API keys come from environment variables only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mathscale_utils.core.artifacts import STAGE_IDS, RunDir
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.core.method_config import (
    ComposeConfig,
    ExtractConfig,
    GenerateConfig,
    GraphConfig,
    ViewsConfig,
)
from mathscale_utils.core.student_config import EvalConfig, FinetuneConfig, ScalingConfig

ROOT = Path(__file__).resolve().parents[2]


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the line."""


def safe_name(name: str) -> str:
    """A run, sweep or setting name: becomes a directory under outputs_dir, so never "." or ".." (which would make
    the repository itself the run directory and let executed notebooks overwrite the committed ones)."""
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a name (it would write outside the outputs folder)")
    return name


# ---- the whole file ---------------------------------------------------------------------------------------


class Params(BaseModel):
    """One experiment. Sections map to notebook stages; see params/*.yaml for documented examples."""

    model_config = ConfigDict(extra="forbid")

    run_name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")

    _run_name = field_validator("run_name")(safe_name)
    seed: int = 0
    outputs_dir: str = "outputs"
    cache_dir: str | None = None  # LLM response cache; default <run_dir>/cache (a sweep shares one)
    tags: dict[str, Any] = Field(default_factory=dict)  # free-form labels, e.g. a sweep's setting
    data_root: str | None = None
    mwpbench_test_file: str | None = Field(
        None,
        description="the official MWPBench full_test.json, if you have it: stage 03 removes generated questions "
        "that match its test questions and stage 05 evaluates on its rows (every dataset exact); one file for both",
    )
    stages: list[str] = Field(default_factory=lambda: ["01"])
    llm: LLMConfig = Field(default_factory=LLMConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    source_file: str | None = Field(default=None, exclude=True)

    @property
    def run_dir(self) -> Path:
        return resolve_path(self.outputs_dir) / self.run_name

    @property
    def llm_cache_dir(self) -> Path:
        return resolve_path(self.cache_dir) if self.cache_dir else self.run_dir / "cache"

    @property
    def run(self) -> RunDir:
        """This run's files by name (see artifacts.RunDir)."""
        return RunDir(self.run_dir)

    @property
    def data_dir(self) -> Path:
        """Where the shared benchmark files live: $MATHSCALE_DATA_DIR, then params data_root, then ../shared/data."""
        env = os.environ.get("MATHSCALE_DATA_DIR")
        if env:
            return Path(env)
        if self.data_root:
            return resolve_path(self.data_root)
        return (ROOT.parent / "shared" / "data").resolve()


def resolve_path(p: str | Path) -> Path:
    """Relative paths in params files are relative to the project root (where pyproject.toml lives)."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else (ROOT / p).resolve()


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Find the YAML line (1-based) of a key path, or of the deepest existing parent."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if k.value == str(key):
                    found = (k, v)
                    break
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[str, int, int]]:
    """(dotted key, line, line of its first occurrence) for every key given twice in one mapping: YAML loaders
    silently keep the last one, so a forgotten older setting would win unseen."""
    out: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            if k.value in seen:
                out.append((key, k.start_mark.line + 1, seen[k.value]))
            seen.setdefault(k.value, k.start_mark.line + 1)
            out += duplicate_keys(v, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += duplicate_keys(v, f"{path}.{i}")
    return out


# keys that were replaced: (section, key) -> what to write instead
RETIRED_KEYS = {
    ("generate", "decontam_official_file"): "mwpbench_test_file",
    ("evaluate", "official_test_file"): "mwpbench_test_file",
}


def retired_keys(data: dict, node: yaml.Node | None, source: str) -> list[str]:
    """One message per replaced key the file still uses, with its line and what to write instead (the top-level
    ``mwpbench_test_file`` names the official file once, for decontamination and evaluation alike)."""
    out = []
    for (section, key), instead in RETIRED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            line = _line_of(node, (section, key))
            out.append(
                f"{source}:{line}: key '{section}.{key}': replaced by the top-level key '{instead}' (one official "
                "MWPBench full_test.json for decontamination and evaluation alike): write it there instead"
            )
    return out


def parse_params(text: str, source: str = "<params>") -> Params:
    """Validate params from YAML text; raise ParamsError listing every problem with key and line."""
    try:
        node = yaml.compose(text)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ParamsError(f"{source}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of keys at the top level")
    if dups := duplicate_keys(node):
        msgs = [
            f"{source}:{line}: key '{key}': given twice (first on line {first})" for key, line, first in dups
        ]
        raise ParamsError("invalid params:\n  " + "\n  ".join(msgs))
    if retired := retired_keys(data, node, source):
        raise ParamsError("invalid params:\n  " + "\n  ".join(retired))
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(x) for x in loc)
            line = _line_of(node, loc)
            where = f"{source}:{line}" if line else source
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{where}: key '{key}': {msg}")
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None
    params.source_file = source
    return params


def load_params(path: str | Path, check_files: bool = True) -> Params:
    """Load and validate a params file; with check_files, also check that every input file it names exists."""
    path = resolve_path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    params = parse_params(path.read_text(encoding="utf-8"), source=str(path))
    bad = [s for s in params.stages if s not in STAGE_IDS]
    if bad:
        raise ParamsError(f"{path}: key 'stages': unknown stage(s) {bad}; known: {list(STAGE_IDS)}")
    if check_files:
        missing = [(key, p) for key, p in input_files(params) if not p.exists()]
        if missing:
            node = yaml.compose(path.read_text(encoding="utf-8"))
            msgs = []
            for key, p in missing:
                line = _line_of(node, tuple(key.split(".")))
                msgs.append(f"{path}:{line or '?'}: key '{key}': file not found: {p}")
            raise ParamsError("invalid params:\n  " + "\n  ".join(msgs))
    return params


def input_files(params: Params) -> list[tuple[str, Path]]:
    """(key, path) for every input file a params file names explicitly."""
    out: list[tuple[str, Path]] = []
    if params.extract.seeds.path:
        out.append(("extract.seeds.path", resolve_path(params.extract.seeds.path)))
    if params.mwpbench_test_file:
        out.append(("mwpbench_test_file", resolve_path(params.mwpbench_test_file)))
    if params.finetune.train_file:
        out.append(("finetune.train_file", resolve_path(params.finetune.train_file)))
    if params.finetune.accelerate_config:
        out.append(("finetune.accelerate_config", resolve_path(params.finetune.accelerate_config)))
    return out
