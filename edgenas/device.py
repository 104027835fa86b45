"""Device selection, synchronisation, timing and the environment record.

The CLI resolves a device once (``resolve_device``) and passes the ``torch.device`` down; nothing
else in edgenas names a device. Timed regions are bracketed by a device synchronisation: CUDA events
on a GPU (they time the GPU's own work, not the launch), ``time.perf_counter`` on the CPU.

Timer API (:func:`time_calls`, :func:`time_once`, :func:`benchmark`): a sample is ``calls``
back-to-back calls between two marks, divided by ``calls``. On CUDA the marks are events recorded
on the current stream *of the measured device* (inside ``torch.cuda.device(device)``), so a run on
``cuda:1`` never times GPU 0; kernels of tens of microseconds are timed over enough calls that a
sample lasts ``MIN_CUDA_SAMPLE_MS``, which hides the per-call Python dispatch the GPU overlaps.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from edgenas.errors import EdgenasError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise EdgenasError(f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise EdgenasError(
            f"device {spec!r} was asked for but no CUDA GPU is visible to torch",
            "use --device cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA build of torch",
        )
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise EdgenasError(
            f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)",
            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}",
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise EdgenasError(f"unknown dtype {name!r}", f"use one of {', '.join(DTYPES)}") from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_slug(device: torch.device) -> str:
    """A file-name-safe name for the device, e.g. ``cpu-amd-epyc`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    return f"{device.type}-{slug}" if not slug.startswith(device.type) else slug


# --- timing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimingStats:
    """Latency in milliseconds over ``n`` timed runs."""

    median: float
    p10: float
    p90: float
    mean: float
    std: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> TimingStats:
        if not samples_ms:
            raise ValueError("no timing samples")
        s = sorted(samples_ms)
        q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
        return cls(
            median=statistics.median(s),
            p10=q[0],
            p90=q[-1],
            mean=statistics.fmean(s),
            std=statistics.pstdev(s) if len(s) > 1 else 0.0,
            n=len(s),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


MIN_CUDA_SAMPLE_MS = 1.0   # a CUDA sample spans at least this long (event resolution ~0.5 us)
MAX_CALLS_PER_SAMPLE = 1000


def calls_per_sample(one_call_ms: float, min_sample_ms: float, max_calls: int = MAX_CALLS_PER_SAMPLE) -> int:
    """How many back-to-back calls make a sample of at least ``min_sample_ms`` (1 when one call does)."""
    if min_sample_ms <= 0 or one_call_ms >= min_sample_ms:
        return 1
    return max(1, min(max_calls, math.ceil(min_sample_ms / max(one_call_ms, 1e-6))))


def time_calls(fn: Callable[[], Any], device: torch.device, calls: int = 1) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls of ``fn`` on ``device``.

    The device is synchronised before the first call; on CUDA one pair of events brackets all the
    calls on the measured device's current stream, so launches overlap the GPU's work as they do in
    a real forward pass, and the time is the GPU's. On the CPU ``perf_counter`` brackets them.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    if device.type == "cuda":
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            synchronize(device)
            start.record(stream)
            for _ in range(calls):
                fn()
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end)) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes on ``device``, synchronised around the region."""
    return time_calls(fn, device, 1)


def benchmark(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    runs: int = 20,
    min_warmup: int = 3,
    max_warmup: int = 30,
    window: int = 3,
    tolerance: float = 0.05,
    max_seconds: float | None = None,
    min_sample_ms: float | None = None,
) -> TimingStats:
    """Warm up until the run-to-run spread settles, then time ``runs`` samples (per-call times).

    Warm-up ends once the medians of two consecutive windows of ``window`` runs agree within
    ``tolerance`` (caches, allocator and autotuning have settled), or after ``max_warmup`` runs.
    Each timed sample is :func:`calls_per_sample` calls long so it lasts ``min_sample_ms``
    (default ``MIN_CUDA_SAMPLE_MS`` on CUDA, one call on the CPU, where ``perf_counter`` resolves
    microseconds and a call is not asynchronous). ``max_seconds`` caps the timed phase for slow
    operators (at least 5 samples are kept).
    """
    history: list[float] = []
    for i in range(max_warmup):
        history.append(time_once(fn, device))
        if i + 1 >= max(min_warmup, 2 * window):
            a = statistics.median(history[-2 * window : -window])
            b = statistics.median(history[-window:])
            if abs(a - b) <= tolerance * max(a, b, 1e-9):
                break
    if min_sample_ms is None:
        min_sample_ms = MIN_CUDA_SAMPLE_MS if device.type == "cuda" else 0.0
    one_call = statistics.median(history[-window:]) if history else time_once(fn, device)
    calls = calls_per_sample(one_call, min_sample_ms)
    samples: list[float] = []
    t_start = time.perf_counter()
    for _ in range(runs):
        samples.append(time_calls(fn, device, calls))
        if max_seconds is not None and len(samples) >= 5 and time.perf_counter() - t_start > max_seconds:
            break
    return TimingStats.from_samples(samples)


# CUDA errors that leave the context unusable: every later kernel of the process fails with them
STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address", "illegal instruction", "an illegal address", "launch timed out",
                      "uncorrectable ECC error", "hardware stack error", "CUDA error: unknown error")


def is_sticky_cuda_error(e: BaseException) -> bool:
    """Whether ``e`` is one of the CUDA errors after which the process cannot use the GPU again."""
    text = str(e).lower()
    return any(marker.lower() in text for marker in STICKY_CUDA_ERRORS)


# --- environment record ------------------------------------------------------------------------

@contextlib.contextmanager
def _nvml_handle(device: torch.device) -> Iterator[Any]:
    """An NVML handle for ``device`` (NVML initialised for the block); raises what NVML raises."""
    import pynvml

    pynvml.nvmlInit()
    try:
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        handle = None
        if uuid is not None:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except Exception:
                handle = None
        if handle is None:  # CUDA_VISIBLE_DEVICES may renumber; the UUID path above is exact
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        yield handle
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvml_unavailable(device: torch.device) -> str:
    """Why NVML cannot describe ``device`` ("" when it may)."""
    if device.type != "cuda":
        return "not an NVIDIA GPU device"
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    return ""


def _nvml_record(device: torch.device) -> dict[str, Any]:
    """Driver, memory and clocks from NVML; a ``skipped`` reason where NVML cannot answer."""
    reason = _nvml_unavailable(device)
    if reason:
        return {"skipped": reason}
    import pynvml

    try:
        with _nvml_handle(device) as handle:
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            rec: dict[str, Any] = {
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                "memory_total_mib": round(mem.total / 2**20),
            }
            for key, clock in (("sm", pynvml.NVML_CLOCK_SM), ("mem", pynvml.NVML_CLOCK_MEM)):
                try:
                    rec[f"clock_{key}_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, clock)
                    rec[f"clock_{key}_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, clock)
                except Exception as e:
                    rec[f"clock_{key}_mhz"] = f"unavailable: {e}"
            return rec
    except Exception as e:  # NVMLError has many subclasses; any of them means "no answer"
        return {"skipped": f"NVML query failed: {e}"}


# NVML's clock-event bits (nvml.h, nvmlClocksEventReason*): why the SM clock is below its maximum.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}


def clock_event_names(mask: int) -> list[str]:
    """The named reasons set in an NVML clock-event bit mask (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([hex(rest)] if rest else [])


@dataclass
class ClockLog:
    """SM clock and clock-event reasons sampled while timing (NVML), or why none were taken."""

    sm_mhz: list[int]
    reasons: int = 0
    skipped: str = ""

    def summary(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        if not self.sm_mhz:
            return {"skipped": "no NVML sample was taken during timing"}
        return {"samples": len(self.sm_mhz), "sm_mhz_min": min(self.sm_mhz), "sm_mhz_max": max(self.sm_mhz),
                "sm_mhz_median": statistics.median(self.sm_mhz),
                "clock_event_reasons": clock_event_names(self.reasons)}


@contextlib.contextmanager
def sample_clocks(device: torch.device, interval_s: float = 0.05) -> Iterator[ClockLog]:
    """Sample the SM clock and its clock-event reasons every ``interval_s`` during the block.

    A clock read once after measuring says nothing about the timed runs: boost clocks fall as the
    GPU heats, and a power or thermal cap during the runs shows here as a reason. Reasons are OR-ed
    over the samples, ``gpu_idle`` included (a sample between calls may see an idle GPU).
    """
    log = ClockLog([])
    reason = _nvml_unavailable(device)
    if reason:
        log.skipped = reason
        yield log
        return
    import pynvml

    stop = threading.Event()

    def poll(handle: Any) -> None:
        events = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        while True:
            try:
                log.sm_mhz.append(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
                log.reasons |= int(events(handle))
            except Exception as e:
                log.skipped = f"NVML sampling failed: {e}"
                return
            if stop.wait(interval_s):
                return

    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(_nvml_handle(device))
        except Exception as e:  # errors of the timed block itself are not caught here
            log.skipped = f"NVML could not start: {e}"
            yield log
            return
        thread = threading.Thread(target=poll, args=(handle,), daemon=True)
        thread.start()
        try:
            yield log
        finally:
            stop.set()
            thread.join()


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _new_tf32_api() -> bool:
    """torch >= 2.9 sets TF32 per backend with ``fp32_precision``; mixing it with the legacy
    ``allow_tf32`` flags raises, so edgenas uses the new one where it exists."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def tf32_state() -> dict[str, bool]:
    """Whether cuDNN convolutions and CUDA matmuls may round fp32 inputs to TF32 (Ampere and newer)."""
    if _new_tf32_api():
        return {"cudnn_conv": torch.backends.cudnn.conv.fp32_precision == "tf32",
                "cuda_matmul": torch.backends.cuda.matmul.fp32_precision == "tf32"}
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
            "cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def _set_tf32(conv: bool, matmul: bool) -> None:
    if _new_tf32_api():
        torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


@contextlib.contextmanager
def full_fp32() -> Iterator[dict[str, bool]]:
    """TF32 off for the block (and restored after): convolutions and matmuls in IEEE fp32.

    PyTorch lets cuDNN convolutions use TF32 by default, which keeps only 10 mantissa bits on
    Ampere and newer GPUs: logits then differ from an fp32 runtime by ~1e-3, far above an fp32
    parity threshold. Yields the state that was in force before.
    """
    before = tf32_state()
    _set_tf32(False, False)
    try:
        yield before
    finally:
        _set_tf32(before["cudnn_conv"], before["cuda_matmul"])


def amp_for_capability(capability: tuple[int, int]) -> str:
    """The autocast dtype worth using on a GPU of this compute capability: ``bf16`` from Ampere
    (8.0, bf16 tensor cores), ``fp16`` from Volta (7.0, fp16 tensor cores; needs loss scaling),
    else ``off``. ``torch.cuda.is_bf16_supported()`` also counts emulated bf16, which runs slower
    than fp32 on Pascal, Volta, Turing and Jetson Xavier."""
    if capability >= (8, 0):
        return "bf16"
    if capability >= (7, 0):
        return "fp16"
    return "off"


def cuda_settings() -> dict[str, Any]:
    """The process-wide settings that change CUDA timings and numerics."""
    return {"cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "tf32": tf32_state(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def environment(device: torch.device, clocks: ClockLog | None = None) -> dict[str, Any]:
    """Everything a timing depends on, for the record in profiles and reports (``clocks``: what
    :func:`sample_clocks` saw during the timed runs)."""
    try:
        import onnxruntime
        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    rec: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "nvml": _nvml_record(device),
    }
    if device.type == "cpu":
        # whether freed memory stays in the heap (keep_cpu_memory) changes CPU timings several-fold
        rec["cpu_allocator"] = cpu_allocator()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec["cuda_capability"] = f"{props.major}.{props.minor}"
        rec["cuda_memory_total_mib"] = round(props.total_memory / 2**20)
        rec.update(cuda_settings())
    if clocks is not None:
        rec["clocks_during_timing"] = clocks.summary()
    return rec


# --- CPU allocator ---------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
_allocator_state: str | None = None


def keep_cpu_memory() -> str:
    """Stop glibc handing freed tensor memory back to the OS between timed calls; say what was done.

    PyTorch's CPU allocator is plain malloc. With glibc's defaults, megabyte-sized activations are
    mmap'd or trimmed back to the OS on free, so every call page-faults its buffers afresh. On the
    2-core dev VM this made single-op timings bimodal and 3-8x slower (a sep_conv_3x3 at 16x32x32,
    batch 32: 1.8-12 ms across runs, 1.23 ms with memory kept). Raising the mmap threshold to its
    maximum (32 MiB) and the trim threshold to 1 GiB keeps freed memory in the heap for reuse, as
    a caching allocator (jemalloc/tcmalloc, ORT's arena, CUDA's cache) would. The setting lasts for
    the process; profiling and every CPU search or training run (:func:`edgenas.runs.run_epochs`)
    make it. Returns a description for environment records (or why nothing was done).
    """
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    import ctypes
    import ctypes.util

    state = "default (not glibc)"
    name = ctypes.util.find_library("c")
    if name and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(name)
            ok = all(libc.mallopt(opt, value) == 1 for opt, value in (
                (_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20)))
            state = ("glibc malloc: mmap threshold 32 MiB, trim threshold 1 GiB, top pad 64 MiB"
                     if ok else "default (glibc mallopt refused)")
        except (OSError, AttributeError) as e:
            state = f"default (mallopt unavailable: {e})"
    _allocator_state = state
    return state


def cpu_allocator() -> str:
    """The CPU allocator setting in force in this process (for environment records)."""
    return _allocator_state or "default"
