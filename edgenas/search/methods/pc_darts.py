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

from edgenas.search.batched import BatchedPartialNode
from edgenas.search.edges import PartialChannels
from edgenas.search.methods.base import register_method
from edgenas.search.methods.partial import PartialChannelMethod


@register_method
@dataclass(frozen=True)
class PCDarts(PartialChannelMethod):
    name = "pc_darts"
    title = "PC-DARTS"
    paper = "Xu et al., ICLR 2020"

    def selector(self, C: int, stride: int, *, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        return PartialChannels(C, stride, k=self.partial_k)

    def build_node(self, ops: tuple[str, ...], C: int, strides: list[int], *, fast: bool = False,
                   device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        if fast:
            return BatchedPartialNode(ops, C, strides, k=self.partial_k, device=device, dtype=dtype)
        return super().build_node(ops, C, strides, device=device, dtype=dtype)

    def init_edges(self, n_edges: int, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        return 1e-3 * torch.randn(n_edges, device=device, dtype=dtype)
