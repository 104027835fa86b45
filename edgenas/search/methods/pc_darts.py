"""PC-DARTS (Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture
Search", ICLR 2020).

Partial channels (Eq. 3): only 1/K of an edge's channels go through the operators, the rest bypass
them (max-pooled on stride-2 edges); the two parts are concatenated and channel-shuffled.
Edge normalisation (Eq. 4): per node, a softmax over its incoming edges' parameters beta multiplies
each edge, which also enters the derivation. Architecture updates start after a warm-up (15 of 50
epochs in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.ops import get_op
from edgenas.search.methods.base import Method, register_method
from edgenas.search.supernet import BatchedPartialNode, PartialChannels, SupernetConfig


def check_partial(cfg: SupernetConfig, k: int) -> None:
    """K must split every cell's channels evenly (and evenly again where FactorizedReduce runs)."""
    if k < 1:
        raise EdgenasError(f"--partial-k must be at least 1, got {k}", "use e.g. --partial-k 4")
    if cfg.C % k:
        divisors = [d for d in range(2, cfg.C + 1) if cfg.C % d == 0]
        raise EdgenasError(f"--partial-k {k} does not divide --channels {cfg.C}",
                           f"choose K among {', '.join(map(str, divisors))}, or change --channels")
    needs_even = [n for n in cfg.ops if get_op(n).family == "skip"]
    if needs_even and (cfg.C // k) % 2:
        raise EdgenasError(
            f"--partial-k {k} leaves {cfg.C // k} channels per edge, but {needs_even[0]} on a stride-2 "
            "edge (FactorizedReduce) needs an even count", "choose a smaller K or more --channels")


@register_method
@dataclass(frozen=True)
class PCDarts(Method):
    name = "pc_darts"
    title = "PC-DARTS"
    paper = "Xu et al., ICLR 2020"
    warmup_fraction = 0.3

    partial_k: int = 4

    def check(self, cfg: SupernetConfig) -> None:
        check_partial(cfg, self.partial_k)

    def selector(self, C: int, stride: int, *, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        return PartialChannels(C, stride, k=self.partial_k)

    def build_node(self, ops: tuple[str, ...], C: int, strides: list[int], *, device: Any = None,
                   dtype: torch.dtype | None = None) -> nn.Module:
        return BatchedPartialNode(ops, C, strides, k=self.partial_k, device=device, dtype=dtype)

    def init_edges(self, n_edges: int, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return 1e-3 * torch.randn(n_edges, device=device, dtype=dtype)
