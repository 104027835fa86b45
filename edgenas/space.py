"""Search spaces: which operators a search may choose, and why the others were dropped.

A :class:`SearchSpace` is what ``edgenas prune`` writes (``space.json``) and ``edgenas search``
reads. The pruning rules (see :func:`prune`) follow the argument of EL-DARTS (Guo et al.,
"EL-DARTS: Efficient and Lightweight DARTS", Sec. 3.1: keep one operator per role, prefer the
cheaper kernel since two stacked 3x3 convolutions cover a 5x5 receptive field, drop the zero
operator), but apply it to numbers measured on the target device rather than a fixed list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.errors import EdgenasError
from edgenas.files import read_json, require, write_json
from edgenas.ops import DARTS_OPS, EL_DARTS_OPS, OPS

SPACE_FORMAT = "edgenas.space"
SPACE_VERSION = 1


def canonical_order(ops: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Registry order (for the DARTS set this is the order the DARTS papers list them in)."""
    rank = {name: i for i, name in enumerate(OPS)}
    return tuple(sorted(ops, key=lambda n: rank[n]))


@dataclass(frozen=True)
class DroppedOp:
    """One operator left out of the space, the rule that dropped it and the numbers it used."""

    op: str
    rule: str
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "rule": self.rule, "reason": self.reason, "numbers": dict(self.numbers)}


@dataclass(frozen=True)
class SearchSpace:
    """Kept operators (registry/DARTS order), the dropped ones with reasons, and provenance.

    ``notes`` records observations the pruning made that a reader should know (e.g. that this
    device ran average pooling faster than max pooling, so the result differs from EL-DARTS').
    """

    ops: tuple[str, ...]
    dropped: tuple[DroppedOp, ...] = ()
    profile: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        for name in ops:
            if name not in OPS:
                raise EdgenasError(f"unknown operator {name!r} in search space",
                                   f"choose from: {', '.join(OPS)}")
        if len(set(ops)) != len(ops):
            raise EdgenasError(f"search space lists an operator twice: {', '.join(ops)}",
                               "list each operator once")
        if len(ops) < 2:
            raise EdgenasError(
                f"a search space needs at least 2 operators, got {len(ops)} ({', '.join(ops) or 'none'})",
                "keep more operators (prune --keep OP) or edit the space file",
            )
        # frozen: normalise through object.__setattr__ so equal spaces compare equal
        object.__setattr__(self, "ops", canonical_order(ops))
        object.__setattr__(self, "dropped", tuple(self.dropped))
        object.__setattr__(self, "notes", tuple(self.notes))

    @classmethod
    def default(cls) -> SearchSpace:
        """The eight DARTS operators."""
        return cls(DARTS_OPS)

    @classmethod
    def el_darts(cls) -> SearchSpace:
        """EL-DARTS' four operators (the space used when no space file is given)."""
        return cls(EL_DARTS_OPS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": list(self.ops),
            "profile": self.profile,
            "dropped": [d.to_dict() for d in self.dropped],
            "notes": list(self.notes),
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, SPACE_FORMAT, SPACE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        doc = read_json(path, SPACE_FORMAT, SPACE_VERSION, "search space")
        ops = require(doc, "ops", list, path)
        if not all(isinstance(o, str) for o in ops):
            raise EdgenasError(f"{path}: field 'ops' should be a list of operator names",
                               "write it like [\"skip_connect\", \"sep_conv_3x3\"]")
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise EdgenasError(f"{path}: field 'ops' names unknown operator(s) {', '.join(unknown)}",
                               f"choose from: {', '.join(OPS)}")
        profile = doc.get("profile")
        if profile is not None and not isinstance(profile, str):
            raise EdgenasError(f"{path}: field 'profile' should be a string or null",
                               "fix the field or regenerate the file")
        dropped = []
        for i, d in enumerate(doc.get("dropped") or []):
            where = f"{path} (dropped[{i}])"
            if not isinstance(d, dict):
                raise EdgenasError(f"{where}: should be an object", "regenerate the file with edgenas prune")
            numbers = d.get("numbers") or {}
            if not isinstance(numbers, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()
            ):
                raise EdgenasError(f"{where}: field 'numbers' should map names to numbers",
                                   "regenerate the file with edgenas prune")
            dropped.append(DroppedOp(require(d, "op", str, where), require(d, "rule", str, where),
                                     require(d, "reason", str, where),
                                     {str(k): float(v) for k, v in numbers.items()}))
        notes = doc.get("notes") or []
        try:
            return cls(tuple(ops), tuple(dropped), profile, tuple(str(n) for n in notes))
        except EdgenasError as e:
            raise EdgenasError(f"{path}: {e.message}", e.hint) from None
