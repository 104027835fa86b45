"""Measure candidate operators, and the network around them, on the runtime a model ships with.

This is the device look-up table hardware-aware DARTS variants build their latency term from
(EL-DARTS, Electronics 15(2):314, 2026, Sec. 3.1 and Fig. 1: per-operator latency measured on the
target device; FBNet, Wu et al., CVPR 2019, Eq. 5: a network's latency is the sum of its operators'
table entries), extended so that the sum covers the whole deployed network:

* **Runtimes** (:data:`RUNTIMES`). ``ort`` exports each operator to a small ONNX graph and times it
  in an ONNX Runtime session opened exactly as ``edgenas export`` opens its own
  (:func:`edgenas.export.runtime.open_session`: same provider, provider options, graph
  optimisation and thread count). ``eager`` times the PyTorch module (``forward``: eval mode, no
  autograd; ``train``: forward+backward as a search step pays), in the memory format asked for.
* **ORT's per-call cost.** A session call costs a few microseconds whatever it runs, as much as a
  small operator. An entry therefore times one graph holding ``copies`` copies of the operator and
  one graph with the same inputs and outputs but no operator; the difference divided by
  ``copies`` is what one more copy of the operator adds to a network. Stride-1 copies form a chain
  (each on the previous one's output, as operators follow one another in a cell, so the runtime
  keeps its internal layout between them); stride-2 copies change the shape and each take their
  own input (so the optimiser cannot merge them). An operator that exports to no ONNX node (the
  identity) costs exactly nothing in the deployed graph and is recorded as 0.
* **Fixed parts** (:class:`FixedPart`). For each network setting the profile also times a
  *reference network*: the evaluation network with every cell operator replaced by the cheapest
  stand-in (identity on stride-1 edges, 3x3 max pooling on stride-2 edges). Its measured time minus
  its stand-ins' entries (as scaled, below) is what every network of that setting pays besides its
  cell operators: stems, cell preprocessing (ReLU-conv-BN / FactorizedReduce), node sums,
  concatenation, global pooling, classifier and the runtime's one call.
* **Calibration** (:func:`fit_part`). Per setting and operator, a network of that operator on every
  edge is timed whole; less the fixed part, over the sum of its entries, it gives the operator's
  *scale* in that network (an entry timed among copies of itself runs with its input in the cache;
  in a network its input comes from another operator). A prediction is the fixed part plus each
  of the genotype's operator entries times its operator's scale (:mod:`edgenas.latency`).
* **Robust timing** (:func:`timed`). Calls are grouped into samples of at least ``sample_ms``;
  samples are taken for at least ``min_seconds``; p10/p50/p90 are kept; an attempt whose spread
  ``(p90 - p10) / p50`` exceeds ``max_spread`` is measured again (up to ``attempts``), and an entry
  that never settles keeps its narrowest attempt and is flagged unstable. The 1-minute load
  average before and after profiling is recorded.

Memory is measured the way the device allows (kind recorded per entry): on CUDA the peak bytes
allocated during one call above the allocation before it; on the CPU the bytes of the tensors
autograd saves for backward plus the output (each storage once, input and weights left out), i.e.
what the operator adds to a training step's activation memory. On the CPU, freed memory is kept
in the heap while measuring (:func:`edgenas.device.keep_cpu_memory`).
"""

from __future__ import annotations

import io
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.cells import DARTS_STEPS, node_states
from edgenas.costs import MAC_CONVENTION, count_macs, count_params
from edgenas.device import (
    DTYPES,
    TimingStats,
    calls_per_sample,
    device_slug,
    environment,
    is_sticky_cuda_error,
    keep_cpu_memory,
    resolve_dtype,
    sample_clocks,
    synchronize,
    time_calls,
)
from edgenas.errors import EdgenasError
from edgenas.export.onnx_export import _remove_identities
from edgenas.export.runtime import (
    ProviderStatus,
    _probe_model,
    open_session,
    physical_cores,
    probe_providers,
)
from edgenas.export.settings import PROVIDERS
from edgenas.files import read_json, require, write_json
from edgenas.genotypes import Genotype
from edgenas.nets import (
    SETTINGS,
    NetConfig,
    cell_shapes,
    default_config,
    edge_shape,
    inference_network,
    plan_cells,
)
from edgenas.ops import DARTS_OPS, OPS, get_op
from edgenas.threads import CpuReading, cpu_reading, free_cores, others_busy, usable_cpus
from edgenas.values import FieldRule, check_record, finite_fields

PROFILE_FORMAT = "edgenas.profile"
PROFILE_VERSION = 2
#: Versions :func:`load_profile` reads; version 1 (eager only, no fixed parts) is read as eager.
READABLE_VERSIONS = (1, 2)
MODES = ("forward", "train")
RUNTIMES = ("ort", "eager")
RUNTIME_NAMES = {"ort": "onnxruntime", "eager": "PyTorch eager"}
PROVIDER_NAMES = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}

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


# --- shapes from a network setting ----------------------------------------------------------------

#: The reference genotype whose network, timed whole, gives a setting's fixed part. Stride-1 edges
#: are identities (no kernel in either runtime); a reduction cell's stride-2 edges are 3x3 max
#: pooling, the cheapest operator that halves the resolution. Every node reads a different pair of
#: states, so ONNX Runtime's common-subexpression pass cannot merge two nodes' sums.
REFERENCE_GENOTYPE = Genotype(
    normal=(("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 1),
            ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 4), ("skip_connect", 3)),
    normal_concat=node_states(DARTS_STEPS),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("skip_connect", 2),
            ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 4), ("skip_connect", 3)),
    reduce_concat=node_states(DARTS_STEPS),
)
#: Bounds of an operator's calibration scale: a network cannot spend less than half or more than
#: twice its operators' entries on them without the timing being wrong.
SCALE_RANGE = (0.5, 2.0)
#: An operator is calibrated when its entries make at least this share of its calibration network.
MIN_CALIBRATION_SHARE = 0.1


def setting_shapes(cfg: NetConfig) -> list[Shape]:
    """Every distinct operator input shape an evaluation network of ``cfg`` can have.

    Every edge of every cell, whatever its operator: inputs 0/1 (stride 2 in a reduction cell) and
    the intermediate nodes, so any genotype of the space is covered.
    """
    shapes: list[Shape] = []
    for plan in plan_cells(REFERENCE_GENOTYPE, cfg):
        for idx in range(DARTS_STEPS + 1):
            s = edge_shape(plan, "x", idx)
            shape = Shape(s.C, s.H, s.W, s.stride)
            if shape not in shapes:
                shapes.append(shape)
    return shapes


#: The shapes the default DARTS search supernet on CIFAR (C=16, 8 cells, 32x32) runs its cell
#: operators at: its edges see the widths and resolutions of the evaluation network of the same
#: width and depth (the two differ in stems and preprocessing only, which are not operators).
DEFAULT_SHAPES: tuple[Shape, ...] = tuple(setting_shapes(default_config("cifar10", C=16, layers=8)))


@dataclass(frozen=True)
class NetKey:
    """Which network a fixed part belongs to: everything its stems, preprocessing and head depend on."""

    setting: str
    C: int
    layers: int
    H: int
    W: int
    num_classes: int
    in_channels: int
    steps: int = DARTS_STEPS

    @classmethod
    def of(cls, cfg: NetConfig) -> NetKey:
        return cls(cfg.setting, cfg.C, cfg.layers, cfg.input_hw[0], cfg.input_hw[1], cfg.num_classes,
                   cfg.in_channels)

    def config(self) -> NetConfig:
        return default_config(self.setting, C=self.C, layers=self.layers, input_hw=(self.H, self.W),
                              num_classes=self.num_classes, in_channels=self.in_channels)

    def __str__(self) -> str:
        return (f"{self.setting} C={self.C}, {self.layers} cells, {self.in_channels}x{self.H}x{self.W}, "
                f"{self.num_classes} classes")


# --- robust timing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """One timed quantity: ms per call over the kept attempt, how many attempts, whether it settled."""

    stats: TimingStats
    attempts: int
    stable: bool

    @property
    def spread(self) -> float:
        return spread(self.stats)


def spread(stats: TimingStats) -> float:
    """``(p90 - p10) / median``: the relative width of the middle 80 % of samples."""
    return (stats.p90 - stats.p10) / stats.median if stats.median > 0 else 0.0


def _warm_up(run: Callable[[int], float], settings: ProfileSettings) -> float:
    """Call until two windows of three calls agree within ``tolerance``; the last window's median."""
    history: list[float] = []
    t0 = time.perf_counter()
    for i in range(max(settings.max_warmup, 1)):
        history.append(run(1))
        if i + 1 >= max(settings.min_warmup, 6):
            a, b = statistics.median(history[-6:-3]), statistics.median(history[-3:])
            if abs(a - b) <= settings.tolerance * max(a, b, 1e-9):
                break
        if time.perf_counter() - t0 > settings.max_seconds:
            break
    return statistics.median(history[-3:])


def _attempt(run: Callable[[int], float], inner: int, settings: ProfileSettings) -> TimingStats:
    samples: list[float] = []
    t0 = time.perf_counter()
    while True:
        samples.append(run(inner) / inner)
        elapsed = time.perf_counter() - t0
        if len(samples) >= settings.runs and elapsed >= settings.min_seconds:
            break
        if elapsed > settings.max_seconds and len(samples) >= min(5, settings.runs):
            break
    return TimingStats.from_samples(samples)


def timed(run: Callable[[int], float], settings: ProfileSettings) -> Measured:
    """Time ``run(n)`` (n back-to-back calls, returning their total ms) robustly; ms per call.

    A stall of the machine (a preempted OpenMP thread takes tens of ms) lands in a few samples of
    an attempt that lasts ``min_seconds``, so the median ignores it; when stalls are so frequent
    that the spread stays wide, the attempt is repeated and, failing that, flagged.
    """
    per_call = _warm_up(run, settings)
    inner = calls_per_sample(per_call, settings.sample_ms, max_calls=sys.maxsize)
    best: TimingStats | None = None
    for attempt in range(1, settings.attempts + 1):
        stats = _attempt(run, inner, settings)
        if best is None or spread(stats) < spread(best):
            best = stats
        if spread(stats) <= settings.max_spread:
            return Measured(stats, attempt, True)
    assert best is not None
    return Measured(best, settings.attempts, False)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not say)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# --- the profile ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileEntry:
    key: ShapeKey
    latency: TimingStats  # ms per call at the profile's batch
    memory_bytes: int
    memory_kind: str
    macs: int  # per sample
    params: int
    stable: bool = True
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        k = self.key
        return {"op": k.op, "C": k.C, "H": k.H, "W": k.W, "stride": k.stride,
                "latency_ms": self.latency.to_dict(), "stable": self.stable, "attempts": self.attempts,
                "memory_bytes": self.memory_bytes, "memory_kind": self.memory_kind, "macs": self.macs,
                "params": self.params}


@dataclass(frozen=True)
class FixedPart:
    """What a network of ``net`` pays besides its cell operators (see the module docstring).

    ``latency`` is the reference network's measured time less ``reference_ops_ms`` (its stand-in
    operators' entries, each times its operator's calibration scale), so its median is the fixed
    part; p10/p90 are the reference network's, shifted the same way. ``calibration`` holds each
    operator's scale in this network (:func:`fit_part`).
    """

    net: NetKey
    latency: TimingStats
    network_ms: float
    reference_ops_ms: float
    stable: bool = True
    attempts: int = 1
    calibration: tuple[Calibration, ...] = ()

    @property
    def ms(self) -> float:
        return self.latency.median

    def to_dict(self) -> dict[str, Any]:
        n = self.net
        return {"setting": n.setting, "C": n.C, "layers": n.layers, "H": n.H, "W": n.W,
                "num_classes": n.num_classes, "in_channels": n.in_channels, "steps": n.steps,
                "latency_ms": self.latency.to_dict(), "network_ms": self.network_ms,
                "reference_ops_ms": self.reference_ops_ms, "stable": self.stable, "attempts": self.attempts,
                "calibration": [c.to_dict() for c in self.calibration]}


@dataclass(frozen=True)
class Calibration:
    """One operator's entries against the network they are used in (see :func:`fit_part`).

    ``network_ms`` is the calibration network (the reference wiring with ``op`` on every edge)
    timed whole, ``ops_ms`` the sum of its operators' entries; ``scale`` is what the network spends
    on them per unit of entry: (network - fixed part) / ops_ms, within :data:`SCALE_RANGE`.
    """

    op: str
    network_ms: float
    ops_ms: float
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "network_ms": self.network_ms, "ops_ms": self.ops_ms, "scale": self.scale}


@dataclass(frozen=True)
class Skipped:
    """An op and shape that could not run here (e.g. a dtype the runtime lacks), and why."""

    key: ShapeKey
    reason: str


@dataclass(frozen=True)
class ProfileSettings:
    """How entries were measured; stored in the profile so missing entries are measured alike."""

    runs: int = 20            # samples per attempt at least
    min_warmup: int = 3
    max_warmup: int = 30
    tolerance: float = 0.05
    max_seconds: float = 2.0  # caps each attempt (and the warm-up)
    min_seconds: float = 0.2  # each attempt lasts at least this long
    sample_ms: float = 0.5    # calls are grouped into samples at least this long
    max_spread: float = 0.3   # (p90 - p10) / median above this: measure again
    attempts: int = 3         # attempts before an entry is flagged unstable
    copies: int = 8           # ORT: operator copies per timed graph
    chain: bool = True        # ORT: stride-1 copies follow one another (else each has its own input)
    opset: int = 17
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
            raise EdgenasError(f"max_seconds must be positive, got {self.max_seconds}", "pass e.g. --max-seconds 2")
        if self.min_seconds < 0 or self.sample_ms < 0:
            raise EdgenasError(f"min_seconds ({self.min_seconds}) and sample_ms ({self.sample_ms}) must not be "
                               "negative", "pass e.g. --min-seconds 0.2")
        if self.attempts < 1 or self.copies < 1 or self.max_spread <= 0:
            raise EdgenasError(f"attempts ({self.attempts}) and copies ({self.copies}) must be >= 1 and "
                               f"max_spread ({self.max_spread}) positive", "use the defaults")

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class ProfileOptions:
    """What a profile measures and how long: the defaults of ``edgenas profile`` and of a run's
    [profile] table (the timing ones are :class:`ProfileSettings`')."""

    ops: tuple[str, ...] = ()          # empty: the 8 DARTS operators
    shapes: str | None = None          # None: the default search supernet's shapes
    runtime: str = "ort"               # what the export ships; eager: what a search step pays
    provider: str = "cpu"              # ort execution provider
    batch: int = 1                     # the export's and the latency budget's batch
    dtype: str = "fp32"
    mode: str = "forward"
    runs: int = ProfileSettings.runs
    max_seconds: float = ProfileSettings.max_seconds

    def settings(self, **extra: Any) -> ProfileSettings:
        """The timing settings these options ask for (``extra``: the rest of :class:`ProfileSettings`)."""
        return ProfileSettings(runs=self.runs, max_seconds=self.max_seconds, **extra)


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
    runtime: str = "eager"
    provider: str | None = None  # ORT execution provider key (cpu | cuda | tensorrt); None for eager
    threads: int = 0             # intra-op threads the runtime ran with (0: not recorded)
    parts: list[FixedPart] = field(default_factory=list)
    load_before: float | None = None
    load_after: float | None = None
    # cores other processes kept busy, on average, while the profile was measured (None: unknown)
    others_busy_cores: float | None = None

    def lookup(self, op: str, C: int, H: int, W: int, stride: int) -> ProfileEntry | None:
        key = ShapeKey(op, C, H, W, stride)
        return next((e for e in self.entries if e.key == key), None)

    def part(self, net: NetKey) -> FixedPart | None:
        return next((p for p in self.parts if p.net == net), None)

    def ops(self) -> list[str]:
        """Measured operators, in measurement order."""
        return list(dict.fromkeys(e.key.op for e in self.entries))

    def shapes(self) -> list[Shape]:
        return list(dict.fromkeys(e.key.shape for e in self.entries))

    @property
    def runs_on(self) -> str:
        """Where predictions from this profile hold: ``onnxruntime CPU provider`` / ``PyTorch eager on cpu``."""
        if self.runtime == "ort":
            return f"onnxruntime {PROVIDER_NAMES.get(self.provider or '', self.provider)} provider"
        return f"PyTorch eager on {self.device.split('-')[0]}"

    def units(self) -> str:
        """``onnxruntime CPU provider, batch 1`` (+ dtype where not fp32, + mode where train)."""
        extra = "" if self.dtype == "fp32" else f", {self.dtype}"
        mode = ", forward+backward" if self.mode == "train" else ""
        return f"{self.runs_on}, batch {self.batch}{extra}{mode}"

    def unstable(self) -> list[str]:
        return [str(e.key) for e in self.entries if not e.stable] + [str(p.net) for p in self.parts if not p.stable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "runtime": self.runtime,
            "provider": self.provider,
            "batch": self.batch,
            "dtype": self.dtype,
            "threads": self.threads,
            "mode": self.mode,
            "affine": self.mode == "forward",
            "units": self.units(),
            "mac_convention": MAC_CONVENTION,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "others_busy_cores": self.others_busy_cores,
            "settings": self.settings.to_dict(),
            "environment": self.environment,
            "entries": [e.to_dict() for e in self.entries],
            "parts": [p.to_dict() for p in self.parts],
            "skipped": [{"op": s.key.op, "C": s.key.C, "H": s.key.H, "W": s.key.W,
                         "stride": s.key.stride, "reason": s.reason} for s in self.skipped],
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, PROFILE_FORMAT, PROFILE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return load_profile(path)


# --- reading a profile: one loader, its checks in tables ------------------------------------------

def _one_of(options: Iterable[Any]) -> Callable[[Any], str | None]:
    options = tuple(options)
    return lambda v: None if v in options else f"expected one of {', '.join(map(str, options))}"


def _no_check(_v: Any) -> str | None:
    return None


_NUMBER = (int, float)
#: In a field table's last column: the field exists in every version, so no file may leave it out.
_REQUIRED = object()
_ABSENT_IS_NONE = object()  # a field a file of any version may lack (added without a version bump)
_OPTIONAL_NUMBER = (int, float, type(None))

# A profile is checked by two kinds of table: the field tables say which fields exist, their JSON
# type, the values a name may take, and what a version-1 file stands for; the rule tables (checked
# first, by :func:`edgenas.values.check_record`) give every number's range and refuse NaN and
# infinities. A new field is one row in each.

#: Top-level fields of a profile: (name, JSON type, check, value in a version-1 file).
PROFILE_FIELDS: tuple[tuple[str, Any, Callable[[Any], str | None], Any], ...] = (
    ("device", str, _no_check, _REQUIRED),
    ("runtime", str, _one_of(RUNTIMES), "eager"),
    ("provider", (str, type(None)), _one_of((*PROVIDERS, None)), None),
    ("batch", int, _no_check, _REQUIRED),
    ("dtype", str, _one_of(DTYPES), _REQUIRED),
    ("threads", int, _no_check, 0),
    ("mode", str, _one_of(MODES), _REQUIRED),
    ("load_average_before", _OPTIONAL_NUMBER, _no_check, None),
    ("load_average_after", _OPTIONAL_NUMBER, _no_check, None),
    ("others_busy_cores", _OPTIONAL_NUMBER, _no_check, _ABSENT_IS_NONE),
)
#: Fields of an operator entry (``latency_ms`` is checked by :data:`LATENCY_FIELDS`).
ENTRY_FIELDS: tuple[tuple[str, Any, Callable[[Any], str | None], Any], ...] = (
    ("op", str, _one_of(OPS), _REQUIRED),
    ("C", int, _no_check, _REQUIRED),
    ("H", int, _no_check, _REQUIRED),
    ("W", int, _no_check, _REQUIRED),
    ("stride", int, _one_of((1, 2)), _REQUIRED),
    ("memory_bytes", int, _no_check, _REQUIRED),
    ("memory_kind", str, _no_check, _REQUIRED),
    ("macs", int, _no_check, _REQUIRED),
    ("params", int, _no_check, _REQUIRED),
    ("stable", bool, _no_check, True),
    ("attempts", int, _no_check, 1),
)
#: Fields of a fixed part.
PART_FIELDS: tuple[tuple[str, Any, Callable[[Any], str | None], Any], ...] = (
    ("setting", str, _one_of(SETTINGS), _REQUIRED),
    ("C", int, _no_check, _REQUIRED),
    ("layers", int, _no_check, _REQUIRED),
    ("H", int, _no_check, _REQUIRED),
    ("W", int, _no_check, _REQUIRED),
    ("num_classes", int, _no_check, _REQUIRED),
    ("in_channels", int, _no_check, _REQUIRED),
    ("steps", int, _no_check, DARTS_STEPS),
    ("network_ms", _NUMBER, _no_check, _REQUIRED),
    ("reference_ops_ms", _NUMBER, _no_check, _REQUIRED),
    ("stable", bool, _no_check, True),
    ("attempts", int, _no_check, 1),
)
LATENCY_FIELDS = ("median", "p10", "p90", "mean", "std", "n")


def _latency_rules(minimum: float | None, above: float | None) -> tuple[FieldRule, ...]:
    return (*(FieldRule(f"latency_ms.{k}", minimum=minimum, above=above) for k in ("median", "p10", "p90", "mean")),
            FieldRule("latency_ms.std", minimum=0), FieldRule("latency_ms.n", minimum=1, integer=True))


PROFILE_RULES: tuple[FieldRule, ...] = (
    FieldRule("batch", minimum=1, integer=True),
    FieldRule("threads", minimum=0, integer=True, required=False),
    FieldRule("load_average_before", minimum=0, required=False),
    FieldRule("load_average_after", minimum=0, required=False),
    FieldRule("others_busy_cores", minimum=0, required=False),
)
KEY_RULES: tuple[FieldRule, ...] = (
    FieldRule("C", minimum=1, integer=True),
    FieldRule("H", minimum=1, integer=True),
    FieldRule("W", minimum=1, integer=True),
    FieldRule("stride", minimum=1, maximum=2, integer=True),
)
_COST_RULES: tuple[FieldRule, ...] = (
    FieldRule("memory_bytes", minimum=0, integer=True),
    FieldRule("macs", minimum=0, integer=True),
    FieldRule("params", minimum=0, integer=True),
    FieldRule("attempts", minimum=1, integer=True, required=False),
)
#: An eager operator never takes zero time: a zero or negative entry would make any budget "met".
ENTRY_RULES: tuple[FieldRule, ...] = (*KEY_RULES, *_latency_rules(None, 0), *_COST_RULES)
#: An ONNX Runtime entry is what one more instance adds to a graph of copies, less the graph's own
#: call: a node the runtime removes (the stride-1 identity) or one cheaper than the timing's
#: resolution is recorded as exactly zero, never below.
ORT_ENTRY_RULES: tuple[FieldRule, ...] = (*KEY_RULES, *_latency_rules(0, None), *_COST_RULES)
#: A fixed part is the network less its stand-in operators: it may be zero, never negative.
PART_RULES: tuple[FieldRule, ...] = (
    *(FieldRule(k, minimum=1, integer=True) for k in ("C", "layers", "H", "W", "num_classes", "in_channels")),
    FieldRule("steps", minimum=1, integer=True, required=False),
    FieldRule("network_ms", minimum=0), FieldRule("reference_ops_ms", minimum=0),
    FieldRule("attempts", minimum=1, integer=True, required=False),
    *_latency_rules(0, None),
)


#: A calibration's times are non-negative and its scale within the range it is clipped to.
CALIBRATION_RULES: tuple[FieldRule, ...] = (
    FieldRule("network_ms", minimum=0), FieldRule("ops_ms", minimum=0),
    FieldRule("scale", minimum=SCALE_RANGE[0], maximum=SCALE_RANGE[1]),
)


def _calibration(part: Mapping[str, Any], where: str) -> tuple[Calibration, ...]:
    """A fixed part's per-operator calibration (absent in profiles made before it: scale 1)."""
    rows = part.get("calibration") or []
    if not isinstance(rows, list):
        raise EdgenasError(f"{where}: field 'calibration' should be a list", "regenerate the profile")
    out = []
    for i, d in enumerate(rows):
        here = f"{where} calibration[{i}]"
        if not isinstance(d, Mapping) or not isinstance(d.get("op"), str):
            raise EdgenasError(f"{here}: not an object naming its 'op'", "regenerate the profile")
        check_record(d, CALIBRATION_RULES, here, "regenerate the profile with edgenas profile --setting")
        out.append(Calibration(d["op"], float(d["network_ms"]), float(d["ops_ms"]), float(d["scale"])))
    return tuple(out)


def _entry_rules(runtime: str) -> tuple[FieldRule, ...]:
    return ORT_ENTRY_RULES if runtime == "ort" else ENTRY_RULES


def _remeasure(d: Any, path: Any) -> str:
    """The fix for a bad entry: measure it again (or delete it)."""
    d = d if isinstance(d, dict) else {}
    shape = "x".join(str(d.get(k, "?")) for k in ("C", "H", "W")) + f":{d.get('stride', '?')}"
    return f"re-measure it (edgenas profile --ops {d.get('op', '?')} --shapes {shape}) or delete the entry from {path}"


def _fields(doc: Any, table: Sequence[tuple[str, Any, Callable[[Any], str | None], Any]], where: str,
            legacy: bool, fix: str = "regenerate the profile") -> dict[str, Any]:
    """Check ``doc`` against a field table; a version-1 file takes the table's value for new fields."""
    if not isinstance(doc, dict):
        raise EdgenasError(f"{where}: should be an object", fix)
    out: dict[str, Any] = {}
    for name, kind, check, old in table:
        if name not in doc and old is _ABSENT_IS_NONE:
            out[name] = None
            continue
        if name not in doc and old is not _REQUIRED and (legacy or old is not None):
            out[name] = old
            continue
        value = require(doc, name, kind, where)
        problem = check(value)
        if problem:
            if name == "op":
                raise EdgenasError(f"{where}: unknown operator {value!r}", f"known operators: {', '.join(OPS)}")
            if name == "dtype":
                resolve_dtype(value)
            raise EdgenasError(f"{where}: field {name!r} is {value!r}: {problem}", fix)
        out[name] = value
    return out


def _latency(d: dict[str, Any], where: str) -> TimingStats:
    # every field's presence, type and range was checked by the record's rule table
    lat = require(d, "latency_ms", dict, where)
    return TimingStats(**{k: lat[k] for k in LATENCY_FIELDS})


def _settings(doc: dict[str, Any], path: Any) -> ProfileSettings:
    settings_doc = doc.get("settings") or {}
    if not isinstance(settings_doc, dict):
        raise EdgenasError(f"{path}: field 'settings' should be an object", "regenerate the profile")
    known = ProfileSettings.__dataclass_fields__
    try:
        return ProfileSettings(**{k: v for k, v in settings_doc.items() if k in known})
    except TypeError as e:
        raise EdgenasError(f"{path}: field 'settings' is malformed ({e})", "regenerate the profile") from None


def _entry(d: Any, i: int, path: Any, runtime: str, legacy: bool) -> ProfileEntry:
    where, fix = f"{path} (entries[{i}])", _remeasure(d, path)
    f = _fields(d, ENTRY_FIELDS, where, legacy, fix)
    check_record(d, _entry_rules(runtime), f"{where} {f['op']}", fix)
    return ProfileEntry(ShapeKey(f["op"], f["C"], f["H"], f["W"], f["stride"]), _latency(d, where),
                        f["memory_bytes"], f["memory_kind"], f["macs"], f["params"], f["stable"], f["attempts"])


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile file (the one loader; every field is checked by the tables above).

    Version 1 files (before runtimes and fixed parts) are read as eager profiles without fixed
    parts, their thread count taken from the environment record.
    """
    doc = read_json(path, PROFILE_FORMAT, READABLE_VERSIONS, "profile")
    legacy = doc.get("version") == 1
    top = _fields(doc, PROFILE_FIELDS, str(path), legacy)
    check_record(doc, PROFILE_RULES, str(path), "regenerate the profile with edgenas profile")
    env = doc.get("environment") or {}
    env = env if isinstance(env, dict) else {}
    if legacy:
        top["threads"] = int(env.get("torch_threads") or 0)
    if top["runtime"] == "ort" and top["provider"] is None:
        raise EdgenasError(f"{path}: an onnxruntime profile names no 'provider'", "regenerate the profile")
    entries = [_entry(d, i, path, top["runtime"], legacy) for i, d in enumerate(require(doc, "entries", list, path))]
    if not entries:
        raise EdgenasError(f"{path}: field 'entries' is empty", "profile at least one operator")
    seen: set[ShapeKey] = set()
    for i, e in enumerate(entries):
        if e.key in seen:  # two timings for one key: look-ups would silently take the first
            raise EdgenasError(f"{path} entries[{i}]: {e.key} is measured twice",
                               f"delete one of the two entries from {path}")
        seen.add(e.key)
    parts = []
    for i, d in enumerate(doc.get("parts") or []):
        where = f"{path} (parts[{i}])"
        f = _fields(d, PART_FIELDS, where, legacy)
        check_record(d, PART_RULES, where, "regenerate the profile with edgenas profile --setting")
        net = NetKey(f["setting"], f["C"], f["layers"], f["H"], f["W"], f["num_classes"], f["in_channels"],
                     f["steps"])
        parts.append(FixedPart(net, _latency(d, where), float(f["network_ms"]), float(f["reference_ops_ms"]),
                               f["stable"], f["attempts"], _calibration(d, where)))
    skipped = []
    for i, d in enumerate(doc.get("skipped") or []):
        where = f"{path} (skipped[{i}])"
        f = _fields(d, ENTRY_FIELDS[:5], where, legacy)
        check_record(d, KEY_RULES, where, "fix the shape or delete the entry")
        skipped.append(Skipped(ShapeKey(f["op"], f["C"], f["H"], f["W"], f["stride"]), str(d.get("reason", ""))))
    return Profile(device=top["device"], batch=top["batch"], dtype=top["dtype"], mode=top["mode"],
                   environment=env, entries=entries, settings=_settings(doc, path), skipped=skipped,
                   runtime=top["runtime"], provider=top["provider"], threads=top["threads"], parts=parts,
                   load_before=top["load_average_before"], load_after=top["load_average_after"],
                   others_busy_cores=top["others_busy_cores"])


# --- runtimes: how one module is timed -------------------------------------------------------------

def copies_graph(proto: Any, k: int, *, chained: bool = False) -> Any:
    """``k`` copies of a one-input, one-output graph in one graph (names prefixed per copy).

    Independent (default): each copy on its own graph input and output, so the optimiser cannot
    merge them. Chained: each copy reads the previous one's output, as operators follow one another
    inside a network (only for shape-preserving graphs).
    """
    import onnx
    from onnx import helper

    g = proto.graph
    (g_in,), (g_out,) = g.input, g.output
    nodes, inits, inputs, outputs = [], [], [], []
    for i in range(k):
        def rename(name: str, i: int = i) -> str:
            if chained and name == g_in.name and i > 0:
                return f"c{i - 1}/{g_out.name}"
            return f"c{i}/{name}" if name else name

        for n in g.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = rename(n.name)
            c.input[:] = [rename(x) for x in n.input]
            c.output[:] = [rename(x) for x in n.output]
            nodes.append(c)
        for t in g.initializer:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = rename(t.name)
            inits.append(c)
        for src, dst, keep in ((g_in, inputs, not chained or i == 0), (g_out, outputs, not chained or i == k - 1)):
            if keep:
                c = onnx.ValueInfoProto()
                c.CopyFrom(src)
                c.name = f"c{i}/{src.name}"
                dst.append(c)
    graph = helper.make_graph(nodes, "copies", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def empty_graph(shape: tuple[int, ...], k: int, opset: int) -> Any:
    """``k`` inputs passed to ``k`` outputs (Identity): the call with no operator, for the baseline."""
    from onnx import TensorProto, helper

    def info(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    graph = helper.make_graph([helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(k)], "empty",
                              [info(f"x{i}") for i in range(k)], [info(f"y{i}") for i in range(k)])
    # IR version 8 (ONNX 1.10): old enough for any onnxruntime that reads the opset
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def onnx_graph(module: nn.Module, inputs: Sequence[torch.Tensor], opset: int) -> Any:
    """``module`` exported as the export exports networks (TorchScript exporter, eval, fp32 on the CPU,
    constant folding, identity aliases removed), returned as an ONNX ModelProto."""
    import onnx

    module = module.to(device="cpu", dtype=torch.float32).eval()
    names_in = [f"x{i}" for i in range(len(inputs))]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = module(*inputs)
        n_out = len(out) if isinstance(out, tuple) else 1
        torch.onnx.export(module, tuple(inputs), buf, opset_version=opset, dynamo=False,
                          training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True,
                          input_names=names_in, output_names=[f"y{i}" for i in range(n_out)])
    proto = onnx.load_from_string(buf.getvalue())
    _remove_identities(proto.graph)
    return proto


def to_fp16(proto: Any) -> Any:
    """The graph in fp16 (weights and activations; inputs and outputs stay fp32, as a caller feeds
    them), by onnxconverter-common's maintained converter."""
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(proto, keep_io_types=True)


class EagerRuntime:
    """Times PyTorch modules as they run in eager mode on ``device``."""

    key = "eager"

    def __init__(self, device: torch.device, dtype: str, mode: str, settings: ProfileSettings) -> None:
        self.device, self.dtype, self.mode, self.settings = device, resolve_dtype(dtype), mode, settings
        self.dtype_name = dtype
        self.fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.provider: str | None = None

    @property
    def threads(self) -> int:
        return torch.get_num_threads() if self.device.type == "cpu" else 0

    def inputs(self, shape: tuple[int, ...], batch: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.settings.seed)
        return torch.randn(batch, *shape, generator=gen).to(device=self.device, dtype=self.dtype,
                                                           memory_format=self.fmt)

    def call(self, module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        module = module.to(device=self.device, dtype=self.dtype, memory_format=self.fmt)
        if self.mode == "train":
            x = x.detach().requires_grad_(True)
            inputs = [x, *(p for p in module.parameters() if p.requires_grad)]
            grad_out = torch.ones_like(module(x).detach())

            def fn() -> None:
                # autograd.grad returns the gradients instead of accumulating them into .grad, so
                # every timed run does the same work
                torch.autograd.grad(module(x), inputs, grad_out)
            return fn

        def infer() -> None:
            with torch.inference_mode():
                module(x)
        return infer

    def time(self, module: nn.Module, shape: tuple[int, ...], batch: int) -> Measured:
        fn = self.call(module, self.inputs(shape, batch))
        fn()  # raises here if the device cannot run this module/dtype at all

        def run(n: int) -> float:
            return time_calls(fn, self.device, n) * n

        return timed(run, self.settings)

    def time_op(self, key: ShapeKey, build: Callable[[], nn.Module], batch: int) -> Measured:
        return self.time(build(), (key.C, key.H, key.W), batch)


class OrtRuntime:
    """Times ONNX graphs in an ONNX Runtime session opened as the export opens its own."""

    key = "ort"

    def __init__(self, provider: str, device: torch.device, dtype: str, threads: int,
                 settings: ProfileSettings) -> None:
        if provider not in PROVIDERS:
            raise EdgenasError(f"unknown provider {provider!r}", f"use one of {', '.join(PROVIDERS)}")
        if dtype not in ("fp32", "fp16"):
            raise EdgenasError(f"the onnxruntime runtime profiles fp32 or fp16, not {dtype}",
                               "use --dtype fp32 or fp16, or --runtime eager")
        self.provider, self.device, self.dtype, self.settings = provider, device, dtype, settings
        self.dtype_name = dtype
        self.threads = threads or physical_cores()
        self._baselines: dict[tuple[tuple[int, ...], int, int], Measured] = {}
        self.status = require_provider(provider, device)

    def session(self, proto: Any) -> Any:
        if self.dtype == "fp16":
            proto = to_fp16(proto)
        session, status = open_session(proto.SerializeToString(), self.provider, threads=self.threads,
                                       device=self.device)
        if session is None:
            raise RuntimeError(f"onnxruntime {PROVIDER_NAMES[self.provider]} provider cannot run it: {status.reason}")
        return session

    def _run(self, session: Any, arrays: Sequence[np.ndarray]) -> Callable[[], Any]:
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if self.provider == "cpu":
            feed = dict(zip(names_in, arrays))
            return lambda: session.run(names_out, feed)
        import onnxruntime as ort

        # GPU providers: inputs and outputs stay on the device (IO binding), as the export times
        index = int(self.status.options.get("device_id", 0))
        binding = session.io_binding()
        for name, a in zip(names_in, arrays):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", index))
        for name in names_out:
            binding.bind_output(name, "cuda", index)
        return lambda: session.run_with_iobinding(binding)  # returns once the stream is done

    def time_graph(self, proto: Any, shapes: Sequence[tuple[int, ...]]) -> Measured:
        """ms per call of ``proto`` in one session opened as the export opens its own."""
        session = self.session(proto)
        rng = np.random.default_rng(self.settings.seed)
        fn = self._run(session, [rng.standard_normal(s, dtype=np.float32) for s in shapes])
        fn()

        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) * 1e3

        return timed(run, self.settings)

    def time(self, module: nn.Module, shape: tuple[int, ...], batch: int) -> Measured:
        x = torch.zeros(batch, *shape)
        return self.time_graph(onnx_graph(module, [x], self.settings.opset), [tuple(x.shape)])

    def _baseline(self, shape: tuple[int, ...], k: int) -> Measured:
        """The k-input graph with no operator: what the session call and its copies cost."""
        key = (shape, k, self.settings.opset)
        if key not in self._baselines:
            self._baselines[key] = self.time_graph(empty_graph(shape, k, self.settings.opset), [shape] * k)
        return self._baselines[key]

    def time_op(self, key: ShapeKey, build: Callable[[], nn.Module], batch: int) -> Measured:
        k = self.settings.copies
        shape = (batch, key.C, key.H, key.W)
        one = onnx_graph(build(), [torch.zeros(shape)], self.settings.opset)
        if not any(n.op_type != "Identity" for n in one.graph.node):
            zero = TimingStats(0.0, 0.0, 0.0, 0.0, 0.0, 1)
            return Measured(zero, 1, True)  # no kernel runs: the deployed graph passes the tensor on
        # stride 1: a chain, each copy on the previous one's output, as in a cell; stride 2 changes
        # the shape, so those copies each take their own input
        chained = self.settings.chain and key.stride == 1
        n_in = 1 if chained else k
        proto = copies_graph(one, k, chained=chained)
        chain, base = self.time_graph(proto, [shape] * n_in), self._baseline(shape, n_in)
        b = base.stats.median
        s = chain.stats
        per = TimingStats(median=max(0.0, (s.median - b) / k), p10=max(0.0, (s.p10 - b) / k),
                          p90=max(0.0, (s.p90 - b) / k), mean=max(0.0, (s.mean - b) / k), std=s.std / k, n=s.n)
        return Measured(per, chain.attempts, chain.stable and base.stable)


Runtime = EagerRuntime | OrtRuntime


def available_providers() -> list[str]:
    """Execution-provider keys that really run here (a session opens on them)."""
    return [s.key for s in probe_providers(None) if s.usable]


def require_provider(provider: str, device: torch.device) -> ProviderStatus:
    """The provider's status, or one error naming it, why, and which providers do run here."""
    session, status = open_session(_probe_model(), provider, threads=1, device=device)
    if session is None:
        raise EdgenasError(
            f"execution provider {provider} ({PROVIDERS[provider]}) cannot run here: {status.reason}",
            f"available here: {', '.join(available_providers()) or 'none'}; pass --provider one of them")
    return status


def make_runtime(runtime: str, device: torch.device, *, provider: str | None = None, dtype: str = "fp32",
                 mode: str = "forward", threads: int = 0, settings: ProfileSettings | None = None) -> Runtime:
    """The timing strategy for ``runtime`` (checks the runtime/provider/mode combination)."""
    settings = settings or ProfileSettings()
    if runtime not in RUNTIMES:
        raise EdgenasError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
    if mode not in MODES:
        raise EdgenasError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    resolve_dtype(dtype)
    if runtime == "eager":
        if provider is not None:
            raise EdgenasError("--provider is an onnxruntime setting", "drop --provider or use --runtime ort")
        if threads and device.type == "cpu":
            torch.set_num_threads(threads)
        return EagerRuntime(device, dtype, mode, settings)
    if mode == "train":
        raise EdgenasError("onnxruntime runs inference only; a train-mode profile times what a search step "
                           "pays in PyTorch", "use --runtime eager --mode train, or --mode forward")
    return OrtRuntime(provider or "cpu", device, dtype, threads, settings)


# --- measurement ---------------------------------------------------------------------------------

def _build(key: ShapeKey, mode: str, device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    # search supernets use non-affine BN; deployed networks affine BN
    m = get_op(key.op).build(key.C, key.stride, affine=(mode == "forward"), device=device, dtype=dtype)
    return m.train(mode == "train")


def _check_key(key: ShapeKey) -> None:
    get_op(key.op)
    if key.stride == 2 and min(key.H, key.W) < 2:
        raise EdgenasError(f"{key}: a stride-2 op needs H and W of at least 2", "use a larger shape")


def _costs(key: ShapeKey, mode: str) -> tuple[int, int]:
    """MACs per sample and params, counted on an fp32 CPU copy (they depend on neither)."""
    m = _build(key, mode)
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


def _memory(key: ShapeKey, mode: str, batch: int, runtime: Runtime) -> tuple[int, str]:
    """Activation memory of the operator as PyTorch runs it (see the module docstring)."""
    if isinstance(runtime, EagerRuntime):
        module = _build(key, mode, runtime.device, runtime.dtype)
        x = runtime.inputs((key.C, key.H, key.W), batch)
        if runtime.device.type == "cuda":
            return _cuda_memory(runtime.call(module, x), runtime.device), MEMORY_CUDA
        return _cpu_memory(module, x.detach().requires_grad_(True)), MEMORY_CPU
    module = _build(key, mode)
    x = torch.zeros(batch, key.C, key.H, key.W, requires_grad=True)
    return _cpu_memory(module, x), MEMORY_CPU


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
    if not keys:
        return
    k = max(keys, key=lambda k: k.C * k.H * k.W)  # if the largest fits, every smaller one does
    free = available_memory(device)
    need = batch * k.C * k.H * k.W * itemsize * ACTIVATION_COPIES[mode]
    if need > free:
        raise EdgenasError(f"shape {k.shape} at batch {batch} needs about {need / 2**30:,.1f} GiB of activations "
                           f"({device} has {free / 2**30:,.1f} GiB free)",
                           "profile smaller shapes or a smaller --batch")


def measure_entries(
    keys: Sequence[ShapeKey],
    runtime: Runtime,
    *,
    batch: int,
    mode: str,
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> tuple[list[ProfileEntry], list[Skipped]]:
    """Measure each key; keys the runtime cannot run are returned as :class:`Skipped`."""
    if batch < 1:
        raise EdgenasError(f"batch must be >= 1, got {batch}", "pass --batch 1 or similar")
    for k in keys:  # fail on bad input before spending a minute measuring
        _check_key(k)
    device = runtime.device
    itemsize = resolve_dtype(runtime.dtype_name).itemsize
    check_fits(keys, device, batch=batch, itemsize=itemsize, mode=mode)
    costs = {k: _costs(k, mode) for k in keys}
    entries: list[ProfileEntry] = []
    skipped: list[Skipped] = []
    for k in keys:
        try:
            m = runtime.time_op(k, lambda k=k: _build(k, mode), batch)
            memory, kind = _memory(k, mode, batch, runtime)
        except torch.cuda.OutOfMemoryError as e:
            # the entry's tensors are gone with the frame; give their cached blocks back so the
            # next (smaller) entry is not refused for this one's memory
            torch.cuda.empty_cache()
            skipped.append(Skipped(k, f"out of memory at batch {batch} ({runtime.dtype_name} on {device}): "
                                      f"{_first_line(e)}"))
        except Exception as e:  # onnxruntime raises its own exception classes, not RuntimeError
            if not isinstance(e, (RuntimeError, NotImplementedError)) and not isinstance(runtime, OrtRuntime):
                raise
            if device.type == "cuda" and is_sticky_cuda_error(e):
                raise EdgenasError(
                    f"CUDA error while measuring {k}, after which the GPU context is unusable: {_first_line(e)}",
                    "measure the remaining operators in a new process (--ops or fewer --shapes); "
                    "check the driver with nvidia-smi") from None
            skipped.append(Skipped(k, f"{runtime.dtype_name} {RUNTIME_NAMES[runtime.key]} on {device.type}: "
                                      f"{_first_line(e)}"))
        else:
            entries.append(ProfileEntry(k, m.stats, memory, kind, *costs[k], m.stable, m.attempts))
        if on_entry is not None:
            on_entry(k)
    return entries, skipped


def reference_keys(cfg: NetConfig, genotype: Genotype = REFERENCE_GENOTYPE) -> list[ShapeKey]:
    """The operator instances of ``genotype``'s network at ``cfg`` (by default the reference
    network's stand-ins), one per instance."""
    return [ShapeKey(*s) for s in cell_shapes(genotype, cfg)]


def measure_parts(
    cfgs: Sequence[NetConfig],
    runtime: Runtime,
    *,
    batch: int,
    entries: Sequence[ProfileEntry] = (),
    ops: Sequence[str] = (),
    on_part: Callable[[NetKey], None] | None = None,
) -> list[FixedPart]:
    """The fixed part of each network configuration and the calibration of ``ops`` in it
    (forward mode; see the module docstring).

    Stand-in entries are taken from ``entries`` where present (so a prediction of the reference
    network equals its measurement) and measured otherwise.
    """
    known = {e.key: e.latency.median for e in entries}
    parts = []
    for cfg in cfgs:
        keys = reference_keys(cfg)
        need = [k for k in dict.fromkeys(keys) if k not in known]
        got, skipped = measure_entries(need, runtime, batch=batch, mode="forward")
        if skipped:
            raise EdgenasError(f"cannot time the reference network of {NetKey.of(cfg)}: {skipped[0].reason}",
                               "choose another --dtype or --provider")
        known.update((e.key, e.latency.median) for e in got)  # a later setting reuses them
        ref_ops: dict[str, float] = {}
        for k in keys:
            ref_ops[k.op] = ref_ops.get(k.op, 0.0) + known[k]
        net = inference_network(REFERENCE_GENOTYPE, cfg)
        m = runtime.time(net, cfg.input_shape, batch)
        s = m.stats
        timed = calibration_networks(cfg, runtime, batch=batch, known=known, ops=ops)
        fixed_ms, calibration = fit_part(s.median, ref_ops, timed)
        offset = s.median - fixed_ms  # the stand-ins, as predictions count them
        fixed = TimingStats(median=fixed_ms, p10=max(0.0, s.p10 - offset), p90=max(0.0, s.p90 - offset),
                            mean=max(0.0, s.mean - offset), std=s.std, n=s.n)
        parts.append(FixedPart(NetKey.of(cfg), fixed, s.median, offset, m.stable, m.attempts, calibration))
        if on_part is not None:
            on_part(NetKey.of(cfg))
    return parts


def calibration_genotype(op: str) -> Genotype:
    """The reference network's wiring with ``op`` on every edge."""
    def cell(edges: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
        return tuple((op, i) for _, i in edges)

    ref = REFERENCE_GENOTYPE
    return Genotype(normal=cell(ref.normal), normal_concat=ref.normal_concat, reduce=cell(ref.reduce),
                    reduce_concat=ref.reduce_concat)


def calibration_networks(cfg: NetConfig, runtime: Runtime, *, batch: int, known: dict[ShapeKey, float],
                         ops: Sequence[str]) -> list[tuple[str, float, float]]:
    """For each operator, its calibration network timed whole and the sum of its entries:
    (op, network_ms, ops_ms). ``known`` (key -> median ms) is extended with entries measured here;
    an operator that cannot run here is left out (it has no entries to calibrate either)."""
    rows = []
    for op in ops:
        if op == "none":
            continue
        g = calibration_genotype(op)
        keys = reference_keys(cfg, g)
        need = [k for k in dict.fromkeys(keys) if k not in known]
        got, skipped = measure_entries(need, runtime, batch=batch, mode="forward")
        if skipped:
            continue
        known.update((e.key, e.latency.median) for e in got)
        net = inference_network(g, cfg)
        rows.append((op, runtime.time(net, cfg.input_shape, batch).stats.median, sum(known[k] for k in keys)))
    return rows


def op_scale(network_ms: float, ops_ms: float, fixed_ms: float) -> float:
    """An operator's scale from its calibration network (see :func:`fit_part`): what the network
    spends on the operator's entries per unit of entry, within :data:`SCALE_RANGE`; 1 where the
    entries are too small a share of the network to tell."""
    share = ops_ms / network_ms if network_ms > 0 else 0.0
    ratio = (network_ms - fixed_ms) / ops_ms if share >= MIN_CALIBRATION_SHARE else 1.0
    return round(min(max(ratio, SCALE_RANGE[0]), SCALE_RANGE[1]), 4)


def calibrate_more(part: FixedPart, runtime: Runtime, *, batch: int, entries: Sequence[ProfileEntry],
                   ops: Sequence[str]) -> FixedPart:
    """``part`` with the operators of ``ops`` it has no calibration for calibrated against its
    fixed part as it stands (which they do not change: they are not the reference's stand-ins)."""
    cfg = part.net.config()
    done = {c.op for c in part.calibration} | {k.op for k in reference_keys(cfg)}
    new = [op for op in ops if op not in done]
    if not new:
        return part
    known = {e.key: e.latency.median for e in entries}
    timed = calibration_networks(cfg, runtime, batch=batch, known=known, ops=new)
    more = tuple(Calibration(op, network_ms, ops_ms, op_scale(network_ms, ops_ms, part.ms))
                 for op, network_ms, ops_ms in timed)
    return replace(part, calibration=part.calibration + more)


def fit_part(reference_ms: float, reference_ops: Mapping[str, float],
             timed: Sequence[tuple[str, float, float]]) -> tuple[float, tuple[Calibration, ...]]:
    """The fixed part and each operator's scale from the reference network and the calibration
    networks (see :func:`calibration_networks`).

    An entry is timed in a graph of copies of one operator, where its input stays in the cache and
    the runtime keeps one layout; inside a network its input comes from another operator. So a
    network built of ``op`` alone, timed whole, less the fixed part, over the sum of its entries,
    says what ``op`` costs there per unit of entry: predictions multiply ``op``'s entries by it.
    The fixed part is the reference network less its stand-ins' entries *as scaled*, so the
    reference network is predicted as exactly what was measured of it; the two depend on each
    other and settle within a few rounds (the stand-ins are a small share of the reference).
    Operators whose entries are a small share of their network (the identity) keep 1: their ratio
    would be noise.
    """
    def fixed_for(scales: Mapping[str, float]) -> float:
        return max(0.0, reference_ms - sum(scales.get(op, 1.0) * ms for op, ms in reference_ops.items()))

    scales: dict[str, float] = {}
    fixed = fixed_for(scales)
    for _ in range(5):
        scales = {op: op_scale(network_ms, ops_ms, fixed) for op, network_ms, ops_ms in timed}
        fixed = fixed_for(scales)
    return fixed, tuple(Calibration(op, network_ms, ops_ms, scales[op]) for op, network_ms, ops_ms in timed)


def profile_ops(
    device: torch.device,
    ops: Iterable[str] = DARTS_OPS,
    shapes: Iterable[Shape] = DEFAULT_SHAPES,
    *,
    batch: int = ProfileOptions.batch,
    dtype: str = ProfileOptions.dtype,
    mode: str = ProfileOptions.mode,
    runtime: str = ProfileOptions.runtime,
    provider: str | None = None,
    threads: int = 0,
    networks: Sequence[NetConfig] = (),
    settings: ProfileSettings | None = None,
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> Profile:
    """Measure every op at every shape (shape-major order) and the fixed part of each of ``networks``."""
    settings = settings or ProfileSettings()
    ops, shapes = list(ops), list(shapes)
    if runtime == "ort" and provider is None:
        provider = "cpu"
    if runtime == "ort" and provider == "cpu":
        device = torch.device("cpu")  # the CPU provider runs on the CPU whatever device torch would use
    rt = make_runtime(runtime, device, provider=provider, dtype=dtype, mode=mode, threads=threads,
                      settings=settings)
    if networks and mode != "forward":
        raise EdgenasError("fixed parts are inference costs; a train-mode profile has none",
                           "drop --setting, or profile --mode forward")
    keys = [ShapeKey(op, s.C, s.H, s.W, s.stride) for s in shapes for op in ops]
    if device.type == "cpu" and settings.keep_cpu_memory:
        keep_cpu_memory()
    load_before, mark = load_average(), cpu_reading()
    with sample_clocks(device) as clocks:  # GPU clocks and throttle reasons while the entries are timed
        entries, skipped = measure_entries(keys, rt, batch=batch, mode=mode, on_entry=on_entry)
        if not entries:
            reasons = "; ".join(sorted({s.reason for s in skipped}))
            raise EdgenasError(f"no operator could run on {device} with dtype {dtype}: {reasons}",
                               "choose another --dtype (fp32 runs everywhere) or device")
        parts = measure_parts(networks, rt, batch=batch, entries=entries, ops=ops)
    return Profile(device_slug(device), batch, dtype, mode, environment(device, clocks), entries, settings,
                   skipped,
                   runtime=runtime, provider=rt.provider, threads=rt.threads, parts=parts,
                   load_before=load_before, load_after=load_average(),
                   others_busy_cores=_others_since(mark))


def _others_since(mark: CpuReading | None) -> float | None:
    now = cpu_reading()
    return None if mark is None or now is None else round(others_busy(mark, now), 3)


def clipped_scales(profile: Profile) -> list[str]:
    """Calibrations that hit a bound of :data:`SCALE_RANGE`: a network cannot really spend half or
    twice its operators' entries on them, so the entries and the networks were timed at different
    machine speeds (or the calibration network is too short to tell); predictions there are off."""
    return [f"{c.op} in {p.net}: scale {c.scale:g}" for p in profile.parts for c in p.calibration
            if c.scale in SCALE_RANGE]


def contention(profile: Profile) -> str | None:
    """Why the profile's times may hold waiting for other processes, or None: when other processes
    (more than a quarter core: a shell, a progress bar, the kernel) kept busy more of this machine's
    CPUs than the profile's threads left free. Only CPU profiles: a GPU's times are the GPU's."""
    others, cpus = profile.others_busy_cores, usable_cpus()
    if others is None or others <= 0.25 or not profile.device.startswith("cpu"):
        return None
    threads = profile.threads or cpus
    if threads + others <= cpus + 0.25:
        return None
    free = free_cores(others, cpus)
    return (f"other processes kept {others:.1f} of {cpus} CPUs busy while {threads} thread(s) were timed, so the "
            f"times hold waiting for them; profile again on a quiet machine"
            + (f", or with --threads {free}" if free < threads else ""))
