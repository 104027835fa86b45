"""The search-method protocol: the hooks where a method differs from DARTS, and the registry.

A method is a frozen dataclass whose fields are its settings (``--partial-k``, ablation switches,
...). The supernet asks it how to build an edge (which channels go through the operators, how their
outputs are mixed), for the architecture parameters, and for the weights of each forward pass; the
loop asks it for extra loss terms of the architecture step. Everything else (the network, the
bilevel loop, derivation, checkpoints, history) is shared, so a method module states only what
differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from edgenas.cells import CELL_TYPES
from edgenas.errors import EdgenasError
from edgenas.search.batched import FastMixedOp
from edgenas.search.edges import AllChannels, EdgeNode, MixedOp, SelectedEdge
from edgenas.search.supernet import ArchModule, Supernet, SupernetConfig
from edgenas.space import SearchSpace
from edgenas.values import conform, field_types


def node_softmax(raw: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax over each node's incoming edges (2, 3, ..., steps + 1 of them), in edge order."""
    sizes = [n + 2 for n in range(steps)]
    return torch.cat([part.softmax(0) for part in raw.split(sizes)])


class ArchParameters(ArchModule):
    """Operator logits alpha (edges, ops) and optional raw edge coefficients (edges,) per cell type.

    DARTS initialises alpha as 1e-3 * N(0, 1); edge coefficients are initialised by the method.
    """

    def __init__(self, cfg: SupernetConfig, *, alpha: bool, edges: Mapping[str, torch.Tensor] | None,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (cfg.num_edges, len(cfg.ops))
        self.alpha = nn.ParameterDict(
            {t: nn.Parameter(1e-3 * torch.randn(shape, device=device, dtype=dtype)) for t in CELL_TYPES}
            if alpha else {})
        self.edges = nn.ParameterDict({t: nn.Parameter(v) for t, v in (edges or {}).items()})


@dataclass(frozen=True)
class Method:
    """DARTS' behaviour at every hook; subclasses override only what their paper changes."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_layers: ClassVar[int] = 8
    #: share of the epochs before architecture updates start when --warmup-epochs is not given
    warmup_fraction: ClassVar[float] = 0.0
    #: attention-DARTS: a shortcut around each cell
    cell_residual: ClassVar[bool] = False

    # --- the search space and checks ---

    def resolve_space(self, given: SearchSpace | None) -> SearchSpace:
        """The operators to search over, from ``--space`` (``None``: the method's default)."""
        return given if given is not None else SearchSpace.default()

    def check(self, cfg: SupernetConfig) -> None:
        """Raise EdgenasError if the method cannot run on ``cfg`` (e.g. K does not divide C)."""

    # --- building the network ---

    def selector(self, C: int, stride: int, *, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        """Which channels of an edge input go through the operators (and how they come back)."""
        return AllChannels(C, stride)

    def mixer(self, ops: tuple[str, ...], C: int, stride: int, *, fast: bool = False, device: Any = None,
              dtype: torch.dtype | None = None) -> nn.Module:
        """How the operators' outputs on the selected channels are combined (``fast``: with the
        batched layer, ``SupernetConfig.fast_path``)."""
        return (FastMixedOp if fast else MixedOp)(ops, C, stride, device=device, dtype=dtype)

    def build_edge(self, ops: tuple[str, ...], C: int, stride: int, *, fast: bool = False, device: Any = None,
                   dtype: torch.dtype | None = None) -> nn.Module:
        selector = self.selector(C, stride, device=device, dtype=dtype)
        return SelectedEdge(selector, self.mixer(ops, selector.width, stride, fast=fast, device=device, dtype=dtype))

    def build_node(self, ops: tuple[str, ...], C: int, strides: list[int], *, fast: bool = False,
                   device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        """An intermediate node fed by edges of these strides (one per earlier state); ``fast``:
        built from the batched layer where the method has one (``SupernetConfig.fast_path``)."""
        return EdgeNode([self.build_edge(ops, C, s, fast=fast, device=device, dtype=dtype) for s in strides])

    def init_edges(self, n_edges: int, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """Initial raw edge coefficients of one cell type, or None when edges are not weighted."""
        return None

    def build_arch(self, cfg: SupernetConfig, *, device: Any = None, dtype: torch.dtype | None = None) -> ArchModule:
        edges = {}
        for t in CELL_TYPES:
            init = self.init_edges(cfg.num_edges, device=device, dtype=dtype)
            if init is not None:
                edges[t] = init
        return ArchParameters(cfg, alpha=True, edges=edges or None, device=device, dtype=dtype)

    # --- weights of a forward pass ---

    def op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor | None:
        """Operator weights (edges, ops) the edges of ``cell_type`` mix with; None if edges make their own."""
        return net.arch.alpha[cell_type].softmax(-1)

    def edge_weights(self, net: Supernet, cell_type: str) -> torch.Tensor | None:
        """Per-node normalised edge weights (edges,), or None (every edge counts 1)."""
        if cell_type not in net.arch.edges:
            return None
        return node_softmax(net.arch.edges[cell_type], net.cfg.steps)

    def relaxed_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor:
        """Differentiable operator weights (edges, ops) of the relaxed architecture (for penalties)."""
        w = self.op_weights(net, cell_type)
        assert w is not None, f"{self.name} must override relaxed_op_weights"
        return w

    def derivation_op_weights(self, net: Supernet, cell_type: str) -> torch.Tensor:
        """Operator weights the genotype is derived from."""
        return self.relaxed_op_weights(net, cell_type)

    # --- the architecture step ---

    def loss_terms(self, net: Supernet, epoch: int) -> dict[str, torch.Tensor]:
        """Extra terms added to the architecture step's loss (e.g. EL-DARTS' entropy)."""
        return {}

    def epoch_info(self, net: Supernet, epoch: int) -> dict[str, float]:
        """Numbers worth recording per epoch (temperature, entropy, ...)."""
        return {}

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- registry ------------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator adding a method under its ``name`` (duplicates refused)."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise EdgenasError(f"unknown search method {name!r}", f"choose from: {', '.join(METHODS)}") from None


def _flag(key: str, value: Any) -> str:
    return f"--no-{key.replace('_', '-')}" if value is False else f"--{key.replace('_', '-')}"


def make_method(name: str, settings: Mapping[str, Any] | None = None) -> Method:
    """Method ``name`` with ``settings`` (None values = the method's default) replacing its defaults.

    A setting the method does not have is an error naming the option, so a user who passes
    ``--partial-k`` to DARTS learns it is ignored rather than silently losing it.
    """
    cls = get_method(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = [k for k in given if k not in fields]
    if unknown:
        own = ", ".join(f"--{f.replace('_', '-')}" for f in sorted(fields)) or "none"
        raise EdgenasError(f"{_flag(unknown[0], given[unknown[0]])} does not apply to method {name!r}",
                           f"its settings: {own}")
    types = field_types(cls)  # settings may come from a TOML file, untyped
    return cls(**{k: conform(v, types[k], f"{name} setting {k}") for k, v in given.items()})
