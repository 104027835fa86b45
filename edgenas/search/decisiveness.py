"""Has the search chosen? Per-edge decisiveness of the operator weights, and seed agreement.

Decisiveness of an edge is read from the operator weights the genotype is derived from, restricted
to the operators derivation can pick (``none`` is never derived) and renormalised:

* the *margin* ``p(1) - p(2)`` between the strongest and the second-strongest operator, and
* the *normalised entropy* ``H(p) / log(k)`` over the ``k`` real operators (1 = uniform, 0 = one-hot).

An edge is *decided* when its margin reaches :data:`DECIDED_MARGIN`; a derived genotype is *mostly
undecided* when fewer than half of its chosen edges are decided, and is then reported as close to a
random pick. The threshold comes from a measurement (``benchmarks/search_decisiveness.py`` prints
it; the README gives it): far above the margins initialisation leaves, and the margin below which
two seeds' strongest operators agreed only at chance. Decided is not the same as reproducible: the
seed agreement below is the check of that.

Seed agreement compares the genotypes of the same search run with different seeds. Per node of a
cell (two chosen edges each) and per pair of seeds it counts, out of 2: the shared inputs, the
shared operators (as a multiset, ignoring the inputs) and the shared (input, operator) edges; the
figures are means over seed pairs. The chance level is the same mean for two genotypes drawn at
random from the space (each node: two distinct inputs uniformly, an operator for each uniformly),
computed exactly by enumerating a node's choices; under a budget the random genotypes are those of
the space that meet it, and the chance level is estimated by sampling them.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edgenas.cells import CELL_TYPES, edge_inputs, node_states
from edgenas.genotypes import Genotype
from edgenas.search.budgets import real_ops

#: An edge whose strongest operator leads the second by less than this (in weight, after dropping
#: ``none``) is undecided: see the module docstring for where the value comes from.
DECIDED_MARGIN = 0.05
#: A genotype with fewer than this share of decided chosen edges is "mostly undecided".
DECIDED_SHARE = 0.5
UNDECIDED_NOTE = "the search was too short to choose: this genotype is close to a random pick"

AGREEMENT_KINDS = ("inputs", "operators", "edges")


# --- decisiveness ---------------------------------------------------------------------------------

def edge_margins_entropies(weights: Any, ops: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(margin, normalised entropy) per edge of an (edges, ops) weight matrix, over the real operators."""
    keep = real_ops(ops)
    w = np.asarray(weights, dtype=np.float64)[:, keep]
    p = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
    top2 = -np.sort(-p, axis=1)[:, :2] if p.shape[1] > 1 else np.column_stack([p[:, 0], np.zeros(len(p))])
    margin = top2[:, 0] - top2[:, 1]
    if p.shape[1] < 2:  # a single operator: nothing to choose, so fully decided
        return margin, np.zeros(len(p))
    ent = -(p * np.log(np.maximum(p, 1e-30))).sum(axis=1) / math.log(p.shape[1])
    return margin, ent


def chosen_edges(cell: Sequence[tuple[str, int]]) -> list[int]:
    """Supernet edge indices of a derived cell's edges (two per node, node by node)."""
    order = edge_inputs(len(cell) // 2)
    return [order.index((k // 2, i)) for k, (_, i) in enumerate(cell)]


def decisiveness(op_weights: Mapping[str, Any], ops: Sequence[str], genotype: Genotype | None = None,
                 threshold: float = DECIDED_MARGIN) -> dict[str, Any]:
    """Per cell type: margins, normalised entropies and decided flags per edge with a summary; overall:
    the share of decided edges among the derived genotype's chosen edges and the verdict."""
    out: dict[str, Any] = {"threshold": threshold, "cells": {}}
    chosen_flags: list[bool] = []
    for t in CELL_TYPES:
        if t not in op_weights:
            continue
        margin, ent = edge_margins_entropies(op_weights[t], ops)
        decided = margin >= threshold
        cell = {"margin": [round(float(v), 5) for v in margin], "entropy": [round(float(v), 5) for v in ent],
                "decided": [bool(v) for v in decided], "decided_share": round(float(decided.mean()), 4),
                "median_margin": round(float(np.median(margin)), 5),
                "median_entropy": round(float(np.median(ent)), 5)}
        if genotype is not None:
            idx = chosen_edges(getattr(genotype, t))
            cell["chosen_decided_share"] = round(float(decided[idx].mean()), 4)
            chosen_flags += [bool(decided[i]) for i in idx]
        out["cells"][t] = cell
    if chosen_flags:
        share = sum(chosen_flags) / len(chosen_flags)
        out["chosen_decided_share"] = round(share, 4)
        out["mostly_undecided"] = share < DECIDED_SHARE
    return out


def summary_line(dec: Mapping[str, Any]) -> str:
    """One line: decided share and median margin per cell type, against the threshold."""
    parts = [f"{t} {c['decided_share']:.0%} of edges decided (median margin {c['median_margin']:.3f})"
             for t, c in dec.get("cells", {}).items()]
    return f"decisiveness (margin >= {dec['threshold']}): " + ", ".join(parts)


# --- seed agreement -------------------------------------------------------------------------------

def _node_choices(cell: Sequence[tuple[str, int]]) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    return [(tuple(cell[2 * j]), tuple(cell[2 * j + 1])) for j in range(len(cell) // 2)]  # type: ignore[misc]


def _overlap(a: Sequence[Any], b: Sequence[Any]) -> int:
    return sum((Counter(a) & Counter(b)).values())


def node_agreement(a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]) -> dict[str, float]:
    """Shares (out of a node's 2 edges) of inputs, operators and (input, operator) edges two choices share."""
    return {"inputs": _overlap([i for _, i in a], [i for _, i in b]) / 2,
            "operators": _overlap([o for o, _ in a], [o for o, _ in b]) / 2,
            "edges": _overlap(list(a), list(b)) / 2}


def genotype_agreement(genotypes: Sequence[Genotype]) -> dict[str, Any]:
    """Mean pairwise agreement of ``genotypes`` per cell type and node, and overall (mean over nodes)."""
    if len(genotypes) < 2:
        raise ValueError("agreement needs at least two genotypes")
    pairs = list(itertools.combinations(range(len(genotypes)), 2))
    out: dict[str, Any] = {"pairs": len(pairs), "cells": {}}
    totals = {k: [] for k in AGREEMENT_KINDS}
    for t in CELL_TYPES:
        nodes = [_node_choices(getattr(g, t)) for g in genotypes]
        per_node = []
        for j in range(len(nodes[0])):
            scores = [node_agreement(nodes[a][j], nodes[b][j]) for a, b in pairs]
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in AGREEMENT_KINDS}
            per_node.append({"node": j, **{k: round(v, 4) for k, v in mean.items()},
                             "choices": [[list(e) for e in n[j]] for n in nodes]})
            for k in AGREEMENT_KINDS:
                totals[k].append(mean[k])
        out["cells"][t] = per_node
    out["overall"] = {k: round(sum(v) / len(v), 4) for k, v in totals.items()}
    return out


def _operator_overlap_chance(k: int) -> float:
    """Expected shared operators (out of 2) of two nodes whose two operators are uniform over k."""
    total = sum(_overlap(c[:2], c[2:]) for c in itertools.product(range(k), repeat=4))
    return total / k**4 / 2


def random_agreement_exact(ops: Sequence[str], steps: int) -> dict[str, Any]:
    """Expected pairwise agreement of two uniformly random genotypes of the space, exactly.

    A node with ``m`` inputs: two random 2-subsets share ``4 / m`` inputs on average (each of the
    4 ordered picks matches with probability 1/m), so 2/m out of 2; an edge also needs the same
    operator (probability 1/k, independent of the inputs), so 2/(m k); the operators' multiset
    overlap does not depend on the inputs and is enumerated over the k^4 operator choices.
    """
    k = len(real_ops(ops))
    ops_share = _operator_overlap_chance(k)
    per_node = [{"inputs": 2 / (j + 2), "operators": ops_share, "edges": 2 / ((j + 2) * k)} for j in range(steps)]
    overall = {key: round(sum(n[key] for n in per_node) / steps, 4) for key in AGREEMENT_KINDS}
    return {"method": "exact", "per_node": [{key: round(v, 4) for key, v in n.items()} for n in per_node],
            "overall": overall}


def random_genotype(ops: Sequence[str], steps: int, rng: np.random.Generator) -> Genotype:
    """A genotype drawn uniformly from the space: per node two distinct inputs, a real operator each."""
    names = [ops[j] for j in real_ops(ops)]
    cells = {}
    for t in CELL_TYPES:
        edges = []
        for j in range(steps):
            a, b = sorted(rng.choice(j + 2, size=2, replace=False).tolist())
            edges += [(names[int(rng.integers(len(names)))], a), (names[int(rng.integers(len(names)))], b)]
        cells[t] = tuple(edges)
    concat = node_states(steps)
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)


def _accepted(ops: Sequence[str], steps: int, rng: np.random.Generator,
              accept: Callable[[Genotype], bool] | None, max_tries: int) -> Iterator[Genotype]:
    """Random genotypes of the space that ``accept`` takes, from at most ``max_tries`` draws
    (rejection sampling: uniform over the accepted part of the space)."""
    for _ in range(max_tries):
        g = random_genotype(ops, steps, rng)
        if accept is None or accept(g):
            yield g


def sample_random_genotypes(ops: Sequence[str], steps: int, n: int, rng: np.random.Generator,
                            accept: Callable[[Genotype], bool] | None = None,
                            max_tries: int = 200_000) -> list[Genotype]:
    """``n`` distinct random genotypes of the space for which ``accept`` holds (e.g. a budget).

    Rejection sampling keeps them uniform over the accepted part of the space; raises ValueError
    when ``max_tries`` draws do not find ``n`` of them.
    """
    found: dict[Genotype, None] = {}
    for g in _accepted(ops, steps, rng, accept, max_tries):
        found[g] = None
        if len(found) == n:
            return list(found)
    raise ValueError(f"found only {len(found)} of {n} random genotypes meeting the constraint "
                     f"in {max_tries} draws")


def random_agreement_sampled(ops: Sequence[str], steps: int, accept: Callable[[Genotype], bool],
                             samples: int = 2000, seed: int = 0, max_tries: int = 200_000) -> dict[str, Any]:
    """Expected pairwise agreement of random genotypes that meet ``accept``, estimated from
    ``samples`` independent pairs (with replacement, so identical draws count as they would).

    At most ``max_tries`` draws: under a budget so tight that few random genotypes meet it, the
    estimate uses the pairs found (the method says how many); when not one pair is found, it falls
    back to the exact chance level of the whole space and says so.
    """
    draws = list(itertools.islice(_accepted(ops, steps, np.random.default_rng(seed), accept, max_tries), 2 * samples))
    pairs = len(draws) // 2
    if pairs == 0:
        exact = random_agreement_exact(ops, steps)
        return {"method": f"exact over the whole space: no two of {max_tries} random genotypes met the budget",
                "overall": exact["overall"]}
    agreement = [genotype_agreement([draws[2 * i], draws[2 * i + 1]])["overall"] for i in range(pairs)]
    overall = {k: round(float(np.mean([a[k] for a in agreement])), 4) for k in AGREEMENT_KINDS}
    plural = "" if pairs == 1 else "s"
    return {"method": f"sampled ({pairs} pair{plural} of random genotypes meeting the budget)", "overall": overall}


def agreement_report(genotypes: Sequence[Genotype], ops: Sequence[str],
                     accept: Callable[[Genotype], bool] | None = None) -> dict[str, Any]:
    """Seed agreement of ``genotypes`` beside the chance level of random genotypes of the space."""
    steps = genotypes[0].steps
    seen = genotype_agreement(genotypes)
    chance = (random_agreement_exact(ops, steps) if accept is None
              else random_agreement_sampled(ops, steps, accept))
    ratio = {k: (round(seen["overall"][k] / chance["overall"][k], 3) if chance["overall"][k] > 0 else None)
             for k in AGREEMENT_KINDS}
    return {"seeds": len(genotypes), **seen, "random": chance, "ratio_to_random": ratio}


__all__ = ["AGREEMENT_KINDS", "DECIDED_MARGIN", "DECIDED_SHARE", "UNDECIDED_NOTE", "undecided_note", "agreement_report",
           "chosen_edges", "decisiveness", "edge_margins_entropies", "genotype_agreement", "node_agreement",
           "random_agreement_exact", "random_agreement_sampled", "random_genotype", "sample_random_genotypes",
           "summary_line"]


def undecided_note(dec: Mapping[str, Any] | None) -> str | None:
    """The report's warning when the derived genotype is mostly undecided, else ``None``."""
    return UNDECIDED_NOTE if dec and dec.get("mostly_undecided") else None
