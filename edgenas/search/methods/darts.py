"""DARTS (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019, first order).

Every channel goes through every operator; the mixed edge weighs the operators with softmax(alpha)
(Eq. 2) and a node sums its edges. These are the base class's defaults, so nothing is overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgenas.search.methods.base import Method, register_method


@register_method
@dataclass(frozen=True)
class Darts(Method):
    name = "darts"
    title = "DARTS"
    paper = "Liu et al., ICLR 2019"
