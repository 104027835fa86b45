"""The exact constrained derivation against brute force, and the search-time penalty."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from edgenas.cells import CELL_TYPES, edge_inputs, num_edges
from edgenas.errors import EdgenasError
from edgenas.search.budgets import (
    Budget,
    BudgetInfeasible,
    CostModel,
    derive,
)

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
STEPS = 2


def _random_model(rng: np.random.Generator, resource: str, steps: int = STEPS) -> CostModel:
    tables = {}
    for t in CELL_TYPES:
        tab = rng.integers(1, 100, size=(steps + 1, len(OPS))).astype(float)
        tab[:, 0] = 0.0  # none costs nothing
        tables[t] = tab
    return CostModel(resource, "MACs" if resource == "macs" else "ms", OPS, steps, tables,
                     fixed=float(rng.integers(0, 50)))


def _cell_choices(steps: int):
    """Every (edges) list of one cell: two distinct inputs per node, one non-none op each."""
    per_node = []
    for node in range(steps):
        opts = []
        for a, b in itertools.combinations(range(node + 2), 2):
            for oa, ob in itertools.product(range(1, len(OPS)), repeat=2):
                opts.append(((a, oa), (b, ob)))
        per_node.append(opts)
    return list(itertools.product(*per_node))


def _brute_force(weights, models, limits):
    edges = edge_inputs(STEPS)
    index = {e: k for k, e in enumerate(edges)}
    cells = _cell_choices(STEPS)

    def cell_eval(t, cell):
        score, costs = 0.0, np.zeros(len(models))
        for node, pair in enumerate(cell):
            for i, o in pair:
                score += np.log(weights[t][index[(node, i)], o])
                costs += [m.tables[t][i, o] for m in models]
        return score, costs

    evals = {t: [cell_eval(t, c) for c in cells] for t in CELL_TYPES}
    fixed = np.array([m.fixed for m in models])
    best = -np.inf
    for sn, cn in evals["normal"]:
        for sr, cr in evals["reduce"]:
            if np.all(fixed + cn + cr <= limits + 1e-9) and sn + sr > best:
                best = sn + sr
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_solver_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = {t: rng.dirichlet(np.ones(len(OPS)), size=num_edges(STEPS)) for t in CELL_TYPES}
    models = [_random_model(rng, "macs")] + ([_random_model(rng, "latency_ms")] if seed % 2 else [])
    # a limit between the cheapest and the unconstrained choice makes the budget bind
    free = derive(weights, OPS, STEPS)
    limits = []
    for m in models:
        lo = m.fixed + sum(m.tables[t][:, 1:].min() * 2 * STEPS for t in CELL_TYPES)
        limits.append(lo + rng.uniform(0.2, 0.8) * max(m.genotype_cost(free.genotype) - lo, 1.0))
    limits = np.array(limits)
    expected = _brute_force(weights, models, limits)
    if not np.isfinite(expected):
        with pytest.raises(EdgenasError):
            derive(weights, OPS, STEPS, budgets=list(zip(models, limits)))
        return
    got = derive(weights, OPS, STEPS, budgets=list(zip(models, limits)))
    assert got.score == pytest.approx(expected, abs=1e-9)
    for m, lim in zip(models, limits):
        assert got.costs[m.resource] <= lim + 1e-9
        assert got.costs[m.resource] == pytest.approx(m.genotype_cost(got.genotype))
    got.genotype.validate()


def test_unconstrained_derivation_is_the_darts_rule() -> None:
    """Without budgets: per node the two edges with the strongest non-none op, strongest op each."""
    rng = np.random.default_rng(7)
    steps = 4
    weights = {t: rng.dirichlet(np.ones(len(OPS)), size=num_edges(steps)) for t in CELL_TYPES}
    weights["normal"][:, 0] = 0.9  # a dominant none must not be chosen
    got = derive(weights, OPS, steps).genotype
    edges = edge_inputs(steps)
    for t in CELL_TYPES:
        w = weights[t]
        expected = []
        for node in range(steps):
            ks = [k for k, (n, _) in enumerate(edges) if n == node]
            strength = {k: w[k, 1:].max() for k in ks}
            top = sorted(ks, key=lambda k: -strength[k])[:2]
            expected += [(OPS[1 + int(np.argmax(w[k, 1:]))], edges[k][1]) for k in top]
        assert list(getattr(got, t)) == expected


def test_infeasible_budget_names_the_minimum() -> None:
    rng = np.random.default_rng(0)
    m = _random_model(rng, "macs")
    weights = {t: rng.dirichlet(np.ones(len(OPS)), size=num_edges(STEPS)) for t in CELL_TYPES}
    with pytest.raises(BudgetInfeasible) as info:
        derive(weights, OPS, STEPS, budgets=[(m, 1.0)])
    assert "cheapest possible network needs" in str(info.value)
    # the reported minimum is achievable, and just below it nothing is
    ok = derive(weights, OPS, STEPS, budgets=[(m, info.value.minimum)])
    assert ok.costs["macs"] == pytest.approx(info.value.minimum)
    with pytest.raises(BudgetInfeasible):
        derive(weights, OPS, STEPS, budgets=[(m, info.value.minimum - 0.5)])


def test_penalty_is_zero_within_budget_and_pushes_above() -> None:
    rng = np.random.default_rng(1)
    m = _random_model(rng, "macs")
    alpha = {t: torch.zeros(num_edges(STEPS), len(OPS), requires_grad=True) for t in CELL_TYPES}
    probs = {t: a.softmax(dim=1) for t, a in alpha.items()}
    expected = m.expected(probs)
    loose = Budget(m, float(expected.detach()) * 2, weight=1.0)
    pen, _ = loose.penalty(probs)
    assert float(pen.detach()) == 0.0
    tight = Budget(m, float(expected.detach()) / 2, weight=1.0)
    pen, cost = tight.penalty(probs)
    assert float(pen.detach()) == pytest.approx(1.0, rel=1e-6)
    pen.backward()
    # the gradient moves weight from the dearer operators to the cheaper ones
    g = alpha["normal"].grad
    assert g is not None and g.abs().sum() > 0
    row = 0
    costs_row = torch.tensor(m.tables["normal"][edge_inputs(STEPS)[row][1], 1:])
    assert torch.argmax(g[row, 1:]) == torch.argmax(costs_row)


def test_expected_cost_equals_genotype_cost_for_one_hot_weights() -> None:
    rng = np.random.default_rng(2)
    m = _random_model(rng, "macs")
    weights = {t: rng.dirichlet(np.ones(len(OPS)), size=num_edges(STEPS)) for t in CELL_TYPES}
    g = derive(weights, OPS, STEPS).genotype
    # one-hot op weights on the chosen edges, edge weights 1/2 on the two chosen inputs of each node
    ow, ew = {}, {}
    edges = edge_inputs(STEPS)
    for t in CELL_TYPES:
        w = torch.full((num_edges(STEPS), len(OPS)), 1.0 / len(OPS), dtype=torch.float64)
        e = torch.zeros(num_edges(STEPS), dtype=torch.float64)
        for k, (op, i) in enumerate(getattr(g, t)):
            node = k // 2
            idx = edges.index((node, i))
            w[idx] = 0.0
            w[idx, OPS.index(op)] = 1.0
            e[idx] = 0.5
        ow[t], ew[t] = w, e
    assert float(m.expected(ow, ew)) == pytest.approx(m.genotype_cost(g))


def _random_genotype(rng: np.random.Generator, ops: tuple[str, ...], steps: int):
    weights = {t: rng.dirichlet(np.ones(len(ops)), size=num_edges(steps)) for t in CELL_TYPES}
    return derive(weights, ops, steps).genotype


@pytest.mark.parametrize("setting", ["cifar10", "imagenet-mobile"])
def test_mac_model_is_exact_for_any_genotype(setting: str) -> None:
    """The additive model's MACs equal costs.count_macs on the built evaluation network."""
    from edgenas.costs import count_macs
    from edgenas.nets import build_network, default_config
    from edgenas.ops import DARTS_OPS
    from edgenas.search.budgets import mac_model

    hw = (32, 32) if setting == "cifar10" else (64, 64)
    cfg = default_config(setting, C=8, layers=5, input_hw=hw, num_classes=10)
    model = mac_model(cfg, DARTS_OPS, 3)
    rng = np.random.default_rng(3)
    for _ in range(3):
        g = _random_genotype(rng, DARTS_OPS, 3)
        assert model.genotype_cost(g) == count_macs(build_network(g, cfg), cfg.input_shape)


def test_latency_model_refuses_missing_shapes() -> None:
    from edgenas.device import TimingStats
    from edgenas.nets import default_config
    from edgenas.profiling import Profile, ProfileEntry, ShapeKey
    from edgenas.search.budgets import latency_model

    cfg = default_config("cifar10", C=4, layers=3, input_hw=(8, 8))
    ops = ("skip_connect", "sep_conv_3x3")
    stats = TimingStats(1.0, 0.9, 1.1, 1.0, 0.1, 5)
    entries = [ProfileEntry(ShapeKey("skip_connect", 4, 8, 8, 1), stats, 0, "x", 0, 0)]
    profile = Profile("cpu-test", 1, "fp32", "forward", {}, entries)
    with pytest.raises(EdgenasError, match="lacks .* shape.*--profile-missing"):
        latency_model(cfg, ops, 2, profile)


def test_plan_budgets_fails_early_with_the_minimum_and_confirms_results() -> None:
    from edgenas.ops import EL_DARTS_OPS
    from edgenas.search.budgets import BudgetSpec, plan_budgets

    spec = BudgetSpec(mac_budget=1_000, setting="cifar10", channels=8, layers=5)
    with pytest.raises(BudgetInfeasible, match="cheapest possible network needs"):
        plan_budgets(spec, EL_DARTS_OPS, 3, profile_path=None, device=torch.device("cpu"))
    with pytest.raises(EdgenasError, match="needs a profile"):
        plan_budgets(BudgetSpec(latency_budget_ms=5.0), EL_DARTS_OPS, 3, profile_path=None,
                     device=torch.device("cpu"))
    # a budget between the cheapest and the unconstrained network binds, and is met
    rng = np.random.default_rng(5)
    w = {t: rng.dirichlet(np.ones(len(EL_DARTS_OPS)), size=num_edges(3)) for t in CELL_TYPES}
    loose = plan_budgets(BudgetSpec(mac_budget=10**12, channels=8, layers=5), EL_DARTS_OPS, 3,
                         profile_path=None, device=torch.device("cpu"))
    free_macs = loose.report(w, None)["unconstrained"]["macs"]
    tight = BudgetSpec(mac_budget=int(free_macs * 0.8), channels=8, layers=5)
    plan = plan_budgets(tight, EL_DARTS_OPS, 3, profile_path=None, device=torch.device("cpu"))
    rep = plan.report(w, None)
    assert rep["constrained"]["macs"] <= tight.mac_budget < rep["unconstrained"]["macs"]


def test_latency_model_is_the_whole_network() -> None:
    """The fixed part of the profile is the model's fixed cost; without it the model is refused."""
    from dataclasses import replace

    from edgenas.device import TimingStats
    from edgenas.genotypes import GENOTYPES
    from edgenas.latency import predict_latency
    from edgenas.nets import default_config, edge_shape, plan_cells
    from edgenas.profiling import FixedPart, NetKey, Profile, ProfileEntry, ShapeKey
    from edgenas.search.budgets import latency_model, reference_genotype

    cfg = default_config("cifar10", C=4, layers=3, input_hw=(8, 8))
    ops = ("skip_connect", "sep_conv_3x3")
    keys = {ShapeKey(*edge_shape(p, op, i)) for p in plan_cells(reference_genotype(ops, 4), cfg)
            for op in ops for i in range(5)}
    entries = [ProfileEntry(k, TimingStats(0.1 if k.op == "skip_connect" else 0.3, 0.1, 0.3, 0.2, 0.0, 5), 0, "x", 0, 0)
               for k in sorted(keys, key=str)]
    part = FixedPart(NetKey.of(cfg), TimingStats(2.0, 2.0, 2.0, 2.0, 0.0, 5), 2.5, 0.5)
    profile = Profile("cpu-test", 1, "fp32", "forward", {}, entries, parts=[part])
    model = latency_model(cfg, ops, 4, profile)
    assert model.fixed == 2.0 and "whole network" in model.note
    g = GENOTYPES["DARTS_V2"]
    g = type(g)(tuple((o if o in ops else "sep_conv_3x3", i) for o, i in g.normal), g.normal_concat,
                tuple((o if o in ops else "skip_connect", i) for o, i in g.reduce), g.reduce_concat)
    assert model.genotype_cost(g) == pytest.approx(predict_latency(g, cfg, profile).total_ms)
    with pytest.raises(EdgenasError, match="fixed part of cifar10 C=4, 3 cells"):
        latency_model(cfg, ops, 4, replace(profile, parts=[]))


@pytest.mark.parametrize("text,ms", [("12ms", 12.0), ("0.5s", 500.0), ("7", 7.0), ("250us", 0.25)])
def test_parse_latency(text: str, ms: float) -> None:
    from edgenas.search.budgets import parse_latency

    assert parse_latency(text) == pytest.approx(ms)


def test_parse_latency_rejects_garbage() -> None:
    from edgenas.search.budgets import parse_latency

    with pytest.raises(EdgenasError):
        parse_latency("fast")
