"""The params loader refuses bad files with the file, line and key, before anything runs."""

from pathlib import Path

import pytest

from mathscale_utils.core.params import ParamsError, load_params, parse_params, resolve_path
from mathscale_utils.runs.chain import sweep_params


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_repo_params_files_are_valid():
    for name in ["quickstart", "smoke", "paper"]:
        p = load_params(f"params/{name}.yaml", check_files=False)
        assert p.run_name == name
    for name, n in [("scaling_cpu", 3), ("ablation_cpu", 5), ("scaling_paper", 9)]:
        assert len(sweep_params(f"params/{name}.yaml", write=False)) == n


def test_unknown_key_names_key_and_line(tmp_path):
    p = write(tmp_path, "run_name: x\nllm:\n  model: m\n  concurency: 3\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "llm.concurency" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_line(tmp_path):
    p = write(tmp_path, "run_name: x\nextract:\n  min_count: lots\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert f"{p}:3" in str(e.value) and "extract.min_count" in str(e.value)


def test_every_problem_is_listed(tmp_path):
    p = write(tmp_path, "run_name: x\nbogus: 1\nseed: abc\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert "'bogus'" in str(e.value) and "'seed'" in str(e.value)


def test_missing_input_file(tmp_path):
    p = write(
        tmp_path, "run_name: x\nextract:\n  seeds:\n    source: jsonl\n    path: /nonexistent/seeds.jsonl\n"
    )
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert "extract.seeds.path" in str(e.value) and "/nonexistent/seeds.jsonl" in str(e.value)


def test_missing_params_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match=r"s.yaml:2: not valid YAML"):
        parse_params("run_name: x\nllm: {model: [a, b}\nseed: 1\n", source="s.yaml")


def test_bad_run_name_and_unknown_stage(tmp_path):
    with pytest.raises(ParamsError, match="run_name"):
        parse_params("run_name: ../escape\n")
    with pytest.raises(ParamsError, match="unknown stage"):
        load_params(write(tmp_path, "run_name: x\nstages: ['01', '09']\n"))


def test_relative_paths_resolve_against_project_root():
    assert resolve_path("params/quickstart.yaml").exists()
    p = parse_params("run_name: r\noutputs_dir: outputs\n")
    assert p.run_dir == resolve_path("outputs") / "r"
