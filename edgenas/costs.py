"""MACs and parameter counts of modules (a layer, an operator, any network), and how counts are written.

Convention (stated in every output): one multiply-add is one MAC; only ``Conv2d`` and ``Linear``
layers are counted (BN, activations, pooling and additions are not), for one input sample. This is
the convention the NAS literature uses for the "mobile setting" (< 600 M MACs at 224x224). thop's
figure is reported beside ours as a cross-check; thop also counts BN and some pooling, so it reads a
little higher on the same network.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.values import MAX_MAGNITUDE, check_number

MAC_CONVENTION = "1 MAC = 1 multiply-add; Conv2d and Linear only; per input sample"


def conv2d_macs(layer: nn.Conv2d, out_shape: torch.Size | tuple[int, ...]) -> int:
    """MACs of one Conv2d for one sample: every output element costs C_in/groups * kH * kW."""
    out_elems = int(torch.Size(out_shape[1:]).numel())
    kh, kw = layer.kernel_size
    return out_elems * (layer.in_channels // layer.groups) * kh * kw


def linear_macs(layer: nn.Linear, out_shape: torch.Size | tuple[int, ...]) -> int:
    """MACs of one Linear for one sample (any leading dims beyond the batch are counted)."""
    out_elems = int(torch.Size(out_shape[1:]).numel())
    return out_elems * layer.in_features


def count_params(model: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    """Learnable parameters, skipping those under any module name prefix in ``exclude``."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not any(name == e or name.startswith(e + ".") for e in exclude)
    )


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Conv2d + Linear MACs of one forward pass at ``input_shape`` (C, H, W), per sample.

    Runs the model once on a zero batch of one, in eval mode, with forward hooks; the model's
    training mode is restored afterwards.
    """
    total = 0

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += conv2d_macs(module, out.shape)
        elif isinstance(module, nn.Linear):
            total += linear_macs(module, out.shape)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        x = torch.zeros((1, *input_shape), device=p.device if p is not None else None,
                        dtype=p.dtype if p is not None else None)
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def thop_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """thop's MAC figure for the same input (cross-check); ``None`` if thop is missing or fails.

    thop attaches buffers to the modules it profiles, so it runs on a copy.
    """
    try:
        import thop
    except ImportError:
        return None
    clone = copy.deepcopy(model).eval()
    p = next(clone.parameters(), None)
    x = torch.zeros((1, *input_shape), device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None else None)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = thop.profile(clone, inputs=(x,), verbose=False)
    except Exception:
        return None
    return int(macs)


@dataclass(frozen=True)
class CostReport:
    macs: int
    params: int
    thop_macs: int | None
    input_shape: tuple[int, ...]
    convention: str = MAC_CONVENTION

    def to_dict(self) -> dict[str, object]:
        return {
            "macs": self.macs,
            "params": self.params,
            "thop_macs": self.thop_macs,
            "input_shape": list(self.input_shape),
            "convention": self.convention,
        }


def measure_costs(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    exclude_params: tuple[str, ...] = (),
    with_thop: bool = True,
) -> CostReport:
    return CostReport(
        macs=count_macs(model, input_shape),
        params=count_params(model, exclude_params),
        thop_macs=thop_macs(model, input_shape) if with_thop else None,
        input_shape=tuple(input_shape),
    )


@functools.lru_cache(maxsize=4096)
def _op_macs(op: str, C: int, H: int, W: int, stride: int) -> int:
    from edgenas.ops import build_op

    return count_macs(build_op(op, C, stride), (C, H, W))


class OpInstance(Protocol):
    """One operator at one input shape (a network's :class:`edgenas.nets.OpShape`, a profile's key)."""

    @property
    def op(self) -> str: ...
    @property
    def C(self) -> int: ...
    @property
    def H(self) -> int: ...
    @property
    def W(self) -> int: ...
    @property
    def stride(self) -> int: ...


def op_macs(shape: OpInstance) -> int:
    """MACs of one cell operator at ``shape``, cached."""
    return _op_macs(shape.op, shape.C, shape.H, shape.W, shape.stride)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_count(text: str | int | float, what: str = "budget") -> int:
    """Parse ``600M``, ``0.6G``, ``600000000`` or ``1.5e8`` into an integer."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([kKmMgGtT]?)\s*(?:MACs?|macs?)?\s*", str(text))
        if not m:
            raise EdgenasError(f"cannot read {what} {text!r}", "write it like 600M, 0.6G or 600000000")
        value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    check_number(value, what, above=0, maximum=MAX_MAGNITUDE, hint="give a positive count such as 600M")
    return int(round(value))


def format_count(n: float | int | None, unit: str = "") -> str:
    """``3349342 -> '3.349 M'``: short human form for tables."""
    if n is None:
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()
