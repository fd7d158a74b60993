"""The paper's reported numbers: Table 5 shape, test sizes, recomputed micro / macro averages."""

from __future__ import annotations

import pytest

from mathscale_utils.evaluation.paper_tables import (
    PAPER_TEST_SIZES_CAPPED,
    TABLE5,
    TABLE5_COLUMNS,
    paper_row,
    recompute_micro_macro,
    table5_frame,
)

# ---------------------------------------------------------------------------------------------------------------
# the paper's numbers


def test_table5_shape_and_capped_sizes():
    assert all(len(v) == len(TABLE5_COLUMNS) == 12 for v in TABLE5.values())
    assert sum(PAPER_TEST_SIZES_CAPPED.values()) == 15534
    assert table5_frame().shape == (18, 12)


@pytest.mark.parametrize(
    "model,micro,macro",
    [
        ("MathScale-7B", 35.03, 37.54),
        ("GPT-4 (0314)", 51.97, None),
        ("MathScale-Mistral", 38.77, None),
        ("MetaMath-7B", 24.48, None),
    ],
)
def test_table5_recomputation_matches_method(model, micro, macro):
    mi, ma = recompute_micro_macro(paper_row(model))
    assert mi == pytest.approx(micro, abs=0.005)
    if macro is not None:
        assert ma == pytest.approx(macro, abs=0.005)


def test_table5_cap_matters_for_micro():
    sizes = dict(PAPER_TEST_SIZES_CAPPED, ape210k_en=4874)
    assert recompute_micro_macro(paper_row("MathScale-7B"), sizes=sizes)[0] == pytest.approx(36.09, abs=0.005)


def test_table5_rows_recompute_to_printed_averages():
    # every row but one recomputes to within rounding; the WizardMath-7B row as transcribed does not
    # (micro 16.04 vs 15.8, macro 18.18 vs 17.1): a per-dataset value is off in the source text.
    off = []
    for model in TABLE5:
        row = paper_row(model)
        mi, ma = recompute_micro_macro(row)
        if abs(mi - row["micro"]) > 0.1 or abs(ma - row["macro"]) > 0.1:
            off.append(model)
    assert off == ["WizardMath-7B"]
