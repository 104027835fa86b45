"""``edgenas prune``: reduce the search space from a profile."""

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
from edgenas.errors import EdgenasError


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
