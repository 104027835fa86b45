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
