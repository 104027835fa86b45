"""Attention-operator DARTS (the seed paper "Image classification optimization ... differentiable
NAS improvement model"): DARTS whose convolution operators are attention-augmented (channel then
spatial attention after the convolution, CBAM-style; ``<conv>_attn`` in the operator registry) and
whose macro structure adds a residual connection around every cell (a 1x1 projection, strided in
reduction cells, where the shape changes).

The space's convolutions are swapped for their attention variants (operators without one, such as
pooling and skip, are kept), so a pruned ``space.json`` works here too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgenas.ops import ATTENTION_VARIANTS
from edgenas.search.methods.base import Method, register_method
from edgenas.space import SearchSpace


@register_method
@dataclass(frozen=True)
class AttnDarts(Method):
    name = "attn_darts"
    title = "Attention-DARTS"
    paper = "attention-operator DARTS with cell residuals"
    cell_residual = True

    def resolve_space(self, given: SearchSpace | None) -> SearchSpace:
        space = given if given is not None else SearchSpace.default()
        ops = tuple(dict.fromkeys(ATTENTION_VARIANTS.get(op, op) for op in space.ops))
        return replace(space, ops=ops)
