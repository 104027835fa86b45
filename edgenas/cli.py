"""The ``edgenas`` command line: a thin Typer layer over the library.

Each command parses its options, resolves the device once, calls one library function and prints
the result (a rich table, or JSON with ``--json``). Any :class:`EdgenasError` becomes one line on
stderr and exit code 2 (``VerificationError``: exit 1); library code never exits.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand

from edgenas.errors import EdgenasError, out_of_memory

F = TypeVar("F", bound=Callable[..., Any])


app = typer.Typer(
    name="edgenas",
    help="Hardware-aware NAS: profile -> prune -> search -> train -> export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
list_app = typer.Typer(help="List registered operators, search methods or built-in genotypes.",
                       no_args_is_help=True)
app.add_typer(list_app, name="list")

# Results go to stdout; progress, tables for people and errors to stderr when --json is on, so a
# script can parse stdout.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (and --json output).")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")


def out_console(json_mode: bool, quiet: bool) -> Console:
    """Where human-readable output goes: stdout normally, stderr under --json, nowhere if quiet."""
    if quiet:
        return Console(quiet=True)
    return err_console if json_mode else console


def _print_error(e: EdgenasError) -> None:
    from edgenas.distributed import dist_from_env

    # Under torchrun every rank meets the same bad input; rank 0 speaks for all of them.
    if dist_from_env().main:
        err_console.print(e.one_line(), markup=False, highlight=False, soft_wrap=True)


def shutdown() -> None:
    """Leave a torchrun process group, if the command joined one."""
    if "torch.distributed" not in sys.modules:  # a command that never imported torch joined nothing
        return
    from edgenas.distributed import shutdown as leave_process_group

    leave_process_group()


def _other_rank() -> int | None:
    """This process's rank when it is one of several but not rank 0 (None otherwise)."""
    from edgenas.distributed import dist_from_env

    info = dist_from_env()
    return info.rank if info.active and not info.main else None


class _DefaultsInHelp(TyperCommand):
    """A command whose option help may name a config's default as ``{SearchConfig.epochs}``: filled
    from the config class when help is shown, so the default lives only in the config and
    importing the CLI stays light."""

    configs: tuple[str, ...] = ()  # "module:Class", each constructible without arguments

    def format_help(self, ctx: Any, formatter: Any) -> None:
        defaults = {}
        for ref in self.configs:
            module, name = ref.split(":")
            defaults[name] = getattr(importlib.import_module(module), name)()
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                param.help = text.format_map(defaults)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


def command(typer_app: typer.Typer, name: str | None = None, *, defaults_from: tuple[str, ...] = (),
            **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose EdgenasError becomes one stderr line and its exit code.

    Doing it per command (not only in ``main``) makes CliRunner tests see what a user sees.
    ``defaults_from`` names the config classes ("module:Class") whose defaults its help shows.
    """
    if defaults_from:
        kwargs["cls"] = type("DefaultsInHelp", (_DefaultsInHelp,), {"configs": defaults_from})

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                result = fn(*args, **kw)
                shutdown()
                return result
            except EdgenasError as e:
                _print_error(e)
                raise typer.Exit(e.exit_code) from None
            except (RuntimeError, MemoryError) as e:
                oom = out_of_memory(e)
                if oom is None:
                    raise
                _print_error(oom)
                raise typer.Exit(oom.exit_code) from None
            except KeyboardInterrupt:
                err_console.print("interrupted (where supported, rerun with --resume to continue)")
                raise typer.Exit(130) from None
            except typer.Exit:
                raise
            except Exception as e:
                rank = _other_rank()
                if rank is None:
                    raise
                # a rank whose peer stopped (rank 0 reports why) fails inside a collective: one line
                first = (str(e).splitlines() or [""])[0][:160]
                err_console.print(f"rank {rank} stopped: {type(e).__name__}: {first}", markup=False,
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        typer_app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): what overrides a typed config's defaults, so each
    default lives once, in its config."""
    return {k: v for k, v in options.items() if v is not None}


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------ list
@command(list_app, "ops")
def list_ops(json_out: bool = JsonOpt) -> None:
    """Registered operators and their facts."""
    from rich.table import Table

    from edgenas.ops import OPS

    rows = [
        {"name": s.name, "family": s.family, "kernel": s.kernel, "parameter_free": s.parameter_free,
         "bn_in_search": s.bn_in_search, "description": s.description}
        for s in OPS.values()
    ]
    if json_out:
        emit_json(rows)
        return
    table = Table("operator", "family", "kernel", "param-free", "description")
    for r in rows:
        table.add_row(r["name"], r["family"], str(r["kernel"] or "-"), "yes" if r["parameter_free"] else "no",
                      r["description"])
    console.print(table)


@command(list_app, "genotypes")
def list_genotypes(json_out: bool = JsonOpt) -> None:
    """Built-in genotypes (usable by name wherever a genotype is asked for)."""
    from rich.table import Table

    from edgenas.genotypes import GENOTYPES, SOURCES

    if json_out:
        emit_json([{"name": n, "source": SOURCES.get(n, ""), **g.to_dict()} for n, g in GENOTYPES.items()])
        return
    table = Table("name", "source", "operators used")
    for n, g in GENOTYPES.items():
        table.add_row(n, SOURCES.get(n, ""), ", ".join(g.ops()))
    console.print(table)


# ------------------------------------------------------------------------------ profile
def _setting_configs(settings: list[str], channels: Optional[int], layers: Optional[int],
                     input_hw: Optional[str]) -> list[Any]:
    from edgenas.profiling import PROFILE_SETTINGS, setting_config

    for name in settings:
        if name not in PROFILE_SETTINGS:
            raise EdgenasError(f"unknown setting {name!r}", f"use one of {', '.join(PROFILE_SETTINGS)}")
    hw = _parse_hw(input_hw) if input_hw is not None else None
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
                                          "cores, as `edgenas export` uses)."),
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
        ProfileOptions,
        ProfileSettings,
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
    settings = ProfileSettings(runs=opts.runs, max_seconds=opts.max_seconds, channels_last=channels_last,
                               keep_cpu_memory=not default_malloc, **given(min_seconds=min_seconds))
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

    if json_out:
        emit_json({"path": str(out), "plot": str(plot) if plot else None, "wall_s": round(wall, 2),
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
    load = ", ".join("-" if v is None else f"{v:.2f}" for v in (prof.load_before, prof.load_after))
    con.print(f"{len(prof.entries)} entries, {len(prof.parts)} fixed part(s) in {wall:.1f} s (load average "
              f"before, after: {load}) -> {out}" + (f", plot {plot}" if plot else ""))


# ------------------------------------------------------------------------------ prune
def _op_list(values: list[str]) -> list[str]:
    """Repeated options that may also be comma-separated: --keep a --keep b,c."""
    return [n for v in values for n in (p.strip() for p in v.split(",")) if n]


@command(app, "prune")
def prune_cmd(
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile JSON written by `edgenas profile` "
                                           "[the deployment runtime's: profiles/<this device>-ort.json]."),
    out: Path = typer.Option(Path("space.json"), "--out", help="Search space JSON to write."),
    keep: list[str] = typer.Option([], "--keep", help="Keep this operator whatever the rules say (repeatable)."),
    drop: list[str] = typer.Option([], "--drop", help="Drop this operator (repeatable)."),
    max_latency_ratio: Optional[float] = typer.Option(
        None, "--max-latency-ratio", help="Drop ops slower than X times the median parametric op."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Reduce the search space from measured costs; write space.json with the reason for each drop."""
    from rich.table import Table

    from edgenas.files import ensure_writable
    from edgenas.profiling import load_profile
    from edgenas.space import PruneConfig, prune

    ensure_writable(out, "search space")
    if profile is None:
        from edgenas.device import device_slug, resolve_device

        profile = Path("profiles") / f"{device_slug(resolve_device('cpu'))}-ort.json"
        if not profile.exists():
            raise EdgenasError(f"no --profile given and the deployment runtime's profile {profile} does not exist",
                               "make it with `edgenas profile` (onnxruntime, the runtime export ships) or pass "
                               "--profile")
    prof = load_profile(profile)
    config = PruneConfig(tuple(_op_list(keep)), tuple(_op_list(drop)), max_latency_ratio)
    space = prune(prof, config, source=str(profile))
    space.save(out)
    if json_out:
        emit_json({"path": str(out), **space.to_dict()})
    con = out_console(json_out, quiet)
    table = Table("dropped", "rule", "why", title=f"pruning {profile} ({prof.device}, {prof.units()})")
    for d in space.dropped:
        table.add_row(d.op, d.rule, d.reason)
    con.print(table)
    for note in space.notes:
        con.print(f"- {note}")
    con.print(f"kept {len(space.ops)}: {', '.join(space.ops)} -> {out}")


# ------------------------------------------------------------------------------ inspect
def _parse_hw(text: str) -> tuple[int, int]:
    """``32x32`` or ``32`` -> (H, W)."""
    parts = text.lower().replace(" ", "").split("x")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EdgenasError(f"cannot read input size {text!r}", "write it as HxW, e.g. --input 32x32 or 224x224")
    return (int(parts[0]), int(parts[-1]))


@command(app, "inspect")
def inspect_cmd(
    genotype: str = typer.Argument(..., help="Built-in genotype (see `edgenas list genotypes`), a genotype "
                                   "JSON file or a file holding the Genotype(...) literal."),
    setting: str = typer.Option("cifar10", "--setting", help="cifar10 | cifar100 | imagenet-mobile"),
    channels: Optional[int] = typer.Option(None, "--channels", help="Initial channels C [36; 48 imagenet]."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Cells [20; 14 imagenet]."),
    classes: Optional[int] = typer.Option(None, "--classes", help="Classes [10; 100; 1000]."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Input channels [3]."),
    input_hw: Optional[str] = typer.Option(None, "--input", help="Input HxW [32x32; 224x224 imagenet]."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile JSON: predict latency from it."),
    measure: bool = typer.Option(False, "--measure", help="Also build the network and time it on the profile's "
                                 "runtime, provider and batch: predicted, measured and error."),
    profile_missing: bool = typer.Option(False, "--profile-missing", help="Measure the operator shapes and the "
                                         "fixed part the profile lacks (on the profiled device) first."),
    fit_macs: Optional[str] = typer.Option(None, "--fit-macs", help="Choose the largest even C within this "
                                           "MAC budget (600M, 0.6G or 600000000)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for the cell diagrams PNG."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Params, MACs (edgenas and thop), mobile setting, predicted latency and cell diagrams of a genotype."""
    from rich.table import Table

    from edgenas.costs import format_count, parse_count
    from edgenas.genotypes import load_genotype
    from edgenas.nets import default_config, inspect_network

    geno = load_genotype(genotype)
    given = {"C": channels, "layers": layers, "num_classes": classes, "in_channels": in_channels,
             "input_hw": _parse_hw(input_hw) if input_hw is not None else None}
    if fit_macs is not None and channels is not None:
        raise EdgenasError("--fit-macs chooses the channel count itself", "drop --channels or --fit-macs")
    cfg = default_config(setting, **{k: v for k, v in given.items() if v is not None})
    budget = parse_count(fit_macs, "--fit-macs budget") if fit_macs is not None else None
    if (measure or profile_missing) and profile is None:
        raise EdgenasError("--measure and --profile-missing need a --profile", "add --profile profiles/<device>.json")
    prof = None
    if profile is not None:
        from edgenas.profiling import load_profile

        prof = load_profile(profile)
    from edgenas.genotypes import genotype_label

    label = genotype_label(genotype)
    plot_path = plot / f"{label}_cells.png" if plot is not None else None
    if plot_path is not None:
        from edgenas.files import ensure_writable

        ensure_writable(plot_path, "plot")
    rep = inspect_network(geno, cfg, mac_budget=budget)
    comparison = None
    if prof is not None:
        from dataclasses import replace

        from edgenas.device import resolve_device
        from edgenas.latency import compare, predict_latency, target_device
        from edgenas.latency import profile_missing as complete
        from edgenas.nets import cell_shapes

        where = target_device(prof, resolve_device("cpu" if prof.device.startswith("cpu") else "auto"))
        if profile_missing:
            prof = complete(prof, cell_shapes(geno, rep.config), where, networks=[rep.config])
        rep = replace(rep, latency=predict_latency(geno, rep.config, prof))
        if measure:
            comparison = compare(geno, rep.config, prof, where)
    if plot_path is not None:
        from edgenas.report import plot_genotype

        plot_genotype(geno, plot_path, title=label)
    if json_out:
        emit_json({"name": label, **rep.to_dict(), "plot": str(plot_path) if plot_path else None,
                   "measured": comparison.to_dict() if comparison is not None else None})
    con = out_console(json_out, quiet)
    c = rep.config
    con.print(f"{label}: {c.setting}, C={c.C}, {c.layers} cells, {c.num_classes} classes, input "
              f"{c.in_channels}x{c.input_hw[0]}x{c.input_hw[1]}")
    if rep.fit is not None:
        con.print(f"--fit-macs {format_count(rep.fit.budget)}: C={rep.fit.C} is the largest even C that fits "
                  f"(C={rep.fit.C + 2}: {format_count(rep.fit.next_macs)})")
    grid = Table.grid(padding=(0, 2))
    for justify in ("left", "right", "right"):
        grid.add_column(justify=justify)
    grid.add_column()
    grid.add_row("params", f"{rep.params:,}", format_count(rep.params),
                 f"auxiliary head excluded (it adds {rep.aux_params:,})")
    grid.add_row("MACs", f"{rep.macs:,}", format_count(rep.macs), "edgenas: Conv2d + Linear, 1 MAC = 1 multiply-add")
    grid.add_row("thop", f"{rep.thop_macs:,}" if rep.thop_macs is not None else "-", format_count(rep.thop_macs),
                 "thop's count; it also counts BatchNorm" if rep.thop_macs is not None else "thop unavailable")
    con.print(grid)
    if rep.mobile is not None or c.imagenet:
        con.print(f"mobile setting: {rep.mobile_note}")
    lat = rep.latency
    if lat is not None:
        con.print(f"latency from {profile}: {lat.device}, {lat.units}, {lat.threads} thread(s)", soft_wrap=True)
        table = Table("part", "CxHxW:s", "instances", "ms each", "ms")
        if lat.fixed_ms is not None:
            table.add_row("fixed part", f"{c.setting} C={c.C}, {c.layers} cells", "1", f"{lat.fixed_ms:.4g}",
                          f"{lat.fixed_ms:.4g}")
        else:
            table.add_row("fixed part", f"{c.setting} C={c.C}, {c.layers} cells", "1", "[red]missing[/red]", "-")
        for s, n, ms in lat.looked_up:
            table.add_row(s.op, f"{s.C}x{s.H}x{s.W}:{s.stride}", str(n), f"{ms:.4g}", f"{n * ms:.4g}")
        for s, n in lat.missing:
            table.add_row(s.op, f"{s.C}x{s.H}x{s.W}:{s.stride}", str(n), "[red]missing[/red]", "-")
        con.print(table)
        if lat.complete:
            con.print(f"{lat.sentence()} (fixed part {lat.fixed_ms:.4g} ms + {len(lat.looked_up)} operator shapes "
                      f"{lat.found_ms:.4g} ms)", soft_wrap=True)
        else:
            con.print(f"[red]{lat.sentence()}[/red]; measure what is missing with --profile-missing, or:",
                      soft_wrap=True)
            ops_ = ",".join(dict.fromkeys(s.op for s, _ in lat.missing)) or "skip_connect"
            con.print(f"  edgenas profile --runtime {lat.runtime} --setting {c.setting} --channels {c.C} --layers "
                      f"{c.layers} --input {c.input_hw[0]}x{c.input_hw[1]} --batch {lat.batch} --ops {ops_}",
                      soft_wrap=True)
        if lat.mode == "train":
            con.print("note: a train-mode profile times forward+backward; this is not an inference latency")
        con.print(f"covers {lat.covers}", soft_wrap=True)
    if comparison is not None:
        con.print(comparison.sentence(), soft_wrap=True)
    if plot_path is not None:
        con.print(f"cell diagrams: {plot_path}", soft_wrap=True)

# ------------------------------------------------------------------------------ train
@command(app, "train")
def train_cmd(
    genotype: str = typer.Argument(..., help="Built-in genotype (see `edgenas list genotypes`) or a genotype file."),
    data: str = typer.Option(..., "--data", help="cifar10[:DIR] | cifar100[:DIR] | imagefolder:PATH (folder or "
                             ".tar/.tar.gz of train/<class>/*, test/<class>/*) | fashion-mnist[:DIR] | synthetic[:N]"),
    setting: str = typer.Option("cifar10", "--setting", help="cifar10 | cifar100 | imagenet-mobile (network "
                                "layout and protocol defaults)."),
    channels: Optional[int] = typer.Option(None, "--channels", min=1, help="Initial channels C [36; 48 imagenet]."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Cells [20; 14 imagenet]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs [600; 250 imagenet]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Global batch, split over torchrun processes [96; 128]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate, cosine to 0 [0.025; 0.1]."),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum [0.9]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[3e-4; 3e-5 imagenet]."),
    auxiliary_weight: Optional[float] = typer.Option(None, "--auxiliary-weight", help="Aux loss weight, 0 = no "
                                                     "aux head [0.4]."),
    drop_path: Optional[float] = typer.Option(None, "--drop-path", help="Final drop-path probability, ramped "
                                              "linearly from 0 [0.2; 0 imagenet]."),
    cutout: Optional[int] = typer.Option(None, "--cutout", min=0, help="Cutout square side, 0 = off [16; 0]."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="[0; 0.1 imagenet]."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient-norm clip [5]."),
    seed: int = typer.Option(0, "--seed", help="Seeds weights, data order and augmentation."),
    subset: Optional[int] = typer.Option(None, "--subset", min=1, help="Train on a class-balanced N images."),
    test_subset: Optional[int] = typer.Option(None, "--test-subset", min=1, help="Test on N images."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Force 1 or 3 input channels "
                                              "(default: the data's)."),
    amp: str = typer.Option("auto", "--amp", help="auto (by GPU capability: bf16 on >= 8.0, fp16 on 7.x, "
                                                  "off on older GPUs and the CPU) | off | bf16 | fp16"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [on: measured faster on CPU and CUDA]."),
    download: bool = typer.Option(False, "--download", help="Download cifar10/cifar100 if missing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder [runs/train-<genotype>]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1,
                                             help="Stop after N epochs of this call (finish later with --resume)."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a genotype from scratch (DARTS evaluation protocol); works under torchrun (DDP)."""
    from dataclasses import replace

    from edgenas.device import resolve_device
    from edgenas.distributed import dist_from_env
    from edgenas.genotypes import genotype_label, load_genotype
    from edgenas.train import TrainConfig, default_run_folder, protocol_defaults, train

    given = {"channels": channels, "layers": layers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "momentum": momentum, "weight_decay": weight_decay, "auxiliary_weight": auxiliary_weight,
             "drop_path": drop_path, "cutout": cutout, "label_smoothing": label_smoothing, "grad_clip": grad_clip}
    cfg: TrainConfig = replace(protocol_defaults(setting), seed=seed, subset=subset, test_subset=test_subset,
                               in_channels=in_channels, amp=amp, channels_last=channels_last,
                               **{k: v for k, v in given.items() if v is not None})
    geno = load_genotype(genotype)
    dev = resolve_device(device)
    main_rank = dist_from_env().main
    result = train(geno, cfg, data, out=out or default_run_folder(genotype), device=dev, resume=resume,
                   stop_after=stop_after, quiet=quiet or not main_rank, download=download,
                   genotype_name=genotype_label(genotype))
    if not main_rank:
        return
    summary = result.summary()
    if json_out:
        emit_json(summary)
        return
    con = out_console(json_out, quiet)
    best, last = summary["best"], summary["last"]
    con.print(f"{summary['params'] / 1e6:.3f} M params (aux head excluded), data {summary['data']['spec']} "
              f"({summary['data']['train']} train / {summary['data']['test']} test images)")
    if best is not None:
        con.print(f"best test top-1 {best['test_top1']:.2f}% (epoch {best['epoch'] + 1}), last "
                  f"{last['test_top1']:.2f}% after {summary['epochs_done']}/{cfg.epochs} epochs")
    if result.loop.stopped_early:
        con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {result.run}")
    con.print(f"run folder: {result.run}")

# ------------------------------------------------------------------------------ search
@command(list_app, "methods")
def list_methods(json_out: bool = JsonOpt) -> None:
    """Search methods (--method of `edgenas search`) and their settings."""
    from dataclasses import fields

    from rich.table import Table

    from edgenas.search import METHODS

    rows = [{"name": n, "title": c.title, "paper": c.paper, "default_cells": c.default_layers,
             "warmup_share": c.warmup_fraction, "cell_residual": c.cell_residual,
             "settings": {f.name: f.default for f in fields(c)}, "summary": (c.__doc__ or "").split("\n")[0]}
            for n, c in METHODS.items()]
    if json_out:
        emit_json(rows)
        return
    table = Table("method", "after", "cells", "warm-up", "settings")
    for r in rows:
        table.add_row(r["name"], f"{r['title']} ({r['paper']})", str(r["default_cells"]), f"{r['warmup_share']:.0%}",
                      ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-")
    console.print(table)


@command(app, "search", defaults_from=("edgenas.search.loop:SearchConfig",
                                       "edgenas.search.budgets:BudgetSpec"))
def search_cmd(
    data: str = typer.Option(..., "--data", help="cifar10[:DIR] | cifar100[:DIR] | imagefolder:PATH | "
                             "fashion-mnist[:DIR] | synthetic[:N] (its training set is split in half)."),
    method: str = typer.Option("darts", "--method", help="darts | pc_darts | adarts | swd | el_darts | "
                               "attn_darts (see `edgenas list methods`)."),
    space: Optional[Path] = typer.Option(None, "--space", help="space.json from `edgenas prune` [the method's "
                                         "default: DARTS' 8 operators; EL-DARTS' 4]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Search epochs [{SearchConfig.epochs}]."),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", min=0, help="Epochs before architecture "
                                                "updates start [the method's share: 0; 30% for PC-DARTS family]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per step, for each half "
                                             "(global: split over torchrun processes) [{SearchConfig.batch_size}]."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Cells [8; 5 for swd]."),
    channels: Optional[int] = typer.Option(None, "--channels", min=2,
                                           help="Initial channels C [{SearchConfig.channels}]."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1,
                                        help="Intermediate nodes per cell [{SearchConfig.nodes}]."),
    partial_k: Optional[int] = typer.Option(None, "--partial-k", help="1/K of the channels go through the "
                                            "operators (pc_darts, adarts, swd, el_darts) [4]."),
    no_ess: bool = typer.Option(False, "--no-ess", help="el_darts ablation: search the full DARTS space."),
    no_dcss: bool = typer.Option(False, "--no-dcss", help="el_darts ablation: no dynamic edge coefficients."),
    no_entropy: bool = typer.Option(False, "--no-entropy", help="el_darts ablation: no entropy regulariser."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Weight learning rate [0.1 x batch/256]."),
    arch_lr: Optional[float] = typer.Option(None, "--arch-lr", help="Architecture learning rate (Adam) "
                                            "[{SearchConfig.arch_lr}]. Adam moves each alpha by about this much "
                                            "per step, so a search of a few hundred architecture steps needs "
                                            "more to choose (the run records arch_reach)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seeds weights, split, data order and "
                                        "augmentation [{SearchConfig.seed}]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the same search once per seed (e.g. 0,1,2) "
                                        "into --out/seed-<s>/ and report how far their genotypes agree, "
                                        "against random genotypes of the space."),
    subset: Optional[int] = typer.Option(None, "--subset", min=1, help="Use a class-balanced N training images."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [on for CPU (measured faster), off on CUDA]."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", min=1, help="Split each batch into N "
                                             "interleaved micro-batches (gradients averaged): what N torchrun "
                                             "processes compute [{SearchConfig.accumulate}]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder [runs/search-<method>; with --seeds "
                                       "runs/search-<method>-seeds]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt (with "
                                "--seeds: every seed's run that has one; the others start)."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1,
                                             help="Stop after N epochs of this call (finish later with --resume)."),
    mac_budget: Optional[str] = typer.Option(None, "--mac-budget", help="MAC budget of the evaluation network "
                                             "the genotype becomes, e.g. 600M or 0.6G (hard: derivation meets it)."),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="Latency budget of the whole "
                                                 "network on --profile's runtime, provider and batch, e.g. 12ms "
                                                 "(hard, like --mac-budget)."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile of the target device (latency budget)."),
    budget_setting: Optional[str] = typer.Option(None, "--budget-setting",
                                                 help="Evaluation network the budgets refer to: cifar10 | "
                                                 "cifar100 | imagenet-mobile [{BudgetSpec.setting}]."),
    budget_channels: Optional[int] = typer.Option(None, "--budget-channels",
                                                  help="Its initial channels [setting default: 36; 48 ImageNet]."),
    budget_layers: Optional[int] = typer.Option(None, "--budget-layers",
                                                help="Its cells [setting default: 20; 14 ImageNet]."),
    budget_batch: Optional[int] = typer.Option(None, "--budget-batch", help="Batch the latency budget is for "
                                               "(= profile's) [{BudgetSpec.budget_batch}]."),
    budget_weight: Optional[float] = typer.Option(None, "--budget-weight", help="Weight of the penalty weight * "
                                                  "max(0, E[cost]/budget - 1) [{BudgetSpec.weight}]."),
    profile_missing: bool = typer.Option(False, "--profile-missing", help="Measure operator shapes the profile "
                                         "lacks on this device (default: refuse, naming them)."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Differentiable architecture search; writes the genotype, history, checkpoints and figures.

    With --mac-budget / --latency-budget the search adds a penalty on the expected cost and derives
    the best genotype that meets every budget exactly (or stops at once, naming the minimum).
    Works under torchrun (one process per GPU, or gloo on CPUs); rank 0 writes and prints.
    """
    from edgenas.device import resolve_device
    from edgenas.distributed import dist_from_env
    from edgenas.search import make_method
    from edgenas.search.loop import SearchConfig, default_run_folder, search
    from edgenas.search.seeds import parse_seeds, search_seeds
    from edgenas.space import SearchSpace

    if seeds is not None and seed is not None:
        raise EdgenasError("--seed and --seeds are both given",
                           "use --seed N for one search or --seeds 0,1,2 for several")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    settings = {"partial_k": partial_k, "ess": False if no_ess else None, "dcss": False if no_dcss else None,
                "entropy": False if no_entropy else None}
    chosen = make_method(method, settings)
    given_space = SearchSpace.load(space) if space is not None else None
    cfg = SearchConfig(**given(epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch_size, layers=layers,
                               channels=channels, nodes=nodes, seed=seed, subset=subset, lr=lr, arch_lr=arch_lr,
                               channels_last=channels_last, accumulate=accumulate))
    from edgenas.costs import parse_count
    from edgenas.search.budgets import BudgetSpec, parse_latency, plan_budgets_for_data

    budget = BudgetSpec(
        mac_budget=parse_count(mac_budget, "MAC budget") if mac_budget is not None else None,
        latency_budget_ms=parse_latency(latency_budget) if latency_budget is not None else None,
        profile_missing=profile_missing, **given(setting=budget_setting, channels=budget_channels,
                                                 layers=budget_layers, budget_batch=budget_batch,
                                                 weight=budget_weight))
    if profile_missing and dist_from_env().active:
        # each rank would time the missing shapes itself, and budgets must be the same on every rank
        raise EdgenasError("--profile-missing measures in one process, not under torchrun",
                           "profile the shapes the search names without it (`edgenas profile --shapes "
                           "...`) so every rank reads the same profile, then launch without --profile-missing")
    dev = resolve_device(device)
    if seed_list is not None and dist_from_env().active:
        raise EdgenasError("--seeds runs one search after another in one process; it does not run under torchrun",
                           "run it plainly, or launch one torchrun search per --seed")
    ops = chosen.resolve_space(given_space).ops
    plan = plan_budgets_for_data(budget, data, ops, cfg.nodes, profile_path=profile, device=dev, seed=cfg.seed)
    con = out_console(json_out, quiet)
    main_rank = dist_from_env().main

    def run_one(run_cfg: SearchConfig, run_dir: Path, resume_run: bool) -> Any:
        return search(chosen, given_space, run_cfg, data, out=run_dir, device=dev, resume=resume_run,
                      stop_after=stop_after, quiet=quiet or not main_rank, budget=plan,
                      space_source=str(space) if space is not None else None)

    if seed_list is not None:
        multi = search_seeds(run_one, cfg, seed_list, ops, out=out or Path(f"{default_run_folder(method)}-seeds"),
                             resume=resume, accept=plan.fits if plan else None)
        if json_out:
            emit_json(multi.summary())
            return
        for s, r in multi.runs.items():
            con.print(f"seed {s}: {r.genotype.to_literal()}", markup=False)
            _print_decisiveness(con, r.summary())
        if multi.agreement is None:
            con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {multi.out}")
        else:
            _print_agreement(con, multi.agreement)
        con.print(f"run folders: {multi.out}/seed-<s>", markup=False)
        return
    result = run_one(cfg, out or default_run_folder(method), resume)
    if not main_rank:
        return
    summary = result.summary()
    if result.budget is not None:
        summary["budget"] = result.budget
    if json_out:
        emit_json(summary)
        return
    if "budget" in summary:
        _print_budget(con, summary["budget"])
    con.print(f"{chosen.title} over {len(result.ops)} operators ({', '.join(result.ops)}): "
              f"{summary['epochs_done']}/{cfg.epochs} epochs, "
              f"{sum(s or 0 for s in summary['seconds_per_epoch']):.0f} s, "
              f"peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['memory_kind']})")
    con.print(f"genotype: {result.genotype.to_literal()}", markup=False)
    con.print(f"skip_connect in the normal cell: {summary['normal_skip_connect']}")
    _print_decisiveness(con, summary)
    if result.loop.stopped_early:
        con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {result.run}")
    else:
        con.print(f"genotype file: {summary['genotype_file']}  (train it: edgenas train {summary['genotype_file']} "
                  f"--data ...)", markup=False)
    con.print(f"run folder: {result.run}")


def _print_decisiveness(con: Console, summary: dict[str, Any]) -> None:
    from edgenas.search.decisiveness import summary_line

    dec = summary.get("decisiveness")
    if dec:
        con.print(summary_line(dec), markup=False)
    if summary.get("note"):
        con.print(f"warning: {summary['note']} (search longer or with a larger --arch-lr)", markup=False)


def _print_agreement(con: Console, agreement: dict[str, Any]) -> None:
    from rich.table import Table

    rnd = agreement["random"]
    table = Table("cell", "node", "inputs", "operators", "(input, op)", "choices per seed",
                  title=f"seed agreement over {agreement['seeds']} seeds (share of a node's 2 edges, mean over "
                        f"{agreement['pairs']} seed pairs)")
    for cell, nodes in agreement["cells"].items():
        for n in nodes:
            table.add_row(cell, str(n["node"]), f"{n['inputs']:.2f}", f"{n['operators']:.2f}", f"{n['edges']:.2f}",
                          " | ".join(",".join(f"{o}@{i}" for o, i in c) for c in n["choices"]))
    con.print(table)
    o, r = agreement["overall"], rnd["overall"]
    con.print(f"overall: inputs {o['inputs']:.2f} (random {r['inputs']:.2f}), operators {o['operators']:.2f} "
              f"(random {r['operators']:.2f}), (input, op) {o['edges']:.2f} (random {r['edges']:.2f}); "
              f"random genotypes: {rnd['method']}", markup=False)


def _print_budget(con: Console, check: dict[str, Any]) -> None:
    from rich.table import Table

    c = check["setting"]
    table = Table(title=f"budget check: {c['setting']} C={c['C']}, {c['layers']} cells, "
                        f"{c['input_hw'][0]}x{c['input_hw'][1]}")
    units = check.get("latency_units")
    for col in ("genotype", "MACs", "latency ms" + (f" ({units})" if units else ""), "log-weight score"):
        table.add_column(col)
    limits = check["limits"]
    table.add_row("budget", f"{limits['macs'] / 1e6:.2f} M" if "macs" in limits else "-",
                  f"{limits['latency_ms']:.3f}" if "latency_ms" in limits else "-", "")
    for name in ("constrained", "unconstrained"):
        r = check[name]
        lat = r.get("latency_ms")
        table.add_row(name, f"{r['macs'] / 1e6:.2f} M", "-" if lat is None else f"{lat:.3f}", f"{r['score']:.3f}")
    con.print(table)
    r = check["constrained"]
    if r.get("latency_ms") is not None and units:
        con.print(f"predicted {r['latency_ms']:.3g} ms, whole network, {units} "
                  f"(budget {limits['latency_ms']:.3g} ms)")


# ------------------------------------------------------------------------------ export
@command(app, "export")
def export_cmd(
    source: Path = typer.Argument(..., help="A train run folder (its best.pt, else last.pt) or a checkpoint file."),
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
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime intra-op threads (0: physical cores)."),
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

# ------------------------------------------------------------------------------ run

@command(app, "run")
def run_cmd(
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any option of any stage "
                                          "(see edgenas/configs/demo.toml); command-line options override it."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset spec, e.g. fashion-mnist, "
                                       "imagefolder:cifar10-jpeg.tar.gz, cifar10:DIR, synthetic:512."),
    method: Optional[str] = typer.Option(None, "--method", help="Search method (see `edgenas list methods`)."),
    mac_budget: Optional[str] = typer.Option(None, "--mac-budget", help="MAC budget of the trained network, e.g. 50M."),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget",
                                                 help="Latency budget of the cell operators at batch 1, e.g. 12ms."),
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


def main() -> None:
    """Console entry point."""
    try:
        app()
    except EdgenasError as e:  # raised outside a command body (e.g. while parsing)
        _print_error(e)
        sys.exit(e.exit_code)
