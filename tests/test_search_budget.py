"""`edgenas search` with budgets: the genotype handed over meets the budget, or the run stops at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.ops import EL_DARTS_OPS
from edgenas.search.budgets import BudgetInfeasible, BudgetSpec, plan_budgets_for_data

DATA = "synthetic:128"
TINY = ["--data", DATA, "--method", "el_darts", "--epochs", "2", "--warmup-epochs", "0", "--channels", "8",
        "--layers", "3", "--nodes", "2", "--batch-size", "32", "--budget-channels", "8", "--budget-layers", "3",
        "--quiet", "--json"]


def _minimum_macs() -> float:
    spec = BudgetSpec(mac_budget=1, channels=8, layers=3)
    with pytest.raises(BudgetInfeasible) as info:
        plan_budgets_for_data(spec, DATA, EL_DARTS_OPS, 2, profile_path=None, device=torch.device("cpu"))
    return info.value.minimum


def test_a_tight_budget_forces_a_cheaper_genotype_that_meets_it(tmp_path: Path) -> None:
    from edgenas.genotypes import load_genotype
    from edgenas.nets import default_config
    from edgenas.network_costs import network_macs

    cfg = default_config("cifar10", C=8, layers=3, input_hw=(16, 16), num_classes=10)
    runner = CliRunner()
    free = runner.invoke(app, ["search", *TINY, "--out", str(tmp_path / "free")])
    assert free.exit_code == 0, free.output
    free_macs = network_macs(load_genotype(str(tmp_path / "free" / "genotype.json")), cfg)
    minimum = _minimum_macs()
    assert free_macs > minimum  # (holds for this seed: the search did not pick the cheapest cell)
    budget = int((minimum + free_macs) / 2)
    # weight 0: the same architecture weights as the free run, so only the derivation differs
    result = runner.invoke(app, ["search", *TINY, "--mac-budget", str(budget), "--budget-weight", "0",
                                 "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["budget"]
    assert check["unconstrained"]["macs"] == free_macs
    assert check["constrained"]["macs"] <= budget < check["unconstrained"]["macs"]
    assert check["constrained"]["genotype"] != check["unconstrained"]["genotype"]
    # the file handed over is the constrained genotype, and its network, counted afresh, fits
    genotype = load_genotype(str(tmp_path / "s" / "genotype.json"))
    assert genotype.to_dict() == check["constrained"]["genotype"]
    assert network_macs(genotype, cfg) <= budget
    # the expected cost was logged against the budget every epoch
    history = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert all("mac_budget" in r["penalties"] for r in history)


def test_an_impossible_budget_exits_2_naming_the_minimum(tmp_path: Path) -> None:
    minimum = _minimum_macs()
    result = CliRunner().invoke(app, ["search", *TINY, "--mac-budget", "1K", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert f"{minimum / 1e6:.2f} M MACs" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # stopped before anything was written


def test_latency_budget_needs_a_forward_profile_at_the_budget_batch(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["search", *TINY, "--latency-budget", "5ms", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "needs a profile" in result.stderr
    prof = tmp_path / "p.json"
    made = runner.invoke(app, ["profile", "--device", "cpu", "--ops", "skip_connect", "--shapes", "8x16x16:1",
                               "--batch", "2", "--runs", "5", "--out", str(prof), "--quiet"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["search", *TINY, "--latency-budget", "5ms", "--profile", str(prof),
                                 "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "batch 2" in result.stderr
    result = runner.invoke(app, ["search", *TINY, "--latency-budget", "5ms", "--profile", str(prof),
                                 "--budget-batch", "2", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--profile-missing" in result.stderr
    # measuring the missing shapes makes the budget usable; the genotype's predicted latency fits
    result = runner.invoke(app, ["search", *TINY, "--latency-budget", "1000ms", "--profile", str(prof),
                                 "--budget-batch", "2", "--profile-missing", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["budget"]
    assert 0 < check["constrained"]["latency_ms"] <= 1000.0
    # the budget is whole-network milliseconds on the profile's runtime, provider and batch
    assert check["latency_units"] == "onnxruntime CPU provider, batch 2"
    assert "whole network" in check["notes"]["latency_ms"]


def test_budget_json_and_genotype_json_agree_on_a_near_tie(tmp_path: Path) -> None:
    """Both files come from the same final weights: a tie that only rounding would break cannot make
    budget.json name another genotype than genotype.json."""
    from edgenas.genotypes import load_genotype
    from edgenas.search.budgets import CELL_TYPES, num_edges
    from edgenas.search.loop import ArchWeights, _rounded_rows, write_search_outputs

    ops, steps = EL_DARTS_OPS, 2
    plan = plan_budgets_for_data(BudgetSpec(mac_budget=10**12, channels=8, layers=3), DATA, ops, steps,
                                 profile_path=None, device=torch.device("cpu"))
    assert plan is not None
    rows = []
    for e in range(num_edges(steps)):  # the last two operators differ by 4e-6, the first of them ahead
        top = 0.3 + 0.01 * e
        rest = (1 - 2 * top - 4e-6) / (len(ops) - 2)
        rows.append([rest] * (len(ops) - 2) + [top + 4e-6, top])
    exact = ArchWeights({t: torch.tensor(rows, dtype=torch.float64) for t in CELL_TYPES},
                        {t: None for t in CELL_TYPES})
    genotype = plan.derive(exact.ops, exact.edges).genotype
    rounded = ArchWeights.from_record({"op_weights": {t: _rounded_rows(w) for t, w in exact.ops.items()}})
    assert plan.derive(rounded.ops, rounded.edges).genotype != genotype  # the round trip would disagree
    check = write_search_outputs(tmp_path, exact, genotype, {"method": "el_darts"}, plan)
    written = json.loads((tmp_path / "budget.json").read_text())
    assert written["constrained"] == check["constrained"]
    assert load_genotype(str(tmp_path / "genotype.json")).to_dict() == written["constrained"]["genotype"]
    assert written["constrained"]["genotype"] == genotype.to_dict()


def test_resuming_a_finished_budgeted_search_keeps_both_files_in_agreement(tmp_path: Path) -> None:
    from edgenas.genotypes import load_genotype

    runner = CliRunner()
    args = ["search", *TINY, "--mac-budget", "1G", "--out", str(tmp_path / "s")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    check = json.loads(first.stdout)["budget"]
    # finished already, files there: they stay as written from the final weights
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["budget"] == check
    # finished, files lost (stopped between the last checkpoint and writing them): written again,
    # from one set of weights (the history's), so they still agree
    for name in ("budget.json", "genotype.json"):
        (tmp_path / "s" / name).unlink()
    rewritten = runner.invoke(app, [*args, "--resume"])
    assert rewritten.exit_code == 0, rewritten.output
    written = json.loads((tmp_path / "s" / "budget.json").read_text())
    assert load_genotype(str(tmp_path / "s" / "genotype.json")).to_dict() == written["constrained"]["genotype"]
