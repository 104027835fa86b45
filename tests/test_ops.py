"""The operator registry and the DARTS operators' shapes and definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.ops import (
    DARTS_OPS,
    EL_DARTS_OPS,
    OPS,
    FactorizedReduce,
    build_op,
    get_op,
    parse_ops,
    register_op,
)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("C", [4, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_builds_and_keeps_channels(name, C, stride):
    op = build_op(name, C, stride, affine=False)
    x = torch.randn(2, C, 8, 8)
    y = op(x)
    # stride 2 halves H and W (8 -> 4), stride 1 keeps them; channels never change
    assert y.shape == (2, C, 8 // stride, 8 // stride)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(OPS))
def test_odd_spatial_size_halves_with_ceil(name):
    y = build_op(name, 4, 2)(torch.randn(1, 4, 7, 7))
    assert y.shape == (1, 4, 4, 4)


def test_registry_holds_the_darts_and_el_darts_sets_in_order():
    assert DARTS_OPS == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                         "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert set(EL_DARTS_OPS) <= set(DARTS_OPS) <= set(OPS)


@pytest.mark.parametrize("name", [n for n in OPS if not OPS[n].parameter_free])
def test_affine_switch(name):
    def bn_affine(m):
        return [bn.affine for bn in m.modules() if isinstance(bn, nn.BatchNorm2d)]

    assert all(bn_affine(build_op(name, 4, 1, affine=True)))
    assert not any(bn_affine(build_op(name, 4, 1, affine=False)))
    # affine BN adds weight and bias per BN layer; nothing else changes
    n_bn = len(bn_affine(build_op(name, 4, 1)))
    p_on = sum(p.numel() for p in build_op(name, 4, 1, affine=True).parameters())
    p_off = sum(p.numel() for p in build_op(name, 4, 1, affine=False).parameters())
    assert p_on - p_off == n_bn * 2 * 4


def test_parameter_free_facts_match_the_modules():
    for name, spec in OPS.items():
        n = sum(p.numel() for p in spec.build(4, 1).parameters())
        assert (n == 0) == spec.parameter_free, name
    # a stride-2 skip is a FactorizedReduce, which has weights (DARTS counts it as a skip anyway)
    assert isinstance(build_op("skip_connect", 4, 2), FactorizedReduce)


def test_avg_pool_excludes_padding_from_the_mean():
    op = build_op("avg_pool_3x3", 1, 1)
    y = op(torch.ones(1, 1, 4, 4))
    # with count_include_pad=True the corner would be 4/9; excluded it stays 1 everywhere
    assert torch.allclose(y, torch.ones_like(y))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert op(x)[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_max_pool_and_zero_values():
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(build_op("max_pool_3x3", 2, 1)(x).amax(), x.amax())
    z = build_op("none", 2, 2)(x)
    assert z.shape == (1, 2, 2, 2) and not z.any()
    assert build_op("skip_connect", 2, 1)(x) is x


def test_sep_conv_structure_stride_in_first_block_only():
    op = build_op("sep_conv_5x5", 4, 2)
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    # two ReLU-depthwise-pointwise-BN blocks: dw, pw, dw, pw
    assert [c.groups for c in convs] == [4, 1, 4, 1]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert [c.kernel_size for c in convs] == [(5, 5), (1, 1), (5, 5), (1, 1)]


def test_dil_conv_structure():
    convs = [m for m in build_op("dil_conv_5x5", 4, 1).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.dilation, c.padding, c.groups) for c in convs] == [
        ((5, 5), (2, 2), (4, 4), 4), ((1, 1), (1, 1), (0, 0), 1)]


def test_factorized_reduce_needs_even_channels():
    with pytest.raises(EdgenasError, match="even channel count"):
        FactorizedReduce(5, 5)
    with pytest.raises(EdgenasError, match="even"):
        build_op("skip_connect", 5, 2)
    # both halves see different pixels: the second is shifted by one
    fr = FactorizedReduce(2, 2, affine=False).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.zeros(1, 2, 4, 4)
    x[:, :, 1, 1] = 1.0  # only the shifted half picks this pixel up
    y = fr(x)
    assert y[0, 0].abs().sum() < y[0, 1].abs().sum()


def test_bad_stride_is_refused():
    with pytest.raises(EdgenasError, match="stride 3"):
        build_op("sep_conv_3x3", 4, 3)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_op("sep_conv_3x3", family="sep_conv", kernel=3, parameter_free=False)(lambda *a, **k: None)
    assert OPS["sep_conv_3x3"].family == "sep_conv"


def test_registering_a_new_op_reaches_callers():
    name = "test_only_conv_1x1"
    try:
        @register_op(name, family="test_conv", kernel=1, parameter_free=False)
        def _f(C, stride, affine, *, device=None, dtype=None):
            return nn.Conv2d(C, C, 1, stride=stride, device=device, dtype=dtype)

        assert parse_ops(f"skip_connect,{name}") == ["skip_connect", name]
        assert build_op(name, 4, 2)(torch.zeros(1, 4, 8, 8)).shape == (1, 4, 4, 4)
    finally:
        OPS.pop(name, None)


def test_failed_lookup_names_valid_keys():
    with pytest.raises(EdgenasError) as e:
        get_op("sep_conv_7x7")
    assert "sep_conv_7x7" in str(e.value)
    assert all(n in e.value.hint for n in DARTS_OPS)


def test_parse_ops():
    assert parse_ops(" sep_conv_3x3, skip_connect,sep_conv_3x3 ") == ["sep_conv_3x3", "skip_connect"]
    with pytest.raises(EdgenasError, match="no operators"):
        parse_ops(" , ")
    with pytest.raises(EdgenasError, match="unknown operator 'conv'"):
        parse_ops("skip_connect,conv")


def test_device_and_dtype_are_passed_down():
    op = build_op("sep_conv_3x3", 4, 1, device=torch.device("cpu"), dtype=torch.float64)
    assert {p.dtype for p in op.parameters()} == {torch.float64}
    assert op(torch.randn(1, 4, 4, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("hw", [8, 7])
def test_factorized_reduce_is_two_stride_two_convs_one_shifted(hw):
    """It runs its 1x1 convolutions at stride 1 on every other pixel: the same as DARTS' stride-2
    convolutions on the input and on the input shifted by one pixel (padded back on odd sizes)."""
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 8, affine=False).eval()
    x = torch.randn(2, 6, hw, hw)
    a = nn.functional.conv2d(x.relu(), fr.conv_1.weight, stride=2)
    b = nn.functional.conv2d(x.relu()[:, :, 1:, 1:], fr.conv_2.weight, stride=2)
    b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
    assert torch.allclose(fr(x), fr.bn(torch.cat([a, b], 1)), atol=1e-6)
    with torch.no_grad():  # inference runs the strided modules themselves
        assert torch.allclose(fr(x), fr.bn(torch.cat([a, b], 1)), atol=1e-6)


@pytest.mark.parametrize("hw", [8, 7])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_factorized_reduce_gradient_keeps_the_input_layout(hw, fmt):
    """Its input gradient matches autograd's through the stride-2 formulation and comes back in the
    input's memory format (a contiguous one on a channels_last input slowed every later elementwise
    op of the backward)."""
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 8, affine=False).to(memory_format=fmt)
    x = torch.randn(2, 6, hw, hw).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(2, 8, (hw + 1) // 2, (hw + 1) // 2)
    seen = []
    r = x.relu()  # a non-leaf: a leaf's .grad is always laid out like the leaf
    r.register_hook(seen.append)
    (fr.after_relu(r) * g).sum().backward()
    ours = seen[0]
    ref = r.detach().requires_grad_()
    a = nn.functional.conv2d(ref, fr.conv_1.weight, stride=2)
    b = nn.functional.conv2d(ref[:, :, 1:, 1:], fr.conv_2.weight, stride=2)
    b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
    (fr.bn(torch.cat([a, b], 1)) * g).sum().backward()
    assert torch.allclose(ours, ref.grad, atol=1e-5)
    assert ours.is_contiguous(memory_format=fmt)
