"""Measure candidate operators on a device: latency, memory, MACs and params per op and shape.

This is the device look-up table hardware-aware DARTS variants build their latency term from
(EL-DARTS, Electronics 15(2):314, 2026, Sec. 3.1 and Fig. 1: per-operator latency measured on the target device;
FBNet, Wu et al., CVPR 2019, Eq. 5: a network's latency is the sum of its operators' table
entries). Each entry is timed by :func:`edgenas.device.benchmark` (warm-up until stable, then N
synchronised runs).

Memory is measured the way the device allows, and the kind is recorded with each entry:
  * CUDA: peak bytes allocated during one call above the allocation before it
    (``torch.cuda.max_memory_allocated``), i.e. the call's own working memory;
  * CPU: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``) plus the
    output, counting each storage once and leaving out the input and the weights (they exist
    whether or not the op runs). This is what the op adds to a training step's activation memory.

On the CPU, freed memory is kept in the heap while measuring (:func:`edgenas.device.keep_cpu_memory`;
``ProfileSettings.keep_cpu_memory``): with glibc's defaults each call page-faults its activations
afresh and single-op timings came out bimodal and several times slower than the compute. The
setting in force is recorded as ``environment["cpu_allocator"]``.

Modes: ``forward`` times inference (module in eval mode, affine BN, no autograd) - what a deployed
network pays; ``train`` times forward+backward of the module as the search supernet builds it
(train mode, non-affine BN) - what a search step pays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.costs import MAC_CONVENTION, count_macs, count_params, latency_lookup
from edgenas.device import (
    TimingStats,
    benchmark,
    device_slug,
    environment,
    is_sticky_cuda_error,
    keep_cpu_memory,
    resolve_dtype,
    synchronize,
    time_once,
)
from edgenas.errors import EdgenasError
from edgenas.files import read_json, require, write_json
from edgenas.values import FieldRule, check_record, finite_fields
from edgenas.ops import DARTS_OPS, OPS, get_op

PROFILE_FORMAT = "edgenas.profile"
PROFILE_VERSION = 1
MODES = ("forward", "train")

MEMORY_CUDA = "cuda_peak_allocated_above_baseline"
MEMORY_CPU = "cpu_saved_for_backward_plus_output"


@dataclass(frozen=True)
class Shape:
    """The input an operator sees: C channels of H x W, applied at ``stride``."""

    C: int
    H: int
    W: int
    stride: int

    def __str__(self) -> str:
        return f"{self.C}x{self.H}x{self.W}:{self.stride}"


@dataclass(frozen=True)
class ShapeKey:
    op: str
    C: int
    H: int
    W: int
    stride: int

    @property
    def shape(self) -> Shape:
        return Shape(self.C, self.H, self.W, self.stride)

    def __str__(self) -> str:
        return f"{self.op}@{self.shape}"


#: The default DARTS search supernet on CIFAR (C=16, 8 cells, reductions at cells 2 and 5) runs
#: its cell operators at these shapes. A reduction cell's stride-2 edges see C_curr channels at
#: the previous resolution (its inputs are preprocessed to C_curr before the ops), so reduction
#: 1 runs ops on 32 channels of 32x32 at stride 2 and reduction 2 on 64 channels of 16x16; its
#: stride-1 edges (between intermediate nodes) match the following normal cells' shapes.
DEFAULT_SHAPES: tuple[Shape, ...] = (
    Shape(16, 32, 32, 1),
    Shape(32, 32, 32, 2),
    Shape(32, 16, 16, 1),
    Shape(64, 16, 16, 2),
    Shape(64, 8, 8, 1),
)

_SHAPE_RE = re.compile(r"(\d+)x(\d+)x(\d+)(?::(\d+))?")


def parse_shapes(text: str) -> list[Shape]:
    """``"16x32x32:1,32x32x32:2"`` (C x H x W : stride; stride defaults to 1) -> shapes."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise EdgenasError("no shapes given", "write shapes like 16x32x32:1,32x32x32:2 (C x H x W : stride)")
    shapes: list[Shape] = []
    for p in parts:
        m = _SHAPE_RE.fullmatch(p.replace(" ", "").lower())
        if not m:
            raise EdgenasError(f"malformed shape {p!r}",
                               "write shapes like 16x32x32:1,32x32x32:2 (C x H x W : stride)")
        C, H, W = (int(g) for g in m.group(1, 2, 3))
        stride = int(m.group(4) or 1)
        if min(C, H, W) < 1:
            raise EdgenasError(f"shape {p!r} has a zero dimension", "channels, height and width must be >= 1")
        if stride not in (1, 2):
            raise EdgenasError(f"shape {p!r} has stride {stride}", "operators take stride 1 or 2")
        s = Shape(C, H, W, stride)
        if s not in shapes:
            shapes.append(s)
    return shapes


@dataclass(frozen=True)
class ProfileEntry:
    key: ShapeKey
    latency: TimingStats  # ms per batch
    memory_bytes: int
    memory_kind: str
    macs: int  # per sample
    params: int

    def to_dict(self) -> dict[str, Any]:
        k = self.key
        return {"op": k.op, "C": k.C, "H": k.H, "W": k.W, "stride": k.stride,
                "latency_ms": self.latency.to_dict(), "memory_bytes": self.memory_bytes,
                "memory_kind": self.memory_kind, "macs": self.macs, "params": self.params}


@dataclass(frozen=True)
class Skipped:
    """An op and shape that could not run here (e.g. a dtype the device lacks), and why."""

    key: ShapeKey
    reason: str


@dataclass(frozen=True)
class ProfileSettings:
    """How entries were measured; stored in the profile so missing shapes are measured alike."""

    runs: int = 30
    min_warmup: int = 3
    max_warmup: int = 30
    tolerance: float = 0.05
    max_seconds: float = 2.0  # caps each entry's warm-up and its timed phase (>= 5 runs kept)
    channels_last: bool = False
    seed: int = 0
    # keep freed CPU memory in the heap (see device.keep_cpu_memory): without it, CPU timings
    # measure page faults more than the operator
    keep_cpu_memory: bool = True

    def __post_init__(self) -> None:
        finite_fields(self)
        if self.runs < 1 or self.min_warmup < 0 or self.max_warmup < self.min_warmup:
            raise EdgenasError(
                f"bad run counts: runs={self.runs}, warm-up {self.min_warmup}..{self.max_warmup}",
                "use --runs 1 or more",
            )
        if self.max_seconds <= 0 or self.tolerance < 0:
            raise EdgenasError(f"max_seconds must be positive, got {self.max_seconds}",
                               "pass e.g. --max-seconds 2")

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass
class Profile:
    device: str  # slug, e.g. cpu-amd-epyc-7b13
    batch: int
    dtype: str
    mode: str
    environment: dict[str, Any]
    entries: list[ProfileEntry]
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    skipped: list[Skipped] = field(default_factory=list)

    def lookup(self, op: str, C: int, H: int, W: int, stride: int) -> ProfileEntry | None:
        key = ShapeKey(op, C, H, W, stride)
        return next((e for e in self.entries if e.key == key), None)

    def ops(self) -> list[str]:
        """Measured operators, in measurement order."""
        return list(dict.fromkeys(e.key.op for e in self.entries))

    def shapes(self) -> list[Shape]:
        return list(dict.fromkeys(e.key.shape for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch": self.batch,
            "dtype": self.dtype,
            "mode": self.mode,
            "affine": self.mode == "forward",
            "mac_convention": MAC_CONVENTION,
            "settings": self.settings.to_dict(),
            "environment": self.environment,
            "entries": [e.to_dict() for e in self.entries],
            "skipped": [{"op": s.key.op, "C": s.key.C, "H": s.key.H, "W": s.key.W,
                         "stride": s.key.stride, "reason": s.reason} for s in self.skipped],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, PROFILE_FORMAT, PROFILE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        doc = read_json(path, PROFILE_FORMAT, PROFILE_VERSION, "profile")
        mode = require(doc, "mode", str, path)
        if mode not in MODES:
            raise EdgenasError(f"{path}: field 'mode' is {mode!r}", f"expected one of {', '.join(MODES)}")
        dtype = require(doc, "dtype", str, path)
        resolve_dtype(dtype)
        settings_doc = doc.get("settings") or {}
        if not isinstance(settings_doc, dict):
            raise EdgenasError(f"{path}: field 'settings' should be an object", "regenerate the profile")
        known = ProfileSettings.__dataclass_fields__
        try:
            settings = ProfileSettings(**{k: v for k, v in settings_doc.items() if k in known})
        except TypeError as e:
            raise EdgenasError(f"{path}: field 'settings' is malformed ({e})", "regenerate the profile") from None
        check_record(doc, PROFILE_RULES, str(path), "regenerate the profile with edgenas profile")
        entries = [_entry_from_dict(d, f"{path} entries[{i}]", path)
                   for i, d in enumerate(require(doc, "entries", list, path))]
        skipped = [Skipped(_key_from_dict(d, f"{path} skipped[{i}]"), str(d.get("reason", "")))
                   for i, d in enumerate(doc.get("skipped") or [])]
        if not entries:
            raise EdgenasError(f"{path}: field 'entries' is empty", "profile at least one operator")
        seen: set[ShapeKey] = set()
        for i, e in enumerate(entries):
            if e.key in seen:  # two timings for one key: look-ups would silently take the first
                raise EdgenasError(f"{path} entries[{i}]: {e.key} is measured twice",
                                   f"delete one of the two entries from {path}")
            seen.add(e.key)
        env = doc.get("environment") or {}
        return cls(
            device=require(doc, "device", str, path),
            batch=require(doc, "batch", int, path),
            dtype=dtype,
            mode=mode,
            environment=env if isinstance(env, dict) else {},
            entries=entries,
            settings=settings,
            skipped=skipped,
        )


#: What a profile's top level and each entry must hold; a new numeric field is one row here.
PROFILE_RULES: tuple[FieldRule, ...] = (FieldRule("batch", minimum=1, integer=True),)
KEY_RULES: tuple[FieldRule, ...] = (
    FieldRule("C", minimum=1, integer=True),
    FieldRule("H", minimum=1, integer=True),
    FieldRule("W", minimum=1, integer=True),
    FieldRule("stride", minimum=1, maximum=2, integer=True),
)
ENTRY_RULES: tuple[FieldRule, ...] = (
    *KEY_RULES,
    # a measured time is never zero: even the identity op costs a call
    FieldRule("latency_ms.median", above=0),
    FieldRule("latency_ms.p10", above=0),
    FieldRule("latency_ms.p90", above=0),
    FieldRule("latency_ms.mean", above=0),
    FieldRule("latency_ms.std", minimum=0),
    FieldRule("latency_ms.n", minimum=1, integer=True),
    FieldRule("memory_bytes", minimum=0, integer=True),
    FieldRule("macs", minimum=0, integer=True),
    FieldRule("params", minimum=0, integer=True),
)


def _remeasure(d: dict[str, Any], path: Any) -> str:
    """The fix for a bad entry: measure it again (or delete it)."""
    shape = "x".join(str(d.get(k, "?")) for k in ("C", "H", "W")) + f":{d.get('stride', '?')}"
    return f"re-measure it (edgenas profile --ops {d.get('op', '?')} --shapes {shape}) or delete the entry from {path}"


def _key_from_dict(d: Any, where: str) -> ShapeKey:
    if not isinstance(d, dict):
        raise EdgenasError(f"{where}: should be an object", "regenerate the profile")
    op = require(d, "op", str, where)
    if op not in OPS:
        raise EdgenasError(f"{where}: unknown operator {op!r}", f"known operators: {', '.join(OPS)}")
    check_record(d, KEY_RULES, where, "fix the shape or delete the entry")
    return ShapeKey(op, *(require(d, k, int, where) for k in ("C", "H", "W", "stride")))


def _entry_from_dict(d: Any, where: str, path: Any) -> ProfileEntry:
    key = _key_from_dict(d, where)
    check_record(d, ENTRY_RULES, f"{where} {key}", _remeasure(d, path))
    lat = require(d, "latency_ms", dict, where)
    try:
        latency = TimingStats(**{k: lat[k] for k in ("median", "p10", "p90", "mean", "std", "n")})
    except KeyError as e:
        raise EdgenasError(f"{where}: field 'latency_ms' lacks {e.args[0]!r}", "regenerate the profile") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lat.values()):
        raise EdgenasError(f"{where}: field 'latency_ms' should hold numbers", "regenerate the profile")
    return ProfileEntry(key, latency, require(d, "memory_bytes", int, where),
                        require(d, "memory_kind", str, where), require(d, "macs", int, where),
                        require(d, "params", int, where))


# --- measurement ---------------------------------------------------------------------------------

def _build(key: ShapeKey, mode: str, device: torch.device | None, dtype: torch.dtype | None) -> nn.Module:
    # search supernets use non-affine BN; deployed networks affine BN
    m = get_op(key.op).build(key.C, key.stride, affine=(mode == "forward"), device=device, dtype=dtype)
    return m.train(mode == "train")


def _check_key(key: ShapeKey) -> None:
    get_op(key.op)
    if key.stride == 2 and min(key.H, key.W) < 2:
        raise EdgenasError(f"{key}: a stride-2 op needs H and W of at least 2", "use a larger shape")


def _costs(key: ShapeKey, mode: str) -> tuple[int, int]:
    """MACs per sample and params, counted on an fp32 CPU copy (they depend on neither)."""
    m = _build(key, mode, None, None)
    return count_macs(m, (key.C, key.H, key.W)), count_params(m)


def _cpu_memory(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward plus output; each storage once; input and weights left out."""
    seen: set[int] = {x.untyped_storage().data_ptr()}
    seen.update(p.untyped_storage().data_ptr() for p in module.parameters())
    seen.update(b.untyped_storage().data_ptr() for b in module.buffers())
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        add(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    add(out)
    return total


def _cuda_memory(fn: Callable[[], Any], device: torch.device) -> int:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def _measure(
    key: ShapeKey, device: torch.device, batch: int, dtype: torch.dtype, mode: str,
    settings: ProfileSettings,
) -> tuple[TimingStats, int, str]:
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    module = _build(key, mode, device, dtype).to(memory_format=fmt)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    x = torch.randn(batch, key.C, key.H, key.W, generator=gen).to(device=device, dtype=dtype,
                                                                     memory_format=fmt)
    if mode == "train":
        x.requires_grad_(True)
        inputs = [x, *(p for p in module.parameters() if p.requires_grad)]
        grad_out = torch.ones_like(module(x).detach())

        def fn() -> None:
            # autograd.grad returns the gradients instead of accumulating them into .grad, so
            # every timed run does the same work
            torch.autograd.grad(module(x), inputs, grad_out)
    else:
        def fn() -> None:
            with torch.inference_mode():
                module(x)

    # first call: raises here if the device cannot run this op/dtype at all; its time bounds
    # the warm-up so a slow op does not spend many seconds settling
    first_ms = time_once(fn, device)
    warmup_cap = int(settings.max_seconds * 1e3 / max(first_ms, 1e-3))
    max_warmup = max(settings.min_warmup, min(settings.max_warmup, warmup_cap))
    stats = benchmark(fn, device, runs=settings.runs, min_warmup=settings.min_warmup,
                      max_warmup=max_warmup, tolerance=settings.tolerance,
                      max_seconds=settings.max_seconds)
    if device.type == "cuda":
        memory, kind = _cuda_memory(fn, device), MEMORY_CUDA
    else:
        memory, kind = _cpu_memory(module, x.detach().requires_grad_(True)), MEMORY_CPU
    return stats, memory, kind


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


#: Activations an operator keeps alive, in input-sized tensors: a separable convolution holds about
#: eight in a forward pass (ReLU, two depthwise/pointwise pairs, two BatchNorms); training keeps
#: them for backward and adds as many gradients.
ACTIVATION_COPIES = {"forward": 8, "train": 16}


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` right now."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_fits(keys: Sequence[ShapeKey], device: torch.device, *, batch: int, itemsize: int, mode: str) -> None:
    """Refuse, before measuring anything, a shape whose activations cannot fit in free memory:
    the allocation would fail mid-run (or the OS would kill the process)."""
    free = available_memory(device)
    for k in sorted(keys, key=lambda k: -k.C * k.H * k.W):
        need = batch * k.C * k.H * k.W * itemsize * ACTIVATION_COPIES[mode]
        if need > free:
            raise EdgenasError(f"shape {k.shape} at batch {batch} needs about {need / 2**30:,.1f} GiB of activations "
                               f"({device} has {free / 2**30:,.1f} GiB free)",
                               "profile smaller shapes or a smaller --batch")
        return  # the largest fits, so every smaller one does


def measure_entries(
    keys: Sequence[ShapeKey],
    device: torch.device,
    *,
    batch: int,
    dtype: str,
    mode: str,
    settings: ProfileSettings,
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> tuple[list[ProfileEntry], list[Skipped]]:
    """Measure each key; keys the device cannot run are returned as :class:`Skipped`."""
    if mode not in MODES:
        raise EdgenasError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if batch < 1:
        raise EdgenasError(f"batch must be >= 1, got {batch}", "pass --batch 32 or similar")
    torch_dtype = resolve_dtype(dtype)
    for k in keys:  # fail on bad input before spending a minute measuring
        _check_key(k)
    check_fits(keys, device, batch=batch, itemsize=torch.empty((), dtype=torch_dtype).element_size(), mode=mode)
    costs = {k: _costs(k, mode) for k in keys}
    if device.type == "cpu" and settings.keep_cpu_memory:
        keep_cpu_memory()
    entries: list[ProfileEntry] = []
    skipped: list[Skipped] = []
    for k in keys:
        try:
            stats, memory, kind = _measure(k, device, batch, torch_dtype, mode, settings)
        except torch.cuda.OutOfMemoryError as e:
            # the entry's tensors are gone with the frame; give their cached blocks back so the
            # next (smaller) entry is not refused for this one's memory
            torch.cuda.empty_cache()
            skipped.append(Skipped(k, f"out of memory at batch {batch} ({dtype} on {device}): {_first_line(e)}"))
        except (RuntimeError, NotImplementedError) as e:
            if device.type == "cuda" and is_sticky_cuda_error(e):
                raise EdgenasError(
                    f"CUDA error while measuring {k}, after which the GPU context is unusable: {_first_line(e)}",
                    "measure the remaining operators in a new process (--ops or fewer --shapes); "
                    "check the driver with nvidia-smi") from None
            skipped.append(Skipped(k, f"{dtype} on {device.type}: {_first_line(e)}"))
        else:
            entries.append(ProfileEntry(k, stats, memory, kind, *costs[k]))
        if on_entry is not None:
            on_entry(k)
    return entries, skipped


def profile_ops(
    device: torch.device,
    ops: Iterable[str] = DARTS_OPS,
    shapes: Iterable[Shape] = DEFAULT_SHAPES,
    *,
    batch: int = 32,
    dtype: str = "fp32",
    mode: str = "forward",
    settings: ProfileSettings | None = None,
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> Profile:
    """Measure every op at every shape (shape-major order) on ``device``."""
    settings = settings or ProfileSettings()
    ops, shapes = list(ops), list(shapes)
    keys = [ShapeKey(op, s.C, s.H, s.W, s.stride) for s in shapes for op in ops]
    entries, skipped = measure_entries(keys, device, batch=batch, dtype=dtype, mode=mode,
                                       settings=settings, on_entry=on_entry)
    if not entries:
        reasons = "; ".join(sorted({s.reason for s in skipped}))
        raise EdgenasError(f"no operator could run on {device} with dtype {dtype}: {reasons}",
                           "choose another --dtype (fp32 runs everywhere) or device")
    return Profile(device_slug(device), batch, dtype, mode, environment(device), entries, settings, skipped)


def profile_missing(
    profile: Profile,
    keys: Iterable[Any],
    device: torch.device,
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> Profile:
    """A copy of ``profile`` with the keys it lacks measured on ``device`` with its settings.

    A key is anything with op, C, H, W, stride (a :class:`ShapeKey`, a :class:`edgenas.nets.OpShape`).
    """
    slug = device_slug(device)
    if slug != profile.device:
        raise EdgenasError(
            f"the profile was measured on {profile.device}, not on this device ({slug})",
            "measure missing shapes on the profiled device, or profile this device afresh",
        )
    missing = [ShapeKey(k.op, k.C, k.H, k.W, k.stride) for k in latency_lookup(profile, keys)[1]]
    if not missing:
        return replace(profile, entries=list(profile.entries), skipped=list(profile.skipped))
    entries, skipped = measure_entries(missing, device, batch=profile.batch, dtype=profile.dtype,
                                       mode=profile.mode, settings=profile.settings, on_entry=on_entry)
    return replace(profile, entries=[*profile.entries, *entries],
                   skipped=[*profile.skipped, *skipped])
