"""Device selection, synchronisation, timing and the environment record.

The CLI resolves a device once (``resolve_device``) and passes the ``torch.device`` down; nothing
else in edgenas names a device. Timed regions are bracketed by a device synchronisation: CUDA events
on a GPU (they time the GPU's own work, not the launch), ``time.perf_counter`` on the CPU.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
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


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes on ``device``, synchronised around the region."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


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
) -> TimingStats:
    """Warm up until the run-to-run spread settles, then time ``runs`` calls.

    Warm-up ends once the medians of two consecutive windows of ``window`` runs agree within
    ``tolerance`` (caches, allocator and autotuning have settled), or after ``max_warmup`` runs.
    ``max_seconds`` caps the timed phase for slow operators (at least 5 runs are kept).
    """
    history: list[float] = []
    for i in range(max_warmup):
        history.append(time_once(fn, device))
        if i + 1 >= max(min_warmup, 2 * window):
            a = statistics.median(history[-2 * window : -window])
            b = statistics.median(history[-window:])
            if abs(a - b) <= tolerance * max(a, b, 1e-9):
                break
    samples: list[float] = []
    t_start = time.perf_counter()
    for _ in range(runs):
        samples.append(time_once(fn, device))
        if max_seconds is not None and len(samples) >= 5 and time.perf_counter() - t_start > max_seconds:
            break
    return TimingStats.from_samples(samples)


# --- environment record ------------------------------------------------------------------------

def _nvml_record(device: torch.device) -> dict[str, Any]:
    """Driver, memory and clocks from NVML; a ``skipped`` reason where NVML cannot answer."""
    if device.type != "cuda":
        return {"skipped": "not an NVIDIA GPU device"}
    try:
        import pynvml
    except ImportError:
        return {"skipped": "nvidia-ml-py (pynvml) is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError has many subclasses; any of them means "no answer"
        return {"skipped": f"NVML could not start: {e}"}
    try:
        props = torch.cuda.get_device_properties(device)
        uuid = getattr(props, "uuid", None)
        handle = None
        if uuid is not None:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except Exception:
                handle = None
        if handle is None:  # CUDA_VISIBLE_DEVICES may renumber; the UUID path above is exact
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
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
    except Exception as e:
        return {"skipped": f"NVML query failed: {e}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def environment(device: torch.device) -> dict[str, Any]:
    """Everything a timing depends on, for the record in profiles and reports."""
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
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nvml": _nvml_record(device),
    }
    if device.type == "cpu":
        # whether freed memory stays in the heap (keep_cpu_memory) changes CPU timings several-fold
        rec["cpu_allocator"] = cpu_allocator()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec["cuda_capability"] = f"{props.major}.{props.minor}"
        rec["cuda_memory_total_mib"] = round(props.total_memory / 2**20)
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
