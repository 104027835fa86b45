"""Search spaces: which operators a search may choose, and why the others were dropped.

A :class:`SearchSpace` is what ``edgenas prune`` writes (``space.json``) and ``edgenas search``
reads. The pruning rules (see :func:`prune`) follow the argument of EL-DARTS ("Efficient and
Lightweight Differentiable Architecture Search", Electronics 15(2):314, 2026, Sec. 3.1: keep one
operator per role, prefer the cheaper kernel since two stacked 3x3 convolutions cover a 5x5
receptive field, drop the zero operator), but apply it to numbers measured on the target device
rather than a fixed list.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenas.errors import EdgenasError
from edgenas.files import read_json, require, write_json
from edgenas.ops import DARTS_OPS, EL_DARTS_OPS, OPS, get_op
from edgenas.values import check_number

if TYPE_CHECKING:
    from edgenas.profiling import Profile, Shape

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
        # 'none' only weighs an edge (derivation never picks it), so a space needs two operators
        # that carry features for the search to choose between anything
        real = [o for o in ops if not OPS[o].is_zero]
        if len(real) < 2:
            raise EdgenasError(
                f"a search space needs at least 2 operators besides 'none', got {len(real)} "
                f"({', '.join(ops) or 'none'})",
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


# --- pruning a profile into a space ---------------------------------------------------------------

@dataclass(frozen=True)
class OpTotals:
    """One operator's cost summed over a set of shapes (a network using it once at each)."""

    latency_ms: float
    macs: int
    params: int
    memory_bytes: int
    spread_ms: float = 0.0  # sum over the shapes of half the p10-p90 width: the measurement's own noise

    def no_worse_than(self, other: OpTotals) -> bool:
        return (self.latency_ms <= other.latency_ms and self.macs <= other.macs
                and self.params <= other.params and self.memory_bytes <= other.memory_bytes)

    def numbers(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}latency_ms": round(self.latency_ms, 6), f"{prefix}macs": float(self.macs),
                f"{prefix}params": float(self.params), f"{prefix}memory_bytes": float(self.memory_bytes)}

    def describe(self) -> str:
        from edgenas.costs import format_count

        return (f"{self.latency_ms:.3f} ms, {format_count(self.macs)} MACs, "
                f"{format_count(self.params)} params, {self.memory_bytes / 2**20:.2f} MiB")


def op_totals(profile: Profile, op: str, shapes: list[Shape]) -> OpTotals:
    """Sum ``op``'s median latency, MACs, params and memory over ``shapes``.

    Entries as timed, without a network's calibration scale: pruning compares operators shape by
    shape, not inside one network (the scales belong to whole-network predictions).
    """
    entries = [profile.lookup(op, s.C, s.H, s.W, s.stride) for s in shapes]
    if any(e is None for e in entries):
        raise EdgenasError(f"the profile lacks {op} at some of the shapes compared",
                           "profile every operator at the same shapes")
    return OpTotals(sum(e.latency.median for e in entries), sum(e.macs for e in entries),
                    sum(e.params for e in entries), sum(e.memory_bytes for e in entries),
                    sum((e.latency.p90 - e.latency.p10) / 2 for e in entries))


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`prune`: user overrides and the optional latency-ratio rule."""

    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    max_latency_ratio: float | None = None


def pool_choice(members: list[str], totals: dict[str, OpTotals]) -> tuple[str, str]:
    """The parameter-free operator a role keeps, and a note with the margin used.

    The paper's operator (EL-DARTS keeps max_pool_3x3) stays unless another is faster by more than
    the two measurements' own spread (the sum of their half p10-p90 widths): a difference inside
    the noise says nothing about the device.
    """
    fastest = min(members, key=lambda o: totals[o].latency_ms)
    preferred = next((o for o in members if o in EL_DARTS_OPS), fastest)
    if preferred == fastest:
        return fastest, f"{fastest} is the fastest of {', '.join(members)}"
    gap = totals[preferred].latency_ms - totals[fastest].latency_ms
    margin = totals[preferred].spread_ms + totals[fastest].spread_ms
    if gap > margin:
        return fastest, (f"{fastest} replaces {preferred}: faster by {gap:.4f} ms, more than the measured "
                         f"spread margin {margin:.4f} ms")
    return preferred, (f"{preferred} kept over {fastest}: {fastest} is faster by only {gap:.4f} ms, within the "
                       f"measured spread margin {margin:.4f} ms")


@dataclass
class Pruning:
    """What the rules read and change: each operator's totals, the operators still kept, what was
    dropped and the notes for the reader."""

    config: PruneConfig
    totals: dict[str, OpTotals]
    kept: list[str]
    dropped: list[DroppedOp] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def open_ops(self) -> list[str]:
        """The kept operators a rule may still drop (``--keep`` protects an operator from every rule)."""
        return [op for op in self.kept if op not in self.config.keep]

    def drop(self, op: str, rule: str, reason: str, numbers: dict[str, float]) -> None:
        self.kept.remove(op)
        self.dropped.append(DroppedOp(op, rule, reason, numbers))


#: One rule's verdicts: (operator, reason, numbers) for each operator it drops, yielded one at a
#: time so the next verdict already sees the operators dropped before it.
Verdicts = Iterator[tuple[str, str, dict[str, float]]]


def user_rule(p: Pruning) -> Verdicts:
    """``--drop`` removes an operator."""
    for op in p.config.drop:
        yield op, "dropped by --drop", p.totals[op].numbers()


def zero_rule(p: Pruning) -> Verdicts:
    """``none`` carries no features; DARTS only uses it to weigh edges."""
    for op in p.open_ops():
        if get_op(op).is_zero:
            yield op, "carries no features; DARTS only uses it to weigh edges", p.totals[op].numbers()


def kernel_rule(p: Pruning) -> Verdicts:
    """A larger kernel goes when a kept smaller kernel of its family is no worse in latency, MACs,
    params and memory (two stacked 3x3 layers cover a 5x5's receptive field)."""
    totals = p.totals
    for op in sorted(p.open_ops(), key=lambda n: get_op(n).kernel or 0):
        spec = get_op(op)
        if spec.kernel is None or spec.parameter_free:
            continue
        smaller = [o for o in p.kept if get_op(o).family == spec.family and (get_op(o).kernel or 0) < spec.kernel]
        winner = next((o for o in smaller if totals[o].no_worse_than(totals[op])), None)
        if winner is not None:
            yield (op, f"{winner} is no worse in latency, MACs, params and memory "
                       f"({totals[winner].describe()} vs {totals[op].describe()}); stacked "
                       f"{get_op(winner).kernel}x{get_op(winner).kernel} layers cover its receptive field",
                   {**totals[op].numbers(), **totals[winner].numbers("than_")})
        elif smaller:
            p.notes.append(f"{op} kept: no smaller {spec.family} kernel is no worse on every count "
                           f"({op}: {totals[op].describe()}; "
                           + "; ".join(f"{o}: {totals[o].describe()}" for o in smaller) + ")")


def pool_rule(p: Pruning) -> Verdicts:
    """Parameter-free operators of one family play one role: one stays (see :func:`pool_choice`)."""
    totals = p.totals
    families: dict[str, list[str]] = {}
    for op in p.kept:
        spec = get_op(op)
        if spec.parameter_free and not spec.is_zero:
            families.setdefault(spec.family, []).append(op)
    for family, members in families.items():
        if len(members) < 2:
            continue
        winner, margin_note = pool_choice(members, totals)
        p.notes.append(margin_note)
        for op in members:
            if op == winner or op in p.config.keep:
                continue
            yield (op, f"{winner} plays the same parameter-free {family} role ({totals[winner].latency_ms:.3f} vs "
                       f"{totals[op].latency_ms:.3f} ms); {margin_note}",
                   {**totals[op].numbers(), **totals[winner].numbers("than_"),
                    "margin_ms": round(totals[op].spread_ms + totals[winner].spread_ms, 6)})


def latency_rule(p: Pruning) -> Verdicts:
    """With ``--max-latency-ratio X``: an operator slower than X times the median parametric
    operator goes."""
    ratio = p.config.max_latency_ratio
    if ratio is None:
        return
    totals = p.totals
    parametric = [o for o in totals if not get_op(o).parameter_free]
    if not parametric:
        raise EdgenasError("--max-latency-ratio compares with the median parametric operator, "
                           "but the profile has none", "profile a convolution too, or drop the option")
    median = statistics.median(totals[o].latency_ms for o in parametric)
    limit = ratio * median
    p.notes.append(f"latency limit {ratio:g} x median parametric op ({median:.3f} ms) = {limit:.3f} ms")
    for op in p.open_ops():
        if totals[op].latency_ms > limit:
            yield (op, f"{totals[op].latency_ms:.3f} ms is {totals[op].latency_ms / median:.2f} x the median "
                       f"parametric op ({median:.3f} ms), above the limit {ratio:g} x",
                   {**totals[op].numbers(), "median_parametric_ms": round(median, 6),
                    "max_latency_ratio": float(ratio)})


#: The pruning rules by name (the ``rule`` of a :class:`DroppedOp`), applied in this order.
RULES: tuple[tuple[str, Callable[[Pruning], Verdicts]], ...] = (
    ("user", user_rule), ("zero", zero_rule), ("kernel", kernel_rule), ("pool", pool_rule),
    ("latency", latency_rule),
)


def prune(profile: Profile, config: PruneConfig = PruneConfig(), source: str | None = None) -> SearchSpace:
    """Apply the pruning :data:`RULES` in order to the profile's measured operators.

    Every operator is compared on its cost summed over the shapes the profile measured for all
    operators (what a network using it once at each of those positions pays); ``--keep`` protects an
    operator from every rule. An operator of the DARTS set the profile lacks is listed as dropped
    by the rule ``unmeasured``, so it is never silently absent.
    """
    measured = profile.ops()
    for name in (*config.keep, *config.drop):
        get_op(name)
        if name not in measured:
            raise EdgenasError(f"operator {name!r} is not in the profile {source or ''}".rstrip(),
                               f"profile it first (edgenas profile --ops ...); measured: {', '.join(measured)}")
    both = sorted(set(config.keep) & set(config.drop))
    if both:
        raise EdgenasError(f"{', '.join(both)} both kept and dropped", "name an op in --keep or --drop, not both")
    if config.max_latency_ratio is not None:
        check_number(config.max_latency_ratio, "--max-latency-ratio", above=0, hint="pass e.g. --max-latency-ratio 3")

    # shapes every op was measured at, so sums compare like with like
    shapes = [s for s in profile.shapes()
              if all(profile.lookup(op, s.C, s.H, s.W, s.stride) for op in measured)]
    if not shapes:
        raise EdgenasError("no shape was measured for every operator in the profile",
                           "profile all operators at the same shapes")
    where = f"summed over {len(shapes)} shape(s): {', '.join(map(str, shapes))}"
    p = Pruning(config, {op: op_totals(profile, op, shapes) for op in measured}, list(measured),
                notes=[f"costs are {where}; {profile.units()}, mode {profile.mode}"])
    for op in DARTS_OPS:
        if op not in measured:  # never silently absent: say the space lacks it and how to add it
            p.dropped.append(DroppedOp(op, "unmeasured", "the profile has no entries for it; measure it with "
                                       f"edgenas profile --ops {op} to consider it", {}))
    for op in measured:
        lacking = [str(s) for s in profile.shapes() if not profile.lookup(op, s.C, s.H, s.W, s.stride)]
        if lacking:
            p.notes.append(f"{op} has no entries at {', '.join(lacking)}; costs are compared without those shapes")
    for rule, verdicts in RULES:
        for op, reason, numbers in verdicts(p):
            p.drop(op, rule, reason, numbers)

    try:
        return SearchSpace(tuple(p.kept), tuple(p.dropped), source, tuple(p.notes))
    except EdgenasError as e:
        raise EdgenasError(f"pruning leaves {len(p.kept)} operator(s) ({', '.join(p.kept) or 'none'}): {e.message}",
                           "keep more operators with --keep OP, or loosen --max-latency-ratio") from None
