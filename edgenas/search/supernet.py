"""The DARTS supernet: cells of mixed edges over a search space, parameterised by a search method.

Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019), Eq. 2: every edge (i, j) runs
all operators o of the space, ``o_bar(x) = sum_o w_o * o(x)`` (``w = softmax(alpha)`` for DARTS), and
a node sums its incoming edges, ``x_j = sum_{i<j} e_ij * o_bar_ij(x_i)``, where ``e_ij`` = 1 unless the
method weights edges (PC-DARTS' edge normalisation, Xu et al., ICLR 2020, Eq. 4; EL-DARTS' dynamic
coefficients). The layout is DARTS' search network: a 3x3 stem to ``stem_multiplier * C`` channels,
``layers`` cells with reductions (channels doubled) at ``layers // 3`` and ``2 * layers // 3``, each
cell with ``steps`` intermediate nodes fed by every earlier state and an output concatenating them.

An edge is a *channel selector* around a *mixer*: the selector chooses which channels go through
the operators and puts the result back (all channels; PC-DARTS' first 1/K plus channel shuffle;
ADARTS' top 1/K by channel attention), the mixer combines the operators' outputs (with weights
from alpha, or from SWD-NAS' attention over the outputs). Methods (:mod:`edgenas.search.methods`)
choose the two parts and the architecture parameters; this module holds the shared parts.

Operator weights of ``none`` stay in the softmax, but the operator itself is never run: its output
is zero, so it adds nothing to the sum and nothing to any gradient.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgenas.cells import CELL_TYPES, edge_stride, num_edges, reduction_cells
from edgenas.errors import EdgenasError
from edgenas.ops import ChannelAttention, DilConv, FactorizedReduce, ReLUConvBN, SepConv, get_op
from edgenas.search.fast_cpu import accelerate, norm_mix
from edgenas.values import FieldRule, check_fields

if TYPE_CHECKING:
    from edgenas.search.methods.base import Method


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


# --- channel selectors -------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet); keeps a channels_last tensor channels_last."""
    b, c, h, w = x.shape
    if groups == 1:
        return x
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return y.permute(0, 3, 1, 2)
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _bypass_pool(stride: int) -> nn.Module:
    # Channels that skip the operators still have to shrink on stride-2 edges (PC-DARTS uses 2x2
    # max pooling); ceil_mode matches the operators' output size on odd inputs.
    return nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()


class AllChannels(nn.Module):
    """Every channel goes through the operators (DARTS)."""

    linear_merge = False

    def __init__(self, C: int, stride: int, **_: Any) -> None:
        super().__init__()
        self.width = C

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return x, None

    def merge(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        return y


class PartialChannels(nn.Module):
    """PC-DARTS (Xu et al. 2020, Eq. 3): the first C/K channels go through the operators, the rest
    bypass them; the two parts are concatenated and channel-shuffled so that other channels are
    sampled by the next edge.

    Concatenation and shuffle are linear and the same on every edge, so a cell sums the processed
    and the bypassed parts of a node's edges first and merges once per node (:meth:`combine`)
    instead of once per edge: the same result with a quarter of the full-width copies.
    """

    linear_merge = True

    def __init__(self, C: int, stride: int, *, k: int, **_: Any) -> None:
        super().__init__()
        self.k, self.width = k, C // k
        self.pool = _bypass_pool(stride)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return x[:, : self.width], x[:, self.width :]

    def bypass(self, rest: torch.Tensor) -> torch.Tensor:
        return self.pool(rest)

    def combine(self, y: torch.Tensor, bypassed: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([y, bypassed], 1), self.k)

    def merge(self, y: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return self.combine(y, self.bypass(rest))


class AttentionChannels(nn.Module):
    """ADARTS (Xue & Qin 2022): x is reweighted by its channel attention F_c(x); the C/K channels
    with the highest attention go through the operators and are put back in their places, the
    others bypass.

    The channels are ranked by attention averaged over the batch, so every sample of a batch sends
    the same channels (and BatchNorm in the operators sees one set of channels).
    """

    linear_merge = False  # the selected channels differ per edge

    def __init__(self, C: int, stride: int, *, k: int, device: Any = None, dtype: torch.dtype | None = None,
                 **_: Any) -> None:
        super().__init__()
        self.width = C // k
        self.attention = ChannelAttention(C, device=device, dtype=dtype)
        self.pool = _bypass_pool(stride)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        a = self.attention(x)
        x = x * a[:, :, None, None]
        idx = a.detach().mean(0).topk(self.width).indices.sort().values
        return x.index_select(1, idx), (x, idx)

    def merge(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        x, idx = ctx
        return self.pool(x).index_copy(1, idx, y)


# --- mixers ------------------------------------------------------------------------------------

def build_candidates(ops: Sequence[str], C: int, stride: int, *, n: int = 1, device: Any = None,
                     dtype: torch.dtype | None = None) -> tuple[list[int], nn.ModuleList]:
    """The operators an edge runs (every one but ``none``) and their indices in ``ops``.

    Supernet operators have non-affine BatchNorm (DARTS), and those the registry marks
    ``bn_in_search`` (pooling) get one appended so their scale matches the convolutions'. For ``n``
    edges run as one (:class:`BatchedMixedOp`) each operator is built for ``n * C`` channels with
    its dense convolutions grouped per edge, or as one copy per edge where grouping would mix them.
    """
    kw = {"device": device, "dtype": dtype}
    index, modules = [], nn.ModuleList()
    for i, name in enumerate(ops):
        spec = get_op(name)
        if spec.is_zero:
            continue
        if n == 1:
            op: nn.Module = spec.build(C, stride, affine=False, **kw)
        elif blockwise(name, C, stride, n):
            op = group_convs(spec.build(n * C, stride, affine=False, **kw), n)
        else:
            op = Blocks([spec.build(C, stride, affine=False, **kw) for _ in range(n)], C)
        if spec.bn_in_search:
            op = nn.Sequential(op, nn.BatchNorm2d(n * C, affine=False, **kw))
        index.append(i)
        modules.append(op)
    return index, modules


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i weights[i] * tensors[i]`` with one fused multiply-add per term.

    ``weights`` broadcast against the tensors (0-d scalars, or (B, C, 1, 1)).
    """
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        out = torch.addcmul(out, t, w)
    return out


class SelectedEdge(nn.Module):
    """One edge: a channel selector around a mixer."""

    def __init__(self, selector: nn.Module, mixer: nn.Module) -> None:
        super().__init__()
        self.selector = selector
        self.mixer = mixer

    def forward(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        part, ctx = self.selector.split(x)
        return self.selector.merge(self.mixer(part, w), ctx)

    def parts(self, x: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(processed, bypassed) channels, for selectors whose merge the cell does per node."""
        part, rest = self.selector.split(x)
        return self.mixer(part, w), self.selector.bypass(rest)


# --- nodes ---------------------------------------------------------------------------------------

def _sum(tensors: Sequence[torch.Tensor], coefs: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """A node's input: the plain sum of its edges, or weighted by the edge coefficients."""
    if coefs is not None:
        return weighted_sum(tensors, coefs)
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


class EdgeNode(nn.Module):
    """An intermediate node whose incoming edges are separate modules: ``sum_e c_e * edge_e(h_e)``.

    With linear-merge selectors (PC-DARTS) the processed and bypassed parts are summed first and
    merged once (see :class:`PartialChannels`).
    """

    def __init__(self, edges: Sequence[nn.Module]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)
        self.merge_per_node = all(getattr(e.selector, "linear_merge", False) for e in self.edges)

    def prepare(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """A state as this node's :meth:`forward` reads it (each edge selects its own channels)."""
        return h

    def forward(self, states: Sequence[torch.Tensor], op_w: torch.Tensor | None,
                coefs: torch.Tensor | None) -> torch.Tensor:
        rows: Sequence[torch.Tensor | None] = op_w.unbind(0) if op_w is not None else [None] * len(self.edges)
        c = coefs.unbind(0) if coefs is not None else None
        if self.merge_per_node:
            parts = [edge.parts(h, w) for edge, h, w in zip(self.edges, states, rows)]
            return self.edges[0].selector.combine(_sum([p[0] for p in parts], c), _sum([p[1] for p in parts], c))
        return _sum([edge(h, w) for edge, h, w in zip(self.edges, states, rows)], c)


def group_convs(op: nn.Module, groups: int) -> nn.Module:
    """Make every dense convolution of ``op`` block-diagonal over ``groups`` channel blocks (those
    whose widths do not split are left alone; :func:`blockwise` then finds the op not block-wise)."""
    for m in list(op.modules()):
        for name, c in list(m.named_children()):
            if type(c) is nn.Conv2d and c.groups == 1 and c.in_channels % groups == 0 == c.out_channels % groups:
                setattr(m, name, nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                           c.dilation, groups=groups, bias=c.bias is not None,
                                           device=c.weight.device, dtype=c.weight.dtype))
    return op


@functools.cache
def blockwise(name: str, C: int, stride: int, groups: int) -> bool:
    """Whether operator ``name`` built for ``groups * C`` channels, its dense convolutions grouped,
    treats each block of C channels on its own: probed by changing one block's input.

    True for the DARTS convolutions, pooling and identity; False for FactorizedReduce (it
    concatenates two half-width convolutions, interleaving the blocks) and channel attention.
    """
    with torch.random.fork_rng(devices=[]):  # a probe must not consume the seeded stream: cached,
        # it runs in only the first supernet a process builds, which would then start differently
        op = group_convs(get_op(name).build(groups * C, stride, affine=False), groups)
    x = torch.randn(2, groups * C, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = op(x)
        x[:, :C] += 1.0
        changed = (op(x) - y).abs().amax(dim=(0, 2, 3)) > 0
    return not bool(changed[C:].any())


class Blocks(nn.Module):
    """One operator per channel block, for operators that are not block-wise when grouped."""

    def __init__(self, ops: Sequence[nn.Module], C: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ops)
        self.C = C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([op(part) for op, part in zip(self.blocks, x.split(self.C, 1))], 1)


def chain(op: nn.Module) -> list[nn.Module]:
    """``op`` as the sequence of layers it applies, or ``[op]`` where it is not a plain chain.

    ReLUConvBN, DilConv and SepConv only run their ``op`` Sequential (a test checks every registered
    operator's chain against the operator itself).
    """
    if type(op) is nn.Sequential:
        return [layer for child in op for layer in chain(child)]
    if type(op) in (ReLUConvBN, DilConv, SepConv):
        return chain(op.op)
    return [op]


class BatchedMixedOp(nn.Module):
    """The mixed operations of ``n`` edges that share a stride, run as one: the edges' inputs are
    stacked along channels and each operator is built once for ``n * C`` channels with its dense
    convolutions grouped per edge (the same parameters as n separate edges, block by block).

    On the CPU a partial-channel edge (C/K = 4 channels) is dominated by per-call costs and narrow
    vector loads; stacking a node's edges ran its mixed operations ~1.7x faster (5 edges, 4 channels).
    The candidates are run as chains of layers so that two more things are done once per mixed op:
    the leading ReLU the convolutions share, and the closing BatchNorms together with the weighted
    sum (:func:`~edgenas.search.fast_cpu.norm_mix`). With these and the cell's split per state
    (:class:`BatchedPartialNode`) a pc_darts search step took 3.28 s instead of 4.25 s
    (benchmarks/search_step.py, C=16, 8 cells, batch 64, 2-core dev VM, load ~1.3).
    """

    def __init__(self, ops: Sequence[str], C: int, stride: int, n: int, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.n, self.C = n, C
        self.index, self.candidates = build_candidates(ops, C, stride, n=n, device=device, dtype=dtype)
        # (reads the shared ReLU?, layers in between, closing BatchNorm or None) per candidate; a
        # plain list: the layers are registered once, under candidates
        self.plans: list[tuple[bool, list[nn.Module], nn.BatchNorm2d | None]] = []
        for op in self.candidates:
            layers = chain(op)
            relu = type(layers[0]) is nn.ReLU
            bn = layers[-1] if isinstance(layers[-1], nn.BatchNorm2d) and len(layers) > 1 else None
            self.plans.append((relu, layers[int(relu) : len(layers) - (bn is not None)], bn))
        self.shares_relu = any(relu for relu, _, _ in self.plans)
        # index tensors live with the module: indexing a CUDA tensor with a Python list copies the
        # list from pageable host memory on every forward, a blocking transfer per mixed op
        heads = [o for o, (_, _, bn) in enumerate(self.plans) if bn is not None]
        self.register_buffer("rows", torch.tensor(self.index, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("head_rows", torch.tensor(heads, dtype=torch.long, device=device), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x`` (B, n*C, H, W) stacked inputs, ``w`` (n, ops) weights -> (B, n*C, H', W') outputs."""
        cw = w.t().index_select(0, self.rows).repeat_interleave(self.C, dim=1)  # (candidates, n*C)
        relu_x = x.relu() if self.shares_relu else x
        heads, plain = [], []  # candidates closing with a BatchNorm (before it), and the others
        for o, (relu, layers, bn) in enumerate(self.plans):
            h = relu_x if relu else x
            for layer in layers:
                h = layer(h)
            if bn is not None:
                heads.append((o, h, bn))
            else:
                plain.append((h, cw[o].view(1, -1, 1, 1)))
        mixed = norm_mix([h for _, h, _ in heads], [bn for _, _, bn in heads],
                         cw.index_select(0, self.head_rows)) if heads else None
        if mixed is None:  # the layers themselves (other devices, eval mode, other memory formats)
            terms = [(bn(h), cw[o].view(1, -1, 1, 1)) for o, h, bn in heads] + plain
            return weighted_sum([t for t, _ in terms], [c for _, c in terms])
        for h, c in plain:
            mixed = torch.addcmul(mixed, h, c)
        return mixed


class MixedOp(BatchedMixedOp):
    """``sum_o w_o * o(x)`` over one edge's candidates, the weights given by the caller
    (softmax(alpha) in DARTS): a batched mixed op of one edge, so DARTS gets the same shared ReLU
    and fused BatchNorm-and-sum."""

    def __init__(self, ops: Sequence[str], C: int, stride: int, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(ops, C, stride, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        assert w is not None, "MixedOp needs operator weights"
        return super().forward(x, w[None])


def _sum_blocks(y: torch.Tensor, n: int) -> torch.Tensor:
    """Sum the n channel blocks of y (B, n*C, H, W), keeping a channels_last tensor channels_last."""
    b, c, h, w = y.shape
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return y.permute(0, 2, 3, 1).reshape(b, h, w, n, c // n).sum(3).permute(0, 3, 1, 2)
    return y.reshape(b, n, c // n, h, w).sum(1)


class BatchedPartialNode(nn.Module):
    """A PC-DARTS node computed with one :class:`BatchedMixedOp` per stride among its edges.

    The same function as an :class:`EdgeNode` of PC-DARTS edges: per edge the first C/K channels go
    through the mixed operation (weighted by ``c_e * w_e``), the rest bypass (pooled at stride 2);
    processed and bypassed parts are summed over the edges, concatenated and shuffled.

    Every node of a cell reads the same channels of a state and pools its bypass at the same stride,
    so the cell splits each state once (:meth:`prepare`) and hands the parts to all its nodes: one
    split backward per state instead of two zero-filled full-width slice gradients per edge, and one
    bypass pooling per state instead of one per edge.
    """

    def __init__(self, ops: Sequence[str], C: int, strides: Sequence[int], *, k: int, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.selectors = nn.ModuleList(PartialChannels(C, s, k=k) for s in strides)
        self.groups = [[e for e, s in enumerate(strides) if s == stride] for stride in dict.fromkeys(strides)]
        self.mixers = nn.ModuleList(
            BatchedMixedOp(ops, C // k, strides[g[0]], len(g), device=device, dtype=dtype) for g in self.groups)
        for j, g in enumerate(self.groups):  # device-side rows of each group (see BatchedMixedOp.rows)
            self.register_buffer(f"group_rows{j}", torch.tensor(g, dtype=torch.long, device=device), persistent=False)

    def prepare(self, h: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """State ``i`` as (channels the operators read, bypassed channels pooled at its edges' stride)."""
        sel = self.selectors[i]
        part, rest = h.split([sel.width, h.shape[1] - sel.width], 1)
        return part, sel.bypass(rest)

    def forward(self, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], op_w: torch.Tensor | None,
                coefs: torch.Tensor | None) -> torch.Tensor:
        """``inputs``: the earlier states as :meth:`prepare` gives them."""
        assert op_w is not None, "a partial-channel node needs operator weights"
        w = op_w if coefs is None else op_w * coefs[:, None]
        processed = []
        for j, (group, mixer) in enumerate(zip(self.groups, self.mixers)):
            x = torch.cat([inputs[e][0] for e in group], 1) if len(group) > 1 else inputs[group[0]][0]
            y = mixer(x, w.index_select(0, getattr(self, f"group_rows{j}")))
            processed.append(_sum_blocks(y, len(group)) if len(group) > 1 else y)
        c = coefs.unbind(0) if coefs is not None else None
        return self.selectors[0].combine(_sum(processed, None), _sum([b for _, b in inputs], c))


# --- cells and the network ---------------------------------------------------------------------

class SearchCell(nn.Module):
    """A DARTS cell: two preprocessed inputs, ``steps`` nodes built by the method, concatenated."""

    def __init__(self, method: Method, cfg: SupernetConfig, C_pp: int, C_p: int, C: int, reduction: bool,
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
                              device=device, dtype=dtype)
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

    def __init__(self, method: Method, cfg: SupernetConfig, *, device: Any = None,
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
        accelerate(self)  # faster CPU kernels for its depthwise convolutions and BatchNorms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op_w = {t: self.method.op_weights(self, t) for t in CELL_TYPES}
        edge_w = {t: self.method.edge_weights(self, t) for t in CELL_TYPES}
        # Each state is read by two cells, both starting with a ReLU: apply it once per state
        # (one full-width ReLU and its backward fewer per cell: pc_darts' step took 3.36 s instead of
        # 3.48 s, alternating steps in one process, benchmarks/search_step.py settings, load ~0.9).
        s1 = self.stem(x)
        r0 = r1 = s1.relu()
        for i, cell in enumerate(self.cells):
            t = "reduce" if cell.reduction else "normal"
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
