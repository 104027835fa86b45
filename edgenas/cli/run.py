"""``edgenas run``: the whole chain in one run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgenas.cli.common import (
    JsonOpt,
    QuietOpt,
    app,
    command,
    emit_json,
    out_console,
)


@command(app, "run")
def run_cmd(
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any option of any stage "
                                          "(see edgenas/configs/demo.toml); command-line options override it."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset spec, e.g. fashion-mnist, "
                                       "imagefolder:cifar10-jpeg.tar.gz, cifar10:DIR, synthetic:512."),
    method: Optional[str] = typer.Option(None, "--method", help="Search method (see `edgenas list methods`)."),
    mac_budget: Optional[str] = typer.Option(None, "--mac-budget", help="MAC budget of the trained network, e.g. 50M."),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget",
                                                 help="Latency budget of the whole network on the profile's "
                                                 "runtime, provider and batch, e.g. 12ms."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every stage."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<method>-<data>)."),
    resume: bool = typer.Option(False, "--resume", help="Skip completed stages, resume the interrupted one."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """The whole chain: profile -> prune -> search -> train -> export, and a report."""
    import re
    import time

    from edgenas.device import resolve_device
    from edgenas.pipeline import load_config, run_pipeline

    cfg = load_config(config, {"data": data, "method": method, "device": device, "seed": seed,
                               "mac_budget": mac_budget, "latency_budget": latency_budget})
    dev = resolve_device(cfg.device)
    out = out or Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{cfg.method}-{cfg.data}").strip("-")
    con = out_console(json_out, quiet)
    t0 = time.perf_counter()
    result = run_pipeline(cfg, out, device=dev, resume=resume, quiet=quiet,
                          log=lambda msg: con.print(msg, markup=False, highlight=False))
    wall = time.perf_counter() - t0
    if json_out:
        emit_json({"wall_s": round(wall, 1), "ran": result.ran, "skipped": result.skipped, **result.summary})
        return
    s = result.summary
    con.print(f"ran {', '.join(result.ran) or 'nothing'} in {wall:.0f} s"
              + (f"; skipped (done) {', '.join(result.skipped)}" if result.skipped else ""))
    if "space" in s:
        con.print(f"search space: {', '.join(s['space'])}")
    if s.get("search_note"):
        con.print(f"warning: {s['search_note']}", markup=False)
    if "test_top1" in s:
        con.print(f"retrained test top-1: {s['test_top1']:.2f}%")
    if "export" in s:
        e = s["export"]
        con.print(f"export verified: {e['passed']}; ONNX Runtime test top-1 {e['onnx_test_top1']:.2f}%; "
                  f"{e['macs'] / 1e6:.2f} M MACs, {e['params']} params")
    if result.report_html.exists():
        con.print(f"report: {result.report_md} and {result.report_html}")
