"""The latency model: a profile's entries plus the network's fixed part -> a whole-network prediction
on one named runtime, provider and batch.

The additive model of FBNet (Wu et al., CVPR 2019, Eq. 5) and EL-DARTS, made whole::

    latency(genotype, cfg) = fixed(cfg) + sum over every cell operator instance of
                             scale(op, cfg) * entry(op, C, H, W, stride)

``fixed(cfg)`` is the profile's :class:`edgenas.profiling.FixedPart` for the network configuration
(stems, cell preprocessing, node sums, concatenation, global pooling, classifier and the runtime's
per-call cost); entries are what one more operator instance adds, measured on the same runtime;
``scale(op, cfg)`` is the profile's calibration of ``op`` in that network (a network of ``op`` alone,
timed whole: :func:`edgenas.profiling.fit_part`), 1 where the profile has none.
This module is the one home for look-ups, coverage (what a profile lacks for a network, never
counted as zero), units ("onnxruntime CPU provider, batch 1") and the refusal to compare a
prediction with a measurement on another runtime, provider, batch or device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from edgenas.costs import OpInstance
from edgenas.device import device_slug
from edgenas.errors import EdgenasError
from edgenas.genotypes import Genotype
from edgenas.nets import NetConfig, cell_shapes, inference_network
from edgenas.profiling import (
    RUNTIME_NAMES,
    Measured,
    NetKey,
    Profile,
    ShapeKey,
    calibrate_more,
    make_runtime,
    measure_entries,
    measure_parts,
)

#: What a complete prediction covers (said beside every prediction).
LATENCY_COVERS = (
    "whole network: the profile's fixed part of this network configuration (stems, cell preprocessing, "
    "node sums, concatenation, global pooling, classifier, the runtime's call) plus every cell operator "
    "instance's entry, times its operator's calibration scale in this network"
)


S = TypeVar("S", bound=OpInstance)


def latency_lookup(profile: Profile, shapes: Iterable[S]) -> tuple[dict[S, float], list[S]]:
    """Median latency (ms at the profile's batch) of each distinct shape, and the shapes missing.

    A shape is anything with op, C, H, W, stride; missing shapes are returned, never taken as zero.
    """
    found: dict[S, float] = {}
    missing: list[S] = []
    for s in dict.fromkeys(shapes):
        entry = profile.lookup(s.op, s.C, s.H, s.W, s.stride)
        if entry is None:
            missing.append(s)
        else:
            found[s] = entry.latency.median
    return found, missing


def fixed_ms(profile: Profile, cfg: NetConfig) -> float | None:
    """The profile's fixed part of ``cfg``'s network (None where the profile lacks it)."""
    part = profile.part(NetKey.of(cfg))
    return None if part is None else part.ms


def op_scales(profile: Profile, cfg: NetConfig) -> dict[str, float]:
    """Each calibrated operator's scale inside ``cfg``'s network (absent: 1, the entry as timed)."""
    part = profile.part(NetKey.of(cfg))
    return {} if part is None else {c.op: c.scale for c in part.calibration}


@dataclass(frozen=True)
class LatencyPrediction:
    """A network's latency predicted from a profile (ms per call at ``batch``).

    ``total_ms`` is ``None`` unless every operator shape and the fixed part were found: a missing
    part is never taken as zero. ``looked_up`` holds (shape, instances, median ms per instance);
    ``missing`` (shape, instances); ``missing_part`` the network whose fixed part is absent.
    """

    total_ms: float | None
    found_ms: float              # cell operators found, each entry times its operator's scale
    fixed_ms: float | None
    looked_up: tuple[tuple[OpInstance, int, float], ...]
    missing: tuple[tuple[OpInstance, int], ...]
    missing_part: NetKey | None
    batch: int
    device: str
    mode: str
    dtype: str
    runtime: str
    provider: str | None
    threads: int
    units: str
    covers: str = LATENCY_COVERS
    scales: tuple[tuple[str, float], ...] = ()  # calibrated operators' scales (see edgenas.profiling.fit_part)

    @property
    def complete(self) -> bool:
        return not self.missing and self.missing_part is None

    def sentence(self) -> str:
        """``predicted 4.1 ms, whole network, onnxruntime CPU provider, batch 1`` (or why none)."""
        if self.total_ms is not None:
            return f"predicted {self.total_ms:.3g} ms, whole network, {self.units}"
        return f"no prediction ({self.why_incomplete()}), {self.units}"

    def why_incomplete(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} operator shape(s) missing")
        if self.missing_part is not None:
            parts.append(f"no fixed part for {self.missing_part}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        def shape(s: OpInstance) -> dict[str, object]:
            return {"op": s.op, "C": s.C, "H": s.H, "W": s.W, "stride": s.stride}

        return {
            "total_ms": self.total_ms,
            "found_ms": self.found_ms,
            "fixed_ms": self.fixed_ms,
            "complete": self.complete,
            "sentence": self.sentence(),
            "batch": self.batch,
            "device": self.device,
            "runtime": self.runtime,
            "provider": self.provider,
            "threads": self.threads,
            "mode": self.mode,
            "dtype": self.dtype,
            "units": self.units,
            "covers": self.covers,
            "scales": dict(self.scales),
            "looked_up": [{**shape(s), "instances": n, "median_ms": ms} for s, n, ms in self.looked_up],
            "missing": [{**shape(s), "instances": n} for s, n in self.missing],
            "missing_part": None if self.missing_part is None else str(self.missing_part),
        }


def predict_latency(genotype: Genotype, cfg: NetConfig, profile: Profile) -> LatencyPrediction:
    """The whole evaluation network's latency: the fixed part plus every cell operator's entry,
    times its operator's calibration scale in this network.

    Each operator instance from :func:`edgenas.nets.cell_shapes` is looked up at its exact
    (op, C, H, W, stride); the fixed part at the exact network configuration.
    """
    counts = Counter(cell_shapes(genotype, cfg))
    found, missing = latency_lookup(profile, counts)
    looked_up = tuple((s, counts[s], found[s]) for s in counts if s in found)
    scales = op_scales(profile, cfg)
    ops_ms = sum(n * ms * scales.get(s.op, 1.0) for s, n, ms in looked_up)
    fixed = fixed_ms(profile, cfg)
    missing_part = NetKey.of(cfg) if fixed is None else None
    complete = not missing and fixed is not None
    return LatencyPrediction(
        total_ms=ops_ms + fixed if complete and fixed is not None else None,
        found_ms=ops_ms, fixed_ms=fixed, looked_up=looked_up,
        missing=tuple((s, counts[s]) for s in missing), missing_part=missing_part,
        batch=profile.batch, device=profile.device, mode=profile.mode, dtype=profile.dtype,
        runtime=profile.runtime, provider=profile.provider, threads=profile.threads, units=profile.units(),
        scales=tuple(sorted(scales.items())),
    )


# --- what is compared with what -----------------------------------------------------------------

def check_same_target(profile: Profile, *, runtime: str, provider: str | None, batch: int, device: str,
                      source: str = "the profile") -> None:
    """Refuse to compare ``profile``'s predictions with a measurement anywhere else, in one line."""
    where = {"runtime": (profile.runtime, runtime), "batch": (profile.batch, batch), "device": (profile.device, device)}
    if runtime == "ort":
        where["provider"] = (profile.provider, provider)
    for what, (have, want) in where.items():
        if have != want:
            shown = (RUNTIME_NAMES.get(str(have), have), RUNTIME_NAMES.get(str(want), want)) \
                if what == "runtime" else (have, want)
            raise EdgenasError(
                f"{source} was measured with {what} {shown[0]}, the measurement here is with {what} {shown[1]}: "
                "its predictions do not describe this measurement",
                f"profile this target (edgenas profile --runtime {runtime}"
                + (f" --provider {provider}" if runtime == "ort" and provider else "")
                + f" --batch {batch}) on this device")


def target_device(profile: Profile, device: torch.device) -> torch.device:
    """Where the profile's runtime runs: the CPU for the onnxruntime CPU provider, else ``device``."""
    return torch.device("cpu") if profile.runtime == "ort" and profile.provider == "cpu" else device


def profile_missing(
    profile: Profile,
    keys: Iterable[OpInstance],
    device: torch.device,
    *,
    networks: Iterable[NetConfig] = (),
    on_entry: Callable[[ShapeKey], None] | None = None,
) -> Profile:
    """A copy of ``profile`` with the operator keys and network fixed parts it lacks measured on
    ``device`` with its runtime, provider, threads and settings.

    A key is anything with op, C, H, W, stride (a :class:`ShapeKey`, a :class:`edgenas.nets.OpShape`).
    A network's fixed part measured here is calibrated for every operator the profile holds; an
    operator first measured here is calibrated in the fixed parts of ``networks`` already there.
    """
    device = target_device(profile, device)
    slug = device_slug(device)
    if slug != profile.device:
        raise EdgenasError(
            f"the profile was measured on {profile.device}, not on this device ({slug})",
            "measure missing shapes on the profiled device, or profile this device afresh",
        )
    missing = [ShapeKey(k.op, k.C, k.H, k.W, k.stride) for k in latency_lookup(profile, keys)[1]]
    nets = [cfg for cfg in dict.fromkeys(networks) if profile.part(NetKey.of(cfg)) is None]
    if not missing and not nets:
        return replace(profile, entries=list(profile.entries), skipped=list(profile.skipped),
                       parts=list(profile.parts))
    rt = runtime_of(profile, device)
    entries, skipped = measure_entries(missing, rt, batch=profile.batch, mode=profile.mode, on_entry=on_entry)
    all_entries = [*profile.entries, *entries]
    ops = tuple(dict.fromkeys(e.key.op for e in all_entries))
    parts = measure_parts(nets, rt, batch=profile.batch, entries=all_entries, ops=ops)
    # operators first measured here are calibrated in the parts already there that were asked for
    had = set(profile.ops())
    first_here = [op for op in dict.fromkeys(e.key.op for e in entries) if op not in had]
    wanted = {NetKey.of(cfg) for cfg in networks}
    old_parts = [calibrate_more(p, rt, batch=profile.batch, entries=all_entries, ops=first_here)
                 if p.net in wanted and first_here else p for p in profile.parts]
    return replace(profile, entries=all_entries, skipped=[*profile.skipped, *skipped],
                   parts=[*old_parts, *parts])


def runtime_of(profile: Profile, device: torch.device) -> Any:
    """The timing strategy the profile was measured with, on ``device``."""
    return make_runtime(profile.runtime, device, provider=profile.provider if profile.runtime == "ort" else None,
                        dtype=profile.dtype, mode=profile.mode, threads=profile.threads, settings=profile.settings)


@dataclass(frozen=True)
class Comparison:
    """A prediction beside a measurement of the same network on the same target."""

    predicted_ms: float | None
    measured: Measured
    units: str

    @property
    def measured_ms(self) -> float:
        return self.measured.stats.median

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured."""
        if self.predicted_ms is None or self.measured_ms <= 0:
            return None
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def sentence(self) -> str:
        pred = "no prediction" if self.predicted_ms is None else f"predicted {self.predicted_ms:.3g} ms"
        err = "" if self.error is None else f", error {self.error:+.1%}"
        return f"{pred}, measured {self.measured_ms:.3g} ms{err}, whole network, {self.units}"

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "relative_error": self.error,
                "measured": self.measured.stats.to_dict(), "measured_stable": self.measured.stable,
                "units": self.units, "sentence": self.sentence()}


def measure_network(genotype: Genotype, cfg: NetConfig, profile: Profile, device: torch.device) -> Measured:
    """Build ``genotype``'s evaluation network (eval mode) and time it as the profile was measured."""
    if profile.mode != "forward":
        raise EdgenasError("a train-mode profile times forward+backward of operators; networks are measured "
                           "for inference", "use a forward-mode profile")
    check_same_target(profile, runtime=profile.runtime, provider=profile.provider, batch=profile.batch,
                      device=device_slug(device))
    net = inference_network(genotype, cfg)
    return runtime_of(profile, device).time(net, cfg.input_shape, profile.batch)


def compare(genotype: Genotype, cfg: NetConfig, profile: Profile, device: torch.device) -> Comparison:
    """Predict and measure ``genotype``'s network on the profile's runtime, provider and batch."""
    pred = predict_latency(genotype, cfg, profile)
    return Comparison(pred.total_ms, measure_network(genotype, cfg, profile, device), profile.units())
