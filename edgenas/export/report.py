"""The export's report: report.json's payload, report.md, and the console tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgenas import __version__
from edgenas.export.onnx_export import OnnxInfo
from edgenas.export.runtime import ProviderStatus
from edgenas.export.settings import ExportSettings
from edgenas.export.timing import Timing
from edgenas.export.verify import AccuracyCheck, Parity, SessionParity


@dataclass
class ExportReport:
    """Everything an export measured; ``to_dict`` is report.json's payload."""

    name: str
    out: Path
    source: dict[str, Any]
    network: dict[str, Any]
    onnx: OnnxInfo
    files: dict[str, int]
    costs: dict[str, Any]
    parity: list[Parity]
    accuracy: AccuracyCheck
    providers: list[ProviderStatus]
    timings: list[Timing]
    timing_notes: list[str]
    prediction: dict[str, Any] | None
    int8: dict[str, Any] | None
    environment: dict[str, Any]
    settings: ExportSettings
    warnings: list[str] = field(default_factory=list)
    session_parity: list[SessionParity] = field(default_factory=list)  # each timed fp32 session
    fp16: dict[str, Any] | None = None

    def speedups(self) -> list[dict[str, Any]]:
        """ORT time over PyTorch eager time at the same batch (below 1: ORT is faster)."""
        eager = {t.batch: t for t in self.timings if t.runtime == "pytorch-eager" and t.model == "fp32"}
        return [{"runtime": t.label, "batch": t.batch, "ratio_to_eager": t.stats.median / eager[t.batch].stats.median}
                for t in self.timings if t.runtime == "onnxruntime" and t.batch in eager]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out": str(self.out),
            "edgenas": __version__,
            "source": self.source,
            "network": self.network,
            "onnx": self.onnx.to_dict(),
            "files": self.files,
            "costs": self.costs,
            "verification": {
                "reference": "onnxruntime CPUExecutionProvider vs PyTorch eager (fp32, eval mode)",
                "atol": self.settings.atol,
                "parity": [p.to_dict() for p in self.parity],
                "test": self.accuracy.to_dict(),
                "passed": all(p.passed for p in self.parity) and self.accuracy.passed,
                "pytorch_precision": "fp32, TF32 off",
                "sessions": [p.to_dict() for p in self.session_parity],
            },
            "providers": [p.to_dict() for p in self.providers],
            "timing": [t.to_dict() for t in self.timings],
            "timing_notes": self.timing_notes,
            "speedup": self.speedups(),
            "prediction": self.prediction,
            "int8": self.int8,
            "fp16": self.fp16,
            "settings": asdict(self.settings),
            "environment": self.environment,
            "warnings": self.warnings,
        }


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same facts as report.json, for a person."""
    net, v, costs, env = report["network"], report["verification"], report["costs"], report["environment"]
    lines = [f"# Export report: {report['name']}", "",
             f"edgenas {report['edgenas']}, {report['environment'].get('date', '')}, on "
             f"{env.get('device_name', '')} ({env.get('cpu_count')} logical CPUs)", "",
             "## Network", "",
             f"- genotype: {net.get('genotype_name') or 'see below'}; setting {net['config']['setting']}, "
             f"C={net['config']['C']}, {net['config']['layers']} cells, input "
             f"{net['config']['in_channels']}x{'x'.join(map(str, net['config']['input_hw']))}, "
             f"{net['config']['num_classes']} classes",
             f"- source: {report['source'].get('checkpoint', '-')} (epoch {report['source'].get('epoch', '-')})",
             f"- MACs {costs['macs']:,} (thop: {_count(costs['thop_macs'])}), "
             f"params {costs['params']:,} ({costs['convention']}; params exclude the auxiliary head)"]
    if costs.get("mobile"):
        m = costs["mobile"]
        lines.append(f"- mobile setting: {m['macs_224']:,} MACs at 224x224 -> "
                     f"{'within' if m['passes'] else 'OVER'} the 600 M budget")
    lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| {k} | {b:,} |" for k, b in report["files"].items()]
    o = report["onnx"]
    lines += ["", f"opset {o['opset']} ({o['exporter']} exporter), input `{o['input_name']}` "
              f"{o['input_shape']}, output `{o['output_name']}` {o['output_shape']}; {o['checker']}.", "",
              "## Verification", "", f"Reference: {v['reference']}; fp32 threshold {v['atol']:g}.", "",
              "| check | n | max abs logit diff | passed |", "|---|---:|---:|---|"]
    lines += [f"| {p['inputs']} | {p['n']} | {p['max_abs_diff']:.3g} | {'yes' if p['passed'] else 'NO'} |"
              for p in v["parity"]]
    t = v["test"]
    lines += ["", f"Test set ({t['n']} images): top-1 PyTorch {t['torch_top1']:.2f}%, ONNX Runtime "
              f"{t['ort_top1']:.2f}%, top-1 agreement {t['top1_agreement']:.2f}%.", ""]
    if report["int8"]:
        q = report["int8"]
        lines += [f"INT8 ({q['scheme']['format']}, {q['scheme']['calibration_images']} calibration images): top-1 "
                  f"{q['top1']:.2f}% through ONNX Runtime ({-q['drop_points']:+.2f} points vs fp32), "
                  f"{q['bytes']:,} bytes ({q['size_ratio']:.2f}x fp32).", ""]
    if report.get("fp16"):
        f = report["fp16"]
        for a in f["accuracy"]:
            lines.append(f"FP16 on {a['provider'].removesuffix('ExecutionProvider')}: top-1 {a['top1']:.2f}% "
                         f"({-a['drop_points']:+.2f} points vs fp32), agreement with fp32 {a['top1_agreement']:.2f}% "
                         f"of {a['n']} test images.")
        lines += [f"{f['file']}: {f['bytes']:,} bytes ({f['size_ratio']:.2f}x fp32); {f['scheme']['converter']}.", ""]
    sessions = v.get("sessions", []) + (report.get("fp16") or {}).get("parity", []) \
        + (report.get("int8") or {}).get("parity", [])
    if sessions:
        lines += ["Each timed session against the fp32 CPU reference (random inputs):", "",
                  "| session | model | n | max abs logit diff | bound | top-1 agreement | passed |",
                  "|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {p['provider'].removesuffix('ExecutionProvider')} | {p['model']} | {p['n']} | "
                  f"{p['max_abs_diff']:.3g} | {'-' if p['limit'] is None else format(p['limit'], '.3g')} | "
                  f"{p['top1_agreement']:.1f}% | {'yes' if p['passed'] else 'NO'} |" for p in sessions]
        lines.append("")
    load = report["environment"].get("load_average_before_timing")
    lines += ["## Inference time", "", "Warm-up until stable, then timed runs; ms per batch"
              + (f" (1-minute load average before timing: {load[0]:.2f})." if load else "."), "",
              "| runtime | batch | median | p10 | p90 | n | threads |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tm in report["timing"]:
        s = tm["stats"]
        where = (tm["provider"] or tm["device"]).removesuffix("ExecutionProvider")
        lines.append(f"| {tm['runtime']} {tm['model']} [{where}] | {tm['batch']} | {_ms(s['median'])} | "
                     f"{_ms(s['p10'])} | {_ms(s['p90'])} | {s['n']} | {tm['threads'] or '-'} |")
    for sp in report["speedup"]:
        lines.append(f"\n{sp['runtime']} at batch {sp['batch']}: {sp['ratio_to_eager']:.3g}x PyTorch eager's time")
    lines += ["", "Execution providers:", ""]
    lines += [f"- {p['name']}: {'used' if p['usable'] else 'unavailable: ' + p['reason']}"
              + (f" (CPU fallback: {p['fallback_detail']})" if p.get("cpu_fallback") else "")
              for p in report["providers"]]
    lines += [f"- note: {n}" for n in report["timing_notes"]]
    if report["prediction"]:
        lines += ["", "## Latency predicted by the profile", "",
                  f"{describe_prediction(report['prediction'])} What it covers: {report['prediction']['covers']}"]
        budget_line = describe_budget(report["prediction"])
        if budget_line:
            lines += ["", budget_line]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "## Genotype", "", "```json", json.dumps(net["genotype"]), "```", ""]
    return "\n".join(lines)


def describe_prediction(p: dict[str, Any]) -> str:
    """The profile's latency prediction beside the measured time, in one sentence: report.md, the
    terminal and the run report all print this one."""
    units = p.get("units") or f"{p['device']}, batch {p['batch']}"
    src = f"the profile {p['profile']} ({p['device']})"
    if p["predicted_ms"] is None:  # a missing part is never taken as zero
        lacks = []
        if p["missing"]:
            lacks.append(f"{p['missing']} of this network's operator shape(s)")
        if p.get("missing_part"):
            lacks.append(f"the fixed part of {p['missing_part']}")
        return (f"No latency prediction from {src}: it lacks {' and '.join(lacks) or 'parts of this network'} "
                f"(export again with --profile-missing to measure them); measured {_ms(p['measured_ms'])} ms, "
                f"whole network, {units} ({p['measured_by']}).")
    err = "-" if p["relative_error"] is None else format(p["relative_error"], "+.1%")
    return (f"Latency from {src}: predicted {_ms(p['predicted_ms'])} ms, measured {_ms(p['measured_ms'])} ms, "
            f"whole network, {units} ({p['measured_by']}); relative error {err}.")


def describe_budget(p: dict[str, Any] | None) -> str | None:
    """One line: does the exported model meet the search's latency budget as measured? (None: no budget)."""
    b = (p or {}).get("budget")
    if not b:
        return None
    if b["measured_ms"] is None:
        return f"Latency budget {b['limit_ms']:g} ms ({b['units']}): not measured here, so not checked."
    verdict = "meets" if b["met"] else "does NOT meet"
    return (f"Latency budget: the exported model {verdict} {b['limit_ms']:g} ms as measured "
            f"({_ms(b['measured_ms'])} ms, whole network, {b['units']}).")


def console_tables(doc: dict[str, Any]) -> list[Any]:
    """The report as rich tables for the terminal (what report.md says, condensed)."""
    from rich.table import Table

    from edgenas.costs import format_count

    v, o, costs = doc["verification"], doc["onnx"], doc["costs"]
    summary = Table("export", "value", title=f"edgenas export: {doc['name']}", title_justify="left")
    summary.add_row("output", doc["out"])
    for name, size in doc["files"].items():
        summary.add_row(name, f"{size / 1e6:.3f} MB")
    summary.add_row("ONNX", f"opset {o['opset']} ({o['exporter']}), input {o['input_shape']}, {o['checker']}")
    summary.add_row("MACs / params", f"{format_count(costs['macs'])} / {format_count(costs['params'])}")
    if costs.get("mobile"):
        m = costs["mobile"]
        summary.add_row("mobile setting", f"{format_count(m['macs_224'])} MACs at 224x224: "
                        f"{'within' if m['passes'] else 'OVER'} 600 M")
    for p in v["parity"]:
        summary.add_row(f"parity, {p['inputs']}", f"max |diff| {p['max_abs_diff']:.2e} (<= {p['atol']:g}: "
                        f"{'ok' if p['passed'] else 'FAILED'}, n={p['n']})")
    t = v["test"]
    summary.add_row("test top-1", f"PyTorch {t['torch_top1']:.2f}%  ONNX Runtime {t['ort_top1']:.2f}%  "
                    f"agreement {t['top1_agreement']:.2f}% of {t['n']}")
    if doc["int8"]:
        q = doc["int8"]
        summary.add_row("int8 top-1", f"{q['top1']:.2f}% ({-q['drop_points']:+.2f} points vs fp32 ORT), "
                        f"{q['size_ratio']:.2f}x fp32 size")
    for a in (doc.get("fp16") or {}).get("accuracy", []):
        summary.add_row(f"fp16 top-1 [{a['provider'].removesuffix('ExecutionProvider')}]",
                        f"{a['top1']:.2f}% ({-a['drop_points']:+.2f} points vs fp32), agreement "
                        f"{a['top1_agreement']:.2f}% of {a['n']}")
    if doc["prediction"]:
        summary.add_row("profile prediction", describe_prediction(doc["prediction"]))
        budget_line = describe_budget(doc["prediction"])
        if budget_line:
            summary.add_row("latency budget", budget_line)
    for p in doc["providers"]:
        if not p["usable"]:
            summary.add_row(f"{p['key']} provider", f"unavailable: {p['reason']}")
        elif p.get("cpu_fallback"):
            summary.add_row(f"{p['key']} provider", f"some nodes on the CPU: {p['fallback_detail']}")
    timing = Table("runtime", "batch", "median ms", "p10", "p90", "n", "vs eager", title="inference time",
                   title_justify="left")
    ratio = {(s["runtime"], s["batch"]): s["ratio_to_eager"] for s in doc["speedup"]}
    for tm in doc["timing"]:
        where = (tm["provider"] or tm["device"]).removesuffix("ExecutionProvider")
        label = f"{tm['runtime']} {tm['model']} [{where}]"
        r = ratio.get((label, tm["batch"]))
        st = tm["stats"]
        timing.add_row(label, str(tm["batch"]), _ms(st["median"]), _ms(st["p10"]), _ms(st["p90"]), str(st["n"]),
                       "-" if r is None else f"{r:.3g}x")
    return [summary, timing]
