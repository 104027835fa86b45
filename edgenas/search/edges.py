"""The supernet's edges and nodes as the papers write them: channel selectors, the mixed op, node sums.

Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019), Eq. 2: every edge (i, j) runs
all operators o of the space, ``o_bar(x) = sum_o w_o * o(x)`` (``w = softmax(alpha)`` for DARTS), and
a node sums its incoming edges, ``x_j = sum_{i<j} e_ij * o_bar_ij(x_i)``, where ``e_ij`` = 1 unless the
method weights edges (PC-DARTS' edge normalisation, Xu et al., ICLR 2020, Eq. 4; EL-DARTS' dynamic
coefficients).

An edge is a *channel selector* around a *mixer*: the selector chooses which channels go through
the operators and puts the result back (all channels; PC-DARTS' first 1/K plus channel shuffle;
ADARTS' top 1/K by channel attention), the mixer combines the operators' outputs (with weights
from alpha, or from SWD-NAS' attention over the outputs). Methods (:mod:`edgenas.search.methods`)
choose the two parts.

This is the reference: each class computes its equation term by term. The batched layer
(:mod:`edgenas.search.batched`, switched on by ``SupernetConfig.fast_path``) computes the same
functions with fewer, larger kernels, and tests hold it to this one.

Operator weights of ``none`` stay in the softmax, but the operator itself is never run: its output
is zero, so it adds nothing to the sum and nothing to any gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgenas.ops import ChannelAttention, OpSpec, get_op

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

    def __init__(self, C: int, stride: int, **_: Any) -> None:
        super().__init__()
        self.width = C

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return x, None

    def merge(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        return y


class PartialChannels(nn.Module):
    """PC-DARTS (Xu et al. 2020, Eq. 3): the first C/K channels go through the operators, the rest
    bypass them (pooled on stride-2 edges); the two parts are concatenated and channel-shuffled so
    that other channels are sampled by the next edge.
    """

    def __init__(self, C: int, stride: int, *, k: int, **_: Any) -> None:
        super().__init__()
        self.k, self.width = k, C // k
        self.pool = _bypass_pool(stride)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return x[:, : self.width], x[:, self.width :]

    def bypass(self, rest: torch.Tensor) -> torch.Tensor:
        return self.pool(rest)

    def combine(self, y: torch.Tensor, bypassed: torch.Tensor) -> torch.Tensor:
        """Processed and (already pooled) bypassed channels back into one shuffled tensor."""
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

def build_candidates(ops: Sequence[str], C: int, stride: int, *, build: Callable[[OpSpec], nn.Module] | None = None,
                     device: Any = None, dtype: torch.dtype | None = None) -> tuple[list[int], nn.ModuleList]:
    """The operators an edge runs (every one but ``none``) and their indices in ``ops``.

    Supernet operators have non-affine BatchNorm (DARTS), and those the registry marks
    ``bn_in_search`` (pooling) get one appended so their scale matches the convolutions'. ``build``
    makes an operator's module for ``C`` output channels (default: the registry's, at this stride).
    """
    kw = {"device": device, "dtype": dtype}
    index, modules = [], nn.ModuleList()
    for i, name in enumerate(ops):
        spec = get_op(name)
        if spec.is_zero:
            continue
        op = build(spec) if build is not None else spec.build(C, stride, affine=False, **kw)
        if spec.bn_in_search:
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False, **kw))
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


class MixedOp(nn.Module):
    """DARTS' mixed operation (Eq. 2): ``o_bar(x) = sum_o w_o * o(x)`` over one edge's operators, the
    weights ``w`` (ops,) given by the caller (softmax(alpha) in DARTS)."""

    def __init__(self, ops: Sequence[str], C: int, stride: int, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.index, self.candidates = build_candidates(ops, C, stride, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        assert w is not None, "MixedOp needs operator weights"
        return sum(w[o] * op(x) for o, op in zip(self.index, self.candidates))


class SelectedEdge(nn.Module):
    """One edge: a channel selector around a mixer, ``merge(mixer(split(x)))``."""

    def __init__(self, selector: nn.Module, mixer: nn.Module) -> None:
        super().__init__()
        self.selector = selector
        self.mixer = mixer

    def forward(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        part, ctx = self.selector.split(x)
        return self.selector.merge(self.mixer(part, w), ctx)


# --- nodes ---------------------------------------------------------------------------------------

def node_sum(tensors: Sequence[torch.Tensor], coefs: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """A node's input: the plain sum of its edges, or weighted by the edge coefficients."""
    if coefs is not None:
        return weighted_sum(tensors, coefs)
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


class EdgeNode(nn.Module):
    """An intermediate node whose incoming edges are separate modules: ``sum_e c_e * edge_e(h_e)``."""

    def __init__(self, edges: Sequence[nn.Module]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)

    def prepare(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """A state as this node's :meth:`forward` reads it (each edge selects its own channels)."""
        return h

    def forward(self, states: Sequence[torch.Tensor], op_w: torch.Tensor | None,
                coefs: torch.Tensor | None) -> torch.Tensor:
        rows: Sequence[torch.Tensor | None] = op_w.unbind(0) if op_w is not None else [None] * len(self.edges)
        c = coefs.unbind(0) if coefs is not None else None
        return node_sum([edge(h, w) for edge, h, w in zip(self.edges, states, rows)], c)
