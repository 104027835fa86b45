"""Genotype data: built-ins, JSON and literal round trips, and every validation rule."""

from __future__ import annotations

import json

import pytest

from edgenas.errors import EdgenasError
from edgenas.genotypes import (
    GENOTYPES,
    Genotype,
    get_genotype,
    load_genotype,
    parse_literal,
    save_genotype,
)

# The literal exactly as the PC-DARTS repository prints it (range concat, one line).
PC_DARTS_CIFAR_LITERAL = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), "
    "('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
    "('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
    "('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"
)


@pytest.mark.parametrize("name", list(GENOTYPES))
def test_builtin_round_trips(name: str, tmp_path) -> None:
    g = get_genotype(name)
    g.validate()
    assert g.steps == 4
    assert Genotype.from_dict(g.to_dict()) == g
    assert parse_literal(g.to_literal()) == g
    path = save_genotype(g, tmp_path / f"{name}.json", meta={"source": "test"})
    doc = json.loads(path.read_text())
    assert doc["format"] == "edgenas.genotype" and doc["version"] == 1 and doc["meta"] == {"source": "test"}
    assert load_genotype(path) == g
    assert load_genotype(name) is g


def test_published_literal_matches_builtin(tmp_path) -> None:
    assert parse_literal(PC_DARTS_CIFAR_LITERAL) == GENOTYPES["PC_DARTS_cifar"]
    # inside a module with an assignment, and inside a search-log line that is not Python
    f = tmp_path / "g.py"
    f.write_text("from collections import namedtuple\nX = " + PC_DARTS_CIFAR_LITERAL + "\n")
    assert load_genotype(f) == GENOTYPES["PC_DARTS_cifar"]
    f.write_text("10/01 03:14:15 PM genotype = " + PC_DARTS_CIFAR_LITERAL + "\n")
    assert load_genotype(f) == GENOTYPES["PC_DARTS_cifar"]
    assert load_genotype(PC_DARTS_CIFAR_LITERAL) == GENOTYPES["PC_DARTS_cifar"]


def test_literal_positional_fields_and_lists() -> None:
    g = GENOTYPES["DARTS_V2"]
    text = f"Genotype({list(g.normal)!r}, [2, 3, 4, 5], {list(g.reduce)!r}, (2, 3, 4, 5))"
    assert parse_literal(text) == g


def test_literal_never_evaluates_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    text = (f"Genotype(normal=__import__('pathlib').Path({str(marker)!r}).touch(), "
            "normal_concat=[2], reduce=[], reduce_concat=[2])")
    with pytest.raises(EdgenasError, match="'normal' is not a literal"):
        parse_literal(text)
    assert not marker.exists()


def _with(name: str = "DARTS_V2", **changes) -> dict:
    d = GENOTYPES[name].to_dict()
    d.update(changes)
    return d


def _edges_with(i: int, edge: list) -> list:
    edges = GENOTYPES["DARTS_V2"].to_dict()["normal"]
    edges[i] = edge
    return edges


@pytest.mark.parametrize(
    "doc, message",
    [
        (_with(normal=_edges_with(3, ["sep_conv_3x3", 4])), r"normal\[3\]: input index 4 does not precede node 1"),
        (_with(normal=_edges_with(0, ["sep_conv_3x3", 2])), r"normal\[0\]: input index 2 does not precede node 0"),
        (_with(normal=_edges_with(5, ["sep_conv_3x3", -1])), r"normal\[5\]: input index -1 is negative"),
        (_with(normal=_edges_with(2, ["conv_7x7", 0])), r"normal\[2\]: unknown operator 'conv_7x7'"),
        (_with(normal=_edges_with(1, ["none", 0])), r"normal\[1\]: 'none' cannot be chosen"),
        (_with(reduce=GENOTYPES["DARTS_V2"].to_dict()["reduce"][:7]),
         r"reduce: 7 edges; every intermediate node takes exactly 2"),
        (_with(normal=[]), r"normal: 0 edges"),
        (_with(normal_concat=[2, 3, 4, 6]), r"normal_concat: 6 is not an intermediate node of this cell \(2\.\.5\)"),
        (_with(reduce_concat=[1, 2]), r"reduce_concat: 1 is not an intermediate node"),
        (_with(reduce_concat=[2, 3, 3]), r"reduce_concat: node 3 is listed twice"),
        (_with(normal_concat=[]), r"normal_concat: is empty"),
        (_with(normal_concat="2345"), r"normal_concat: should be a list of node indices"),
        (_with(normal=_edges_with(4, ["sep_conv_3x3"])), r"normal\[4\]: should be \[operator, input index\]"),
        (_with(normal=_edges_with(4, ["sep_conv_3x3", True])), r"normal\[4\]: should be \[operator, input index\]"),
        ({k: v for k, v in _with().items() if k != "reduce"}, r"field 'reduce' is missing"),
        ([1, 2], r"a genotype must be an object"),
    ],
)
def test_validation_names_the_field(doc, message) -> None:
    with pytest.raises(EdgenasError, match=message):
        Genotype.from_dict(doc, source="g.json")
    with pytest.raises(EdgenasError, match="^g.json: "):
        Genotype.from_dict(doc, source="g.json")


def test_allowed_ops_restricts_space() -> None:
    g = GENOTYPES["DARTS_V2"]
    g.validate(allowed_ops=g.ops())
    with pytest.raises(EdgenasError, match=r"normal\[7\]: operator 'dil_conv_3x3' is not in the search space"):
        g.validate(allowed_ops=["sep_conv_3x3", "skip_connect", "max_pool_3x3"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello world", "no Genotype"),
        ("Genotype(normal=[('sep_conv_3x3', 0)", "never closed"),
        ("Genotype(normal=[('sep_conv_3x3' 0)], normal_concat=[2], reduce=[], reduce_concat=[2])", "not valid Python"),
        (PC_DARTS_CIFAR_LITERAL.replace("normal_concat", "normal_cat"), "unknown field 'normal_cat'"),
        (PC_DARTS_CIFAR_LITERAL + "\n" + GENOTYPES["DARTS_V2"].to_literal(), "found 2 different"),
        (PC_DARTS_CIFAR_LITERAL.replace("range(2, 6)", "range(x)", 1), "'normal_concat' is not a literal"),
    ],
)
def test_bad_literals(text: str, message: str) -> None:
    with pytest.raises(EdgenasError, match=message):
        parse_literal(text, "g.txt")


def test_load_errors(tmp_path) -> None:
    with pytest.raises(EdgenasError, match="unknown built-in genotype 'NOPE'"):
        get_genotype("NOPE")
    with pytest.raises(EdgenasError, match="neither a built-in genotype.*DARTS_V2"):
        load_genotype("DARTS_V3")
    with pytest.raises(EdgenasError, match="does not exist"):
        load_genotype(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgenasError, match="not valid JSON"):
        load_genotype(bad)
    bad.write_text(json.dumps({"format": "edgenas.profile", "version": 1}))
    with pytest.raises(EdgenasError, match="field 'format'"):
        load_genotype(bad)
    binary = tmp_path / "g.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(EdgenasError, match="not text"):
        load_genotype(binary)
    with pytest.raises(EdgenasError, match="is a directory"):
        load_genotype(tmp_path)
