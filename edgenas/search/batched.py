"""The supernet's batched layer: mixed ops and partial-channel nodes computed with fewer, larger kernels.

Used where ``SupernetConfig.fast_path`` is on (the default). Each class computes the same function
as its reference in :mod:`edgenas.search.edges` (tests compare outputs and gradients):

* :class:`BatchedMixedOp` runs the mixed operations of ``n`` edges that share a stride as one: the
  edges' inputs are stacked along channels and each operator is built once for ``n * C`` channels,
  its dense convolutions grouped per edge where the registry says that keeps the edges apart
  (``OpSpec.groupable``), else one copy per edge. Narrow partial-channel edges (C/K channels) are
  dominated by per-call costs and short vector loads; stacked, a node's edges make few wide calls.
* The operators are run as chains of layers (``OpSpec.chained``), so that the leading ReLU shared
  by the convolutions runs once per mixed op, and the closing BatchNorms run together with the
  weighted sum (:func:`~edgenas.search.fast_cpu.norm_mix`).
* :class:`FastMixedOp` is that mixed op for a single edge (DARTS, ADARTS, attention-DARTS).
* :class:`BatchedPartialNode` is a whole PC-DARTS node: one batched mixed op per stride among its
  edges, the split of each state done once per cell rather than once per edge, and the
  concatenation and shuffle (linear, the same on every edge) done once per node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgenas.ops import OpSpec, get_op
from edgenas.search.edges import PartialChannels, build_candidates, node_sum, weighted_sum
from edgenas.search.fast_cpu import norm_mix


def group_convs(op: nn.Module, groups: int) -> nn.Module:
    """Make every dense convolution of ``op`` block-diagonal over ``groups`` channel blocks (those
    whose widths do not split are left alone)."""
    for m in list(op.modules()):
        for name, c in list(m.named_children()):
            if type(c) is nn.Conv2d and c.groups == 1 and c.in_channels % groups == 0 == c.out_channels % groups:
                setattr(m, name, nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                           c.dilation, groups=groups, bias=c.bias is not None,
                                           device=c.weight.device, dtype=c.weight.dtype))
    return op


class Blocks(nn.Module):
    """One operator per channel block, for operators that are not block-wise when grouped."""

    def __init__(self, ops: Sequence[nn.Module], C: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ops)
        self.C = C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([op(part) for op, part in zip(self.blocks, x.split(self.C, 1))], 1)


def build_batched_candidates(ops: Sequence[str], C: int, stride: int, n: int, *, device: Any = None,
                             dtype: torch.dtype | None = None) -> tuple[list[int], nn.ModuleList]:
    """:func:`~edgenas.search.edges.build_candidates` for ``n`` edges of C channels stacked (n * C)."""
    kw = {"device": device, "dtype": dtype}
    if n == 1:
        return build_candidates(ops, C, stride, **kw)

    def build(spec: OpSpec) -> nn.Module:
        if stride in spec.groupable:
            return group_convs(spec.build(n * C, stride, affine=False, **kw), n)
        return Blocks([spec.build(C, stride, affine=False, **kw) for _ in range(n)], C)

    return build_candidates(ops, n * C, stride, build=build, **kw)


def chain(candidate: nn.Module, spec: OpSpec) -> list[nn.Module]:
    """A candidate (as :func:`build_batched_candidates` makes it) as the layers it applies in turn;
    ``[candidate]`` where its operator is not a chain (``OpSpec.chained``)."""
    body, tail = (candidate[0], [candidate[1]]) if spec.bn_in_search else (candidate, [])
    own = body.layers() if spec.chained and not isinstance(body, Blocks) else [body]
    return [*own, *tail]


class BatchedMixedOp(nn.Module):
    """The mixed operations of ``n`` edges that share a stride, run as one: ``x`` (B, n*C, H, W)
    stacked inputs, ``w`` (n, ops) weights -> (B, n*C, H', W') stacked outputs, block ``e`` being
    ``sum_o w[e, o] * o(x_e)`` (the same parameters as n separate edges, block by block)."""

    def __init__(self, ops: Sequence[str], C: int, stride: int, n: int, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.n, self.C = n, C
        self.index, self.candidates = build_batched_candidates(ops, C, stride, n, device=device, dtype=dtype)
        # (reads the shared ReLU?, layers in between, closing BatchNorm or None) per candidate; a
        # plain list: the layers are registered once, under candidates
        self.plans: list[tuple[bool, list[nn.Module], nn.BatchNorm2d | None]] = []
        for i, op in zip(self.index, self.candidates):
            layers = chain(op, get_op(ops[i]))
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


class FastMixedOp(BatchedMixedOp):
    """:class:`~edgenas.search.edges.MixedOp` (one edge, weights (ops,)) as a batched mixed op of one
    edge, so single-edge mixers get the shared ReLU and the fused BatchNorm-and-sum too."""

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

    The same function as an :class:`~edgenas.search.edges.EdgeNode` of PC-DARTS edges: per edge the
    first C/K channels go through the mixed operation (weighted by ``c_e * w_e``), the rest bypass
    (pooled at stride 2); concatenation and shuffle are linear and the same on every edge, so the
    processed and bypassed parts are summed over the edges first and merged once.

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
        return self.selectors[0].combine(node_sum(processed, None), node_sum([b for _, b in inputs], c))
