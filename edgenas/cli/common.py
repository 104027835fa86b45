"""What every ``edgenas`` command shares: the Typer apps, consoles, common options, error handling."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

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
    rich_markup_mode=None,  # option help shows defaults in [brackets]: literal text, not markup
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


def print_error(e: EdgenasError) -> None:
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
                print_error(e)
                raise typer.Exit(e.exit_code) from None
            except (RuntimeError, MemoryError) as e:
                oom = out_of_memory(e)
                if oom is None:
                    raise
                print_error(oom)
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


def parse_hw(text: str) -> tuple[int, int]:
    """``32x32`` or ``32`` -> (H, W)."""
    parts = text.lower().replace(" ", "").split("x")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EdgenasError(f"cannot read input size {text!r}", "write it as HxW, e.g. --input 32x32 or 224x224")
    return (int(parts[0]), int(parts[-1]))
