"""Measuring a model: top-k accuracy, per-epoch means over ranks, and the one evaluation loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from edgenas.distributed import all_reduce_sum
from edgenas.progress import LoopProgress


def topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many samples have their target among the top k logits, for each k (a device tensor:
    no host synchronisation inside a training loop). k beyond the class count means every class."""
    maxk = min(max(topk), logits.size(1))
    hit = logits.topk(maxk, dim=1).indices.eq(target.unsqueeze(1))  # (B, maxk)
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk])


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each k."""
    n = max(target.numel(), 1)
    return [c * 100.0 / n for c in topk_correct(logits, target, topk).tolist()]


class Loader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and memory format for forward passes on ``device``."""

    amp: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None)


def evaluate(model: nn.Module, loader: Loader, device: torch.device, *,
             criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             precision: Precision = Precision(), progress: LoopProgress | None = None,
             label: str = "test") -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``loader``: the one inference loop.

    Sums are reduced over ranks when distributed (each rank sees a disjoint shard), so every rank
    returns the figure for the whole set.
    """
    criterion = criterion or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    meter = RunningMean()
    batches: Iterable[Any] = progress.batches(loader, len(loader), label) if progress else loader
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                logits = model(x)
            logits = logits.float()
            top1, top5 = topk_correct(logits, y, (1, 5))
            meter.add(y.numel(), loss=criterion(logits, y) * y.numel(), top1=top1 * 100.0, top5=top5 * 100.0)
    model.train(was_training)
    return meter.means(device)


class RunningMean:
    """Per-sample means of a few named sums over an epoch, reduced over ranks at the end.

    ``add(n, name=sum_over_the_n_samples, ...)`` takes device tensors as they are, so a training
    loop never waits on the host; the one synchronisation happens in :meth:`means`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.n = 0

    def add(self, n: int, **sums: torch.Tensor | float) -> None:
        for k, v in sums.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += n

    def means(self, device: torch.device) -> dict[str, float]:
        keys = list(self.sums)
        totals = all_reduce_sum([float(self.sums[k]) for k in keys] + [float(self.n)], device)
        n = max(totals[-1], 1.0)
        return {k: totals[i] / n for i, k in enumerate(keys)}
