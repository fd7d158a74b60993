"""`python -m mathscale_utils.runs.chain PARAMS --plan`: the numbers agree with each other, with stage 03's own
estimate and with the budget in the params file; nothing is sent and nothing is written."""

from __future__ import annotations

import json
import re

import pytest

from mathscale_utils.core.params import ROOT, load_params
from mathscale_utils.method import generate as gen
from mathscale_utils.runs import chain
from mathscale_utils.runs.plan import ASSUMPTIONS, plan


def run_plan(capsys, *args: str) -> tuple[int, str]:
    rc = chain.main([*args, "--plan"])
    return rc, capsys.readouterr().out


def test_the_paper_plan_agrees_with_its_budget_and_with_stage_03s_estimate(capsys, tmp_path):
    P = load_params(ROOT / "params" / "paper.yaml", check_files=False)
    rc, out = run_plan(capsys, str(ROOT / "params" / "paper.yaml"), "--json")
    p = json.loads(out)
    assert rc == 0 and p["backend"] == "batch" and p["budget_covers"]
    # the budget is the plan's cost with a margin, not a number picked apart from it
    assert p["cost_usd"] <= P.llm.budget_usd <= 1.3 * p["cost_usd"]
    factor = P.llm.batch.price_factor
    for name, row in p["stages"].items():
        assert row.get("cost_batch_usd", 0) == pytest.approx(
            row.get("cost_live_usd", 0) * factor, abs=0.01
        ), name
    est = gen.estimate_cost(P.generate, P.llm.model_copy(update={"backend": "chat"}), 2_000_000)
    g = p["stages"]["03 generate"]
    assert (g["requests"], g["prompt_tokens"], g["completion_tokens"]) == (
        est["calls"],
        est["prompt_tokens"],
        est["completion_tokens"],
    )
    assert g["cost_live_usd"] == pytest.approx(est["cost_usd"], abs=0.01)
    assert p["cost_usd"] == pytest.approx(p["total"]["cost_batch_usd"], abs=0.01)
    # the queue limit sets the number of waves of Batch API jobs
    waves = -(-g["enqueued_tokens"] // P.llm.batch.max_enqueued_tokens)
    assert g["wall_h"] == waves * 24 and f"{waves} wave(s)" in g["wall_note"]
    t = p["stages"]["04 finetune"]
    assert t["gpu_h"] > 0 and t["train_tokens"] == pytest.approx(3 * t["examples"] * (300 + 45), rel=0.01)
    assert set(p["assumptions"]) == set(ASSUMPTIONS)
    assert not P.run_dir.exists()  # nothing was written


def test_the_printed_plan_says_what_it_assumes_and_whether_the_budget_covers_it(capsys):
    rc, out = run_plan(capsys, str(ROOT / "params" / "paper.yaml"))
    assert rc == 0 and "nothing is sent, nothing is spent" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    live, batch = (float(x.replace(",", "")) for x in total.split()[4:6])
    assert batch == pytest.approx(live * 0.5, abs=0.01)
    assert re.search(r"llm\.budget_usd: \$1,000\.00; covered: yes, \$[\d.,]+ to spare", out)
    assert all(f"  {k} = " in out for k in ASSUMPTIONS)


def test_the_quickstart_plan_is_free_and_short(capsys):
    rc, out = run_plan(capsys, str(ROOT / "params" / "quickstart.yaml"), "--json")
    p = json.loads(out)
    assert rc == 0 and p["backend"] == "embedded" and p["cost_usd"] == 0 and p["budget_covers"]
    P = load_params(ROOT / "params" / "quickstart.yaml", check_files=False)
    assert p["stages"]["03 generate"]["requests"] == round(
        P.generate.n_questions * (1 + P.generate.est_retry_rate)
    )
    assert p["stages"]["01 extract"]["requests"] >= P.extract.coverage_sample
    assert 0 < p["total"]["wall_h"] < 1 and p["total"]["gpu_h"] == 0


def test_a_budget_below_the_plan_is_said_and_fails(capsys, tmp_path):
    text = (ROOT / "params" / "paper.yaml").read_text().replace("budget_usd: 1000", "budget_usd: 200")
    (tmp_path / "p.yaml").write_text(text)
    rc, out = run_plan(capsys, str(tmp_path / "p.yaml"))
    assert rc == 1 and "covered: NO" in out
    assert not plan(load_params(tmp_path / "p.yaml", check_files=False))["budget_covers"]


def test_a_sweep_is_planned_setting_by_setting_without_writing_its_params(capsys):
    sweep = ROOT / "params" / "scaling_paper.yaml"
    params_dir = ROOT / "outputs" / "scaling_paper" / "params"
    existed = params_dir.exists()
    rc, out = run_plan(capsys, "--sweep", str(sweep), "--json")
    plans = json.loads(out)
    assert rc == 0 and [p["run_name"] for p in plans][:2] == ["scaling_paper-n5k", "scaling_paper-n50k"]
    costs = {p["run_name"].split("-")[1]: p["cost_usd"] for p in plans}
    assert costs["n5k"] < costs["n50k"] < costs["n500k"] < costs["n2m"] <= plans[0]["budget_usd"]
    assert params_dir.exists() == existed
