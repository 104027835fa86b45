"""Operator profiling: shapes, measured entries, memory accounting, the profile file format."""

from __future__ import annotations

import json
import platform

import pytest
import torch
from torch import nn

from edgenas.costs import count_macs, count_params
from edgenas.device import cpu_allocator, device_slug
from edgenas.errors import EdgenasError
from edgenas.latency import profile_missing
from edgenas.ops import DARTS_OPS, OPS, build_op, register_op
from edgenas.profiling import (
    DEFAULT_SHAPES,
    MEMORY_CPU,
    MEMORY_CUDA,
    Profile,
    ProfileSettings,
    Shape,
    ShapeKey,
    parse_shapes,
    profile_ops,
)
from edgenas.search.supernet import SupernetConfig

CPU = torch.device("cpu")
FAST = ProfileSettings(runs=3, min_warmup=1, max_warmup=3, max_seconds=0.05)
OPS_SMALL = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]
SHAPES_SMALL = [Shape(4, 8, 8, 1), Shape(4, 8, 8, 2)]
BATCH = 2


@pytest.fixture(scope="module")
def small_profile() -> Profile:
    return profile_ops(CPU, OPS_SMALL, SHAPES_SMALL, batch=BATCH, settings=FAST, runtime="eager")


def test_parse_shapes():
    assert parse_shapes("16x32x32:1, 32x32x32:2") == [Shape(16, 32, 32, 1), Shape(32, 32, 32, 2)]
    assert parse_shapes("8x4x6") == [Shape(8, 4, 6, 1)]  # stride defaults to 1
    assert parse_shapes("8X4X4:2,8x4x4:2") == [Shape(8, 4, 4, 2)]  # repeats dropped
    assert str(Shape(16, 32, 32, 2)) == "16x32x32:2"


@pytest.mark.parametrize("text, message", [
    ("3x3", "malformed shape '3x3'"), ("16x32x32:3", "stride 3"), ("0x4x4", "zero dimension"),
    ("axbxc", "malformed"), (" , ", "no shapes"), ("16x32x32:1;8x8x8", "malformed"),
    ("16x32x32:-1", "malformed"),
])
def test_parse_shapes_rejects(text, message):
    with pytest.raises(EdgenasError, match=message) as e:
        parse_shapes(text)
    assert e.value.hint  # every message says how to fix it


def test_default_shapes_follow_the_darts_search_supernet():
    # C=16, 8 cells, reductions at cells 2 and 5: normal cells at 16@32, 32@16, 64@8; reduction
    # cells apply their stride-2 ops to C_curr channels at the previous resolution
    assert [str(s) for s in DEFAULT_SHAPES] == [
        "16x32x32:1", "32x32x32:2", "32x16x16:1", "64x16x16:2", "64x8x8:1"]
    cfg = SupernetConfig(tuple(DARTS_OPS))
    assert (cfg.C, cfg.layers, cfg.reduction_cells, cfg.cell_widths()[-1]) == (16, 8, (2, 5), 64)


def test_profile_has_one_entry_per_op_and_shape(small_profile):
    p = small_profile
    assert [(e.key.op, e.key.shape) for e in p.entries] == [(o, s) for s in SHAPES_SMALL for o in OPS_SMALL]
    assert p.ops() == OPS_SMALL and p.shapes() == SHAPES_SMALL
    assert (p.device, p.batch, p.dtype, p.mode) == (device_slug(CPU), BATCH, "fp32", "forward")
    env = p.environment
    assert env["torch"] == torch.__version__ and env["nvml"]["skipped"] and env["date"]
    assert env["cpu_allocator"] == cpu_allocator() != "default" or platform.libc_ver()[0] != "glibc"
    for e in p.entries:
        t = e.latency
        assert 0 < t.p10 <= t.median <= t.p90 and t.n >= FAST.runs and t.std >= 0
        assert e.memory_kind == MEMORY_CPU


def test_macs_and_params_come_from_costs(small_profile):
    for e in small_profile.entries:
        k = e.key
        op = build_op(k.op, k.C, k.stride, affine=True)  # forward mode profiles the deployed op
        assert e.macs == count_macs(op, (k.C, k.H, k.W)), k
        assert e.params == count_params(op), k
    sep = small_profile.lookup("sep_conv_3x3", 4, 8, 8, 1)
    # two blocks of (dw 3x3: 4*9 + pw: 4*4) per output pixel, 64 pixels
    assert sep.macs == 2 * 64 * (4 * 9 + 4 * 4)


def test_cpu_memory_counts_saved_tensors_and_output(small_profile):
    def mem(op, stride):
        return small_profile.lookup(op, 4, 8, 8, stride).memory_bytes

    out1 = BATCH * 4 * 8 * 8 * 4  # fp32 output at stride 1
    out2 = out1 // 4
    assert mem("skip_connect", 1) == 0       # output is the input: nothing new kept
    assert mem("none", 1) == out1            # an output, nothing saved
    assert mem("none", 2) == out2
    assert mem("avg_pool_3x3", 1) == out1    # backward needs only the input (not counted)
    assert mem("max_pool_3x3", 1) == out1 + 2 * out1  # plus int64 argmax indices
    # a separable conv keeps several intermediate activations
    assert mem("sep_conv_3x3", 1) > 3 * out1


def test_lookup_and_round_trip(small_profile, tmp_path):
    assert small_profile.lookup("skip_connect", 4, 8, 8, 2).key == ShapeKey("skip_connect", 4, 8, 8, 2)
    assert small_profile.lookup("skip_connect", 4, 8, 8, 3) is None
    assert small_profile.lookup("dil_conv_3x3", 4, 8, 8, 1) is None
    path = small_profile.save(tmp_path / "sub" / "p.json")
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == ("edgenas.profile", 2)
    assert doc["mac_convention"].startswith("1 MAC")
    back = Profile.load(path)
    assert back.entries == small_profile.entries
    assert back.settings == FAST and back.environment == small_profile.environment
    assert not list(tmp_path.glob("sub/.*"))  # no temp files left


def test_train_mode_and_bf16():
    p = profile_ops(CPU, ["none", "sep_conv_3x3"], [Shape(4, 8, 8, 1)], batch=BATCH, dtype="bf16",
                    mode="train", settings=FAST, runtime="eager")
    assert (p.mode, p.dtype) == ("train", "bf16")
    assert p.lookup("none", 4, 8, 8, 1).memory_bytes == BATCH * 4 * 64 * 2  # bf16: 2 bytes
    # the search supernet's ops have non-affine BN: fewer params than the deployed op
    assert p.lookup("sep_conv_3x3", 4, 8, 8, 1).params == count_params(build_op("sep_conv_3x3", 4, 1, False))
    assert p.lookup("sep_conv_3x3", 4, 8, 8, 1).params < count_params(build_op("sep_conv_3x3", 4, 1, True))


def test_bad_keys_fail_before_measuring():
    seen = []
    with pytest.raises(EdgenasError, match="even"):
        profile_ops(CPU, ["none", "skip_connect"], [Shape(5, 8, 8, 2)], batch=1, settings=FAST,
                    on_entry=seen.append)
    assert seen == []
    with pytest.raises(EdgenasError, match="at least 2"):
        profile_ops(CPU, ["none"], [Shape(4, 1, 1, 2)], batch=1, settings=FAST)
    with pytest.raises(EdgenasError, match="unknown operator"):
        profile_ops(CPU, ["conv9"], [Shape(4, 4, 4, 1)], batch=1, settings=FAST)
    with pytest.raises(EdgenasError, match="mode"):
        profile_ops(CPU, ["none"], [Shape(4, 4, 4, 1)], mode="backward", settings=FAST)
    with pytest.raises(EdgenasError, match="dtype"):
        profile_ops(CPU, ["none"], [Shape(4, 4, 4, 1)], dtype="int8", settings=FAST)


class _NoHalf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise RuntimeError(f"\"conv\" not implemented for '{x.dtype}'\nmore detail")
        return x * 2


@pytest.fixture
def fp32_only_op():
    name = "test_only_fp32_op"
    register_op(name, family="test", kernel=None, parameter_free=True)(
        lambda C, stride, affine, *, device=None, dtype=None: _NoHalf())
    yield name
    OPS.pop(name)


def test_unsupported_dtype_is_skipped_with_reason(fp32_only_op):
    p = profile_ops(CPU, ["none", fp32_only_op], [Shape(4, 4, 4, 1)], batch=1, dtype="fp16", settings=FAST,
                    runtime="eager")
    assert [e.key.op for e in p.entries] == ["none"]
    (s,) = p.skipped
    assert s.key.op == fp32_only_op and "not implemented" in s.reason and "\n" not in s.reason
    with pytest.raises(EdgenasError, match="no operator could run"):
        profile_ops(CPU, [fp32_only_op], [Shape(4, 4, 4, 1)], batch=1, dtype="fp16", settings=FAST,
                    runtime="eager")


def test_profile_missing_measures_only_missing_keys(small_profile):
    keys = [ShapeKey("none", 4, 8, 8, 1), ShapeKey("sep_conv_3x3", 8, 4, 4, 1), ShapeKey("none", 8, 4, 4, 2)]
    seen = []
    grown = profile_missing(small_profile, keys, CPU, on_entry=seen.append)
    assert seen == keys[1:]
    assert len(grown.entries) == len(small_profile.entries) + 2
    assert grown.lookup("sep_conv_3x3", 8, 4, 4, 1).latency.n >= FAST.runs
    assert len(small_profile.entries) == len(OPS_SMALL) * len(SHAPES_SMALL)  # original untouched
    assert profile_missing(grown, keys, CPU).entries == grown.entries


def test_profile_missing_refuses_another_device(small_profile):
    from dataclasses import replace

    other = replace(small_profile, device="cuda-nvidia-h100")
    with pytest.raises(EdgenasError, match="measured on cuda-nvidia-h100"):
        profile_missing(other, [ShapeKey("none", 2, 4, 4, 1)], CPU)


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="edgenas.space"), "field 'format'"),
    (lambda d: d.update(version=99), "field 'version'"),
    (lambda d: d["entries"][0].update(op="conv9"), "unknown operator 'conv9'"),
    (lambda d: d["entries"][0].pop("macs"), "field 'macs' is missing"),
    (lambda d: d["entries"][0]["latency_ms"].pop("median"), "field 'latency_ms.median' is missing"),
    (lambda d: d["entries"][0].update(C="4"), "field 'C' should be int, got str"),
    (lambda d: d.update(mode="sideways"), "field 'mode'"),
    (lambda d: d.update(dtype="fp8"), "unknown dtype"),
    (lambda d: d.update(entries=[]), "'entries' is empty"),
])
def test_load_rejects_bad_files(small_profile, tmp_path, mutate, message):
    doc = json.loads(small_profile.save(tmp_path / "good.json").read_text())
    mutate(doc)
    with pytest.raises(EdgenasError, match=message):
        Profile.load(_write(tmp_path / "bad.json", doc))


def test_load_rejects_missing_and_corrupt(tmp_path):
    with pytest.raises(EdgenasError, match="does not exist"):
        Profile.load(tmp_path / "nope.json")
    (tmp_path / "c.json").write_text('{"format": "edgenas.profile", ')
    with pytest.raises(EdgenasError, match="not valid JSON"):
        Profile.load(tmp_path / "c.json")


@pytest.mark.needs_cuda
def test_cuda_profile_uses_events_and_peak_memory():
    dev = torch.device("cuda", torch.cuda.current_device())
    p = profile_ops(dev, ["none", "sep_conv_3x3"], [Shape(8, 16, 16, 1)], batch=4, settings=FAST, runtime="eager")
    assert p.device.startswith("cuda") and p.environment["nvml"]
    for e in p.entries:
        assert e.memory_kind == MEMORY_CUDA and e.memory_bytes > 0 and e.latency.median > 0
