"""EL-DARTS ("Efficient and Lightweight Differentiable Architecture Search", Electronics 15(2),
314, 2026; doi:10.3390/electronics15020314).

Four parts, each switchable for the paper's ablation (Table 3):
* ESS, the efficient search space: the pruned operator set (``edgenas prune``'s space.json, or its
  default four operators); ``--no-ess`` searches the full DARTS set.
* Partial channels with K = 4, as PC-DARTS (whose selector and nodes this class inherits).
* DCSS, dynamic coefficient scheduling: per node, edge coefficients gamma initialised uniformly in
  (gamma_low, gamma_high) within (0, 1), a softmax over the node's incoming edges weighting each
  edge, learned with the architecture parameters; ``--no-dcss`` leaves edges unweighted.
* Entropy regularisation: the architecture loss gains ``lambda * sum_edges H(softmax(alpha / T))``
  with ``T(t) = max(T_min, T_init * beta^t)`` (t = epoch), which sharpens each edge's operator
  distribution more as T falls; ``--no-entropy`` drops it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edgenas.cells import CELL_TYPES
from edgenas.errors import EdgenasError
from edgenas.search.methods.base import register_method
from edgenas.search.methods.pc_darts import PCDarts
from edgenas.search.supernet import Supernet, SupernetConfig
from edgenas.space import SearchSpace


def edge_entropy(alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over edges (rows) of the entropy of softmax(alpha / T)."""
    logp = (alpha / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum()


@register_method
@dataclass(frozen=True)
class ELDarts(PCDarts):
    name = "el_darts"
    title = "EL-DARTS"
    paper = "Electronics 15(2):314, 2026"

    ess: bool = True
    dcss: bool = True
    entropy: bool = True
    gamma_low: float = 0.25
    gamma_high: float = 0.75
    t_init: float = 5.0
    t_decay: float = 0.95
    t_min: float = 0.5
    entropy_weight: float = 1e-3

    def resolve_space(self, given: SearchSpace | None) -> SearchSpace:
        if not self.ess:
            if given is not None:
                raise EdgenasError("--no-ess searches the full DARTS space, so it cannot take --space",
                                   "drop --space, or drop --no-ess")
            return SearchSpace.default()
        return given if given is not None else SearchSpace.el_darts()

    def check(self, cfg: SupernetConfig) -> None:
        super().check(cfg)
        if not 0.0 < self.gamma_low < self.gamma_high < 1.0:
            raise EdgenasError(f"gamma range ({self.gamma_low}, {self.gamma_high}) is not inside (0, 1)",
                               "use 0 < gamma_low < gamma_high < 1")

    def init_edges(self, n_edges: int, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if not self.dcss:
            return None
        return torch.empty(n_edges, device=device, dtype=dtype).uniform_(self.gamma_low, self.gamma_high)

    def temperature(self, epoch: int) -> float:
        return max(self.t_min, self.t_init * self.t_decay**epoch)

    def loss_terms(self, net: Supernet, epoch: int) -> dict[str, torch.Tensor]:
        if not self.entropy:
            return {}
        t = self.temperature(epoch)
        h = sum(edge_entropy(net.arch.alpha[c], t) for c in CELL_TYPES)
        return {"entropy": self.entropy_weight * h}

    def epoch_info(self, net: Supernet, epoch: int) -> dict[str, float]:
        if not self.entropy:
            return {}
        t = self.temperature(epoch)
        with torch.no_grad():
            h = float(sum(edge_entropy(net.arch.alpha[c], t) for c in CELL_TYPES))
        # the largest possible value, so a reader sees how far from uniform the edges are
        h_max = 2 * net.cfg.num_edges * math.log(len(net.cfg.ops))
        return {"temperature": t, "entropy": h, "entropy_max": h_max}
