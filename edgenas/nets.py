"""Evaluation networks built from a genotype, and the settings (CIFAR, ImageNet mobile) they are built in.

Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019), Sec. 3.2 and A.2: a stack of
``L`` cells with reduction cells at ``L//3`` and ``2L//3`` (channels doubled there; shorter stacks
by :func:`edgenas.cells.reduction_cells`). Each cell
preprocesses its two inputs to ``C`` channels (FactorizedReduce for the k-2 input when the previous
cell halved the resolution, ReLU-conv1x1-BN otherwise), runs the genotype's edges (stride 2 for a
reduction cell's edges that read a cell input), sums the two edges of each node and concatenates
the ``concat`` nodes. An auxiliary classifier sits after cell ``2L//3`` during training only.

Two settings: CIFAR (3x3 stem to 3C; C=36, 20 cells) and ImageNet mobile (three stride-2 3x3 convs
in two stems; C=48, 14 cells; 224x224). Global pooling is adaptive, so other input sizes work too.
This module is the one home of each setting's constants and of the mobile setting's MAC limit.
Parameter counts exclude the auxiliary head (module prefix ``auxiliary``), as the papers count them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from edgenas.cells import edge_stride, reduction_cells
from edgenas.errors import EdgenasError
from edgenas.genotypes import Edge, Genotype
from edgenas.ops import FactorizedReduce, Identity, ReLUConvBN, build_op

SETTINGS = ("cifar10", "cifar100", "imagenet-mobile")
AUX_PREFIX = "auxiliary"


@dataclass(frozen=True)
class NetConfig:
    """Everything that shapes an evaluation network besides its genotype."""

    setting: str = "cifar10"
    C: int = 36
    layers: int = 20
    num_classes: int = 10
    in_channels: int = 3
    input_hw: tuple[int, int] = (32, 32)
    auxiliary: bool = True
    drop_path: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_hw", tuple(int(v) for v in self.input_hw))
        if self.setting not in SETTINGS:
            raise EdgenasError(f"unknown setting {self.setting!r}", f"choose from: {', '.join(SETTINGS)}")
        for name in ("C", "layers", "num_classes", "in_channels"):
            if getattr(self, name) < 1:
                raise EdgenasError(f"{name} must be at least 1, got {getattr(self, name)}",
                                   f"give a positive {name}")
        # The ImageNet net's first cell FactorizedReduces the stem output to C channels, two halves
        # of C/2 each; on CIFAR only the doubled (always even) widths pass through FactorizedReduce.
        if self.imagenet and self.C % 2:
            raise EdgenasError(
                f"channel count {self.C} is odd: the ImageNet mobile network's FactorizedReduce "
                "splits C into two halves", "use an even channel count (e.g. --channels 48)")
        if not 0.0 <= self.drop_path < 1.0:
            raise EdgenasError(f"drop path probability {self.drop_path} is outside [0, 1)",
                               "use e.g. 0.2 (CIFAR) or 0 (ImageNet)")
        need = 2 ** (len(self.reduction_cells) + (3 if self.imagenet else 0))
        if len(self.input_hw) != 2 or min(self.input_hw) < need:
            raise EdgenasError(
                f"input size {'x'.join(map(str, self.input_hw))} is too small for this network "
                f"(it halves the resolution {need.bit_length() - 1} times)",
                f"use inputs of at least {need}x{need}")

    @property
    def imagenet(self) -> bool:
        return self.setting == "imagenet-mobile"

    @property
    def reduction_cells(self) -> tuple[int, ...]:
        """Indices of the reduction cells (:func:`edgenas.cells.reduction_cells`)."""
        return reduction_cells(self.layers)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.input_hw)

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "C": self.C, "layers": self.layers,
                "num_classes": self.num_classes, "in_channels": self.in_channels,
                "input_hw": list(self.input_hw), "auxiliary": self.auxiliary,
                "drop_path": self.drop_path}


_DEFAULTS: dict[str, NetConfig] = {
    "cifar10": NetConfig("cifar10", 36, 20, 10, 3, (32, 32), True, 0.2),
    "cifar100": NetConfig("cifar100", 36, 20, 100, 3, (32, 32), True, 0.2),
    "imagenet-mobile": NetConfig("imagenet-mobile", 48, 14, 1000, 3, (224, 224), True, 0.0),
}


def default_config(setting: str, **overrides: Any) -> NetConfig:
    """The published protocol's configuration for ``setting``, with fields replaced by ``overrides``."""
    if setting not in _DEFAULTS:
        raise EdgenasError(f"unknown setting {setting!r}", f"choose from: {', '.join(SETTINGS)}")
    unknown = sorted(set(overrides) - set(NetConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"NetConfig has no field(s) {', '.join(unknown)}")
    return replace(_DEFAULTS[setting], **overrides)


def setting_config(setting: str, *, channels: int | None = None, layers: int | None = None,
                   input_hw: tuple[int, int] | None = None, num_classes: int | None = None,
                   in_channels: int | None = None) -> NetConfig:
    """The evaluation network of ``setting``: its published defaults, each given option replacing one."""
    over = {k: v for k, v in (("C", channels), ("layers", layers), ("input_hw", input_hw),
                              ("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    return default_config(setting, **over)


#: The "mobile setting" of the NAS literature (NASNet, DARTS Table 3): under 600 M multiply-adds
#: for one image at the ImageNet mobile setting's input size, 224x224.
MOBILE_MAC_LIMIT = 600_000_000
MOBILE_HW: tuple[int, int] = _DEFAULTS["imagenet-mobile"].input_hw


@dataclass(frozen=True)
class MobileVerdict:
    """An ImageNet network's MACs at 224x224 and whether they are within the mobile setting's limit."""

    macs: int
    meets: bool
    input_hw: tuple[int, int]  # the network's own input size

    def note(self) -> str:
        at = "" if self.input_hw == MOBILE_HW else (
            f"; counted at 224x224, this network's input is {self.input_hw[0]}x{self.input_hw[1]}")
        return f"{'meets' if self.meets else 'exceeds'} the mobile setting (< 600 M MACs at 224x224{at})"


def mobile_verdict(cfg: NetConfig, macs_at: Callable[[tuple[int, int, int]], int]) -> MobileVerdict | None:
    """The mobile-setting verdict of ``cfg``'s network; ``None`` outside the ImageNet mobile setting.

    The setting is defined at 224x224, so the network is judged there whatever its own input size:
    ``macs_at(input_shape)`` counts its MACs at an input shape (C, H, W).
    """
    if not cfg.imagenet:
        return None
    macs = macs_at((cfg.in_channels, *MOBILE_HW))
    return MobileVerdict(macs, macs < MOBILE_MAC_LIMIT, cfg.input_hw)


# --- the plan: one place that knows widths and resolutions ----------------------------------------

def _half(n: int) -> int:
    """Output size of every stride-2 layer used here (3x3 pad 1, 1x1 pad 0, FactorizedReduce)."""
    return (n + 1) // 2


@dataclass(frozen=True)
class CellPlan:
    index: int
    reduction: bool
    reduction_prev: bool
    C_prev_prev: int
    C_prev: int
    C: int           # channels of every edge inside the cell
    hw: tuple[int, int]  # resolution of the cell's (preprocessed) inputs


def plan_cells(genotype: Genotype, cfg: NetConfig) -> Iterator[CellPlan]:
    """Widths and input resolutions of every cell, in order (used by the builder and cell_shapes)."""
    h, w = cfg.input_hw
    if cfg.imagenet:
        C_pp, C_p, C = cfg.C, cfg.C, cfg.C
        for _ in range(3):  # stem0 (two stride-2 convs) then stem1 (one); cell inputs at 1/8
            h, w = _half(h), _half(w)
        reduction_prev = True  # s0 (stem0 output) has twice s1's resolution
    else:
        C_pp, C_p, C = 3 * cfg.C, 3 * cfg.C, cfg.C
        reduction_prev = False
    for i in range(cfg.layers):
        reduction = i in cfg.reduction_cells
        if reduction:
            C *= 2
        yield CellPlan(i, reduction, reduction_prev, C_pp, C_p, C, (h, w))
        _, concat = genotype.cell(reduction)
        C_pp, C_p = C_p, len(concat) * C
        if reduction:
            h, w = _half(h), _half(w)
        reduction_prev = reduction


class OpShape(NamedTuple):
    """One cell operator instance: its input shape (C, H, W) and stride (a latency look-up key)."""

    op: str
    C: int
    H: int
    W: int
    stride: int


def cell_shapes(genotype: Genotype, cfg: NetConfig) -> list[OpShape]:
    """Every cell operator the evaluation network runs, one entry per instance, in network order.

    Stems, cell preprocessing, the auxiliary head and the classifier are not cell operators and are
    not listed.
    """
    return [edge_shape(p, op, idx) for p in plan_cells(genotype, cfg)
            for op, idx in genotype.cell(p.reduction)[0]]


def edge_shape(plan: CellPlan, op: str, idx: int) -> OpShape:
    """The input shape and stride of ``op`` on an edge fed by state ``idx`` of the planned cell."""
    # Inputs 0/1 are at the cell input resolution; intermediate nodes of a reduction cell are
    # already reduced.
    h, w = plan.hw if idx < 2 or not plan.reduction else (_half(plan.hw[0]), _half(plan.hw[1]))
    return OpShape(op, plan.C, h, w, edge_stride(plan.reduction, idx))


# --- blocks ---------------------------------------------------------------------------------------

def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (DARTS' drop path)."""
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x.div(keep).mul(mask)


class Cell(nn.Module):
    def __init__(self, edges: tuple[Edge, ...], concat: tuple[int, ...], plan: CellPlan, *,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        C = plan.C
        if plan.reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(plan.C_prev_prev, C, affine=True, **kw)
        else:
            self.preprocess0 = ReLUConvBN(plan.C_prev_prev, C, 1, 1, 0, affine=True, **kw)
        self.preprocess1 = ReLUConvBN(plan.C_prev, C, 1, 1, 0, affine=True, **kw)
        self.ops = nn.ModuleList(
            build_op(op, C, edge_stride(plan.reduction, idx), True, **kw) for op, idx in edges
        )
        self.indices = tuple(idx for _, idx in edges)
        self.concat = concat
        self.reduction = plan.reduction

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for n in range(len(self.indices) // 2):
            total = None
            for e in (2 * n, 2 * n + 1):
                op = self.ops[e]
                h = op(states[self.indices[e]])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier: ReLU, 5x5 average pool, 1x1 conv 128, 2x2 conv 768, linear.

    The pool's stride is 3 on CIFAR (8x8 -> 2x2) and 2 on ImageNet (7x7 -> 2x2). The adaptive pool
    after it is the identity at those sizes and keeps the head usable at other input sizes.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, hw: tuple[int, int], *,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        pool: nn.Module = (nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False)
                           if min(hw) >= 5 else nn.Identity())
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            pool,
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(C, 128, 1, bias=False, **kw),
            nn.BatchNorm2d(128, **kw),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False, **kw),
            nn.BatchNorm2d(768, **kw),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _conv_bn(C_in: int, C_out: int, kw: dict[str, Any]) -> list[nn.Module]:
    return [nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False, **kw), nn.BatchNorm2d(C_out, **kw)]


class EvalNetwork(nn.Module):
    """The stacked-cell network; ``forward`` returns logits in eval mode and
    ``(logits, aux_logits or None)`` in training mode."""

    def __init__(self, genotype: Genotype, cfg: NetConfig, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.genotype = genotype
        self.cfg = cfg
        self.drop_path_prob = cfg.drop_path
        C = cfg.C
        if cfg.imagenet:
            self.stem0: nn.Module = nn.Sequential(
                *_conv_bn(cfg.in_channels, C // 2, kw), nn.ReLU(inplace=True), *_conv_bn(C // 2, C, kw))
            self.stem1: nn.Module | None = nn.Sequential(nn.ReLU(inplace=False), *_conv_bn(C, C, kw))
        else:
            self.stem0 = nn.Sequential(
                nn.Conv2d(cfg.in_channels, 3 * C, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(3 * C, **kw))
            self.stem1 = None
        self.cells = nn.ModuleList()
        # DARTS' auxiliary head reads the last reduction cell's output (cell 2L//3)
        self.aux_after = cfg.reduction_cells[-1] if cfg.reduction_cells else cfg.layers - 1
        self.auxiliary: AuxiliaryHead | None = None
        C_out = 0
        for plan in plan_cells(genotype, cfg):
            edges, concat = genotype.cell(plan.reduction)
            self.cells.append(Cell(edges, concat, plan, **kw))
            C_out = len(concat) * plan.C
            if cfg.auxiliary and plan.index == self.aux_after:
                out_hw = (_half(plan.hw[0]), _half(plan.hw[1])) if plan.reduction else plan.hw
                self.auxiliary = AuxiliaryHead(C_out, cfg.num_classes, 2 if cfg.imagenet else 3,
                                               out_hw, **kw)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_out, cfg.num_classes, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if self.training else logits


def build_network(genotype: Genotype, cfg: NetConfig, *, device: Any = None,
                  dtype: torch.dtype | None = None) -> EvalNetwork:
    """Validate ``genotype`` and build its evaluation network for ``cfg`` (affine BN everywhere)."""
    genotype.validate()
    return EvalNetwork(genotype, cfg, device=device, dtype=dtype)


def inference_network(genotype: Genotype, cfg: NetConfig) -> EvalNetwork:
    """``genotype``'s network as it is deployed and timed: eval mode, no auxiliary head, no drop-path."""
    return build_network(genotype, replace(cfg, auxiliary=False, drop_path=0.0)).eval()
