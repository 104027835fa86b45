"""Readers of the built-in datasets (CIFAR-10/100, Fashion-MNIST idx files, synthetic patterns)
into ``uint8`` tensors; each returns both splits and the class names as :data:`Raw`."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgenas.data.spec import SYNTHETIC_CLASSES, DataSpec
from edgenas.errors import EdgenasError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
SYNTHETIC_HW = 16

#: What a reader returns: (train images, train labels), (test images, test labels), class names.
Raw = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], Sequence[str]]


def default_data_root() -> Path:
    return Path(os.environ.get("EDGENAS_DATA_DIR", Path.home() / ".cache" / "edgenas" / "data"))


def load_cifar(spec: DataSpec, download: bool) -> Raw:
    import torchvision

    root = spec.path or default_data_root()
    folder = "cifar-10-batches-py" if spec.kind == "cifar10" else "cifar-100-python"
    if root.name == folder:  # the user pointed at the batches folder itself
        root = root.parent
    cls = torchvision.datasets.CIFAR10 if spec.kind == "cifar10" else torchvision.datasets.CIFAR100
    if not download and not (root / folder).is_dir():
        raise EdgenasError(f"{spec.kind} not found: {root / folder} does not exist",
                           f"pass {spec.kind}:DIR with the folder holding {folder}, or add --download")
    try:
        parts = [cls(str(root), train=t, download=download) for t in (True, False)]
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise EdgenasError(f"{spec.kind} in {root} cannot be read: {e}",
                           "re-download it with --download, or point to an intact copy") from None
    except OSError as e:
        raise EdgenasError(f"{spec.kind} could not be fetched into {root}: {e}",
                           "check the network, or copy the dataset there by hand") from None
    out = []
    for p in parts:
        x = torch.from_numpy(np.ascontiguousarray(p.data)).permute(0, 3, 1, 2).contiguous()
        out.append((x, torch.tensor(p.targets, dtype=torch.int64)))
    return out[0], out[1], list(parts[0].classes)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile) as e:
        raise EdgenasError(f"{path} is not a readable idx file ({e})",
                           "reinstall the dataset (e.g. apt-get install dataset-fashion-mnist)") from None


def load_fashion_mnist(spec: DataSpec) -> Raw:
    base = spec.path or FASHION_MNIST_DIR
    if not base.is_dir():
        raise EdgenasError(f"Fashion-MNIST folder {base} does not exist",
                           "install it (apt-get install dataset-fashion-mnist) or pass fashion-mnist:DIR")
    candidates = [base, base / "FashionMNIST" / "raw", base / "raw"]  # plain, or torchvision's layout

    def find(stem: str) -> Path:
        for d in candidates:
            for name in (f"{stem}.gz", stem):
                if (d / name).is_file():
                    return d / name
        raise EdgenasError(f"Fashion-MNIST file {stem}[.gz] not found in {base}",
                           "pass fashion-mnist:DIR with the four idx files")

    splits = []
    for prefix in ("train", "t10k"):
        x = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
        y = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise EdgenasError(f"Fashion-MNIST {prefix} images and labels in {base} do not match",
                               "reinstall the dataset files")
        splits.append((torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    return splits[0], splits[1], FASHION_MNIST_CLASSES


def make_synthetic(n: int) -> Raw:
    """Learnable toy images: each class is a fixed smooth colour pattern, randomly shifted, plus noise.

    The patterns come from a fixed seed, so every run sees the same data set.
    """
    g = torch.Generator().manual_seed(20240611)
    hw, k = SYNTHETIC_HW, SYNTHETIC_CLASSES
    coarse = torch.randn(k, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(hw, hw), mode="bilinear", align_corners=False)
    templates = templates / templates.abs().amax(dim=(1, 2, 3), keepdim=True)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(count) % k
        shifts = torch.randint(-2, 3, (count, 2), generator=g)
        imgs = torch.stack([templates[c].roll((int(s[0]), int(s[1])), dims=(1, 2)) for c, s in zip(y, shifts)])
        imgs = 128 + 90 * imgs + 25 * torch.randn(imgs.shape, generator=g)
        return imgs.round().clamp(0, 255).to(torch.uint8), y

    n_test = max(n // 4, 2 * k)
    return draw(n), draw(n_test), [f"pattern{i}" for i in range(k)]
