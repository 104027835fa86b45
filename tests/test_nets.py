"""Evaluation networks: published parameter counts, shapes, aux head, drop path, cell_shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from edgenas.costs import count_params
from edgenas.errors import EdgenasError
from edgenas.genotypes import GENOTYPES
from edgenas.nets import (
    AUX_PREFIX,
    MOBILE_HW,
    MOBILE_MAC_LIMIT,
    OpShape,
    build_network,
    cell_shapes,
    default_config,
    drop_path,
    mobile_verdict,
    setting_config,
)

# Published parameter counts (auxiliary head excluded), as the DARTS / PC-DARTS papers report them.
PUBLISHED_PARAMS = {
    ("DARTS_V2", "cifar10"): 3_349_342,
    ("DARTS_V2", "imagenet-mobile"): 4_718_752,
    ("PC_DARTS_cifar", "cifar10"): 3_634_678,
    ("PC_DARTS_cifar", "imagenet-mobile"): 5_270_560,
}


@pytest.mark.parametrize("name, setting", list(PUBLISHED_PARAMS))
def test_published_parameter_counts(name: str, setting: str) -> None:
    net = build_network(GENOTYPES[name], default_config(setting))
    assert count_params(net, exclude=(AUX_PREFIX,)) == PUBLISHED_PARAMS[name, setting]
    assert net.auxiliary is not None and count_params(net) > PUBLISHED_PARAMS[name, setting]


def tiny(setting: str = "cifar10", **kw):
    base = {"C": 8, "layers": 5, "num_classes": 7, "in_channels": 1,
            "input_hw": (32, 32) if setting == "imagenet-mobile" else (16, 16)}
    return default_config(setting, **{**base, **kw})


@pytest.mark.parametrize("setting, hw", [("cifar10", (16, 16)), ("cifar10", (32, 32)),
                                         ("imagenet-mobile", (32, 32)), ("imagenet-mobile", (64, 48))])
def test_forward_shapes_and_aux_only_in_training(setting: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    cfg = tiny(setting, input_hw=hw)
    net = build_network(GENOTYPES["PC_DARTS_cifar"], cfg)
    x = torch.randn(2, 1, *hw)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (2, 7) and aux is not None and aux.shape == (2, 7)
    net.eval()
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    no_aux = build_network(GENOTYPES["PC_DARTS_cifar"], tiny(setting, input_hw=hw, auxiliary=False))
    assert no_aux.train()(x)[1] is None
    assert not any(n.startswith(AUX_PREFIX) for n, _ in no_aux.named_parameters())


def test_aux_head_pools_like_darts_at_standard_size() -> None:
    # CIFAR 32x32: the aux head sees 8x8 maps and its 5x5/stride-3 pool makes them 2x2.
    net = build_network(GENOTYPES["DARTS_V2"], tiny(input_hw=(32, 32)))
    pool = net.auxiliary.features[1]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 5 and pool.stride == 3
    assert pool.count_include_pad is False and pool.padding == 0
    img = build_network(GENOTYPES["DARTS_V2"], tiny("imagenet-mobile", input_hw=(224, 224)))
    assert img.auxiliary.features[1].stride == 2


@pytest.mark.parametrize("name", list(GENOTYPES))
@pytest.mark.parametrize("setting", ["cifar10", "imagenet-mobile"])
def test_cell_shapes_match_the_built_network(name: str, setting: str) -> None:
    cfg = tiny(setting, input_hw=(36, 36) if setting == "imagenet-mobile" else (18, 14))  # odd halvings too
    net = build_network(GENOTYPES[name], cfg).eval()
    seen: list[OpShape] = []

    def hook(name_: str):
        def f(module, inp, out):
            x = inp[0]
            stride = 2 if out.shape[-1] < x.shape[-1] else 1
            seen.append(OpShape(name_, x.shape[1], x.shape[2], x.shape[3], stride))
        return f

    for cell in net.cells:
        edges, _ = GENOTYPES[name].cell(cell.reduction)
        for op, (op_name, _) in zip(cell.ops, edges):
            op.register_forward_hook(hook(op_name))
    with torch.no_grad():
        net(torch.zeros(1, *cfg.input_shape))
    assert seen == cell_shapes(GENOTYPES[name], cfg)
    assert len(seen) == cfg.layers * 8


def test_drop_path_drops_whole_samples_and_spares_identity() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 3, 2, 2)
    y = drop_path(x, 0.5)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # whole samples only
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54

    net = build_network(GENOTYPES["DARTS_V2"], tiny(drop_path=0.0))
    x = torch.randn(4, 1, 16, 16)
    net.train()
    torch.manual_seed(1)
    a = net(x)[0]
    torch.manual_seed(2)
    assert torch.equal(a, net(x)[0])  # p=0: training forward is deterministic
    net.drop_path_prob = 0.6
    torch.manual_seed(1)
    b = net(x)[0]
    torch.manual_seed(2)
    assert not torch.equal(b, net(x)[0])
    net.eval()
    assert torch.equal(net(x), net(x))  # never in eval


def test_dtype_is_passed_down() -> None:
    net = build_network(GENOTYPES["DARTS_V1"], tiny(), dtype=torch.float64)
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert net.eval()(torch.zeros(1, 1, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_config_errors() -> None:
    with pytest.raises(EdgenasError, match="channel count 47 is odd"):
        default_config("imagenet-mobile", C=47)
    # On CIFAR only doubled (even) widths reach FactorizedReduce, so an odd C builds.
    build_network(GENOTYPES["DARTS_V2"], tiny(C=7))
    with pytest.raises(EdgenasError, match="unknown setting 'mnist'"):
        default_config("mnist")
    with pytest.raises(EdgenasError, match="too small.*at least 32x32"):
        default_config("imagenet-mobile", input_hw=(16, 16))
    with pytest.raises(EdgenasError, match="layers must be at least 1"):
        default_config("cifar10", layers=0)
    with pytest.raises(EdgenasError, match="drop path"):
        default_config("cifar10", drop_path=1.0)
    assert default_config("cifar100").num_classes == 100
    assert default_config("cifar10").reduction_cells == (6, 13)


def test_settings_hold_the_published_constants() -> None:
    cifar, mobile = default_config("cifar10"), default_config("imagenet-mobile")
    assert (cifar.C, cifar.layers, cifar.input_hw, cifar.drop_path) == (36, 20, (32, 32), 0.2)
    assert (mobile.C, mobile.layers, mobile.input_hw, mobile.num_classes) == (48, 14, (224, 224), 1000)
    assert (MOBILE_MAC_LIMIT, MOBILE_HW) == (600_000_000, (224, 224))
    assert setting_config("imagenet-mobile", channels=8, in_channels=1) == replace(mobile, C=8, in_channels=1)


def test_mobile_verdict_is_taken_at_224() -> None:
    asked: list[tuple[int, int, int]] = []

    def macs_at(shape: tuple[int, int, int]) -> int:
        asked.append(shape)
        return MOBILE_MAC_LIMIT - 1

    assert mobile_verdict(default_config("cifar10"), macs_at) is None and not asked
    small = mobile_verdict(default_config("imagenet-mobile", input_hw=(64, 48), in_channels=1), macs_at)
    assert asked == [(1, 224, 224)] and small is not None and small.meets
    assert "counted at 224x224, this network's input is 64x48" in small.note()
    exact = mobile_verdict(default_config("imagenet-mobile"), lambda _: MOBILE_MAC_LIMIT)
    assert exact is not None and not exact.meets and exact.note().startswith("exceeds the mobile setting")


# --- costs of whole networks: channel fitting (latency prediction: test_latency.py) -------------

def test_fit_channels_finds_the_largest_even_c() -> None:
    from edgenas.network_costs import fit_channels, network_macs

    g, cfg = GENOTYPES["DARTS_V2"], tiny()
    at12 = network_macs(g, tiny(C=12))
    assert fit_channels(g, cfg, at12).C == 12          # exactly on budget fits
    assert fit_channels(g, cfg, at12 - 1).C == 10      # one MAC less does not
    fitted = fit_channels(g, cfg, 3 * at12)
    assert fitted.C % 2 == 0 and fitted.layers == cfg.layers and fitted.input_hw == cfg.input_hw
    assert network_macs(g, fitted) <= 3 * at12 < network_macs(g, tiny(C=fitted.C + 2))


def test_fit_channels_impossible_budget_names_the_smallest() -> None:
    from edgenas.network_costs import fit_channels, network_macs

    g, cfg = GENOTYPES["DARTS_V2"], tiny()
    smallest = network_macs(g, tiny(C=2))
    with pytest.raises(EdgenasError, match=rf"smallest, C=2 .* needs .* \({smallest}\)"):
        fit_channels(g, cfg, smallest - 1)
    assert fit_channels(g, cfg, smallest).C == 2


def test_fit_channels_wide_trials_on_meta_agree_with_cpu() -> None:
    from edgenas.network_costs import fit_channels, network_macs

    # C > 128 is counted on the meta device; the CPU count at C=130 must be exactly on the edge.
    g, cfg = GENOTYPES["DARTS_V1"], tiny(layers=2, input_hw=(8, 8))
    budget = network_macs(g, tiny(layers=2, input_hw=(8, 8), C=130))
    assert fit_channels(g, cfg, budget).C == 130
    assert fit_channels(g, cfg, budget - 1).C == 128
