"""MAC and parameter counting: exact single layers, published network figures, count parsing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgenas.costs import (
    MAC_CONVENTION,
    count_macs,
    count_params,
    format_count,
    measure_costs,
    parse_count,
    thop_macs,
)
from edgenas.errors import EdgenasError

# thop (third-party) still uses distutils' LooseVersion
pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning")


# (layer, input C,H,W, MACs worked out by hand: output elements x (C_in / groups) x kH x kW)
@pytest.mark.parametrize("layer, shape, expected", [
    # plain 3x3, padding keeps 8x8: 8*8*8 outputs x 3*3*3
    (nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8), 8 * 8 * 8 * 27),
    # no padding: 6x6 out
    (nn.Conv2d(3, 8, 3), (3, 8, 8), 8 * 6 * 6 * 27),
    # stride 2 + groups 4 on 10x10: out floor((10+2-3)/2)+1 = 5 -> 16*5*5 x (8/4)*9
    (nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False), (8, 10, 10), 16 * 25 * 18),
    # depthwise 5x5 dilation 2, padding 4 keeps 9x9: 4*81 x 1*25
    (nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4), (4, 9, 9), 4 * 81 * 25),
    # non-square kernel 3x1, no padding on 5x7: out 3x7 -> 6*3*7 x 2*3
    (nn.Conv2d(2, 6, (3, 1)), (2, 5, 7), 6 * 21 * 6),
    # pointwise stride 2 with odd input: out 4x4 -> 5*16 x 7
    (nn.Conv2d(7, 5, 1, stride=2), (7, 7, 7), 5 * 16 * 7),
    # linear: out x in, bias not counted
    (nn.Linear(10, 7), (10,), 70),
    # linear over extra leading dims: 3 rows of 7 outputs x 10
    (nn.Linear(10, 7, bias=False), (3, 10), 3 * 7 * 10),
])
def test_single_layer_macs_are_exact(layer, shape, expected):
    assert count_macs(layer, shape) == expected


def test_only_conv_and_linear_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert count_macs(model, (3, 8, 8)) == 4 * 64 * 3 + 2 * 4
    assert MAC_CONVENTION.startswith("1 MAC = 1 multiply-add")


def test_count_macs_restores_training_mode_and_removes_hooks():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2)).train()
    count_macs(model, (2, 6, 6))
    assert model.training and model[1].training
    assert not model[0]._forward_hooks
    model.eval()
    count_macs(model, (2, 6, 6))
    assert not model.training


def test_count_macs_follows_model_dtype():
    layer = nn.Conv2d(2, 3, 3, dtype=torch.float64)
    assert count_macs(layer, (2, 5, 5)) == 3 * 9 * 18


def test_params_exclude_prefixes():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 3)          # 15
            self.auxiliary = nn.Linear(3, 2)     # 8, excluded
            self.auxiliary_ish = nn.Linear(2, 1)  # 3, kept: only whole-name prefixes match

    net = Net()
    assert count_params(net) == 26
    assert count_params(net, exclude=("auxiliary",)) == 18


@pytest.mark.parametrize("name, macs, params", [
    # public figures: MobileNetV2 (Sandler et al. 2018) ~300 M multiply-adds, 3.504872 M params
    # (torchvision metadata); ResNet-18 ~1.81 G MACs, 11.689512 M params
    ("mobilenet_v2", 300e6, 3_504_872),
    ("resnet18", 1.81e9, 11_689_512),
])
def test_torchvision_networks_match_published_figures(name, macs, params):
    import torchvision

    model = getattr(torchvision.models, name)()
    report = measure_costs(model, (3, 224, 224))
    assert report.macs == pytest.approx(macs, rel=0.01)
    assert report.params == params
    # thop counts BN/pooling too, so it reads a little higher but is in the same range
    assert report.thop_macs is not None
    assert report.macs <= report.thop_macs <= report.macs * 1.15
    assert report.to_dict()["convention"] == MAC_CONVENTION


def test_thop_cross_check_leaves_the_model_untouched():
    layer = nn.Conv2d(3, 4, 3, padding=1)
    before = set(dict(layer.named_buffers()))
    assert thop_macs(layer, (3, 8, 8)) == count_macs(layer, (3, 8, 8))
    assert set(dict(layer.named_buffers())) == before


@pytest.mark.parametrize("text, value", [
    ("600M", 600_000_000), ("0.6G", 600_000_000), ("600000000", 600_000_000), ("1.5e8", 150_000_000),
    ("600M MACs", 600_000_000), ("600 MACs", 600), ("2k", 2000), (" 3.2 m ", 3_200_000), (".5G", 500_000_000),
    (600, 600), (2.5e6, 2_500_000),
])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "600X", "-5M", "0", "M", "", "1,000", True])
def test_parse_count_rejects(text):
    with pytest.raises(EdgenasError) as e:
        parse_count(text, what="MAC budget")
    assert "MAC budget" in str(e.value)


def test_format_count():
    assert format_count(3_349_342) == "3.349 M"
    assert format_count(1_810_000_000) == "1.810 G"
    assert format_count(512) == "512"
    assert format_count(None) == "-"
