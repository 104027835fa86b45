"""The DARTS search network: its macro structure (stem, cells, classifier) and parameter groups.

The layout is DARTS' search network (Liu et al., ICLR 2019): a 3x3 stem to ``stem_multiplier * C``
channels, ``layers`` cells with reductions (channels doubled) at ``layers // 3`` and
``2 * layers // 3``, each cell with ``steps`` intermediate nodes fed by every earlier state and an
output concatenating them. The nodes, their edges and the architecture parameters come from the
search method (:mod:`edgenas.search.methods`); the edges themselves live in
:mod:`edgenas.search.edges` (reference) and :mod:`edgenas.search.batched` (the fast path).

The method is typed by :class:`SupernetMethod`, the hooks this module calls, so that the supernet
does not import the methods, which are built on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from edgenas.cells import CELL_TYPES, cell_type, edge_stride, num_edges, reduction_cells
from edgenas.errors import EdgenasError
from edgenas.ops import FactorizedReduce, ReLUConvBN, get_op
from edgenas.search.fast_cpu import accelerate
from edgenas.values import FieldRule, check_fields


class ArchModule(nn.Module):
    """Marker: parameters under a module of this class are architecture parameters.

    They are optimised on the validation half (Adam), all others on the training half (SGD).
    """


@dataclass(frozen=True)
class SupernetConfig:
    """The macro structure of a search network."""

    ops: tuple[str, ...]
    C: int = 16
    layers: int = 8
    steps: int = 4
    stem_multiplier: int = 3
    num_classes: int = 10
    in_channels: int = 3
    cell_residual: bool = False  # attention-DARTS: a (projected) shortcut around each cell
    #: build the edges from the batched layer (:mod:`edgenas.search.batched`) and give the network
    #: the faster CPU kernels (:mod:`edgenas.search.fast_cpu`, which fall back to the native ones
    #: on other devices); False builds the reference edges of :mod:`edgenas.search.edges` with
    #: stock torch layers. The same function either way, to float rounding (tests compare them);
    #: seeded runs are bitwise reproducible within each path, not across the two.
    fast_path: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        for name in self.ops:
            get_op(name)
        if len(self.ops) < 2:
            raise EdgenasError(f"a search space needs at least 2 operators, got {len(self.ops)}",
                               "add operators to the space file")
        if all(get_op(n).is_zero for n in self.ops):
            raise EdgenasError("the search space has no operator other than 'none'",
                               "add a real operator to the space")
        check_fields(self, (FieldRule("C", minimum=2), FieldRule("layers", minimum=1), FieldRule("steps", minimum=1),
                            FieldRule("num_classes", minimum=2), FieldRule("in_channels", minimum=1)), flags=False)
        if self.C % 2:
            raise EdgenasError(f"channel count {self.C} is odd: FactorizedReduce halves it",
                               "use an even --channels (e.g. 16)")

    @property
    def reduction_cells(self) -> tuple[int, ...]:
        return reduction_cells(self.layers)

    @property
    def num_edges(self) -> int:
        return num_edges(self.steps)

    def cell_widths(self) -> list[int]:
        """The edge width C of every cell (doubled at each reduction)."""
        C, out = self.C, []
        for i in range(self.layers):
            if i in self.reduction_cells:
                C *= 2
            out.append(C)
        return out


# --- what the supernet asks of a method ---------------------------------------------------------

class SupernetMethod(Protocol):
    """The hooks of a search method the supernet and the search loop call (implemented by
    :class:`edgenas.search.methods.base.Method`, which documents each)."""

    def build_node(self, ops: tuple[str, ...], C: int, strides: list[int], *, fast: bool = ..., device: Any = ...,
                   dtype: torch.dtype | None = ...) -> nn.Module: ...

    def build_arch(self, cfg: SupernetConfig, *, device: Any = ..., dtype: torch.dtype | None = ...) -> ArchModule: ...

    def op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor | None: ...

    def edge_weights(self, net: Supernet, cell_type: str) -> torch.Tensor | None: ...

    def relaxed_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor: ...

    def derivation_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor: ...

    def loss_terms(self, net: Supernet, epoch: int) -> dict[str, torch.Tensor]: ...

    def epoch_info(self, net: Supernet, epoch: int) -> dict[str, float]: ...


# --- cells and the network ---------------------------------------------------------------------

class SearchCell(nn.Module):
    """A DARTS cell: two preprocessed inputs, ``steps`` nodes built by the method, concatenated."""

    def __init__(self, method: SupernetMethod, cfg: SupernetConfig, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.reduction = reduction
        self.steps = cfg.steps
        if reduction_prev:
            self.pre0: nn.Module = FactorizedReduce(C_pp, C, affine=False, **kw)
        else:
            self.pre0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False, **kw)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False, **kw)
        self.nodes = nn.ModuleList(
            method.build_node(cfg.ops, C, [edge_stride(reduction, i) for i in range(node + 2)],
                              fast=cfg.fast_path, device=device, dtype=dtype)
            for node in range(cfg.steps))
        self.shortcut: nn.Module | None = None
        C_out = cfg.steps * C
        if cfg.cell_residual:
            if reduction or C_p != C_out:
                # a projection where the shape changes (ResNet option B): 1x1 conv (strided) + BN
                self.shortcut = nn.Sequential(
                    nn.Conv2d(C_p, C_out, 1, stride=2 if reduction else 1, bias=False, **kw),
                    nn.BatchNorm2d(C_out, affine=False, **kw))
            else:
                self.shortcut = nn.Identity()

    def edge_modules(self) -> list[nn.Module]:
        """The per-edge modules in edge order (nodes built from separate edges only)."""
        return [edge for node in self.nodes for edge in node.edges]

    def forward(self, r0: torch.Tensor, r1: torch.Tensor, s1: torch.Tensor, op_w: torch.Tensor | None,
                edge_w: torch.Tensor | None) -> torch.Tensor:
        """``r0``, ``r1``: the two previous states after ReLU, which both preprocessing blocks start
        with; ``s1``: the previous state itself (for the residual)."""
        states = [self.pre0.after_relu(r0), self.pre1.after_relu(r1)]
        # each state as the nodes read it, prepared once for all of them (the last node reads every
        # state a node reads, with the same stride as the others)
        read = self.nodes[-1].prepare
        inputs = [read(h, i) for i, h in enumerate(states)]
        e = 0
        for j, node in enumerate(self.nodes):
            n = len(inputs)
            states.append(node(inputs, None if op_w is None else op_w[e : e + n],
                               None if edge_w is None else edge_w[e : e + n]))
            if j + 1 < len(self.nodes):
                inputs.append(read(states[-1], n))
            e += n
        out = torch.cat(states[2:], 1)
        if self.shortcut is not None:
            out = out + self.shortcut(s1)
        return out


class Supernet(nn.Module):
    """The search network of ``cfg`` whose edges, architecture parameters and weights come from ``method``."""

    def __init__(self, method: SupernetMethod, cfg: SupernetConfig, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.method = method
        self.cfg = cfg
        C_stem = cfg.stem_multiplier * cfg.C
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, C_stem, 3, padding=1, bias=False, **kw),
                                  nn.BatchNorm2d(C_stem, **kw))
        C_pp, C_p = C_stem, C_stem
        reduction_prev = False
        self.cells = nn.ModuleList()
        for i, C in enumerate(cfg.cell_widths()):
            reduction = i in cfg.reduction_cells
            self.cells.append(SearchCell(method, cfg, C_pp, C_p, C, reduction, reduction_prev, **kw))
            C_pp, C_p = C_p, cfg.steps * C
            reduction_prev = reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, cfg.num_classes, **kw)
        self.arch = method.build_arch(cfg, **kw)
        if cfg.fast_path:
            accelerate(self)  # faster CPU kernels for its depthwise convolutions and BatchNorms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op_w = {t: self.method.op_weights(self, t) for t in CELL_TYPES}
        edge_w = {t: self.method.edge_weights(self, t) for t in CELL_TYPES}
        # Each state is read by two cells, both starting with a ReLU: apply it once per state (one
        # full-width ReLU and its backward fewer per cell).
        s1 = self.stem(x)
        r0 = r1 = s1.relu()
        for i, cell in enumerate(self.cells):
            t = cell_type(cell.reduction)
            s1 = cell(r0, r1, s1, op_w[t], edge_w[t])
            if i + 1 < len(self.cells):
                r0, r1 = r1, s1.relu()
        return self.classifier(self.pool(s1).flatten(1))

    # --- parameter groups ---

    def _arch_prefixes(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, ArchModule)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters, in module order (deterministic: exact resume needs it)."""
        prefixes = tuple(p + "." for p in self._arch_prefixes())
        return [p for n, p in self.named_parameters() if n.startswith(prefixes)]

    def weight_parameters(self) -> list[nn.Parameter]:
        prefixes = tuple(p + "." for p in self._arch_prefixes())
        return [p for n, p in self.named_parameters() if not n.startswith(prefixes)]

    def cells_of(self, cell_type: str) -> list[SearchCell]:
        return [c for c in self.cells if c.reduction == (cell_type == "reduce")]

    # --- architecture views used by the loop, the history and budgets ---

    def relaxed_op_weights(self) -> dict[str, torch.Tensor]:
        """Differentiable operator weights per cell type, (edges, ops), rows summing to 1."""
        return {t: self.method.relaxed_op_weights(self, t) for t in CELL_TYPES}

    def edge_weights(self) -> dict[str, torch.Tensor | None]:
        """Differentiable per-node-normalised edge weights per cell type, (edges,), or None."""
        return {t: self.method.edge_weights(self, t) for t in CELL_TYPES}

    def derivation_weights(self) -> dict[str, torch.Tensor]:
        """The operator weights the genotype is derived from (detached), (edges, ops)."""
        return {t: self.method.derivation_op_weights(self, t).detach() for t in CELL_TYPES}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Within this block, modules that estimate weights from data (SWD-NAS) accumulate them."""
        recorders = [m for m in self.modules() if isinstance(m, WeightRecorder)]
        for m in recorders:
            m.recording = True
        try:
            yield
        finally:
            for m in recorders:
                m.recording = False

    def reset_records(self) -> None:
        for m in self.modules():
            if isinstance(m, WeightRecorder):
                m.reset()


class WeightRecorder(nn.Module):
    """A module whose operator weights come from the data; it averages them while recording."""

    def __init__(self, n_ops: int) -> None:
        super().__init__()
        self.recording = False
        self.n_ops = n_ops
        self.total: torch.Tensor | None = None
        self.count = 0
        self.last: torch.Tensor | None = None  # differentiable weights of the latest forward

    def record(self, w: torch.Tensor) -> None:
        self.last = w
        if self.recording:
            d = w.detach()
            self.total = d.clone() if self.total is None else self.total + d
            self.count += 1

    def reset(self) -> None:
        self.total, self.count = None, 0

    def average(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.count


def freeze(params: Sequence[nn.Parameter]) -> contextlib.AbstractContextManager[None]:
    """Within the block ``params`` need no gradient: backward skips their weight-gradient kernels."""

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    return block()
