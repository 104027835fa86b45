"""Faster CPU kernels for the supernet's many small layers (same mathematics, other kernels).

Part of the fast path (``SupernetConfig.fast_path``); ``benchmarks/search_step.py`` measures it
against the reference (``--reference``).

* Depthwise convolution: oneDNN's backward is fast for the plain stride-1 3x3 kernel only; 5x5 and
  dilated kernels (DARTS' sep_conv_5x5, dil_conv_3x3 and dil_conv_5x5, on every edge) take a slow
  path for their gradients many times the cost of their forward. Both gradients are rewritten in
  terms of fast kernels: the input gradient is a correlation with the flipped kernel (a forward
  convolution; at stride 2 a transposed one, or for dilated kernels the forward one over the
  gradient spread on a zero grid), the weight gradient is the correlation of the padded input with
  the output gradient over the ``K x K`` window (``K = d(k-1)+1``), computed as 3x3 tiles with the
  fast 3x3 weight-gradient kernel and sampled every ``d`` offsets (at stride = dilation, as an
  undilated kernel over every s-th pixel).
* BatchNorm in training mode on channels_last tensors with few channels (partial-channel methods
  run thousands per step): the native kernel is slower there than in NCHW. Seen as an (N*H*W, C)
  matrix, the statistics are column means, and the normalisation and its gradient a few
  elementwise passes.

:func:`accelerate` swaps these layers' classes in a module; on other devices, in eval mode or with
other memory formats they run the native code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.ops import memory_format

_conv_backward = torch.ops.aten.convolution_backward


def _weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, s: int, p: int, d: int) -> torch.Tensor:
    """dL/dw[c, i, j] = sum over b, h, w of g[b, c, h, w] * x_pad[b, c, s*h + d*i, s*w + d*j]."""
    if s == d > 1:
        # stride and dilation equal: the taps read x_pad[s*(h + i)], so the kernel is an undilated
        # one over every s-th pixel (one pass instead of a tile per 3x3 block)
        return _weight_grad(F.pad(x, (p, p, p, p))[:, :, ::s, ::s], g, k, 1, 0, 1)
    C = x.shape[1]
    K = d * (k - 1) + 1
    n = -(-K // 3)  # 3x3 tiles per side
    H, W = g.shape[-2:]
    span_h, span_w = s * (H - 1) + 3, s * (W - 1) + 3  # input rows/cols one 3x3 tile reads
    # pad so that every tile stays inside the input (the extra zeros only meet unused offsets)
    need_h, need_w = 3 * (n - 1) + span_h, 3 * (n - 1) + span_w
    xp = F.pad(x, (p, max(0, need_w - x.shape[-1] - p), p, max(0, need_h - x.shape[-2] - p)))
    probe = x.new_empty((C, 1, 3, 3))  # only its shape matters to the kernel
    full = x.new_empty((C, 1, 3 * n, 3 * n))
    for a in range(n):
        for b in range(n):
            tile = xp[:, :, 3 * a : 3 * a + span_h, 3 * b : 3 * b + span_w]
            full[:, :, 3 * a : 3 * a + 3, 3 * b : 3 * b + 3] = _conv_backward(
                g, tile, probe, None, (s, s), (0, 0), (1, 1), False, (0, 0), C, (False, True, False))[1]
    return full[:, :, :K:d, :K:d]


def _input_grad(g: torch.Tensor, w: torch.Tensor, size: tuple[int, int], s: int, p: int, d: int) -> torch.Tensor:
    """The correlation of ``g`` with the flipped kernel; at stride s, of ``g`` spread over a grid s times
    finer (a transposed convolution)."""
    C = w.shape[0]
    if s == 1:
        return F.conv2d(g, w.flip(2, 3), None, 1, p, d, C)
    K = d * (w.shape[-1] - 1) + 1
    extra = [size[i] - ((g.shape[-2 + i] - 1) * s - 2 * p + K) for i in (0, 1)]
    if d == 1:
        return F.conv_transpose2d(g, w, None, s, p, tuple(extra), C, d)
    # Dilated and strided, oneDNN's transposed kernel is slow; spreading g over the finer grid and
    # running the stride-1 correlation is not.
    fmt = memory_format(g)
    grid = [(g.shape[-2 + i] - 1) * s + 1 + extra[i] for i in (0, 1)]
    spread = torch.empty((g.shape[0], C, *grid), dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
    spread[:, :, ::s, ::s] = g
    return F.conv2d(spread, w.flip(2, 3), None, 1, K - 1 - p, d, C)


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        s, p, d = ctx.conf
        g = g.contiguous(memory_format=memory_format(x))
        gx = _input_grad(g, w, x.shape[-2:], s, p, d) if ctx.needs_input_grad[0] else None
        gw = _weight_grad(x, g, w.shape[-1], s, p, d) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None


class FastDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) whose backward avoids the slow CPU paths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return super().forward(x)
        return _Depthwise.apply(x, self.weight, self.stride[0], self.padding[0], self.dilation[0])


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.bias is None
            and m.stride[0] == m.stride[1] and m.kernel_size[0] == m.kernel_size[1] and m.dilation[0] == m.dilation[1]
            and m.padding_mode == "zeros" and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1]
            and (m.kernel_size[0], m.dilation[0], m.stride[0]) != (3, 1, 1))


def _colsum(X: torch.Tensor) -> torch.Tensor:
    """Column sums of an (M, c) matrix (per-channel sums of a channels_last tensor's rows).

    torch's dim-0 sum is fast only where c is a multiple of 8 (or below it); other widths (12, 20:
    a node's stacked partial-channel edges) take a matrix-vector product with ones, fast at any c.
    """
    if X.shape[1] % 8 == 0 or X.shape[1] < 8:
        return X.sum(0)
    return torch.mv(X.t(), X.new_ones(X.shape[0]))


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    """A channels_last (B, C, H, W) tensor as the (B*H*W, C) matrix it is in memory (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of a channels_last tensor viewed as an (N*H*W, C) matrix."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        X = _as_matrix(x)
        m = X.shape[0]
        mean = _colsum(X).div_(m)
        xc = X - mean
        var = _colsum(xc * xc).div_(m)
        rstd = torch.rsqrt(var + eps)
        y = xc.mul_(rstd)
        out = y if weight is None else torch.addcmul(bias, y, weight)
        ctx.save_for_backward(y, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        y, rstd, weight = ctx.saved_tensors
        n, c, h, w = g.shape
        G = _as_matrix(g.contiguous(memory_format=torch.channels_last))
        gw = gb = None
        if weight is not None:
            if ctx.needs_input_grad[1]:
                gw = _colsum(G * y)
            if ctx.needs_input_grad[2]:
                gb = _colsum(G)
            G = G * weight
        gx = None
        if ctx.needs_input_grad[0]:
            m = G.shape[0]
            gx = (G - _colsum(G).div_(m) - y * _colsum(G * y).div_(m)).mul_(rstd)
            gx = gx.view(n, h, w, c).permute(0, 3, 1, 2)
        return gx, gw, gb, None


def _fast_bn_applies(bn: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    return (bn.training and x.device.type == "cpu" and x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and x.is_contiguous(memory_format=torch.channels_last) and bn.momentum is not None)


def _track(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
    """Update ``bn``'s running statistics from a batch's (biased) ``var`` over ``m`` values, as native BN."""
    if bn.track_running_stats:
        with torch.no_grad():
            bn.running_mean.lerp_(mean, bn.momentum)
            bn.running_var.lerp_(var * (m / (m - 1)), bn.momentum)  # unbiased, as native BN
            bn.num_batches_tracked.add_(1)


class FastBatchNorm2d(nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` (same state) with a faster training path for channels_last CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_bn_applies(self, x):
            return super().forward(x)
        out, mean, var = _ChannelsLastBatchNorm.apply(x, self.weight, self.bias, self.eps)
        _track(self, mean, var, x.numel() // x.shape[1])
        return out


class _NormMix(torch.autograd.Function):
    """``sum_o a_o * BN(x_o)`` (training-mode, non-affine BN per input) in one pass per input.

    Per input the statistics take two column sums and the mixture one multiply-add into a shared
    output; the backward needs one column dot product and one multiply-add per input. The separate
    layers make several passes per BN, one per weighted-sum term, and more for their gradients,
    each into a freshly allocated (B*H*W, C) matrix (a page-faulting allocation can cost as much as
    the arithmetic); here one scratch matrix is reused.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, eps: float, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, c, h, w = xs[0].shape
        X = [_as_matrix(x) for x in xs]
        m = X[0].shape[0]
        buf = torch.empty_like(X[0])
        mean = torch.stack([_colsum(x) for x in X]).div_(m)  # (K, c)
        var = torch.stack([_colsum(torch.sub(x, mu, out=buf).square_()) for x, mu in zip(X, mean)]).div_(m)
        rstd = torch.rsqrt(var + eps)
        s = a * rstd
        out = torch.addcmul(-(s * mean).sum(0), X[0], s[0])
        for x, so in zip(X[1:], s[1:]):
            out.addcmul_(x, so)
        ctx.save_for_backward(a, mean, rstd, *xs)
        ctx.mark_non_differentiable(mean, var)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        a, mean, rstd, *xs = ctx.saved_tensors
        G = _as_matrix(g.contiguous(memory_format=torch.channels_last))
        m = G.shape[0]
        buf = torch.empty_like(G)
        gsum = _colsum(G)
        # sum over rows of g * y_o with y_o = (x_o - mean_o) * rstd_o: the gradient of a_o
        gy = torch.stack([_colsum(torch.mul(G, _as_matrix(x), out=buf)) for x in xs]).sub_(mean * gsum).mul_(rstd)
        grads: list[torch.Tensor | None] = [None] * len(xs)
        if any(ctx.needs_input_grad[2:]):
            # BN's input gradient a_o*rstd_o*(g - mean(g) - y_o*mean(g*y_o)), written as s*g - u*x + t
            s = a * rstd
            u = s * rstd * gy / m
            t = u * mean - s * gsum / m
            for o, x in enumerate(xs):
                if ctx.needs_input_grad[2 + o]:
                    gx = torch.addcmul(t[o], G, s[o]).addcmul_(_as_matrix(x), u[o], value=-1)
                    grads[o] = gx.view(g.shape[0], g.shape[2], g.shape[3], -1).permute(0, 3, 1, 2)
        return (gy if ctx.needs_input_grad[0] else None), None, *grads


def norm_mix(xs: list[torch.Tensor], bns: list[nn.BatchNorm2d], a: torch.Tensor) -> torch.Tensor | None:
    """``sum_o a[o] * bns[o](xs[o])`` for non-affine training-mode BNs over channels_last CPU tensors
    (``a``: (K, C)), updating the BNs' running statistics; None where that fast path does not apply."""
    if not all(not bn.affine and bn.eps == bns[0].eps and _fast_bn_applies(bn, x) for bn, x in zip(bns, xs)):
        return None
    out, mean, var = _NormMix.apply(a, bns[0].eps, *xs)
    m = xs[0].numel() // xs[0].shape[1]
    for bn, mu, v in zip(bns, mean, var):
        _track(bn, mu, v, m)
    return out


def accelerate(module: nn.Module) -> nn.Module:
    """Give ``module``'s depthwise convolutions (other than the plain stride-1 3x3, whose native
    backward is already fast) and BatchNorms the faster CPU paths, keeping their parameters."""
    for m in module.modules():
        for child in list(m.children()):
            # same attributes, parameters and state dict; only forward differs
            if _eligible(child):
                child.__class__ = FastDepthwiseConv2d
            elif type(child) is nn.BatchNorm2d:
                child.__class__ = FastBatchNorm2d
    return module
