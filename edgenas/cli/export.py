"""``edgenas export``: ONNX export, verification and timing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgenas.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    app,
    command,
    emit_json,
    out_console,
)
from edgenas.errors import EdgenasError


@command(app, "export")
def export_cmd(
    source: Path = typer.Argument(..., help="A train run folder (its last.pt: the final "
                          "epoch, as the DARTS protocol reports) or one checkpoint file (e.g. the folder's "
                          "best.pt: the epoch of highest test accuracy, an optimistic choice)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to verify on "
                                       "(default: the one the run trained on): cifar10[:DIR] | cifar100[:DIR] | "
                                       "imagefolder:PATH | fashion-mnist[:DIR] | synthetic[:N]"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: exports/<run name>)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size of the exported input (and timed besides 1)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Make the batch axis dynamic."),
    providers: str = typer.Option("auto", "--providers", help="auto | comma list of tensorrt, cuda, cpu: "
                                  "ONNX Runtime execution providers to time (auto: every one that works here)."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torchscript (opset 11-20) | dynamo (opset 18+)."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile whose look-up table predicts the "
                                           "latency, shown beside the measured one."),
    profile_missing: bool = typer.Option(False, "--profile-missing", help="Measure the network's operator "
                                         "shapes and fixed part the --profile lacks (on the profiled device)."),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="Say whether the exported model "
                                                 "meets this budget as measured on --profile's runtime, provider "
                                                 "and batch, e.g. 12ms."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | int8: the deployment model written "
                                  "beside model.onnx (fp16: model_fp16.onnx for CUDA, and fp16 TensorRT engines; "
                                  "int8: model_int8.onnx, ONNX Runtime static QDQ), checked against fp32."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: the same as --precision int8."),
    trt_cache: str = typer.Option("", "--trt-cache", help="Folder for TensorRT engine and timing caches "
                                  "(default: $EDGENAS_TRT_CACHE or ~/.cache/edgenas/tensorrt)."),
    calibration: int = typer.Option(256, "--calibration", min=1, help="Training images to calibrate int8 on."),
    test_subset: Optional[int] = typer.Option(None, "--test-subset", min=1,
                                              help="Verify on a class-balanced N test images (default: all)."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed runs per configuration (after warm-up)."),
    warmup: int = typer.Option(30, "--warmup", min=1, help="Warm-up runs at most (fewer once times settle)."),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime intra-op threads (0: those of a "
                                "CPU --profile, else physical cores)."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Export a trained network to ONNX, verify it through ONNX Runtime, time it (optionally fp16 or int8)."""
    from edgenas.device import resolve_device
    from edgenas.export import ExportSettings, console_tables, run_export
    from edgenas.search.budgets import parse_latency

    settings = ExportSettings(opset=opset, batch=batch, dynamic_batch=dynamic_batch, providers=providers,
                              exporter=exporter, quantize=quantize, precision=precision, trt_cache=trt_cache,
                              calibration=calibration,
                              test_subset=test_subset, runs=runs, max_warmup=warmup, threads=threads,
                              profile_missing=profile_missing,
                              latency_budget_ms=parse_latency(latency_budget) if latency_budget is not None else None)
    if profile_missing and profile is None:
        raise EdgenasError("--profile-missing completes a profile, but no --profile was given",
                           "add --profile profiles/<device>.json")
    dev = resolve_device(device)
    con = out_console(json_out, quiet)
    report = run_export(source, data=data, out=out, settings=settings, device=dev, profile=profile,
                        log=lambda msg: con.print(f"[dim]{msg}[/dim]"))
    doc = report.to_dict()
    if json_out:
        emit_json(doc)
        return
    for table in console_tables(doc):
        con.print(table)
    for warning in doc["warnings"]:
        con.print(f"[yellow]warning:[/yellow] {warning}")
