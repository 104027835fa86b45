"""Loading a dataset into memory: the reader its kind names, the checks, subsets and training
augmentation, and the :class:`DataBundle` a search or training run works from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from edgenas.data.imagefolder import load_imagefolder
from edgenas.data.prepare import balanced_subset, channel_stats, check_labels, resize_all, to_channels
from edgenas.data.sources import load_cifar, load_fashion_mnist, make_synthetic
from edgenas.data.spec import SYNTHETIC_DEFAULT_N, DataSpec, parse_data_spec
from edgenas.data.tensors import Augment, ImageTensors


@dataclass
class DataBundle:
    """A loaded dataset: train/test splits and what a network needs to know about them."""

    spec: DataSpec
    train: ImageTensors
    test: ImageTensors
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)  # decode seconds, cache hit, sizes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])


def search_split(bundle: DataBundle, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """The DARTS search split: a seeded half of the training set for weights, the rest for alphas."""
    n = len(bundle.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = n // 2
    return bundle.train.subset(perm[:half].sort().values), bundle.train.subset(perm[half:].sort().values)


# --- loading -----------------------------------------------------------------------------------

def load_data(spec: DataSpec | str, *, subset: int | None = None, test_subset: int | None = None,
              cutout: int = 0, augment: bool = True, flip: bool | None = None, download: bool = False,
              channels: int | None = None, image_size: int | None = None, seed: int = 0) -> DataBundle:
    """Load a dataset into memory with its normalisation and the training augmentation.

    ``channels`` forces 1 (luma) or 3 (grey repeated) channels; ``None`` keeps the data's own.
    ``subset``/``test_subset`` keep a class-balanced, seeded selection of that many images.
    ``flip`` defaults to the kind's convention (on for natural images and clothing; off for
    the synthetic patterns, whose classes are not mirror-symmetric).
    """
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if spec.kind in ("cifar10", "cifar100"):
        raw = load_cifar(spec, download)
    elif spec.kind == "fashion-mnist":
        raw = load_fashion_mnist(spec)
    elif spec.kind == "imagefolder":
        assert spec.path is not None
        raw = load_imagefolder(spec.path, image_size, info)
    else:
        raw = make_synthetic(spec.count or SYNTHETIC_DEFAULT_N)
    (xtr, ytr), (xte, yte), classes = raw
    check_labels(spec, ytr, yte, classes)
    if channels is not None:
        xtr, xte = to_channels(xtr, channels), to_channels(xte, channels)
    if image_size is not None and spec.kind != "imagefolder":
        xtr, xte = resize_all(xtr, image_size), resize_all(xte, image_size)
    info["load_s"] = round(time.perf_counter() - t0, 3)
    mean, std = channel_stats(xtr)
    info.update({"train_full": int(len(ytr)), "test_full": int(len(yte))})
    if subset is not None:
        keep = balanced_subset(ytr, subset, seed)
        xtr, ytr = xtr[keep], ytr[keep]
    if test_subset is not None:
        keep = balanced_subset(yte, test_subset, seed)
        xte, yte = xte[keep], yte[keep]
    hw = xtr.shape[2]
    aug = Augment(crop_pad=max(1, round(hw / 8)), flip=_default_flip(spec.kind) if flip is None else flip,
                  cutout=cutout) if augment else Augment()
    train = ImageTensors(xtr, ytr, mean, std, aug)
    test = ImageTensors(xte, yte, mean, std)
    return DataBundle(spec, train, test, tuple(classes), mean, std, info)


def _default_flip(kind: str) -> bool:
    return kind != "synthetic"


def describe(bundle: DataBundle) -> dict[str, Any]:
    """A JSON-able summary for run configs and reports."""
    return {"spec": str(bundle.spec), "train": len(bundle.train), "test": len(bundle.test),
            "classes": bundle.num_classes, "class_names": list(bundle.classes), "channels": bundle.in_channels,
            "image_hw": list(bundle.image_hw),
            "mean": list(bundle.mean), "std": list(bundle.std),
            "augment": {"crop_pad": bundle.train.augment.crop_pad, "flip": bundle.train.augment.flip,
                        "cutout": bundle.train.augment.cutout},
            **bundle.info}
