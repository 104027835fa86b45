"""MAC and latency budgets: a differentiable penalty during search and an exact constrained derivation.

A budget refers to the *evaluation network* the genotype will become (its setting, channels, layers
and input size), not to the supernet. Its cost is additive over the chosen edges::

    cost(genotype) = fixed + sum over cell types t, over chosen edges (op o from input i) of C_t[i, o]

where ``C_t[i, o]`` is the cost of operator ``o`` on an edge fed by input ``i`` summed over every
cell of type ``t`` in the evaluation network (the input index matters only through the stride: in a
reduction cell, edges from the two cell inputs have stride 2), and ``fixed`` is everything the
genotype does not choose (stems, preprocessing, classifier).

During search the penalty is a hinge on the relative excess of the *expected* cost of the relaxed
architecture, ``weight * max(0, E[cost] / budget - 1)``. We prefer it to ProxylessNAS'
multiplicative ``(cost / target) ** beta`` because it does not push at all while the architecture is
within budget (accuracy alone decides there) and is scale-free, so one ``--budget-weight`` works for
MACs and milliseconds alike. The expected cost of a node is twice (a node keeps two inputs) the
edge-weighted mean over its incoming edges of the op-weighted mean edge cost, with the operator
weights renormalised over the non-``none`` operators, since ``none`` is never derived.

At derivation the choice is exact: per cell type and per node pick two incoming edges and one
operator each to maximise the total log operator weight (edge weights included) subject to every
budget. Nodes are independent groups of a multiple-choice knapsack; we solve it by a dynamic
programme over nodes that keeps only the Pareto frontier of (score, costs), pruned by what the
remaining nodes must at least add. Without budgets it reduces to the usual DARTS derivation.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.cells import CELL_TYPES, cell_type, edge_inputs, node_states, num_edges
from edgenas.costs import MAC_CONVENTION, OpInstance, op_macs
from edgenas.data.load import load_data
from edgenas.errors import EdgenasError
from edgenas.genotypes import Genotype
from edgenas.latency import fixed_ms, latency_lookup, op_scales, predict_latency, profile_missing
from edgenas.nets import NetConfig, edge_shape, plan_cells, setting_config
from edgenas.network_costs import network_macs
from edgenas.ops import get_op
from edgenas.profiling import Profile
from edgenas.values import MAX_MAGNITUDE, check_number, finite_fields

BUDGET_FORMAT = "edgenas.budget-check"  # budget.json: constrained vs unconstrained genotype
_LOG_FLOOR = 1e-30  # a weight of exactly 0 would give -inf scores and break ties arbitrarily


def real_ops(ops: Sequence[str]) -> list[int]:
    """Column indices of the operators derivation can pick (all but ``none``)."""
    return [j for j, op in enumerate(ops) if not get_op(op).is_zero]


@dataclass(frozen=True)
class CostModel:
    """Additive cost of a genotype's evaluation network in one resource.

    ``tables[t][i, o]``: cost of ``ops[o]`` on an edge from input ``i`` summed over all cells of
    type ``t``; shape ``(steps + 1, len(ops))``.
    """

    resource: str  # "macs" or "latency_ms"
    unit: str
    ops: tuple[str, ...]
    steps: int
    tables: Mapping[str, np.ndarray]
    fixed: float = 0.0
    note: str = ""
    _cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for t in CELL_TYPES:
            if self.tables[t].shape != (self.steps + 1, len(self.ops)):
                raise ValueError(f"{t} cost table has shape {self.tables[t].shape}, "
                                 f"expected {(self.steps + 1, len(self.ops))}")

    def genotype_cost(self, genotype: Genotype) -> float:
        total = float(self.fixed)
        for t in CELL_TYPES:
            for op, i in getattr(genotype, t):
                total += float(self.tables[t][i, self.ops.index(op)])
        return total

    def expected(
        self,
        op_weights: Mapping[str, torch.Tensor],
        edge_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Differentiable expected cost of the relaxed architecture.

        ``op_weights[t]``: (edges, ops) operator weights (rows sum to 1); ``edge_weights[t]``:
        (edges,) per-node normalised edge weights, or ``None`` for a uniform mean over a node's inputs.
        """
        total = None
        for t in CELL_TYPES:
            keep, table, uniform = self._device_tables(t, op_weights[t].device, op_weights[t].dtype)
            w = op_weights[t].index_select(1, keep)
            w = w / w.sum(dim=1, keepdim=True).clamp_min(_LOG_FLOOR)
            per_edge = (w * table).sum(dim=1)
            if edge_weights is not None and edge_weights.get(t) is not None:
                ew = edge_weights[t].to(w.dtype)
            else:
                ew = uniform
            cell = 2.0 * (ew * per_edge).sum()
            total = cell if total is None else total + cell
        assert total is not None
        return total + self.fixed

    def _device_tables(self, t: str, device: torch.device,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kept op columns, per-edge cost table (edges, kept ops), uniform edge weights) for cell type
        ``t`` on ``device``, made once: built from host data on every search step they would be
        blocking host-to-device copies."""
        key = (t, device, dtype)
        if key not in self._cache:
            keep = real_ops(self.ops)
            inputs = [i for _, i in edge_inputs(self.steps)]
            uniform = [1.0 / (n + 2) for n, _ in edge_inputs(self.steps)]
            self._cache[key] = (torch.tensor(keep, dtype=torch.long, device=device),
                                torch.as_tensor(self.tables[t][:, keep][inputs], dtype=dtype, device=device),
                                torch.tensor(uniform, dtype=dtype, device=device))
        return self._cache[key]


@dataclass(frozen=True)
class Budget:
    """A hard limit on one resource of the evaluation network, and the search-time penalty weight."""

    model: CostModel
    limit: float
    weight: float = 1.0

    def penalty(
        self,
        op_weights: Mapping[str, torch.Tensor],
        edge_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight * max(0, E[cost]/limit - 1), E[cost]) for the current architecture weights."""
        cost = self.model.expected(op_weights, edge_weights)
        return self.weight * torch.relu(cost / self.limit - 1.0), cost.detach()


@dataclass(frozen=True)
class Derivation:
    genotype: Genotype
    score: float  # total log weight of the chosen edges and operators
    costs: dict[str, float] = field(default_factory=dict)  # resource -> predicted cost


class BudgetInfeasible(EdgenasError):
    """No genotype of the space meets the budget; ``minimum`` gives the least achievable cost."""

    def __init__(self, resource: str, limit: float, minimum: float, unit: str, setting: str) -> None:
        self.resource, self.limit, self.minimum = resource, limit, minimum
        super().__init__(
            f"no genotype in this search space meets the {resource} budget of {_fmt(limit, unit)} "
            f"at {setting}: the cheapest possible network needs {_fmt(minimum, unit)}",
            f"raise the budget to at least {_fmt(minimum, unit)}, or evaluate a narrower or shallower network",
        )


def _fmt(value: float, unit: str) -> str:
    if unit == "MACs":
        return f"{value / 1e6:.2f} M MACs"
    return f"{value:.3f} {unit}"


# --- the exact solver ---------------------------------------------------------------------------

@dataclass
class _Frontier:
    """Pareto-optimal partial choices: scores (n,), costs (n, R), choices (n, groups so far)."""

    scores: np.ndarray
    costs: np.ndarray
    choices: np.ndarray


def _pareto(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated (higher score, no higher cost in any resource)."""
    n, r = costs.shape
    if r == 0:
        return np.array([int(np.argmax(scores))]) if n else np.zeros(0, dtype=int)
    order = np.lexsort((*costs.T[::-1], -scores))  # best score first, then cheapest
    keep: list[int] = []
    if r == 1:
        best = math.inf
        for k in order:
            if costs[k, 0] < best:
                keep.append(int(k))
                best = costs[k, 0]
        return np.array(keep, dtype=int)
    if r == 2:
        # Staircase of kept points: c0 ascending with c1 strictly descending; a new point (whose
        # score is no better than any kept) survives only if every kept point with c0 <= its c0
        # has a larger c1.
        xs: list[float] = []
        ys: list[float] = []
        for k in order:
            x, y = costs[k]
            pos = bisect.bisect_right(xs, x)
            if pos and ys[pos - 1] <= y:
                continue
            keep.append(int(k))
            # drop staircase points this one now dominates in cost (c0 >= x and c1 >= y)
            end = pos
            while end < len(xs) and ys[end] >= y:
                end += 1
            xs[pos:end] = [x]
            ys[pos:end] = [y]
        return np.array(keep, dtype=int)
    for k in order:  # general case: quadratic, fine for the small sets we see
        if all(np.any(costs[k] < costs[j]) for j in keep):
            keep.append(int(k))
    return np.array(keep, dtype=int)


def _node_options(
    log_w: np.ndarray, tables: list[np.ndarray], node: int, keep_ops: list[int], first_edge: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[tuple[int, int], tuple[int, int]]]]:
    """All (two inputs, one op each) choices of one node: scores (n,), costs (n, R), labels.

    A label lists the node's two edges as (input, op) pairs, the stronger edge first (the order
    DARTS-style derivations print).
    """
    scores, costs, labels = [], [], []
    inputs = range(node + 2)
    for a, b in itertools.combinations(inputs, 2):
        for oa, ob in itertools.product(keep_ops, keep_ops):
            sa, sb = log_w[first_edge + a, oa], log_w[first_edge + b, ob]
            scores.append(sa + sb)
            costs.append([tab[a, oa] + tab[b, ob] for tab in tables])
            labels.append(((a, oa), (b, ob)) if sa >= sb else ((b, ob), (a, oa)))
    return (np.asarray(scores, dtype=np.float64),
            np.asarray(costs, dtype=np.float64).reshape(len(scores), len(tables)), labels)


def derive(
    op_weights: Mapping[str, np.ndarray | torch.Tensor],
    ops: Sequence[str],
    steps: int,
    edge_weights: Mapping[str, np.ndarray | torch.Tensor | None] | None = None,
    budgets: Sequence[tuple[CostModel, float]] = (),
    setting: str = "the evaluation setting",
) -> Derivation:
    """The genotype maximising total log weight subject to ``cost <= limit`` for every budget.

    ``op_weights[t]``: (edges, ops) non-negative weights in the order of :func:`edge_inputs`.
    Raises :class:`BudgetInfeasible` (naming the least achievable cost) when no genotype fits.
    """
    ops = tuple(ops)
    keep_ops = real_ops(ops)
    if not keep_ops:
        raise EdgenasError("the search space has no operator other than 'none'",
                           "keep at least one real operator in the space")
    models = [m for m, _ in budgets]
    limits = np.array([lim for _, lim in budgets], dtype=np.float64)
    for m in models:
        if m.ops != ops or m.steps != steps:
            raise ValueError("cost model was built for another search space")

    groups = []  # one group per (cell type, node)
    for t in CELL_TYPES:
        w = np.asarray(torch.as_tensor(op_weights[t]).detach().cpu().double(), dtype=np.float64)
        if w.shape != (num_edges(steps), len(ops)):
            raise ValueError(f"{t} weights have shape {w.shape}, expected {(num_edges(steps), len(ops))}")
        log_w = np.log(np.maximum(w, _LOG_FLOOR))
        ew = None if edge_weights is None else edge_weights.get(t)
        if ew is not None:
            ew_np = np.asarray(torch.as_tensor(ew).detach().cpu().double())
            log_w = log_w + np.log(np.maximum(ew_np, _LOG_FLOOR))[:, None]
        tables = [np.asarray(m.tables[t], dtype=np.float64) for m in models]
        first = 0
        for node in range(steps):
            s, c, labels = _node_options(log_w, tables, node, keep_ops, first)
            idx = _pareto(s, c)
            groups.append((t, node, s[idx], c[idx], [labels[k] for k in idx]))
            first += node + 2

    fixed = np.array([m.fixed for m in models], dtype=np.float64)
    mins = np.array([g[3].min(axis=0) if len(models) else np.zeros(0)
                     for g in groups]).reshape(len(groups), len(models))
    minimum_total = fixed + mins.sum(axis=0)
    for r, m in enumerate(models):
        if minimum_total[r] > limits[r] * (1 + 1e-12):
            raise BudgetInfeasible(m.resource, float(limits[r]), float(minimum_total[r]), m.unit, setting)
    # what the groups after the k-th must add at least: lets us drop partial choices early
    rest_min = np.vstack([np.cumsum(mins[::-1], axis=0)[::-1][1:], np.zeros((1, len(models)))])

    front = _Frontier(np.zeros(1), fixed[None, :].copy(), np.zeros((1, 0), dtype=np.int64))
    for k, (_, _, s, c, _) in enumerate(groups):
        scores = (front.scores[:, None] + s[None, :]).ravel()
        costs = (front.costs[:, None, :] + c[None, :, :]).reshape(len(scores), len(models))
        parent = np.repeat(np.arange(len(front.scores)), len(s))
        option = np.tile(np.arange(len(s)), len(front.scores))
        ok = np.all(costs + rest_min[k] <= limits * (1 + 1e-12), axis=1) if len(models) else np.ones(len(scores), bool)
        scores, costs, parent, option = scores[ok], costs[ok], parent[ok], option[ok]
        idx = _pareto(scores, costs)
        front = _Frontier(scores[idx], costs[idx],
                          np.hstack([front.choices[parent[idx]], option[idx, None]]))

    if not len(front.scores):  # each budget alone is reachable, but not all of them together
        parts = ", ".join(f"{m.resource} >= {_fmt(v, m.unit)}" for m, v in zip(models, minimum_total))
        raise EdgenasError(
            f"no genotype in this search space meets all budgets together at {setting} "
            f"(each alone needs {parts}, but not with the same genotype)",
            "loosen one of the budgets",
        )
    best = int(np.argmax(front.scores))
    cells: dict[str, list[tuple[str, int]]] = {t: [] for t in CELL_TYPES}
    for (t, _, _, _, labels), choice in zip(groups, front.choices[best]):
        cells[t].extend((ops[o], i) for i, o in labels[choice])
    concat = node_states(steps)
    genotype = Genotype(normal=tuple(cells["normal"]), normal_concat=concat,
                        reduce=tuple(cells["reduce"]), reduce_concat=concat)
    costs_out = {m.resource: m.genotype_cost(genotype) for m in models}
    return Derivation(genotype=genotype, score=float(front.scores[best]), costs=costs_out)



# --- cost models of an evaluation network ---------------------------------------------------------

def reference_genotype(ops: Sequence[str], steps: int) -> Genotype:
    """Any valid genotype of the space: every node takes inputs 0 and 1 with the first real op.

    Only used to lay out the evaluation network (widths and resolutions do not depend on which
    edges are chosen, only on the concat width, which derivation fixes to all nodes).
    """
    op = next(o for o in ops if not get_op(o).is_zero)
    edges = tuple((op, i) for _ in range(steps) for i in (0, 1))
    concat = node_states(steps)
    return Genotype(normal=edges, normal_concat=concat, reduce=edges, reduce_concat=concat)


def _edge_tables(cfg: NetConfig, ops: Sequence[str], steps: int,
                 cost_of: Callable[[OpInstance], float]) -> dict[str, np.ndarray]:
    """Sum ``cost_of(OpShape)`` over every cell of each type, per (input index, op)."""

    tables = {t: np.zeros((steps + 1, len(ops))) for t in CELL_TYPES}
    for plan in plan_cells(reference_genotype(ops, steps), cfg):
        tab = tables[cell_type(plan.reduction)]
        for o, op in enumerate(ops):
            if get_op(op).is_zero:
                continue
            for i in range(steps + 1):
                tab[i, o] += cost_of(edge_shape(plan, op, i))
    return tables


def mac_model(cfg: NetConfig, ops: Sequence[str], steps: int) -> CostModel:
    """Exact MACs (costs.py convention) of the evaluation network ``cfg`` as an additive model."""

    ops = tuple(ops)
    tables = _edge_tables(cfg, ops, steps, op_macs)
    ref = reference_genotype(ops, steps)
    edges_only = CostModel("macs", "MACs", ops, steps, tables, fixed=0.0)
    total = network_macs(ref, cfg)
    return CostModel("macs", "MACs", ops, steps, tables,
                     fixed=float(total) - edges_only.genotype_cost(ref), note=MAC_CONVENTION)


def latency_model(cfg: NetConfig, ops: Sequence[str], steps: int, profile: Profile) -> CostModel:
    """Predicted latency of the whole evaluation network ``cfg`` (ms per call at the profile's batch,
    on its runtime and provider): the profile's fixed part of ``cfg`` plus the cell operators.

    Every (operator, shape) the evaluation network could need, and the fixed part, must be in the
    profile: a missing one raises (never counted as zero); :func:`edgenas.latency.profile_missing`
    measures them.
    """

    ops = tuple(ops)
    needed = []
    _edge_tables(cfg, ops, steps, lambda shape: needed.append(shape) or 0.0)
    found, missing = latency_lookup(profile, needed)
    fixed = fixed_ms(profile, cfg)
    if missing or fixed is None:
        shown = ", ".join(f"{s.op}@{s.C}x{s.H}x{s.W}:{s.stride}" for s in missing[:4])
        parts = ([f"{len(missing)} operator shape(s) (e.g. {shown})"] if missing else []) + \
            ([f"the fixed part of {cfg.setting} C={cfg.C}, {cfg.layers} cells"] if fixed is None else [])
        raise EdgenasError(
            f"the profile lacks what this evaluation network needs: {'; '.join(parts)}",
            "add --profile-missing to measure them on this device, or profile this network with "
            "`edgenas profile --setting ... --channels ... --layers ...`",
        )
    scales = op_scales(profile, cfg)
    tables = _edge_tables(cfg, ops, steps, lambda shape: found[shape] * scales.get(shape.op, 1.0))
    return CostModel("latency_ms", "ms", ops, steps, tables, fixed=fixed,
                     note=f"whole network, {profile.units()}: fixed part {fixed:.3g} ms plus cell operators")


# --- a budgeted search: what the CLI and `edgenas run` build from the user's options -------------

@dataclass(frozen=True)
class BudgetSpec:
    """The user's budgets and the evaluation network they refer to."""

    mac_budget: int | None = None
    latency_budget_ms: float | None = None
    setting: str = "cifar10"
    channels: int | None = None     # None: the setting's default (36 CIFAR, 48 ImageNet mobile)
    layers: int | None = None       # None: the setting's default (20 CIFAR, 14 ImageNet mobile)
    input_hw: tuple[int, int] | None = None  # None: the setting's (32x32 CIFAR, 224x224 ImageNet)
    num_classes: int | None = None  # None: the setting's (10, 100, 1000)
    budget_batch: int = 1           # latency budgets are per batch of this size
    weight: float = 1.0             # search-time penalty weight
    profile_missing: bool = False   # measure shapes the profile lacks instead of refusing

    def __post_init__(self) -> None:
        check_number(self.weight, "--budget-weight", minimum=0)
        finite_fields(self)

    @property
    def active(self) -> bool:
        return self.mac_budget is not None or self.latency_budget_ms is not None

    def net_config(self, in_channels: int = 3):

        return setting_config(self.setting, channels=self.channels, layers=self.layers, input_hw=self.input_hw,
                              num_classes=self.num_classes, in_channels=in_channels)


def parse_latency(text: str | float, what: str = "latency budget") -> float:
    """``12ms``, ``0.012s``, ``12`` (ms) -> milliseconds."""
    import re

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*(ms|s|us)?\s*", str(text))
        if not m:
            raise EdgenasError(f"cannot read {what} {text!r}", "write it like 12ms or 0.012s")
        value = float(m.group(1)) * {"ms": 1.0, None: 1.0, "s": 1e3, "us": 1e-3}[m.group(2)]
    return float(check_number(value, what, above=0, maximum=MAX_MAGNITUDE, hint="give e.g. 12ms"))


@dataclass
class BudgetPlan:
    """Budgets bound to one search space and evaluation network: penalties, deriver, confirmation."""

    spec: BudgetSpec
    cfg: NetConfig  # the evaluation network
    ops: tuple[str, ...]
    steps: int
    budgets: dict[str, Budget]  # "mac_budget" / "latency_budget" -> Budget
    profile: Profile | None = None

    def penalties(self) -> dict[str, Budget]:
        return dict(self.budgets)

    def derive(self, op_weights, edge_weights) -> Derivation:
        return derive(op_weights, self.ops, self.steps, edge_weights,
                      budgets=[(b.model, b.limit) for b in self.budgets.values()],
                      setting=self.describe_setting())

    def deriver(self):
        return lambda op_weights, edge_weights: self.derive(op_weights, edge_weights).genotype

    def fits(self, genotype: Genotype) -> bool:
        """Whether ``genotype`` meets every budget by the additive cost models (the derivation's test)."""
        return all(b.model.genotype_cost(genotype) <= b.limit * (1 + 1e-12) for b in self.budgets.values())

    def describe_setting(self) -> str:
        c = self.cfg
        return f"{c.setting} (C={c.C}, {c.layers} cells, {c.input_hw[0]}x{c.input_hw[1]})"

    def measure(self, genotype: Genotype) -> dict[str, Any]:
        """The costs of ``genotype``'s evaluation network, counted on the built network itself."""

        out: dict[str, Any] = {"macs": network_macs(genotype, self.cfg)}
        if self.profile is not None:
            out["latency_ms"] = predict_latency(genotype, self.cfg, self.profile).total_ms
        return out

    def confirm(self, genotype: Genotype) -> dict[str, Any]:
        """Build the network, count and predict its costs, and check every budget holds."""
        measured = self.measure(genotype)
        for b in self.budgets.values():
            value = measured.get(b.model.resource)
            if value is None or value > b.limit * (1 + 1e-9):
                raise EdgenasError(
                    f"internal check failed: the derived genotype's {b.model.resource} is {value}, "
                    f"above the budget {b.limit}", "please report this as a bug")
        return measured

    def report(self, op_weights, edge_weights) -> dict[str, Any]:
        """The constrained genotype beside the unconstrained argmax, each with its costs."""
        free = derive(op_weights, self.ops, self.steps, edge_weights)
        held = self.derive(op_weights, edge_weights)
        limits = {b.model.resource: b.limit for b in self.budgets.values()}
        return {
            "setting": self.cfg.to_dict(),
            "limits": limits,
            "latency_units": self.profile.units() if self.profile is not None else None,
            "penalty": "weight * max(0, E[cost] / budget - 1)",
            "weight": self.spec.weight,
            "constrained": {"genotype": held.genotype.to_dict(), "score": held.score,
                            **self.confirm(held.genotype)},
            "unconstrained": {"genotype": free.genotype.to_dict(), "score": free.score,
                              **self.measure(free.genotype)},
            "notes": {b.model.resource: b.model.note for b in self.budgets.values()},
        }


def plan_budgets(spec: BudgetSpec, ops: Sequence[str], steps: int, *, profile_path: str | Path | None,
                 device: torch.device, in_channels: int = 3) -> BudgetPlan | None:
    """Build the cost models for ``spec`` (None when no budget is set) and fail early when the
    budget cannot be met by any genotype of the space."""
    if not spec.active:
        return None
    ops = tuple(ops)
    cfg = spec.net_config(in_channels)
    budgets: dict[str, Budget] = {}
    profile = None
    if spec.mac_budget is not None:
        budgets["mac_budget"] = Budget(mac_model(cfg, ops, steps), float(spec.mac_budget), spec.weight)
    if spec.latency_budget_ms is not None:
        profile = _budget_profile(spec, cfg, ops, steps, profile_path, device)
        budgets["latency_budget"] = Budget(latency_model(cfg, ops, steps, profile),
                                           spec.latency_budget_ms, spec.weight)
    plan = BudgetPlan(spec, cfg, ops, steps, budgets, profile)
    # Uniform weights: derivation raises BudgetInfeasible (with the minimum) before any training.
    uniform = {t: np.ones((num_edges(steps), len(ops))) for t in CELL_TYPES}
    plan.derive(uniform, None)
    return plan


def plan_budgets_for_data(spec: BudgetSpec, data: str, ops: Sequence[str], steps: int, *,
                          profile_path: str | Path | None, device: torch.device, seed: int = 0) -> BudgetPlan | None:
    """:func:`plan_budgets` for a network trained on ``data``.

    A CIFAR-style budget refers to the network retrained on this data, so its input size, classes
    and input channels come from the data unless given; the ImageNet mobile setting is defined at
    224x224 with 1000 classes and keeps its own.
    """
    if not spec.active:
        return None

    bundle = load_data(data, subset=2, seed=seed)
    if spec.setting != "imagenet-mobile":
        spec = dataclasses.replace(spec, input_hw=spec.input_hw or bundle.image_hw,
                                   num_classes=spec.num_classes or bundle.num_classes)
    return plan_budgets(spec, ops, steps, profile_path=profile_path, device=device,
                        in_channels=bundle.in_channels)


def _budget_profile(spec: BudgetSpec, cfg: NetConfig, ops: Sequence[str], steps: int,
                    profile_path: str | Path | None, device: torch.device) -> Profile:
    if profile_path is None:
        raise EdgenasError("a latency budget needs a profile of the target device",
                           "add --profile profiles/<device>.json (made by `edgenas profile`)")
    profile = Profile.load(profile_path)
    if profile.mode != "forward":
        raise EdgenasError(f"{profile_path} was measured in {profile.mode!r} mode; a deployment latency "
                           "budget needs inference (forward) timings",
                           "profile with `edgenas profile --mode forward`")
    if profile.batch != spec.budget_batch:
        raise EdgenasError(f"{profile_path} was measured at batch {profile.batch}, the latency budget is "
                           f"for batch {spec.budget_batch}",
                           f"profile at --batch {spec.budget_batch} or pass --budget-batch {profile.batch}")
    if spec.profile_missing:
        needed: list = []
        _edge_tables(cfg, ops, steps, lambda s: needed.append(s) or 0.0)
        profile = profile_missing(profile, needed, device, networks=[cfg])
    return profile
