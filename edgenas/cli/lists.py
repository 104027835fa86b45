"""``edgenas list ops | genotypes | methods``: what is registered."""

from __future__ import annotations

from edgenas.cli.common import (
    JsonOpt,
    command,
    console,
    emit_json,
    list_app,
)


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
