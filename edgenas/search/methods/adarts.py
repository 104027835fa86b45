"""ADARTS (Xue & Qin, "Partial Connection Based on Channel Attention for Differentiable Neural
Architecture Search", IEEE TII 2022).

Partial channels chosen by attention instead of position: the channel attention
``F_c = sigmoid(MLP(avgpool x) + MLP(maxpool x))`` (one shared two-layer MLP) reweights x, the 1/K
channels with the highest attention go through the mixed operator and are put back in their
original positions, the others bypass. The attention MLP is trained with the network weights
(it is part of the edge, not an architecture parameter); operator weights are softmax(alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgenas.search.edges import AttentionChannels
from edgenas.search.methods.base import register_method
from edgenas.search.methods.partial import PartialChannelMethod


@register_method
@dataclass(frozen=True)
class ADarts(PartialChannelMethod):
    name = "adarts"
    title = "ADARTS"
    paper = "Xue & Qin, IEEE TII 2022"

    def selector(self, C: int, stride: int, *, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        return AttentionChannels(C, stride, k=self.partial_k, device=device, dtype=dtype)
