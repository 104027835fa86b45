"""The ``edgenas`` command line: a thin Typer layer over the library, one module per command.

Each command parses its options, resolves the device once, calls one library function and prints
the result (a rich table, or JSON with ``--json``). Any :class:`EdgenasError` becomes one line on
stderr and exit code 2 (``VerificationError``: exit 1); library code never exits.
"""

from __future__ import annotations

import sys

from edgenas.cli.common import app, print_error
from edgenas.errors import EdgenasError

# isort: off
# importing a command module registers its command: in this order in the help
from edgenas.cli import lists, profile, prune, inspect, train, search, export, run  # noqa: F401, E402
# isort: on


def main() -> None:
    """Console entry point."""
    try:
        app()
    except EdgenasError as e:  # raised outside a command body (e.g. while parsing)
        print_error(e)
        sys.exit(e.exit_code)


__all__ = ["app", "main"]
