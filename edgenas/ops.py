"""Candidate operators of the DARTS search space, and a registry to add more.

The eight operators follow the DARTS family's definitions (Liu et al., "DARTS: Differentiable
Architecture Search", ICLR 2019, Sec. 3 and its released search space): separable convolutions are
two stacked ReLU-depthwise-pointwise-BN blocks with the stride in the first, dilated convolutions
one ReLU-depthwise(dilation 2)-pointwise-BN block, average pooling excludes padding from its count,
and a stride-2 skip connection is a FactorizedReduce.

Every factory has the signature ``(C, stride, affine, *, device=None, dtype=None)``; facts about an
operator that callers need (parameter-free? which kernel family? does the supernet put a BN after
it?) are fields of its :class:`OpSpec`, never tests on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgenas.errors import EdgenasError

Factory = Callable[..., nn.Module]


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise EdgenasError(f"stride {stride} is not supported", "operators take stride 1 or 2")


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d -> BN: the preprocessing block of DARTS cells."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False, **kw),
            nn.BatchNorm2d(C_out, affine=affine, **kw),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The block on an input already passed through ReLU (a search network shares it)."""
        return self.op[2](self.op[1](x))


class DilConv(nn.Module):
    """ReLU -> depthwise conv (dilated) -> pointwise conv -> BN."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in,
                      bias=False, **kw),
            nn.Conv2d(C_in, C_out, 1, bias=False, **kw),
            nn.BatchNorm2d(C_out, affine=affine, **kw),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def layers(self) -> list[nn.Module]:
        """The layers :meth:`forward` applies, in order."""
        return list(self.op)


class SepConv(nn.Module):
    """Two stacked DilConv blocks with dilation 1; only the first one strides."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, **kw),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, **kw),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def layers(self) -> list[nn.Module]:
        """The layers :meth:`forward` applies, in order (both blocks' layers)."""
        return [layer for block in self.op for layer in block.layers()]


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operator: an all-zero output (spatially halved at stride 2)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last where ``x`` is laid out so, else contiguous: the layout new tensors for x take."""
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


class _AlternatePixels(torch.autograd.Function):
    """``x[:, :, ::2, ::2]`` and ``x[:, :, 1::2, 1::2]`` as dense tensors in x's memory format.

    Autograd's slice backward builds a contiguous (NCHW) zero tensor per slice; on a channels_last x
    that is two full-size buffers, and every later elementwise op on x's gradient then mixes layouts,
    which is slow. Here both halves' gradients go into one zero tensor of x's layout.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = memory_format(x)
        ctx.meta = (x.shape, x.dtype, x.device, fmt)
        return x[:, :, ::2, ::2].contiguous(memory_format=fmt), x[:, :, 1::2, 1::2].contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx: Any, ga: torch.Tensor | None, gb: torch.Tensor | None) -> torch.Tensor:
        shape, dtype, device, fmt = ctx.meta
        g = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt).zero_()
        if ga is not None:
            g[:, :, ::2, ::2] = ga
        if gb is not None:
            g[:, :, 1::2, 1::2] = gb
        return g


class FactorizedReduce(nn.Module):
    """Halve H and W with two stride-2 1x1 convs, the second offset by one pixel, concatenated.

    Each half produces C_out/2 channels, so C_out must be even.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if C_out % 2:
            raise EdgenasError(
                f"FactorizedReduce needs an even channel count, got {C_out}",
                "use an even number of channels (e.g. --channels 16, 36, 48)",
            )
        kw = {"device": device, "dtype": dtype}
        self.relu = nn.ReLU(inplace=False)
        # 1x1 convolutions at stride 2 read every other pixel: with gradients they are given those
        # pixels (:class:`_AlternatePixels`) and run at stride 1. Same weights and outputs; the
        # shifted half no longer copies the whole (H-1)x(W-1) input first. Without gradients
        # (inference, ONNX export, MAC counting) the modules run as they are: there the copies would
        # be the cost, and an exported graph keeps plain strided convolutions.
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False, **kw)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False, **kw)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(self.relu(x))

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The block on an input already passed through ReLU (a search network shares it)."""
        if torch.is_grad_enabled():
            even, odd = _AlternatePixels.apply(x)
            a = nn.functional.conv2d(even, self.conv_1.weight, groups=self.conv_1.groups)
            b = nn.functional.conv2d(odd, self.conv_2.weight, groups=self.conv_2.groups)
        else:
            a, b = self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])
        # The shifted half sees the pixels the first half skips; on odd sizes it comes out one
        # pixel smaller, so pad it back (no-op on the even sizes DARTS uses).
        if b.shape[-2:] != a.shape[-2:]:
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.bn(torch.cat([a, b], dim=1))


@dataclass(frozen=True)
class OpSpec:
    """A registered operator and the facts about it that other modules rely on.

    family: operators in one family differ only in kernel size (the prune rule "smaller kernel
        of the same family" compares within a family).
    kernel: spatial kernel size, ``None`` where it has none (identity, zero).
    parameter_free: has no learnable weights (pooling, identity, zero).
    bn_in_search: the supernet appends a non-affine BN after it (DARTS does this for pooling so
        its output scale matches the convolutions').
    is_zero: the ``none`` operator, which only weighs edges and is never chosen.
    groupable: the strides at which the operator, built for ``n * C`` channels with every dense
        convolution grouped ``n`` ways, keeps the ``n`` blocks of C channels apart (block ``i`` of
        the output depends on block ``i`` of the input only). The batched search layer then runs
        ``n`` edges as one operator; elsewhere it builds one copy per edge. False for anything
        that mixes channels outside its convolutions (FactorizedReduce concatenates two halves,
        interleaving the blocks; channel attention pools over all channels). Empty by default: a
        new operator is run per edge until someone states otherwise (a test probes every claim).
    chained: the built module has a ``layers()`` method and its forward applies those layers one
        after the other (the batched layer runs them itself, to share the leading ReLU between
        operators and fuse the closing BatchNorms with the weighted sum).
    """

    name: str
    factory: Factory
    family: str
    kernel: int | None
    parameter_free: bool
    bn_in_search: bool = False
    is_zero: bool = False
    description: str = ""
    groupable: tuple[int, ...] = ()
    chained: bool = False

    def build(
        self,
        C: int,
        stride: int,
        affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        _check_stride(stride)
        return self.factory(C, stride, affine, device=device, dtype=dtype)


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str,
    *,
    family: str,
    kernel: int | None,
    parameter_free: bool,
    bn_in_search: bool = False,
    is_zero: bool = False,
    description: str = "",
    groupable: tuple[int, ...] = (),
    chained: bool = False,
) -> Callable[[Factory], Factory]:
    """Decorator adding a factory ``(C, stride, affine, *, device, dtype)`` to :data:`OPS`."""

    def decorate(factory: Factory) -> Factory:
        if name in OPS:
            raise ValueError(f"operator {name!r} is already registered")
        OPS[name] = OpSpec(name, factory, family, kernel, parameter_free, bn_in_search, is_zero,
                           description, tuple(groupable), chained)
        return factory

    return decorate


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise EdgenasError(
            f"unknown operator {name!r}", f"choose from: {', '.join(OPS)}"
        ) from None


def build_op(
    name: str,
    C: int,
    stride: int,
    affine: bool = True,
    *,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    return get_op(name).build(C, stride, affine, device=device, dtype=dtype)


def parse_ops(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Validate a comma-separated string or list of operator names; keeps order, drops repeats."""
    if isinstance(names, str):
        names = [n for n in (p.strip() for p in names.split(",")) if n]
    out: list[str] = []
    for n in names:
        get_op(n)
        if n not in out:
            out.append(n)
    if not out:
        raise EdgenasError("no operators given", f"name one or more of: {', '.join(OPS)}")
    return out


# --- the DARTS operator set -------------------------------------------------------------------

@register_op("none", family="zero", kernel=None, parameter_free=True, is_zero=True, groupable=(1, 2),
             description="zero output; only weighs edges during search")
def _none(C, stride, affine, *, device=None, dtype=None):
    return Zero(stride)


@register_op("max_pool_3x3", family="pool", kernel=3, parameter_free=True, bn_in_search=True,
             groupable=(1, 2), description="3x3 max pooling")
def _max_pool_3x3(C, stride, affine, *, device=None, dtype=None):
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("avg_pool_3x3", family="pool", kernel=3, parameter_free=True, bn_in_search=True,
             groupable=(1, 2), description="3x3 average pooling, padding excluded from the mean")
def _avg_pool_3x3(C, stride, affine, *, device=None, dtype=None):
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@register_op("skip_connect", family="skip", kernel=None, parameter_free=True, groupable=(1,),
             description="identity; FactorizedReduce at stride 2")
def _skip_connect(C, stride, affine, *, device=None, dtype=None):
    if stride == 1:
        return Identity()
    return FactorizedReduce(C, C, affine, device=device, dtype=dtype)


def _register_conv(family: str, kernel: int, cls: type[nn.Module], dilation: int) -> None:
    name = f"{family}_{kernel}x{kernel}"
    padding = dilation * (kernel - 1) // 2  # keeps H and W at stride 1

    def factory(C, stride, affine, *, device=None, dtype=None):
        extra = (dilation,) if cls is DilConv else ()
        return cls(C, C, kernel, stride, padding, *extra, affine, device=device, dtype=dtype)

    kind = "separable" if cls is SepConv else "dilated (2) separable"
    register_op(name, family=family, kernel=kernel, parameter_free=False, groupable=(1, 2), chained=True,
                description=f"{kernel}x{kernel} {kind} convolution")(factory)


for _k in (3, 5):
    _register_conv("sep_conv", _k, SepConv, 1)
for _k in (3, 5):
    _register_conv("dil_conv", _k, DilConv, 2)

#: The DARTS operator set, in the order the DARTS papers list it.
DARTS_OPS: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
#: The efficient search space EL-DARTS arrives at by pruning DARTS_OPS.
EL_DARTS_OPS: tuple[str, ...] = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


# --- attention: channel and spatial attention, attention-augmented convolutions ----------------
# CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018, Eqs. 2-3). The channel
# attention is also what ADARTS and SWD-NAS use to rank channels, so it lives here once.

class ChannelAttention(nn.Module):
    """Channel weights ``F_c(x) = sigmoid(MLP(avgpool x) + MLP(maxpool x))``, shape (B, C).

    One two-layer MLP is shared by both pooled descriptors (both run in one matmul). The hidden
    width is C/16 as in CBAM, but at least 4 so the narrow cells of a search still have an MLP.
    """

    def __init__(self, C: int, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        hidden = max(4, C // 16)
        kw = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(nn.Linear(C, hidden, **kw), nn.ReLU(inplace=True), nn.Linear(hidden, C, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 0)
        out = self.mlp(pooled)
        return torch.sigmoid(out[:b] + out[b:])


class SpatialAttention(nn.Module):
    """Spatial weights ``sigmoid(conv7x7([mean over C; max over C]))``, shape (B, 1, H, W)."""

    def __init__(self, kernel: int = 7, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.conv(desc))


class AttentionAugmented(nn.Module):
    """An operator followed by channel then spatial attention (CBAM order)."""

    def __init__(self, op: nn.Module, C: int, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.op = op
        self.channel = ChannelAttention(C, device=device, dtype=dtype)
        self.spatial = SpatialAttention(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x)
        y = y * self.channel(y)[:, :, None, None]
        return y * self.spatial(y)


#: base operator -> its attention-augmented variant (``<name>_attn``)
ATTENTION_VARIANTS: dict[str, str] = {}


def _register_attention(base: str) -> None:
    spec = OPS[base]
    name = f"{base}_attn"

    def factory(C, stride, affine, *, device=None, dtype=None):
        op = spec.build(C, stride, affine, device=device, dtype=dtype)
        return AttentionAugmented(op, C, device=device, dtype=dtype)

    register_op(name, family=f"{spec.family}_attn", kernel=spec.kernel, parameter_free=False,
                description=f"{spec.description}, then channel and spatial attention")(factory)
    ATTENTION_VARIANTS[base] = name


for _name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
    _register_attention(_name)
