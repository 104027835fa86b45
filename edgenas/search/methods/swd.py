"""SWD-NAS (Xue et al., "Self-Adaptive Weight Based on Dual-Attention for Differentiable Neural
Architecture Search", IEEE TII 2024).

No alpha: operator weights come from the data through two attentions per edge.
* Upper attention (as ADARTS): channel attention (avg + max pooled, shared MLP) reweights x and
  picks the top 1/K channels, which go through the operators; the others bypass.
* Lower attention: the operators' outputs on those channels are concatenated, global-average
  pooled and passed through a two-layer MLP with a sigmoid, giving one weight per output channel;
  the edge output is the sum over operators of each operator's reweighted slice, reassembled with
  the bypassed channels.
* Architectural weight normalisation: an operator's weight is the sum of its channel weights,
  normalised over the operators of its edge. The genotype is derived from these weights averaged
  over the validation batches of the epoch (and over the cells of a type, which do not share them).

The paper found 5 searched cells enough, the default here. The lower attention plays alpha's role,
so its parameters are architecture parameters (validation half, Adam); the upper attention is
trained with the network weights as in ADARTS. ``none`` is not run and its weight is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgenas.search.edges import build_candidates, weighted_sum
from edgenas.search.methods.adarts import ADarts
from edgenas.search.methods.base import ArchParameters, register_method
from edgenas.search.supernet import ArchModule, Supernet, SupernetConfig, WeightRecorder


class OutputAttention(ArchModule):
    """Lower attention: pooled operator outputs (B, n*C) -> sigmoid channel weights (B, n*C)."""

    def __init__(self, channels: int, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        hidden = max(4, channels // 16)
        kw = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, **kw), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels, **kw))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(pooled))


class DualAttentionMixer(WeightRecorder):
    def __init__(self, ops: tuple[str, ...], C: int, stride: int, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(len(ops))
        index, self.candidates = build_candidates(ops, C, stride, device=device, dtype=dtype)
        self.register_buffer("index", torch.tensor(index, device=device), persistent=False)
        self.attention = OutputAttention(len(index) * C, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        outs = [op(x) for op in self.candidates]
        b, c = x.shape[0], outs[0].shape[1]
        v = self.attention(torch.cat([o.mean((2, 3)) for o in outs], 1)).view(b, len(outs), c)
        y = weighted_sum(outs, [v[:, i, :, None, None] for i in range(len(outs))])
        share = v.sum(2)
        share = (share / share.sum(1, keepdim=True)).mean(0)
        self.record(share.new_zeros(self.n_ops).index_copy(0, self.index, share))
        return y


def _stack(net: Supernet, cell_type: str, pick: str) -> torch.Tensor:
    """Mean over the cells of a type of each edge's weights (``last`` or recorded ``average``)."""
    cells = []
    for cell in net.cells_of(cell_type):
        rows = []
        for edge in cell.edge_modules():
            mixer = edge.mixer
            w = mixer.average() if pick == "average" else None
            rows.append(w if w is not None else mixer.last if mixer.last is not None
                        else mixer.index.new_full((mixer.n_ops,), 1.0 / mixer.n_ops, dtype=torch.float32))
        cells.append(torch.stack(rows))
    return torch.stack(cells).mean(0)


@register_method
@dataclass(frozen=True)
class SWDNas(ADarts):
    """ADARTS' channel-attention selection, with the dual-attention mixer and no alpha."""

    name = "swd"
    title = "SWD-NAS"
    paper = "Xue et al., IEEE TII 2024"
    default_layers = 5

    def mixer(self, ops: tuple[str, ...], C: int, stride: int, *, fast: bool = False, device: Any = None,
              dtype: torch.dtype | None = None) -> nn.Module:
        # one mixer either way: its operators' outputs are reweighted per channel by the data, which
        # the batched layer's fused BatchNorm-and-sum does not do
        return DualAttentionMixer(ops, C, stride, device=device, dtype=dtype)

    def build_arch(self, cfg: SupernetConfig, *, device: Any = None, dtype: torch.dtype | None = None) -> ArchModule:
        return ArchParameters(cfg, alpha=False, edges=None, device=device, dtype=dtype)

    def op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor | None:
        return None

    def relaxed_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor:
        return _stack(net, cell_type, "last")

    def derivation_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor:
        return _stack(net, cell_type, "average")
