"""Cell topology of the DARTS space: the cell types, a cell's edges, and where reduction cells sit.

A cell has two inputs (states 0 and 1, the outputs of the two previous cells) and ``steps``
intermediate nodes; node ``n`` (state ``n + 2``) may read every earlier state, so it has ``n + 2``
incoming edges. Edges are numbered node by node, inputs ascending (Liu et al., "DARTS", ICLR 2019,
Sec. 2.1). Both the search supernet and the evaluation network read these facts from here.
"""

from __future__ import annotations

#: The two cell types a genotype describes, in the order of a genotype's fields.
CELL_TYPES = ("normal", "reduce")
#: Intermediate nodes of the DARTS cell.
DARTS_STEPS = 4


def cell_type(reduction: bool) -> str:
    """The name of a reduction or a normal cell's type."""
    return CELL_TYPES[1] if reduction else CELL_TYPES[0]


def edge_inputs(steps: int) -> list[tuple[int, int]]:
    """(node, input index) of every edge of a cell in the DARTS order: node by node, inputs ascending."""
    return [(node, i) for node in range(steps) for i in range(node + 2)]


def node_states(steps: int) -> tuple[int, ...]:
    """The states of a cell's intermediate nodes (2 .. steps + 1): what a DARTS cell concatenates."""
    return tuple(range(2, steps + 2))


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: 2 + 3 + ... + (steps + 1)."""
    return steps * (steps + 3) // 2


def reduction_cells(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells of a stack of ``layers`` cells.

    DARTS places them at ``layers // 3`` and ``2 * layers // 3``. A stack shorter than three cells
    cannot hold two reductions and a normal cell: two cells get one normal cell followed by one
    reduction (so both cell types of a genotype are used, in search and evaluation alike), and a
    single cell is a normal cell.
    """
    if layers >= 3:
        return (layers // 3, 2 * layers // 3)
    return (1,) if layers == 2 else ()


def edge_stride(reduction: bool, input_index: int) -> int:
    """Stride of an edge: 2 in a reduction cell for edges reading a cell input (states 0 and 1)."""
    return 2 if reduction and input_index < 2 else 1
