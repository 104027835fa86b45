"""Cell topology: edges of a cell and where reductions sit, read alike by the supernet and the evaluation network."""

from __future__ import annotations

import pytest

from edgenas.cells import edge_inputs, edge_stride, num_edges, reduction_cells
from edgenas.genotypes import GENOTYPES
from edgenas.nets import build_network, default_config
from edgenas.search.supernet import SupernetConfig


def test_edges_of_a_cell() -> None:
    assert edge_inputs(2) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    for steps in range(1, 6):
        assert num_edges(steps) == len(edge_inputs(steps))
    assert num_edges(4) == 14  # the DARTS cell
    assert [edge_stride(True, i) for i in range(4)] == [2, 2, 1, 1]
    assert [edge_stride(False, i) for i in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("layers, expected", [(1, ()), (2, (1,)), (3, (1, 2)), (4, (1, 2)), (5, (1, 3)),
                                              (8, (2, 5)), (14, (4, 9)), (20, (6, 13))])
def test_reduction_cells(layers: int, expected: tuple[int, ...]) -> None:
    assert reduction_cells(layers) == expected
    # the supernet searches the cells in the places the evaluation network runs them
    assert SupernetConfig(("none", "skip_connect"), layers=layers).reduction_cells == expected
    assert default_config("cifar10", layers=layers).reduction_cells == expected


def test_short_networks_use_both_cell_types() -> None:
    g = GENOTYPES["DARTS_V2"]
    two = build_network(g, default_config("cifar10", C=4, layers=2, input_hw=(8, 8)))
    assert [c.reduction for c in two.cells] == [False, True]
    one = build_network(g, default_config("cifar10", C=4, layers=1, input_hw=(1, 1)))
    assert [c.reduction for c in one.cells] == [False]


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
def test_auxiliary_head_reads_the_last_reduction_cell(layers: int) -> None:
    net = build_network(GENOTYPES["DARTS_V2"], default_config("cifar10", C=2, layers=layers, input_hw=(8, 8)))
    assert net.aux_after == 2 * layers // 3  # DARTS' place, cell 2L//3
