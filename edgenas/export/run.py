"""The whole export: export, verify, time, (quantise,) report.

Nothing half-written: every file is produced in a staging folder inside the output folder and moved
into place only after every check passed; a failed check leaves the output folder as it was.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgenas.costs import count_macs, measure_costs
from edgenas.device import DTYPES, device_slug, environment, sample_clocks, tf32_state
from edgenas.errors import EdgenasError
from edgenas.export.fp16 import export_fp16
from edgenas.export.onnx_export import export_onnx
from edgenas.export.quantize import _quantize
from edgenas.export.report import ExportReport, render_markdown
from edgenas.export.runtime import OrtModel, physical_cores, probe_providers, reference_session, timing_sessions
from edgenas.export.settings import (
    FORMAT,
    FP16_FILE,
    INT8_FILE,
    MODEL_FILE,
    PARITY_INPUTS,
    REPORT_JSON,
    REPORT_MD,
    VERSION,
    ExportSettings,
)
from edgenas.export.timing import Timing, time_ort, time_torch
from edgenas.export.trained import TrainedNet, load_export_data, load_trained
from edgenas.export.verify import (
    check_parity,
    parity_inputs,
    raise_if_failed,
    raise_if_sessions_failed,
    session_parity,
)
from edgenas.files import write_json, write_text_atomic
from edgenas.latency import check_same_target, predict_latency, profile_missing, target_device
from edgenas.nets import AUX_PREFIX, MOBILE_MAC_LIMIT, cell_shapes, mobile_verdict
from edgenas.profiling import load_profile

if TYPE_CHECKING:
    from edgenas.data.load import DataBundle
    from edgenas.profiling import Profile


def _costs(net: TrainedNet) -> dict[str, Any]:
    report = measure_costs(net.model, net.cfg.input_shape, exclude_params=(AUX_PREFIX,)).to_dict()
    verdict = mobile_verdict(net.cfg, lambda shape: report["macs"] if shape == net.cfg.input_shape
                             else count_macs(net.model, shape))
    report["mobile"] = None if verdict is None else {
        "macs_224": verdict.macs, "limit": MOBILE_MAC_LIMIT, "passes": verdict.meets}
    return report


def _measured_on_profile_target(profile: Profile, timings: list[Timing]) -> Timing | None:
    """The export's timing on the profile's runtime, provider and batch: of the model in the
    profile's precision where it was timed, else of the fp32 model."""
    if profile.runtime == "ort":
        same = [t for t in timings if t.runtime == "onnxruntime" and t.device == profile.provider
                and t.batch == profile.batch]
    else:
        same = [t for t in timings if t.runtime == "pytorch-eager" and t.batch == profile.batch]
    return next((t for t in same if t.model == profile.dtype), None) or next(
        (t for t in same if t.model == "fp32"), None)


def _prediction(net: TrainedNet, profile: Profile, profile_path: str, timings: list[Timing],
                latency_budget_ms: float | None) -> tuple[dict[str, Any], list[str]]:
    pred = predict_latency(net.genotype, net.cfg, profile)
    timing = _measured_on_profile_target(profile, timings)
    measured = timing.stats.median if timing else None
    notes = []
    if timing is not None and timing.model != profile.dtype:
        notes.append(f"profile {profile_path} timed {profile.dtype} operators; the time it is compared with "
                     f"ran in {timing.model}: the comparison is across precisions")
    rel = (pred.total_ms - measured) / measured if pred.total_ms is not None and measured else None
    budget = None
    if latency_budget_ms is not None:
        budget = {"limit_ms": latency_budget_ms, "measured_ms": measured, "units": profile.units(),
                  "met": None if measured is None else measured <= latency_budget_ms}
    return {"profile": profile_path, "device": profile.device, "batch": profile.batch, "mode": profile.mode,
            "dtype": profile.dtype, "runtime": profile.runtime, "provider": profile.provider,
            "threads": profile.threads, "units": profile.units(), "predicted_ms": pred.total_ms,
            "found_ms": pred.found_ms, "fixed_ms": pred.fixed_ms, "measured_ms": measured,
            "measured_by": timing.label + f", batch {timing.batch}" if timing else "not timed",
            "relative_error": rel, "missing": len(pred.missing),
            "missing_part": None if pred.missing_part is None else str(pred.missing_part),
            "covers": pred.covers, "budget": budget}, notes


def check_profile_target(profile: Profile, settings: ExportSettings, device: torch.device, source: str) -> None:
    """Refuse, before any work, a profile whose target this export will not measure."""
    runtime_provider = profile.provider if profile.runtime == "ort" else None
    check_same_target(profile, runtime=profile.runtime, provider=runtime_provider, batch=profile.batch,
                      device=device_slug(target_device(profile, device)), source=source)
    if profile.mode != "forward":
        raise EdgenasError(f"{source} times {profile.mode} passes; an exported model runs inference",
                           "profile with --mode forward")
    if profile.runtime == "ort":
        threads = settings.threads or physical_cores()
        if profile.provider == "cpu" and profile.threads != threads:
            raise EdgenasError(f"{source} was measured with {profile.threads} onnxruntime threads, this export "
                               f"times with {threads}", f"export with --threads {profile.threads}")
        keys = settings.provider_keys
        if keys is not None and profile.provider not in keys:
            raise EdgenasError(f"{source} is for the onnxruntime {profile.provider} provider, which this export "
                               f"does not time (--providers {settings.providers})",
                               f"add {profile.provider} to --providers")
        timed = {settings.batch} if not settings.dynamic_batch else {1, settings.batch}
        if profile.batch not in timed:
            raise EdgenasError(f"{source} is for batch {profile.batch}; this export times onnxruntime at batch "
                               f"{', '.join(map(str, sorted(timed)))}",
                               f"export with --batch {profile.batch}, or profile at --batch {settings.batch}")
    if settings.latency_budget_ms is not None and profile.dtype != "fp32":
        raise EdgenasError(f"{source} is an {profile.dtype} profile; the exported model is fp32",
                           "use an fp32 profile for the budget check")


def _staging(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except OSError as e:
        raise EdgenasError(f"cannot write the output folder {out}: {e.strerror or e}",
                           "choose a writable --out folder") from None


def _publish(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move the checked artefacts into ``out``; the reports go last, so a report always describes
    the models beside it, and a stale int8 or fp16 model of an earlier export does not linger."""
    umask = os.umask(0)
    os.umask(umask)
    for stale in (REPORT_JSON, REPORT_MD, INT8_FILE, FP16_FILE):
        (out / stale).unlink(missing_ok=True)
    for name in names:
        os.chmod(staging / name, 0o666 & ~umask)  # temp files are created private; artefacts are not
        os.replace(staging / name, out / name)


def export_network(net: TrainedNet, bundle: DataBundle, out: str | Path, settings: ExportSettings, *,
                   device: torch.device = torch.device("cpu"), profile: Profile | None = None,
                   profile_path: str = "", log: Callable[[str], None] = lambda _msg: None) -> ExportReport:
    """Export, verify, time (and optionally quantise) ``net``; write the report into ``out``.

    Raises :class:`VerificationError` (nothing written to ``out``) when a check fails.
    """
    out = Path(out)
    statuses = probe_providers(settings.provider_keys, device)  # fail fast on an explicit provider
    staging = _staging(out)
    threads = settings.threads or physical_cores()
    warns: list[str] = []
    try:
        model = copy.deepcopy(net.model).to(device=device, dtype=torch.float32).eval()
        fp32 = staging / MODEL_FILE
        log(f"exporting to ONNX (opset {settings.opset}, {settings.exporter} exporter)")
        info = export_onnx(net, fp32, settings)
        reference = reference_session(fp32, threads)
        log(f"verifying on random inputs and {len(bundle.test)} test images")
        parity, acc = check_parity(model, reference, net, settings, device, bundle.test)
        raise_if_failed(parity, acc)
        shape = net.cfg.input_shape
        runners, final_status = timing_sessions(fp32, statuses, settings, device, threads, shape)
        x = parity_inputs(PARITY_INPUTS, shape)
        want = reference.run(x)
        del reference
        sessions = [session_parity(r, "fp32", x, want, settings.atol) for r in runners]
        raise_if_sessions_failed(sessions)

        batches = sorted({1, settings.batch})
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        notes = [f"onnxruntime CPU: intra_op_num_threads={threads} (physical cores: {physical_cores()}), "
                 f"inter_op_num_threads=1, sequential execution, graph optimisation ORT_ENABLE_ALL; "
                 f"PyTorch: {torch.get_num_threads()} intra-op threads"]
        timings: list[Timing] = []

        def time_all(kind: str, rs: Sequence[OrtModel]) -> None:
            for r in rs:
                for b in batches:
                    if r.fixed_batch is not None and r.fixed_batch != b:
                        notes.append(f"{kind} model has a fixed batch of {r.fixed_batch}: batch {b} not timed "
                                     "(export with --dynamic-batch to time every batch size)")
                        continue
                    log(f"timing onnxruntime {kind} on {r.status.key} at batch {b}")
                    timings.append(time_ort(r, kind, b, shape, settings, threads))

        names = [MODEL_FILE]
        int8 = fp16 = None
        with sample_clocks(device) as clocks:  # NVML clocks and throttle reasons during every timed run
            time_all("fp32", runners)
            for b in batches:
                log(f"timing PyTorch eager on {device} at batch {b}")
                timings.append(time_torch(model, device, b, shape, settings))

            if settings.precision == "int8":
                log(f"quantising to int8 (static QDQ, {settings.calibration} calibration images)")
                int8 = _quantize(net, bundle, staging, statuses, settings, device, threads, acc, time_all)
                names.append(INT8_FILE)
                if int8["warning"]:
                    warns.append(int8["warning"])
            elif settings.precision == "fp16":
                log("converting to fp16 and checking it against the fp32 model")
                fp16 = export_fp16(net, bundle, staging, statuses, settings, device, threads, acc, time_all)
                names.append(FP16_FILE)
                warns += fp16["warnings"]
                notes += fp16["notes"]

            prediction = None
            if profile is not None:
                if profile.runtime == "eager" and profile.batch not in batches:
                    timings.append(time_torch(model, device, profile.batch, shape, settings))
                if profile.runtime == "eager" and profile.dtype != "fp32" and device.type == "cuda":
                    log(f"timing PyTorch eager in {profile.dtype} at batch {profile.batch}, as the profile")
                    timings.append(time_torch(model, device, profile.batch, shape, settings,
                                              DTYPES[profile.dtype]))
                prediction, pnotes = _prediction(net, profile, profile_path, timings, settings.latency_budget_ms)
                warns += pnotes
                if profile.runtime == "eager":
                    warns.append(f"profile {profile_path} is a PyTorch eager profile: its prediction is compared "
                                 "with PyTorch eager, not with the onnxruntime model this export ships")
        files = {n: (staging / n).stat().st_size for n in names}
        for extra, name in ((int8, INT8_FILE), (fp16, FP16_FILE)):
            if extra is not None:
                extra["bytes"] = files[name]
                extra["size_ratio"] = files[name] / files[MODEL_FILE]
        report = ExportReport(
            name=net.name, out=out, source=net.source,
            network={"genotype": net.genotype.to_dict(), "genotype_name": net.source.get("genotype_name"),
                     "config": net.cfg.to_dict(), "classes": list(net.classes or ()), "mean": list(net.mean),
                     "std": list(net.std), "data": str(bundle.spec)},
            onnx=info, files=files, costs=_costs(net), parity=parity, accuracy=acc, providers=final_status,
            timings=timings, timing_notes=notes, prediction=prediction, int8=int8, fp16=fp16,
            session_parity=sessions,
            environment={**environment(device, clocks), "load_average_before_timing": load_before,
                         "verification": {"pytorch": "fp32 with TF32 off", "tf32_outside_verification": tf32_state()}},
            settings=settings, warnings=warns)
        doc = report.to_dict()
        write_json(staging / REPORT_JSON, FORMAT, VERSION, doc)
        write_text_atomic(staging / REPORT_MD, render_markdown(doc))
        _publish(staging, out, [*names, REPORT_JSON, REPORT_MD])
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_out(net: TrainedNet) -> Path:
    return Path("exports") / net.name


def run_export(source: str | Path, *, data: str | None, out: str | Path | None, settings: ExportSettings,
               device: torch.device, profile: str | Path | None = None,
               log: Callable[[str], None] = lambda _msg: None) -> ExportReport:
    """The ``edgenas export`` command: load the checkpoint, the data and the profile, then export."""
    prof = load_profile(profile) if profile is not None else None
    if settings.latency_budget_ms is not None and prof is None:
        raise EdgenasError("a latency budget is ms on a profile's runtime, provider and batch, but no --profile "
                           "was given", "add --profile profiles/<device>.json")
    if prof is not None and not settings.threads and prof.runtime == "ort" and prof.provider == "cpu" and prof.threads:
        # a prediction holds at the thread count it was profiled with: time the export at it too
        settings = replace(settings, threads=prof.threads)
        log(f"timing onnxruntime with the profile's {prof.threads} thread(s)")
    if prof is not None:
        check_profile_target(prof, settings, device, f"the profile {profile}")
    net = load_trained(source)
    bundle = load_export_data(net, data, settings)  # bad data fails here, before any measuring
    if prof is not None and settings.profile_missing:
        log("measuring the operator shapes and fixed part the profile lacks")
        prof = profile_missing(prof, cell_shapes(net.genotype, net.cfg), device, networks=[net.cfg])
    if not net.classes:
        net = replace(net, classes=tuple(bundle.classes))
    return export_network(net, bundle, Path(out) if out is not None else default_out(net), settings,
                          device=device, profile=prof, profile_path=str(profile or ""), log=log)
