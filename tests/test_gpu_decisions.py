"""Decisions of the CUDA paths that can be checked without a GPU: the timer API, the AMP choice by
compute capability, TF32 handling, the environment record, clock-event names, out-of-memory and
sticky-error handling per profiling entry, device-side index tensors and the batch draws."""

from __future__ import annotations

import pytest
import torch

from edgenas import device as dev
from edgenas.errors import EdgenasError

CPU = torch.device("cpu")


# --- timer API ------------------------------------------------------------------------------------

@pytest.mark.parametrize("one_call, min_ms, want", [
    (2.0, 1.0, 1), (1.0, 1.0, 1), (0.02, 1.0, 50), (0.3, 1.0, 4), (1e-9, 1.0, dev.MAX_CALLS_PER_SAMPLE),
    (0.01, 0.0, 1),
])
def test_calls_per_sample_makes_samples_long_enough(one_call, min_ms, want):
    assert dev.calls_per_sample(one_call, min_ms) == want


def test_time_calls_runs_fn_n_times_and_returns_per_call_time():
    calls = []
    per_call = dev.time_calls(lambda: calls.append(1), CPU, 7)
    assert len(calls) == 7 and per_call > 0
    with pytest.raises(ValueError):
        dev.time_calls(lambda: None, CPU, 0)


def test_benchmark_groups_calls_into_samples_when_asked():
    calls = []
    stats = dev.benchmark(lambda: calls.append(1), CPU, runs=4, min_warmup=1, max_warmup=2, window=1,
                          min_sample_ms=1e3)  # a no-op call is far below 1 s: the cap decides
    assert stats.n == 4
    assert len(calls) == 2 + 4 * dev.MAX_CALLS_PER_SAMPLE
    calls.clear()
    dev.benchmark(lambda: calls.append(1), CPU, runs=4, min_warmup=1, max_warmup=2, window=1)
    assert len(calls) == 2 + 4  # CPU default: one call per sample


# --- AMP by compute capability ----------------------------------------------------------------------

@pytest.mark.parametrize("cap, want", [
    ((6, 1), "off"),   # Pascal: GTX 1080 Ti, Jetson TX2
    ((7, 0), "fp16"),  # Volta
    ((7, 2), "fp16"),  # Jetson Xavier
    ((7, 5), "fp16"),  # Turing
    ((8, 0), "bf16"), ((8, 6), "bf16"), ((8, 7), "bf16"), ((9, 0), "bf16"), ((12, 0), "bf16"),
])
def test_amp_for_capability(cap, want):
    assert dev.amp_for_capability(cap) == want


def test_auto_amp_asks_the_runs_device_not_the_current_one(monkeypatch):
    from edgenas.metrics import Precision
    from edgenas.train import TrainConfig, resolve_precision

    asked = []

    def capability(device=None):
        asked.append(device)
        return {0: (8, 0), 1: (6, 1), 2: (7, 5)}[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    cfg = TrainConfig(amp="auto")
    assert resolve_precision(cfg, torch.device("cuda", 1)).amp is None
    assert resolve_precision(cfg, torch.device("cuda", 2)).amp == torch.float16
    assert resolve_precision(cfg, torch.device("cuda", 0)) == Precision(torch.bfloat16, True)
    assert [torch.device(d).index for d in asked] == [1, 2, 0]
    assert resolve_precision(cfg, CPU).amp is None


# --- TF32, environment record, clocks ------------------------------------------------------------------

def test_full_fp32_turns_tf32_off_and_restores_it():
    before = dev.tf32_state()
    with dev.full_fp32() as seen:
        assert seen == before
        assert dev.tf32_state() == {"cudnn_conv": False, "cuda_matmul": False}
    assert dev.tf32_state() == before
    with pytest.raises(KeyError), dev.full_fp32():
        raise KeyError("restored on errors too")
    assert dev.tf32_state() == before


def test_cuda_settings_record_what_changes_cuda_numbers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    rec = dev.cuda_settings()
    assert rec["cuda_visible_devices"] == "1,0"
    assert rec["cudnn_benchmark"] == torch.backends.cudnn.benchmark
    assert set(rec["tf32"]) == {"cudnn_conv", "cuda_matmul"}
    assert rec["cudnn_version"] == torch.backends.cudnn.version()


def test_environment_carries_the_clock_log_and_cpu_clocks_say_why_not():
    with dev.sample_clocks(CPU) as log:
        pass
    env = dev.environment(CPU, log)
    assert env["clocks_during_timing"] == {"skipped": "not an NVIDIA GPU device"}
    assert "clocks_during_timing" not in dev.environment(CPU)


def test_clock_log_summary_and_event_names():
    log = dev.ClockLog([1500, 1410, 1980], reasons=0x4 | 0x40)
    s = log.summary()
    assert (s["samples"], s["sm_mhz_min"], s["sm_mhz_max"], s["sm_mhz_median"]) == (3, 1410, 1980, 1500)
    assert s["clock_event_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"]
    assert dev.clock_event_names(0x1 | 0x4000) == ["gpu_idle", "0x4000"]
    assert dev.ClockLog([]).summary() == {"skipped": "no NVML sample was taken during timing"}


def test_sample_clocks_does_not_swallow_errors_of_the_timed_block():
    with pytest.raises(ZeroDivisionError), dev.sample_clocks(CPU):
        1 / 0  # noqa: B018


# --- profiling: out of memory and sticky errors per entry ------------------------------------------

class _FailingRuntime:
    """A runtime that reports a GPU but measures on the CPU, and raises for the keys of ``failures``
    (by channel count), as a GPU would raise out of memory or a CUDA error."""

    key, dtype_name, provider = "eager", "fp32", None

    def __init__(self, failures):
        from edgenas.profiling import EagerRuntime, ProfileSettings

        self.device = torch.device("cuda", 0)
        self.failures = failures
        self.real = EagerRuntime(CPU, "fp32", "forward", ProfileSettings(runs=2, min_warmup=1, max_warmup=2,
                                                                         keep_cpu_memory=False))

    def time_op(self, key, build, batch):
        if key.C in self.failures:
            raise self.failures[key.C]
        return self.real.time_op(key, build, batch)


def _measure_with(monkeypatch, failures, keys):
    from edgenas import profiling

    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    # there is no GPU to ask for its free memory; the up-front size check is not what is tested here
    monkeypatch.setattr(profiling, "available_memory", lambda device: 2**40)
    entries, skipped = profiling.measure_entries(keys, _FailingRuntime(failures), batch=2, mode="forward")
    return entries, skipped, freed


def test_out_of_memory_is_recorded_per_entry_and_frees_the_cache(monkeypatch):
    from edgenas.profiling import ShapeKey

    keys = [ShapeKey("skip_connect", 4, 8, 8, 1), ShapeKey("skip_connect", 8, 8, 8, 1),
            ShapeKey("max_pool_3x3", 4, 8, 8, 1)]
    entries, skipped, freed = _measure_with(
        monkeypatch, {8: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")}, keys)
    assert [e.key for e in entries] == [keys[0], keys[2]]  # the entries after the OOM still ran
    assert len(skipped) == 1 and skipped[0].key == keys[1]
    assert skipped[0].reason.startswith("out of memory at batch 2 (fp32 on cuda:0): CUDA out of memory")
    assert freed == [1]


def test_a_sticky_cuda_error_stops_profiling_with_one_line(monkeypatch):
    from edgenas.profiling import ShapeKey

    keys = [ShapeKey("skip_connect", 4, 8, 8, 1), ShapeKey("skip_connect", 8, 8, 8, 1)]
    with pytest.raises(EdgenasError) as e:
        _measure_with(monkeypatch, {8: RuntimeError("CUDA error: an illegal memory access was encountered\n"
                                                    "CUDA kernel errors might be asynchronously reported")}, keys)
    assert "illegal memory access" in e.value.message and "\n" not in e.value.message
    assert "new process" in e.value.hint


def test_an_unsupported_dtype_is_still_a_skipped_entry_not_a_sticky_error(monkeypatch):
    from edgenas.profiling import ShapeKey

    _, skipped, _ = _measure_with(monkeypatch, {8: RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')},
                                  [ShapeKey("skip_connect", 8, 8, 8, 1)])
    assert skipped[0].reason.startswith("fp32 PyTorch eager on cuda: ")
    assert not dev.is_sticky_cuda_error(RuntimeError("CUDA out of memory"))
    assert dev.is_sticky_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))


# --- index tensors live on the module's device ------------------------------------------------------

def test_mixed_op_and_partial_node_index_with_buffers():
    from edgenas.ops import DARTS_OPS
    from edgenas.search.batched import BatchedMixedOp, BatchedPartialNode

    op = BatchedMixedOp(DARTS_OPS, 4, 1, 2)
    assert op.rows.tolist() == op.index and op.rows.dtype == torch.long
    assert "rows" not in op.state_dict()  # not persistent: checkpoints are unchanged
    w = torch.softmax(torch.randn(2, len(DARTS_OPS)), 1)
    y = op(torch.randn(2, 8, 6, 6), w)
    assert y.shape == (2, 8, 6, 6) and torch.isfinite(y).all()
    node = BatchedPartialNode(DARTS_OPS, 8, [1, 1, 2], k=2)
    assert [getattr(node, f"group_rows{j}").tolist() for j in range(len(node.groups))] == node.groups


def test_cost_model_builds_its_device_tables_once():
    import numpy as np

    from edgenas.cells import CELL_TYPES, num_edges
    from edgenas.ops import DARTS_OPS
    from edgenas.search.budgets import CostModel

    steps = 2
    tables = {t: np.arange((steps + 1) * len(DARTS_OPS), dtype=float).reshape(steps + 1, -1)
              for t in CELL_TYPES}
    model = CostModel("macs", "MACs", tuple(DARTS_OPS), steps, tables)
    w = {t: torch.softmax(torch.randn(num_edges(steps), len(DARTS_OPS)), 1) for t in tables}
    a = model.expected(w)
    cached = dict(model._cache)
    b = model.expected(w)
    assert torch.equal(a, b) and len(model._cache) == 2
    assert all(model._cache[k][1] is cached[k][1] for k in cached)  # reused, not rebuilt
    # the value is the documented one: 2 * sum over edges of the mean weight-renormalised cost
    keep = [j for j, o in enumerate(DARTS_OPS) if o != "none"]
    inputs = [i for n in range(steps) for i in range(n + 2)]
    nodes = [n for n in range(steps) for _ in range(n + 2)]
    want = 0.0
    for t in tables:
        wt = w[t][:, keep] / w[t][:, keep].sum(1, keepdim=True)
        per_edge = (wt * torch.as_tensor(tables[t][:, keep], dtype=wt.dtype)[inputs]).sum(1)
        want += 2.0 * float((torch.tensor([1 / (n + 2) for n in nodes]) * per_edge).sum())
    assert float(a) == pytest.approx(want, rel=1e-6)


# --- batches: one transfer of the random draws -----------------------------------------------------------

def test_batch_draws_move_in_one_transfer_and_keep_their_values():
    from edgenas.data.tensors import Augment, ImageTensors

    images = torch.randint(0, 256, (7, 3, 8, 9), dtype=torch.uint8)
    for aug in (Augment(crop_pad=2, flip=True, cutout=4), Augment(flip=True), Augment(cutout=4)):
        ds = ImageTensors(images, torch.arange(7) % 2, (0.5,) * 3, (0.25,) * 3, aug)
        draws = ds.draw_augment(torch.Generator().manual_seed(3))
        idx = torch.tensor([5, 0, 3])
        got = draws.take(idx, CPU)
        for name in ("crop", "flip", "cutout"):
            full, part = getattr(draws, name), getattr(got, name)
            assert (full is None) == (part is None)
            if full is not None:
                assert part.dtype == full.dtype and torch.equal(part, full[..., idx])
