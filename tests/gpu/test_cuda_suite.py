"""The GPU suite (`make test-gpu` runs every needs_cuda test of the repository, these included).

Each test is small (C=4-8, a few cells, one epoch of a few images) so the suite ends in minutes on
one GPU; each checks what only a GPU shows: CUDA events on the measured device, peak memory and
NVML, the search step without host-device syncs and without the CPU fast paths, training under each
autocast dtype, DDP over nccl, and export through the CUDA and TensorRT providers in fp32 and fp16.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import edgenas

pytestmark = pytest.mark.needs_cuda

FAST_EXPORT = dict(runs=3, max_seconds=0.5, random_batches=2, max_warmup=2)


def _last_gpu() -> torch.device:
    return torch.device("cuda", torch.cuda.device_count() - 1)


# --- timing, memory, NVML --------------------------------------------------------------------------

def test_events_time_the_measured_device_and_leave_the_current_one():
    from edgenas.device import time_calls

    dev = _last_gpu()
    current = torch.cuda.current_device()
    a = torch.randn(1024, 1024, device=dev)
    one = time_calls(lambda: a @ a, dev, 1)
    many = time_calls(lambda: a @ a, dev, 50)
    assert one > 0 and many > 0
    assert many < 3 * one  # per-call time, not the total of 50 calls
    assert torch.cuda.current_device() == current


def test_benchmark_groups_short_kernels_into_long_samples():
    from edgenas.device import MIN_CUDA_SAMPLE_MS, benchmark, time_calls

    dev = _last_gpu()
    x = torch.randn(64, device=dev)
    calls = []

    def tiny() -> None:
        calls.append(1)
        x.add_(1.0)

    stats = benchmark(tiny, dev, runs=5, min_warmup=2, max_warmup=4)
    assert stats.n == 5 and stats.median > 0
    assert len(calls) > 4 + 5  # several calls per sample: a 64-element add is far below MIN_CUDA_SAMPLE_MS
    assert stats.median < MIN_CUDA_SAMPLE_MS
    assert time_calls(tiny, dev, 100) < MIN_CUDA_SAMPLE_MS


def test_clocks_are_sampled_during_timing_and_the_record_is_complete():
    from edgenas.device import environment, sample_clocks

    dev = _last_gpu()
    a = torch.randn(2048, 2048, device=dev)
    with sample_clocks(dev, interval_s=0.01) as log:
        for _ in range(50):
            a @ a
        torch.cuda.synchronize(dev)
    env = environment(dev, log)
    clocks = env["clocks_during_timing"]
    assert "skipped" in clocks or (clocks["samples"] >= 1 and clocks["sm_mhz_max"] > 0)
    for key in ("cudnn_version", "cudnn_benchmark", "tf32", "cuda_visible_devices", "cuda_capability"):
        assert key in env
    assert "driver" in env["nvml"] or "skipped" in env["nvml"]


def test_profile_on_the_gpu_records_events_memory_and_nvml():
    from edgenas.profiling import MEMORY_CUDA, ProfileSettings, Shape, profile_ops

    dev = _last_gpu()
    settings = ProfileSettings(runs=5, min_warmup=1, max_warmup=5, max_seconds=1.0)
    p = profile_ops(dev, ["skip_connect", "sep_conv_3x3"], [Shape(8, 16, 16, 1)], batch=8, settings=settings)
    assert {e.memory_kind for e in p.entries} == {MEMORY_CUDA}
    assert all(e.latency.median > 0 for e in p.entries)
    assert p.environment["device"] == str(dev)


def test_out_of_memory_is_one_skipped_entry_and_profiling_goes_on():
    from edgenas.profiling import ProfileSettings, ShapeKey, measure_entries

    dev = _last_gpu()
    torch.cuda.set_per_process_memory_fraction(0.02, dev)
    try:
        # an input of 5 % of the GPU's memory, over the 2 % this process may now allocate
        big = int(0.05 * torch.cuda.get_device_properties(dev).total_memory / (64 * 64 * 64 * 4)) + 1
        keys = [ShapeKey("sep_conv_3x3", 64, 64, 64, 1), ShapeKey("skip_connect", 4, 8, 8, 1)]
        settings = ProfileSettings(runs=3, min_warmup=1, max_warmup=2, max_seconds=1.0)
        entries, skipped = measure_entries(keys[:1], dev, batch=big, dtype="fp32", mode="forward",
                                           settings=settings)
        assert not entries and skipped[0].reason.startswith(f"out of memory at batch {big}")
        entries, _ = measure_entries(keys[1:], dev, batch=2, dtype="fp32", mode="forward", settings=settings)
        assert len(entries) == 1
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()


# --- batches ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("resident", [True, False])
def test_gpu_batches_equal_cpu_batches(resident, monkeypatch):
    from edgenas.data import tensors as data
    from edgenas.data.tensors import Augment, ImageTensors

    if not resident:
        monkeypatch.setattr(data, "RESIDENT_FRACTION", 0.0)  # force the pinned staging path
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    ds = ImageTensors(images, torch.arange(40) % 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                      Augment(crop_pad=2, flip=True, cutout=4))
    dev = _last_gpu()
    for start in (0, 16, 32):  # three batches: the staging buffers are reused
        idx = torch.arange(start, min(start + 16, 40))
        draws = ds.draw_augment(torch.Generator().manual_seed(start))
        x_cpu, y_cpu = ds.batch(idx, torch.device("cpu"), draws)
        x_gpu, y_gpu = ds.batch(idx, dev, draws)
        assert x_gpu.device == dev and torch.equal(y_gpu.cpu(), y_cpu)
        torch.testing.assert_close(x_gpu.cpu(), x_cpu)
    assert (ds._resident is not None) is resident


# --- search: one step per method, on the GPU's own kernels, without syncs in the mixed ops -----------------

def _methods() -> list[str]:
    from edgenas.search.methods import METHODS

    return list(METHODS)


@pytest.mark.parametrize("name", _methods())
def test_one_search_step_per_method_on_cuda(name, tmp_path, monkeypatch):
    from edgenas.search import fast_cpu
    from edgenas.search.loop import SearchConfig, search
    from edgenas.search.methods import make_method

    def refuse(*_a, **_k):
        raise AssertionError("a CPU fast path ran on CUDA tensors")

    for cls in ("_Depthwise", "_ChannelsLastBatchNorm", "_NormMix"):  # the CPU-only autograd functions
        monkeypatch.setattr(getattr(fast_cpu, cls), "apply", refuse)
    settings = {"partial_k": 2} if name in ("pc_darts", "adarts", "swd", "el_darts") else {}
    cfg = SearchConfig(epochs=1, warmup_epochs=0, batch_size=4, layers=3, channels=4, nodes=2, subset=8)
    result = search(make_method(name, settings), None, cfg, "synthetic:16", out=tmp_path / name,
                    device=_last_gpu(), quiet=True)
    assert result is not None


def test_supernet_forward_makes_no_host_device_sync_in_the_mixed_ops():
    from edgenas.ops import DARTS_OPS
    from edgenas.search.batched import BatchedMixedOp, BatchedPartialNode

    dev = _last_gpu()
    op = BatchedMixedOp(DARTS_OPS, 4, 1, 2, device=dev)
    node = BatchedPartialNode(DARTS_OPS, 8, [1, 1], k=2, device=dev)
    x = torch.randn(2, 8, 8, 8, device=dev)
    w = torch.softmax(torch.randn(2, len(DARTS_OPS), device=dev), 1)
    h = torch.randn(2, 8, 8, 8, device=dev)
    inputs = [node.prepare(h, i) for i in range(2)]
    torch.cuda.synchronize(dev)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            op(x, w)
            node(inputs, w, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ours = [str(c.message) for c in caught if Path(c.filename).resolve().is_relative_to(Path(edgenas.__file__).parent)]
    assert not ours, ours


# --- training: one step per autocast choice ---------------------------------------------------------------

@pytest.mark.parametrize("amp", ["off", "fp16", "bf16", "auto"])
def test_a_train_step_per_amp_choice(amp, tmp_path):
    import math

    from edgenas.genotypes import get_genotype
    from edgenas.train import TrainConfig, resolve_precision, train

    dev = _last_gpu()
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(dev)} has no bf16 at all")
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=16, cutout=0, amp=amp)
    precision = resolve_precision(cfg, dev)
    res = train(get_genotype("DARTS_V2"), cfg, "synthetic:32", out=tmp_path / amp, device=dev, quiet=True)
    assert math.isfinite(res.loop.history.records[0]["train_loss"])
    if amp == "fp16":
        assert precision.amp == torch.float16


# --- DDP over nccl on the GPUs present -------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    from edgenas.genotypes import get_genotype
    from edgenas.train import TrainConfig, train

    rank = int(os.environ["LOCAL_RANK"])
    dev = torch.device("cuda", rank)
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=8, cutout=0)
    train(get_genotype("DARTS_V2"), cfg, "synthetic:32", out=sys.argv[1] + "/run", device=dev, quiet=True)
    assert dist.get_backend() == "nccl", dist.get_backend()
    dist.destroy_process_group()
""")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_nccl_available(),
                    reason="this torch build has no nccl backend")
def test_ddp_with_nccl_on_every_gpu_present(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    n = torch.cuda.device_count()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGENAS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "run" / "last.pt").exists()


# --- export: CUDA and TensorRT providers, fp32 and fp16 --------------------------------------------------

def test_export_on_cuda_in_fp16_checks_every_session(tiny_train_run, tmp_path):
    from edgenas.export import ExportSettings, run_export

    dev = _last_gpu()
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "e", device=dev,
                     settings=ExportSettings(providers="cuda,cpu", precision="fp16", dynamic_batch=True,
                                             trt_cache=str(tmp_path / "trt"), **FAST_EXPORT)).to_dict()
    cuda = next(p for p in doc["providers"] if p["key"] == "cuda")
    assert cuda["usable"] and cuda["options"]["device_id"] == dev.index and cuda["cpu_fallback"] is not None
    sessions = {(s["provider"], s["model"]): s for s in doc["verification"]["sessions"] + doc["fp16"]["parity"]}
    assert sessions[("CUDAExecutionProvider", "fp32")]["passed"]
    assert sessions[("CUDAExecutionProvider", "fp16")]["passed"]
    acc = {a["provider"]: a for a in doc["fp16"]["accuracy"]}
    assert acc["CUDAExecutionProvider"]["top1_agreement"] >= 90.0
    assert {(t["provider"], t["model"]) for t in doc["timing"]} >= {("CUDAExecutionProvider", "fp32"),
                                                                    ("CUDAExecutionProvider", "fp16")}
    assert doc["environment"]["verification"]["pytorch"] == "fp32 with TF32 off"


def test_export_with_tensorrt_fp16_uses_its_caches(tiny_train_run, tmp_path):
    from edgenas.export import ExportSettings, probe_providers, run_export

    dev = _last_gpu()
    trt = next(s for s in probe_providers(None, dev) if s.key == "tensorrt")
    if not trt.usable:
        pytest.skip(f"TensorRT provider cannot run here: {trt.reason}")
    cache = tmp_path / "trt"
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "e", device=dev,
                     settings=ExportSettings(providers="tensorrt,cpu", precision="fp16", dynamic_batch=True,
                                             trt_cache=str(cache), **FAST_EXPORT)).to_dict()
    fp16 = {p["provider"]: p for p in doc["fp16"]["parity"]}
    assert fp16["TensorrtExecutionProvider"]["passed"]
    opts = next(p for p in doc["fp16"]["providers"] if p["key"] == "tensorrt")["options"]
    assert opts["trt_fp16_enable"] and opts["trt_profile_max_shapes"].startswith("input:")
    assert any(cache.iterdir())  # engines (and the timing cache) were written for the next run
