"""Checking values that come from options and files: types (against a dataclass field's annotation)
and numeric ranges. One home, so every reader says the same thing the same way: what the value is,
where it came from, and what it should be.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from edgenas.errors import EdgenasError

#: Largest magnitude a count or size read from text may have: far beyond any real network, small
#: enough that ``int()`` of it and arithmetic on it never overflow or allocate absurdly.
MAX_MAGNITUDE = 1e18


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None, integer: bool = False,
                 hint: str = "") -> Any:
    """Return ``value`` if it is a finite number within the bounds (``minimum``/``maximum``
    inclusive, ``above``/``below`` exclusive), else raise naming ``name``, the value and the range.
    ``integer`` also refuses fractions and booleans."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise EdgenasError(f"{name} should be {kind}, got {value!r}", hint or f"give {name} as {kind}")
    if not math.isfinite(value):
        raise EdgenasError(f"{name} must be finite, got {value}", hint or f"give {name} a finite value")
    limits = [(minimum, lambda v, b: v >= b, ">="), (maximum, lambda v, b: v <= b, "<="),
              (above, lambda v, b: v > b, ">"), (below, lambda v, b: v < b, "<")]
    for bound, ok, sign in limits:
        if bound is not None and not ok(value, bound):
            raise EdgenasError(f"{name} {_num(value)} is out of range: it must be {sign} {_num(bound)}",
                               hint or f"give {name} a value {sign} {_num(bound)}")
    return value


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _num(value: float) -> str:
    """Integers exactly (a seed's bound is 9223372036854775807, not 9.22e+18), other numbers short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_NAMES.get(args[0], (None, str(args[0])))[1]}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return _NAMES.get(hint, (str(hint),))[0]


def _literal(value: Any) -> str:
    """A value as it is written in TOML/JSON (true, "text", 1.5)."""
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def conform(value: Any, hint: Any, name: str) -> Any:
    """``value`` (from TOML/JSON) converted to the annotated type ``hint`` (lists to tuples, ints
    to floats), or an :class:`EdgenasError` naming ``name``, the value and the expected type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return conform(value, arg, name)
            except EdgenasError:
                continue
    elif hint is Any or (hint is bool and isinstance(value, bool)) or (
            hint is int and isinstance(value, int) and not isinstance(value, bool)):
        return value
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(check_number(value, name))
    elif hint is str and isinstance(value, str):
        return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(conform(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(conform(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    shown = _literal(value)
    example = ' (e.g. ["a", "b"])' if origin is tuple and isinstance(value, str) else ""
    raise EdgenasError(f"{name} = {shown} should be {_describe(hint)}", f"write {_describe(hint)}{example}")


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, resolved (the modules use postponed annotations)."""
    return typing.get_type_hints(cls)


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed every generator accepts (torch takes at most a signed 64-bit value)."""
    return int(check_number(seed, name, minimum=0, maximum=2**63 - 1, integer=True, hint="give a seed such as 0"))


def finite_fields(config: Any) -> None:
    """Refuse NaN and infinity in any float field of a config dataclass (NaN slips through every
    ``<``/``>`` range test, infinity through every lower bound)."""
    import dataclasses

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + f.name.replace("_", "-")
            raise EdgenasError(f"{flag} must be finite, got {value}", f"give {flag} a finite value")


@dataclass(frozen=True)
class FieldRule:
    """One numeric field of a file's record and its bounds (see :func:`check_number`). ``path``
    is dotted for nested objects (``latency_ms.median``); a rule table is a tuple of these."""

    path: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    integer: bool = False
    required: bool = True

    def check(self, value: Any, name: str, hint: str = "") -> None:
        check_number(value, name, minimum=self.minimum, maximum=self.maximum, above=self.above, below=self.below,
                     integer=self.integer, hint=hint)


def check_record(record: dict[str, Any], rules: tuple[FieldRule, ...], where: str, fix: str) -> None:
    """Check every rule's field of ``record``; a failure names ``where``, the field and ``fix``."""
    for rule in rules:
        value: Any = record
        for part in rule.path.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING or (value is None and not rule.required):
            if value is _MISSING and rule.required:
                raise EdgenasError(f"{where}: field {rule.path!r} is missing", fix)
            continue
        try:
            rule.check(value, rule.path)
        except EdgenasError as e:
            raise EdgenasError(f"{where}: {e.message}", fix) from None


def check_fields(config: Any, rules: tuple[FieldRule, ...], *, flags: bool = True) -> None:
    """Check fields of a config dataclass against their rules, in order; a field that is ``None``
    passes a rule with ``required=False`` (its default applies later). The error names the field
    as its command-line option (``batch_size`` -> ``--batch-size``), or as itself when ``flags`` is
    false (configs built by the library, not from options), with its value and the bound it broke."""
    for rule in rules:
        value = getattr(config, rule.path)
        if value is None and not rule.required:
            continue
        rule.check(value, "--" + rule.path.replace("_", "-") if flags else rule.path)


_MISSING = object()
