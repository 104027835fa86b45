"""Genotypes: the discrete cell architectures that search hands to retraining and export.

A genotype follows the DARTS encoding (Liu et al., "DARTS: Differentiable Architecture Search",
ICLR 2019, Sec. 2.4): a cell has two inputs (index 0 = output of cell k-2, index 1 = output of cell
k-1) and ``steps`` intermediate nodes; node ``j`` (state ``j + 2``) sums two operations, each
applied to an earlier state, so every node lists exactly two ``(operator, input index)`` edges with
``input index < j + 2``. The cell output concatenates the states named in ``*_concat``.

Genotypes are plain data: a frozen dataclass, a JSON file format (``edgenas.genotype`` v1), and a
reader for the Python literal form the papers' repositories print
(``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``), parsed with
:mod:`ast` only (never ``eval``). The built-in genotypes are the published cells of DARTS (first and
second order) and PC-DARTS (Xu et al., ICLR 2020; searched on CIFAR-10 and on ImageNet).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.cells import CELL_TYPES, DARTS_STEPS, node_states
from edgenas.errors import EdgenasError
from edgenas.files import read_json, write_json

Edge = tuple[str, int]  # (operator name, input state index)

FORMAT = "edgenas.genotype"
VERSION = 1
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
#: Most states a cell output may concatenate: far above any published cell (4 nodes), low enough
#: that a mistyped range is refused before it is built.
MAX_CONCAT = 256


@dataclass(frozen=True)
class Genotype:
    """Two cells (normal, reduction), each a list of edges plus the states its output concatenates.

    Lists passed in are stored as tuples so a genotype is hashable and cannot change under a caller.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in CELL_TYPES:
            object.__setattr__(self, cell, tuple((op, idx) for op, idx in getattr(self, cell)))
            object.__setattr__(self, f"{cell}_concat", tuple(getattr(self, f"{cell}_concat")))

    @property
    def steps(self) -> int:
        """Number of intermediate nodes of the normal cell (two edges per node)."""
        return len(self.normal) // 2

    def cell(self, reduction: bool) -> tuple[tuple[Edge, ...], tuple[int, ...]]:
        """The (edges, concat) pair of the reduction or the normal cell."""
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    def ops(self) -> list[str]:
        """Every operator the genotype uses, first appearance first (deterministic)."""
        return list(dict.fromkeys(op for op, _ in (*self.normal, *self.reduce)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, idx] for op, idx in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, idx] for op, idx in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_literal(self) -> str:
        """The Python literal form the DARTS-family repositories print (readable by parse_literal)."""

        def edges(es: tuple[Edge, ...]) -> str:
            return "[" + ", ".join(f"({op!r}, {idx})" for op, idx in es) + "]"

        return (
            f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    @classmethod
    def from_dict(cls, d: Any, source: str = "") -> Genotype:
        """Build and validate a genotype from its JSON-style dict; messages start with ``source``."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise EdgenasError(f"{where}a genotype must be an object with fields {', '.join(FIELDS)}",
                               "see `edgenas inspect DARTS_V2 --json` for an example")
        for key in FIELDS:
            if key not in d:
                raise EdgenasError(f"{where}field {key!r} is missing",
                                   f"a genotype needs {', '.join(FIELDS)}")
        g = cls(
            normal=_edges(d["normal"], "normal", where),
            normal_concat=_concat(d["normal_concat"], "normal_concat", where),
            reduce=_edges(d["reduce"], "reduce", where),
            reduce_concat=_concat(d["reduce_concat"], "reduce_concat", where),
        )
        g.validate(where=source)
        return g

    def validate(self, allowed_ops: Iterable[str] | None = None, *, where: str = "") -> None:
        """Check every rule of the encoding; the first violation raises, naming its field.

        ``allowed_ops`` restricts operators further (e.g. to a pruned search space); without it any
        registered operator except ``none`` is accepted.
        """
        from edgenas.ops import OPS

        prefix = f"{where}: " if where else ""
        allowed = None if allowed_ops is None else tuple(allowed_ops)
        for cell in CELL_TYPES:
            edges, concat = self.cell(cell == "reduce")
            if not edges or len(edges) % 2:
                raise EdgenasError(
                    f"{prefix}{cell}: {len(edges)} edges; every intermediate node takes exactly 2 inputs",
                    "list two (operator, input index) pairs per node",
                )
            for i, (op, idx) in enumerate(edges):
                field = f"{prefix}{cell}[{i}]"
                spec = OPS.get(op)
                if spec is None:
                    raise EdgenasError(f"{field}: unknown operator {op!r}",
                                       f"choose from: {', '.join(n for n in OPS if not OPS[n].is_zero)}")
                if spec.is_zero:
                    raise EdgenasError(
                        f"{field}: {op!r} cannot be chosen as an operation (it only weighs edges during search)",
                        "derive the genotype from the strongest non-zero operator of each edge",
                    )
                if allowed is not None and op not in allowed:
                    raise EdgenasError(f"{field}: operator {op!r} is not in the search space",
                                       f"allowed: {', '.join(allowed)}")
                node = i // 2
                if idx < 0:
                    raise EdgenasError(f"{field}: input index {idx} is negative",
                                       "0 = cell k-2, 1 = cell k-1, 2.. = earlier intermediate nodes")
                if idx >= node + 2:
                    raise EdgenasError(
                        f"{field}: input index {idx} does not precede node {node}",
                        f"node {node} may take inputs 0..{node + 1}: 0 = cell k-2, 1 = cell k-1, 2.. = earlier nodes",
                    )
            steps = len(edges) // 2
            field = f"{prefix}{cell}_concat"
            if not concat:
                raise EdgenasError(f"{field}: is empty",
                                   f"list the nodes the cell outputs, e.g. {list(node_states(steps))}")
            seen: set[int] = set()
            for s in concat:
                if not 2 <= s < steps + 2:
                    raise EdgenasError(f"{field}: {s} is not an intermediate node of this cell (2..{steps + 1})",
                                       f"e.g. {list(node_states(steps))}")
                if s in seen:
                    raise EdgenasError(f"{field}: node {s} is listed twice", "list each node once")
                seen.add(s)


def _edges(value: Any, field: str, where: str) -> tuple[Edge, ...]:
    if not isinstance(value, (list, tuple)):
        raise EdgenasError(f"{where}field {field!r} should be a list of [operator, input index] pairs, "
                           f"got {type(value).__name__}", "e.g. [[\"sep_conv_3x3\", 0], [\"skip_connect\", 1]]")
    out: list[Edge] = []
    for i, e in enumerate(value):
        ok = (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
              and isinstance(e[1], int) and not isinstance(e[1], bool))
        if not ok:
            raise EdgenasError(f"{where}{field}[{i}]: should be [operator, input index], got {e!r}",
                               "e.g. [\"sep_conv_3x3\", 0]")
        out.append((e[0], e[1]))
    return tuple(out)


def _concat(value: Any, field: str, where: str) -> tuple[int, ...]:
    if isinstance(value, range):
        value = list(value)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in value
    ):
        raise EdgenasError(f"{where}{field}: should be a list of node indices, got {value!r}",
                           "e.g. [2, 3, 4, 5]")
    return tuple(value)


# --- the Python literal form --------------------------------------------------------------------

def _literal_spans(text: str) -> list[str]:
    """Every ``Genotype(...)`` call in ``text``, cut at its matching parenthesis.

    Cutting first lets a literal sit inside anything (a module, an assignment, a search log line
    with a timestamp) without the rest having to be valid Python.
    """
    spans = []
    start = text.find("Genotype(")
    while start >= 0:
        depth, end = 0, -1
        for j in range(start + len("Genotype"), len(text)):
            if text[j] in "([{":
                depth += 1
            elif text[j] in ")]}":
                depth -= 1
                if depth == 0:
                    end = j + 1
                    break
        if end < 0:
            break
        spans.append(text[start:end])
        start = text.find("Genotype(", end)
    return spans


def _literal_value(node: ast.expr, field: str, where: str) -> Any:
    """A field's value: a literal, or ``range(...)`` of integer literals for the concat lists."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and 1 <= len(node.args) <= 3):
        try:
            args = [ast.literal_eval(a) for a in node.args]
        except ValueError:
            args = []
        if args and all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            if args[-1] == 0 and len(args) == 3:
                raise EdgenasError(f"{where}field {field!r}: range() step must not be zero", "e.g. range(2, 6)")
            span = range(*args)
            if len(span) > MAX_CONCAT:
                # refuse before building the list: a typo like range(2, 30000000) would take gigabytes
                raise EdgenasError(f"{where}field {field!r}: {ast.unparse(node)} names {len(span)} states; a cell "
                                   f"concatenates at most {MAX_CONCAT}", "e.g. range(2, 6) for 4 intermediate nodes")
            return list(span)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise EdgenasError(f"{where}field {field!r} is not a literal (only lists, tuples, strings, "
                           "integers and range(a, b) are read)", "write the value out as a list") from None


def parse_literal(text: str, source: str = "") -> Genotype:
    """Read one ``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)``.

    Parsed with :mod:`ast` and :func:`ast.literal_eval`; no code is executed. Positional arguments
    are accepted in the namedtuple's field order.
    """
    where = f"{source}: " if source else ""
    spans = _literal_spans(text)
    if not spans and "Genotype(" in text:
        raise EdgenasError(f"{where}the Genotype(...) literal is never closed", "check its brackets")
    if not spans:
        raise EdgenasError(f"{where}no Genotype(...) literal found",
                           "pass a built-in name, an edgenas genotype JSON file or a file holding "
                           "Genotype(normal=[...], ...)")
    if len(set(spans)) > 1:
        raise EdgenasError(f"{where}found {len(spans)} different Genotype(...) literals",
                           "keep only the one you mean in the file")
    try:
        call = ast.parse(spans[0].strip(), mode="eval").body
    except SyntaxError as e:
        raise EdgenasError(f"{where}the Genotype(...) literal is not valid Python ({e.msg})",
                           "fix its brackets and quotes") from None
    assert isinstance(call, ast.Call)  # guaranteed by the span starting with "Genotype("
    if len(call.args) > len(FIELDS):
        raise EdgenasError(f"{where}Genotype(...) has {len(call.args)} positional values, expected at most 4",
                           f"name the fields: {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    for name, node in zip(FIELDS, call.args):
        values[name] = _literal_value(node, name, where)
    for kw in call.keywords:
        if kw.arg not in FIELDS:
            raise EdgenasError(f"{where}Genotype(...) has an unknown field {kw.arg!r}",
                               f"the fields are {', '.join(FIELDS)}")
        if kw.arg in values:
            raise EdgenasError(f"{where}Genotype(...) gives field {kw.arg!r} twice", "give each field once")
        values[kw.arg] = _literal_value(kw.value, kw.arg, where)
    return Genotype.from_dict(values, source)


# --- built-in genotypes (published cells) -------------------------------------------------------

def _g(normal: list[Edge], reduce: list[Edge]) -> Genotype:
    return Genotype(normal=tuple(normal), normal_concat=node_states(DARTS_STEPS),
                    reduce=tuple(reduce), reduce_concat=node_states(DARTS_STEPS))


GENOTYPES: dict[str, Genotype] = {
    # DARTS first order (Liu et al. 2019)
    "DARTS_V1": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    ),
    # DARTS second order: the cell of the paper's Fig. 4/5 (2.76% on CIFAR-10, 3.3 M params)
    "DARTS_V2": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    ),
    # PC-DARTS searched on CIFAR-10 (Xu et al. 2020; 2.57%, 3.6 M params)
    "PC_DARTS_cifar": _g(
        [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    ),
    # PC-DARTS searched directly on ImageNet (24.2% top-1 in the mobile setting, 5.3 M params)
    "PC_DARTS_image": _g(
        [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
        [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
         ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    ),
}


#: Where each built-in genotype comes from (shown by `edgenas list genotypes`).
SOURCES: dict[str, str] = {
    "DARTS_V1": "DARTS first order, CIFAR-10 (Liu et al., ICLR 2019)",
    "DARTS_V2": "DARTS second order, CIFAR-10 (Liu et al., ICLR 2019)",
    "PC_DARTS_cifar": "PC-DARTS searched on CIFAR-10 (Xu et al., ICLR 2020)",
    "PC_DARTS_image": "PC-DARTS searched on ImageNet (Xu et al., ICLR 2020)",
}


def get_genotype(name: str) -> Genotype:
    try:
        return GENOTYPES[name]
    except KeyError:
        raise EdgenasError(f"unknown built-in genotype {name!r}",
                           f"choose from: {', '.join(GENOTYPES)}, or pass a genotype file") from None


def save_genotype(g: Genotype, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``g`` as an ``edgenas.genotype`` v1 JSON file (atomically); ``meta`` is kept as-is."""
    g.validate()
    return write_json(path, FORMAT, VERSION, {**g.to_dict(), "meta": dict(meta or {})})


def load_genotype(spec: str | Path) -> Genotype:
    """A built-in name, an edgenas genotype JSON file, a file holding the literal, or the literal.

    A file is read as JSON when its text starts with ``{``, otherwise as the Python literal.
    """
    text_spec = str(spec)
    if text_spec in GENOTYPES:
        return GENOTYPES[text_spec]
    if text_spec.lstrip().startswith("Genotype("):
        return parse_literal(text_spec, "genotype literal")
    path = Path(text_spec)
    if not path.exists():
        looks_like_file = path.suffix != "" or "/" in text_spec or "\\" in text_spec
        if looks_like_file:
            raise EdgenasError(f"genotype file {path} does not exist", "check the path")
        raise EdgenasError(f"{text_spec!r} is neither a built-in genotype nor an existing file",
                           f"built-in genotypes: {', '.join(GENOTYPES)}")
    if path.is_dir():
        raise EdgenasError(f"genotype file {path} is a directory", "pass a genotype JSON or literal file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgenasError(f"genotype file {path} is not text",
                           "pass an edgenas genotype JSON file or a file holding Genotype(...)") from None
    if text.lstrip().startswith("{") or path.suffix.lower() == ".json":
        # hand-written files may leave out the header edgenas writes; a wrong header is still refused
        doc = read_json(path, FORMAT, VERSION, "genotype", header_optional=True)
        return Genotype.from_dict(doc, str(path))
    return parse_literal(text, str(path))


def genotype_label(spec: str) -> str:
    """A short name for a genotype spec (what a run folder or export is named after): the built-in
    name, or a file's stem."""
    return spec if spec in GENOTYPES else Path(spec).stem or "genotype"
