"""``edgenas inspect``: the costs and cells of a genotype."""

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
    parse_hw,
)
from edgenas.errors import EdgenasError


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
    from edgenas.nets import default_config
    from edgenas.network_costs import inspect_network

    geno = load_genotype(genotype)
    given = {"C": channels, "layers": layers, "num_classes": classes, "in_channels": in_channels,
             "input_hw": parse_hw(input_hw) if input_hw is not None else None}
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
        table = Table("part", "CxHxW:s", "instances", "ms each", "scale", "ms")
        if lat.fixed_ms is not None:
            table.add_row("fixed part", f"{c.setting} C={c.C}, {c.layers} cells", "1", f"{lat.fixed_ms:.4g}", "",
                          f"{lat.fixed_ms:.4g}")
        else:
            table.add_row("fixed part", f"{c.setting} C={c.C}, {c.layers} cells", "1", "[red]missing[/red]", "", "-")
        scales = dict(lat.scales)
        for s, n, ms in lat.looked_up:
            k = scales.get(s.op, 1.0)
            table.add_row(s.op, f"{s.C}x{s.H}x{s.W}:{s.stride}", str(n), f"{ms:.4g}", f"{k:.3g}", f"{n * ms * k:.4g}")
        for s, n in lat.missing:
            table.add_row(s.op, f"{s.C}x{s.H}x{s.W}:{s.stride}", str(n), "[red]missing[/red]", "", "-")
        con.print(table)
        if lat.complete:
            con.print(f"{lat.sentence()} (fixed part {lat.fixed_ms:.4g} ms + {len(lat.looked_up)} operator shapes "
                      f"{lat.found_ms:.4g} ms, each operator's entries times its calibration scale in this "
                      "network)", soft_wrap=True)
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
