"""The ``edgenas`` command line: a thin Typer layer over the library.

Each command parses its options, resolves the device once, calls one library function and prints
the result (a rich table, or JSON with ``--json``). Any :class:`EdgenasError` becomes one line on
stderr and exit code 2 (``VerificationError``: exit 1); library code never exits.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console

from edgenas.errors import EdgenasError

F = TypeVar("F", bound=Callable[..., Any])

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
    err_console.print(e.one_line(), markup=False, highlight=False, soft_wrap=True)


def command(typer_app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose EdgenasError becomes one stderr line and its exit code.

    Doing it per command (not only in ``main``) makes CliRunner tests see what a user sees.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except EdgenasError as e:
                _print_error(e)
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                err_console.print("interrupted (where supported, rerun with --resume to continue)")
                raise typer.Exit(130) from None

        typer_app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


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


# ------------------------------------------------------------------------------ profile
# (issue 2)

# ------------------------------------------------------------------------------ prune
# (issue 2)

# ------------------------------------------------------------------------------ inspect
# (issue 3)

# ------------------------------------------------------------------------------ train
# (issue 4)

# ------------------------------------------------------------------------------ search
# (issue 5/6)

# ------------------------------------------------------------------------------ export
# (issue 7)

# ------------------------------------------------------------------------------ run
# (issue 8)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except EdgenasError as e:  # raised outside a command body (e.g. while parsing)
        _print_error(e)
        sys.exit(e.exit_code)
