"""Costs of a whole evaluation network: its MACs, the widest C within a MAC budget, `edgenas inspect`'s report.

Costs of single modules (the MAC convention, counting, parameters) are :mod:`edgenas.costs`'; the
network is :mod:`edgenas.nets`'; a latency prediction from a profile is
:func:`edgenas.latency.predict_latency`'s and is filled into the report by the caller that has one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from edgenas.costs import MAC_CONVENTION, count_macs, count_params, format_count, measure_costs
from edgenas.errors import EdgenasError
from edgenas.genotypes import Genotype
from edgenas.nets import AUX_PREFIX, MOBILE_MAC_LIMIT, NetConfig, build_network, mobile_verdict

if TYPE_CHECKING:
    from edgenas.latency import LatencyPrediction


def network_macs(genotype: Genotype, cfg: NetConfig, device: torch.device | None = None) -> int:
    """Conv+linear MACs of ``genotype``'s evaluation network for ``cfg`` (per sample)."""
    return count_macs(build_network(genotype, cfg, device=device), cfg.input_shape)


#: fit_channels stops doubling here; no DARTS-style network is anywhere near it.
MAX_FIT_CHANNELS = 1 << 16


def fit_channels(genotype: Genotype, cfg: NetConfig, mac_budget: int) -> NetConfig:
    """The config with the largest even initial channel count C whose network fits ``mac_budget``.

    MACs grow monotonically with C, so this doubles C until the budget is exceeded and then
    bisects. Only even C are tried, so the result builds in every setting (FactorizedReduce splits
    channels in halves).
    """

    def macs(C: int) -> int:
        # Wide trial networks are built on the meta device (exact shapes, nothing allocated) so a
        # loose budget cannot allocate gigabytes; narrow ones on the CPU, where building is quicker
        # than the meta device's per-op dispatch.
        device = torch.device("meta") if C > 128 else None
        return network_macs(genotype, replace(cfg, C=C), device)

    smallest = macs(2)
    if smallest > mac_budget:
        raise EdgenasError(
            f"no network fits {format_count(mac_budget)} MACs: the smallest, C=2 with "
            f"{cfg.layers} cells at {'x'.join(map(str, cfg.input_hw))}, needs {format_count(smallest)} MACs "
            f"({smallest})",
            "raise the budget, or reduce --layers or --input",
        )
    lo, hi = 2, 4  # invariant: macs(lo) <= budget; hi is the first width not yet known to fit
    while macs(hi) <= mac_budget:
        lo, hi = hi, hi * 2
        if hi > MAX_FIT_CHANNELS:
            raise EdgenasError(f"budget {format_count(mac_budget)} MACs allows more than C={MAX_FIT_CHANNELS}",
                               "give a smaller budget or set --channels directly")
    while hi - lo > 2:  # both even: bisect on even widths
        mid = (lo + hi) // 4 * 2
        if macs(mid) <= mac_budget:
            lo = mid
        else:
            hi = mid
    return replace(cfg, C=lo)


# --- inspection: what `edgenas inspect` reports ---------------------------------------------------

@dataclass(frozen=True)
class ChannelFit:
    """How ``--fit-macs`` chose C: the largest even C within ``budget``; C+2 needs ``next_macs``."""

    budget: int
    C: int
    next_macs: int


@dataclass(frozen=True)
class NetworkReport:
    genotype: Genotype
    config: NetConfig
    params: int        # auxiliary head excluded
    aux_params: int
    macs: int          # edgenas' count (costs.MAC_CONVENTION), per sample
    thop_macs: int | None
    mobile: bool | None  # meets the mobile setting; None where it does not apply
    mobile_note: str
    latency: LatencyPrediction | None = None  # filled in by the caller that has a profile
    fit: ChannelFit | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "genotype": self.genotype.to_dict(),
            "config": self.config.to_dict(),
            "params": self.params,
            "aux_params": self.aux_params,
            "params_note": "auxiliary head excluded, as the DARTS papers count",
            "macs": self.macs,
            "thop_macs": self.thop_macs,
            "mac_convention": MAC_CONVENTION,
            "thop_note": "thop also counts BatchNorm (and some pooling), so it reads higher",
            "mobile_setting": {"meets": self.mobile, "limit_macs": MOBILE_MAC_LIMIT, "note": self.mobile_note},
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "fit": None if self.fit is None else {"budget_macs": self.fit.budget, "C": self.fit.C,
                                                  "next_C": self.fit.C + 2, "next_macs": self.fit.next_macs},
        }


def inspect_network(genotype: Genotype, cfg: NetConfig, *, mac_budget: int | None = None) -> NetworkReport:
    """Params, MACs (ours and thop's) and the mobile-setting verdict of ``genotype``'s network.

    With ``mac_budget`` the configuration's C is first replaced by the largest even C that fits.
    """
    fit = None
    if mac_budget is not None:
        cfg = fit_channels(genotype, cfg, mac_budget)
        fit = ChannelFit(mac_budget, cfg.C, network_macs(genotype, replace(cfg, C=cfg.C + 2)))
    net = build_network(genotype, cfg)
    costs = measure_costs(net, cfg.input_shape, exclude_params=(AUX_PREFIX,))
    verdict = mobile_verdict(cfg, lambda shape: costs.macs if shape == cfg.input_shape else count_macs(net, shape))
    note = ("the mobile setting applies to ImageNet networks (--setting imagenet-mobile)" if verdict is None
            else verdict.note())
    return NetworkReport(
        genotype=genotype, config=cfg, params=costs.params,
        aux_params=count_params(net) - costs.params, macs=costs.macs, thop_macs=costs.thop_macs,
        mobile=None if verdict is None else verdict.meets, mobile_note=note, fit=fit,
    )
