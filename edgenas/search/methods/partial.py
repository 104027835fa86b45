"""The partial-channel methods' shared part: K, its check, and the warm-up before architecture updates.

PC-DARTS, ADARTS and EL-DARTS (and SWD-NAS, through ADARTS) send 1/K of an edge's channels through
the operators; they differ in which channels and in how edges are weighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgenas.errors import EdgenasError
from edgenas.ops import get_op
from edgenas.search.methods.base import Method
from edgenas.search.supernet import SupernetConfig


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


@dataclass(frozen=True)
class PartialChannelMethod(Method):
    """A method that sends 1/K of an edge's channels through the operators (not registered itself)."""

    #: PC-DARTS: architecture updates start after 15 of 50 epochs
    warmup_fraction: ClassVar[float] = 0.3

    #: K: 1/K of an edge's channels go through the operators (PC-DARTS' K = 4)
    partial_k: int = 4

    def check(self, cfg: SupernetConfig) -> None:
        check_partial(cfg, self.partial_k)
