"""One setting names the official MWPBench test file for stage 03's decontamination and stage 05's evaluation alike
(top-level `mwpbench_test_file`); the two keys it replaced are refused, naming file, line, key and what to write."""

from __future__ import annotations

import pytest

from mathscale_utils.core.params import ParamsError, load_params, parse_params
from mathscale_utils.runs import stages


@pytest.mark.parametrize(
    ("section", "key"), [("generate", "decontam_official_file"), ("evaluate", "official_test_file")]
)
def test_the_replaced_keys_are_refused_with_what_to_write_instead(tmp_path, section, key):
    sibling = {"generate": "n_questions: 3", "evaluate": "n_per_dataset: 3"}[section]  # a valid key before it
    f = tmp_path / "p.yaml"
    f.write_text(f"run_name: x\nseed: 1\n{section}:\n  {sibling}\n  {key}: /data/full_test.json\n")
    with pytest.raises(ParamsError) as e:
        load_params(f, check_files=False)
    msg = str(e.value)
    assert f"{f}:5: key '{section}.{key}'" in msg and "top-level key 'mwpbench_test_file'" in msg
    # also in flow style, on the section's own line
    with pytest.raises(ParamsError, match=f"<params>:2: key '{section}.{key}'"):
        parse_params(f"run_name: x\n{section}: {{{key}: f.json}}\n")


def test_one_file_for_decontamination_and_evaluation(tmp_path):
    official = tmp_path / "full_test.json"
    official.write_text("[]")
    f = tmp_path / "p.yaml"
    f.write_text(f"run_name: x\nmwpbench_test_file: {official}\n")
    P = load_params(f)
    assert stages._official(P) == official  # what stage 03 decontaminates against and stage 05 evaluates on
    assert not hasattr(P.generate, "decontam_official_file") and not hasattr(P.evaluate, "official_test_file")
    official.unlink()
    with pytest.raises(ParamsError, match=r"p.yaml:2: key 'mwpbench_test_file': file not found"):
        load_params(f)


def test_unquoted_serve_off_means_off():
    """YAML reads `serve: off` as false; it means the server you run."""
    assert parse_params("run_name: x\nevaluate:\n  serve: off\n").evaluate.serve == "off"
