"""Preparing what a reader returned: label checks, normalisation statistics, class-balanced
subsets, channel count and image size."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from edgenas.data.spec import DataSpec
from edgenas.errors import EdgenasError


def check_labels(spec: DataSpec, train_labels: torch.Tensor, test_labels: torch.Tensor,
                 classes: tuple[str, ...] | list[str]) -> None:
    """Every dataset, whatever its kind: both splits non-empty, at least two classes (one class
    makes a classifier trivially 100 % right), and every label naming one of them (a label past
    the class count would fail deep inside an epoch, after the run folder is written)."""
    if len(classes) < 2:
        raise EdgenasError(f"{spec} has {len(classes)} class(es) ({', '.join(classes) or 'none'})",
                           "a classifier needs at least two classes: add class folders")
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if len(labels) == 0:
            raise EdgenasError(f"{spec}: the {split} split holds no images", f"add images to its {split} split")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(classes):
            bad = lo if lo < 0 else hi
            raise EdgenasError(f"{spec}: a {split} label is {bad}, "
                               f"outside the {len(classes)} classes 0..{len(classes) - 1}",
                               "fix or regenerate the label file")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``uint8`` images on the 0..1 scale, exact from value histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * values).sum())
        means.append(round(mean, 4))
        stds.append(round(max(float((p * (values - mean) ** 2).sum()), 1e-12) ** 0.5, 4))
    return tuple(means), tuple(stds)


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices (sorted) with classes as balanced as the data allows, chosen by ``seed``."""
    if n < 1:
        raise EdgenasError(f"subset size {n} is not positive", "use --subset 1 or more")
    if n >= len(labels):
        return torch.arange(len(labels))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    lab = labels.numpy()[perm]
    rank_in_class = np.zeros(len(perm), dtype=np.int64)
    seen: Counter[int] = Counter()
    for i, c in enumerate(lab.tolist()):
        rank_in_class[i] = seen[c]
        seen[c] += 1
    order = np.lexsort((np.arange(len(perm)), rank_in_class))  # round-robin over classes
    return torch.from_numpy(np.sort(perm[order[:n]]))


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels not in (1, 3):
        raise EdgenasError(f"cannot make images with {channels} channels", "use 1 (grey) or 3 (RGB)")
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as PIL's "L"
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def resize_all(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[2] == size and x.shape[3] == size:
        return x
    out = [_resize(chunk, size) for chunk in x.split(1024)]
    return torch.cat(out)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    y = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)
