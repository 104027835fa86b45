"""``edgenas profile``: measure operators and fixed parts on a runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from edgenas.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    app,
    command,
    emit_json,
    given,
    out_console,
    parse_hw,
)
from edgenas.errors import EdgenasError

if TYPE_CHECKING:  # the CLI imports the library lazily, so that --help stays fast
    from edgenas.nets import NetConfig


def _setting_configs(settings: list[str], channels: Optional[int], layers: Optional[int],
                     input_hw: Optional[str]) -> list[NetConfig]:
    from edgenas.nets import SETTINGS, setting_config

    for name in settings:
        if name not in SETTINGS:
            raise EdgenasError(f"unknown setting {name!r}", f"use one of {', '.join(SETTINGS)}")
    hw = parse_hw(input_hw) if input_hw is not None else None
    return [setting_config(n, channels=channels, layers=layers, input_hw=hw) for n in dict.fromkeys(settings)]


@command(app, "profile", defaults_from=("edgenas.profiling:ProfileOptions",
                                        "edgenas.profiling:ProfileSettings"))
def profile_cmd(
    device: str = DeviceOpt,
    runtime: Optional[str] = typer.Option(None, "--runtime", help="ort: ONNX Runtime, what `edgenas export` "
                                          "ships (default) | eager: PyTorch, what a search step pays (--mode "
                                          "train)."),
    provider: Optional[str] = typer.Option(None, "--provider", help="ort: cpu | cuda | tensorrt [cpu]; the "
                                           "session and provider options `edgenas export` uses."),
    setting: list[str] = typer.Option([], "--setting", help="Profile the shapes and fixed part of this "
                                      "evaluation network: cifar10 | cifar100 | imagenet-mobile (repeatable)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="--setting's initial channels C "
                                           "[36; 48 imagenet]."),
    layers: Optional[int] = typer.Option(None, "--layers", help="--setting's cells [20; 14 imagenet]."),
    input_hw: Optional[str] = typer.Option(None, "--input", help="--setting's input HxW [32x32; 224x224]."),
    search_shapes: bool = typer.Option(True, "--search-shapes/--no-search-shapes",
                                       help="Also profile the default search supernet's shapes (what "
                                       "`edgenas prune` compares)."),
    ops: Optional[str] = typer.Option(
        None, "--ops", help="Comma-separated operators (default: the 8 DARTS operators; see `edgenas list ops`)."),
    shapes: Optional[str] = typer.Option(
        None, "--shapes", help="Extra shapes, C x H x W : stride, comma-separated, e.g. 16x32x32:1 "
        "(without --setting or --shapes: --setting cifar10)."),
    batch: Optional[int] = typer.Option(None, "--batch",
                                        help="Batch size of every timed call [{ProfileOptions.batch}]."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | fp16 (ort: graphs converted by "
                                        "onnxconverter-common) | bf16 (eager) [{ProfileOptions.dtype}]"),
    mode: Optional[str] = typer.Option(None, "--mode", help="forward (inference, eval mode) | train (eager: "
                                       "forward+backward, as search pays) [{ProfileOptions.mode}]"),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, help="Intra-op threads (default 0: physical "
                                          "cores, as `edgenas export` uses); where other work shares the machine, "
                                          "at most the cores it leaves free."),
    runs: Optional[int] = typer.Option(None, "--runs", help="Samples per attempt at least [{ProfileSettings.runs}]."),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds",
                                                help="Each entry is timed at least this long "
                                                "[{ProfileSettings.min_seconds} s]."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds",
                                                help="Cap on each attempt (and the warm-up) "
                                                "[{ProfileSettings.max_seconds} s]."),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help="eager: memory format [channels_last for --mode train "
        "on the CPU, as the CPU search runs; NCHW otherwise]."),
    default_malloc: bool = typer.Option(
        False, "--default-malloc", help="CPU: keep glibc's default of returning freed memory to the OS "
        "between calls (timings then include page faults; by default freed memory is kept for reuse)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Profile JSON (default: profiles/<device-slug>-<runtime>"
                                       ".json)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the bar chart PNG here."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Measure operators (latency, memory, MACs, params) and the networks' fixed parts on a runtime."""
    import time

    from rich import box
    from rich.progress import Progress
    from rich.table import Table

    from edgenas.costs import MAC_CONVENTION
    from edgenas.device import device_slug, resolve_device
    from edgenas.files import ensure_writable
    from edgenas.ops import DARTS_OPS, parse_ops
    from edgenas.profiling import (
        DEFAULT_SHAPES,
        SCALE_RANGE,
        ProfileOptions,
        clipped_scales,
        contention,
        parse_shapes,
        profile_ops,
        setting_shapes,
    )

    opts = ProfileOptions(**given(runtime=runtime, batch=batch, dtype=dtype, mode=mode, runs=runs,
                                  max_seconds=max_seconds))
    runtime, mode = opts.runtime, opts.mode
    op_names = parse_ops(ops) if ops is not None else list(DARTS_OPS)
    if not setting and shapes is None:
        setting = ["cifar10"]  # nobody types shapes: the default evaluation network's, and the search's
    if (channels is not None or layers is not None or input_hw is not None) and not setting:
        raise EdgenasError("--channels/--layers/--input describe a --setting's network, but none was given",
                           "add --setting cifar10 or --setting imagenet-mobile")
    nets = _setting_configs(setting, channels, layers, input_hw)
    shape_list = [s for cfg in nets for s in setting_shapes(cfg)]
    if shapes is not None:
        shape_list += parse_shapes(shapes)
    if search_shapes and (nets or shapes is None):
        shape_list += list(DEFAULT_SHAPES)
    shape_list = list(dict.fromkeys(shape_list))
    if opts.batch < 1:
        raise EdgenasError(f"batch must be >= 1, got {opts.batch}", "pass --batch 1 or similar")
    dev = resolve_device(device)
    if channels_last is None:
        channels_last = runtime == "eager" and mode == "train" and dev.type == "cpu"
    settings = opts.settings(channels_last=channels_last, keep_cpu_memory=not default_malloc,
                             **given(min_seconds=min_seconds))
    if runtime == "ort" and (provider or "cpu") == "cpu":
        dev = resolve_device("cpu")  # the CPU provider runs on the CPU
    suffix = f"-{provider}" if runtime == "ort" and provider not in (None, "cpu") else ""
    out = out or Path("profiles") / f"{device_slug(dev)}-{runtime}{suffix}.json"
    ensure_writable(out, "profile")  # fail now, not after a minute of measuring
    if plot is not None:
        ensure_writable(plot, "plot")
    con = out_console(json_out, quiet)

    t0 = time.perf_counter()
    with Progress(console=con, transient=True, disable=quiet) as progress:
        task = progress.add_task(f"profiling on {dev}", total=len(op_names) * len(shape_list))
        prof = profile_ops(dev, op_names, shape_list, batch=opts.batch, dtype=opts.dtype, mode=mode,
                           runtime=runtime, provider=provider, networks=nets, settings=settings,
                           **given(threads=threads),
                           on_entry=lambda k: progress.update(task, advance=1, description=str(k)))
    wall = time.perf_counter() - t0
    prof.save(out)
    if plot is not None:
        from edgenas.report import plot_profile

        plot_profile(prof, plot)

    busy, clipped = contention(prof), clipped_scales(prof)
    if json_out:
        emit_json({"path": str(out), "plot": str(plot) if plot else None, "wall_s": round(wall, 2), "contention": busy,
                   "clipped_scales": clipped,
                   **prof.to_dict()})
    con.print(f"{prof.device}: {prof.units()}, {prof.threads} thread(s), {mode} mode", soft_wrap=True)
    table = Table(title="ms per call, by latency", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for col in ("op", "CxHxW:s", "median", "p10", "p90", "n", "MMACs", "params", "MiB", "ok"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("op", "CxHxW:s") else "right")
    for e in sorted(prof.entries, key=lambda e: e.latency.median):
        t = e.latency
        table.add_row(e.key.op, str(e.key.shape), *(f"{v:.3g}" for v in (t.median, t.p10, t.p90)),
                      str(t.n), f"{e.macs / 1e6:.3g}", str(e.params), f"{e.memory_bytes / 2**20:.2f}",
                      "" if e.stable else "no")
    con.print(table)
    for part in prof.parts:
        con.print(f"fixed part of {part.net}: {part.ms:.3g} ms (reference network {part.network_ms:.3g} ms less "
                  f"its stand-in operators {part.reference_ops_ms:.3g} ms){'' if part.stable else ' UNSTABLE'}")
    kinds = ", ".join(sorted({e.memory_kind for e in prof.entries}))
    con.print(f"MACs: {MAC_CONVENTION}. Memory measured: {kinds}.")
    for s in prof.skipped:
        con.print(f"skipped {s.key}: {s.reason}")
    unstable = prof.unstable()
    if unstable:
        con.print(f"[yellow]{len(unstable)} measurement(s) stayed unstable after {settings.attempts} attempts "
                  f"(spread > {settings.max_spread:.0%}): {', '.join(unstable[:6])}[/yellow]; profile again on a "
                  "quieter machine")
    if busy:
        con.print(f"[yellow]{busy}[/yellow]", soft_wrap=True)
    if clipped:
        con.print(f"[yellow]{len(clipped)} calibration scale(s) at the bound {SCALE_RANGE}: {'; '.join(clipped)}; "
                  "the entries and the networks were timed at different machine speeds (or the network is "
                  "too small to tell), so predictions from this profile are off there: profile again on a quiet "
                  "machine (or with fewer --threads)[/yellow]",
                  soft_wrap=True)
    load = ", ".join("-" if v is None else f"{v:.2f}" for v in (prof.load_before, prof.load_after))
    con.print(f"{len(prof.entries)} entries, {len(prof.parts)} fixed part(s) in {wall:.1f} s (load average "
              f"before, after: {load}) -> {out}" + (f", plot {plot}" if plot else ""))
