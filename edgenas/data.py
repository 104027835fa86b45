"""Datasets and loaders: CIFAR-10/100, ImageFolder (folder or tar), Fashion-MNIST idx, synthetic.

Every dataset is held in memory as one ``uint8`` tensor ``(N, C, H, W)`` plus labels. Batches are
gathered from it and augmented in batch form on the training device (random crop with zero padding,
horizontal flip, normalisation, cutout of DeVries & Taylor 2017, as in the DARTS evaluation recipe)
instead of per image with PIL in worker processes: on a 2-core machine this keeps the model, not the
input pipeline, the bottleneck, and it needs no worker processes.

Randomness: the order of epoch ``e`` comes from ``DistributedSampler(seed, epoch)`` (world 1 for a
plain run; the ranks take interleaved shards of the one permutation) and each image's augmentation
from a generator seeded with ``(seed, epoch)``, drawn per image, so an epoch's batches are a pure
function of those numbers and the rank, ``--resume`` needs no loader state, and N processes with
batch B see exactly the images, augmented alike, that one process sees with batch N * B.

Image folders (``train/<class>/*``, ``test/<class>/*``, or a ``.tar``/``.tar.gz`` holding them) are
decoded once and the decoded arrays cached on disk (``$EDGENAS_CACHE_DIR`` or
``~/.cache/edgenas``), keyed by the source's path, size and modification time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from edgenas.distributed import DistInfo
from edgenas.errors import EdgenasError
from edgenas.files import atomic_path

KINDS = ("cifar10", "cifar100", "imagefolder", "fashion-mnist", "synthetic")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
SYNTHETIC_DEFAULT_N = 512
SYNTHETIC_HW = 16
SYNTHETIC_CLASSES = 10
CACHE_VERSION = 1
# Beyond this many decoded bytes the in-memory design stops being reasonable (ImageNet-sized folders).
MAX_DECODED_BYTES = 12 * 2**30


def default_data_root() -> Path:
    return Path(os.environ.get("EDGENAS_DATA_DIR", Path.home() / ".cache" / "edgenas" / "data"))


def cache_dir() -> Path:
    if "EDGENAS_CACHE_DIR" in os.environ:
        return Path(os.environ["EDGENAS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgenas"


# --- the spec ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` named: a kind, an optional path, and for ``synthetic`` an image count."""

    kind: str
    path: Path | None = None
    count: int | None = None

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic:{self.count or SYNTHETIC_DEFAULT_N}"
        return f"{self.kind}:{self.path}" if self.path is not None else self.kind


def parse_data_spec(text: str) -> DataSpec:
    """``cifar10[:DIR]``, ``cifar100[:DIR]``, ``imagefolder:PATH``, ``fashion-mnist[:DIR]``, ``synthetic[:N]``."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise EdgenasError(f"unknown dataset {text!r}",
                           "use cifar10[:DIR], cifar100[:DIR], imagefolder:PATH, fashion-mnist[:DIR] or synthetic[:N]")
    if kind == "synthetic":
        if not rest:
            return DataSpec("synthetic", count=SYNTHETIC_DEFAULT_N)
        if not rest.isdigit() or int(rest) < SYNTHETIC_CLASSES * 2:
            raise EdgenasError(f"synthetic image count {rest!r} is not a number >= {SYNTHETIC_CLASSES * 2}",
                               "use synthetic:N, e.g. synthetic:512")
        return DataSpec("synthetic", count=int(rest))
    if kind == "imagefolder" and not rest:
        raise EdgenasError("imagefolder needs a path", "use imagefolder:PATH (a folder or a .tar/.tar.gz)")
    return DataSpec(kind, Path(rest).expanduser() if rest else None)


# --- in-memory images and batch augmentation ---------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, applied to whole batches."""

    crop_pad: int = 0     # random crop of the original size from the image zero-padded by this
    flip: bool = False    # random horizontal flip
    cutout: int = 0       # side of the square zeroed (after normalisation) at a random centre


class ImageTensors(torch.utils.data.Dataset):
    """Images ``uint8 (N, C, H, W)``, labels ``int64 (N,)``, normalisation and augmentation.

    ``__getitem__`` returns the normalised image without augmentation (for generic DataLoaders);
    training goes through :meth:`batch`, which augments whole batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: Augment = Augment()) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self._resident: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None
        self._stager: _PinnedStager | None = None
        self._placed_on: torch.device | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._normalise(self.images[i : i + 1].float())
        return x[0], int(self.labels[i])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageTensors:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageTensors(self.images[idx], self.labels[idx], self.mean, self.std, self.augment)

    def with_augment(self, augment: Augment) -> ImageTensors:
        return ImageTensors(self.images, self.labels, self.mean, self.std, augment)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1) * 255.0
        std = x.new_tensor(self.std).view(1, -1, 1, 1) * 255.0
        return (x - mean) / std

    def draw_augment(self, generator: torch.Generator) -> AugmentDraws | None:
        """The random augmentation parameters of every image for one epoch (None: no augmentation).

        Drawn for the whole set at once and looked up by image index, so an image's augmentation in
        an epoch does not depend on which batch or which rank it lands in: a search or training on
        N processes sees exactly the images one process sees with an N times larger batch.
        """
        aug = self.augment
        if aug == Augment():
            return None
        n, _, h, w = self.images.shape
        off = torch.randint(0, 2 * aug.crop_pad + 1, (2, n), generator=generator) if aug.crop_pad > 0 else None
        flip = torch.rand(n, generator=generator) < 0.5 if aug.flip else None
        centre = (torch.stack([torch.randint(0, h, (n,), generator=generator),
                               torch.randint(0, w, (n,), generator=generator)]) if aug.cutout > 0 else None)
        return AugmentDraws(off, flip, centre)

    def _gather(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's uint8 images and labels on ``device``.

        On a GPU the whole uint8 set is copied once and kept there when it fits in a quarter of the
        free memory (a batch is then a device-side gather); larger sets go through pinned staging
        buffers, so the copy is asynchronous and overlaps the previous step's kernels. A gather
        from pageable memory would block the host on every batch.
        """
        if device.type != "cuda":
            return self.images.index_select(0, indices), self.labels.index_select(0, indices)
        if self._placed_on != device:  # decided once per device: asking for free memory syncs
            self._placed_on = device
            free = torch.cuda.mem_get_info(device)[0]
            if self.images.nbytes + self.labels.nbytes <= RESIDENT_FRACTION * free:
                self._resident = (device, self.images.to(device), self.labels.to(device))
        if self._resident is not None and self._resident[0] == device:
            idx = indices.pin_memory().to(device, non_blocking=True)
            return self._resident[1].index_select(0, idx), self._resident[2].index_select(0, idx)
        if self._stager is None:
            self._stager = _PinnedStager()
        return self._stager.stage(self.images, self.labels, indices, device)

    def batch(self, indices: torch.Tensor, device: torch.device,
              draws: AugmentDraws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, move (as uint8: 4x less to copy), augment and normalise one batch on ``device``.

        ``draws`` (from :meth:`draw_augment`, on the CPU) hold the random parameters, so a batch is
        the same whatever the device; without them the batch is not augmented.
        """
        x, y = self._gather(indices, device)
        b, _, h, w = x.shape
        draws = draws.take(indices, device) if draws is not None else AugmentDraws(None, None, None)
        if draws.crop is not None:
            p = self.augment.crop_pad
            off = draws.crop
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (off[0, :, None] + torch.arange(h, device=device))[:, None, :, None]
            cols = (off[1, :, None] + torch.arange(w, device=device))[:, None, None, :]
            chans = torch.arange(x.shape[1], device=device)[None, :, None, None]
            x = padded[torch.arange(b, device=device)[:, None, None, None], chans, rows, cols]
        if draws.flip is not None:
            x = torch.where(draws.flip[:, None, None, None], x.flip(3), x)
        x = self._normalise(x.float())
        if draws.cutout is not None:
            centre = draws.cutout
            half = self.augment.cutout // 2
            ys = torch.arange(h, device=device)[None, :, None]
            xs = torch.arange(w, device=device)[None, None, :]
            # the square [c - L/2, c + L/2) clipped at the border, as in the Cutout paper's code
            inside = ((ys >= centre[0, :, None, None] - half) & (ys < centre[0, :, None, None] + half)
                      & (xs >= centre[1, :, None, None] - half) & (xs < centre[1, :, None, None] + half))
            x = x.masked_fill(inside[:, None], 0.0)
        return x, y


RESIDENT_FRACTION = 0.25  # of free GPU memory a dataset may take to be kept on the GPU


class _PinnedStager:
    """Two pinned host buffers used in turn for batch gathers; a buffer is reused only after the
    copy from it (tracked with a CUDA event) finished, so overlapping copies never race."""

    def __init__(self) -> None:
        self.slots: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event] | None] = [None, None]
        self.turn = 0

    def stage(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(indices)
        slot = self.slots[self.turn]
        if slot is None or slot[0].shape[0] < b:
            slot = (torch.empty((b, *images.shape[1:]), dtype=images.dtype).pin_memory(),
                    torch.empty((b,), dtype=labels.dtype).pin_memory(), torch.cuda.Event())
        else:
            slot[2].synchronize()  # the copy that last read this buffer is done
        xs, ys, done = slot
        torch.index_select(images, 0, indices, out=xs[:b])
        torch.index_select(labels, 0, indices, out=ys[:b])
        with torch.cuda.device(device):
            x = xs[:b].to(device, non_blocking=True)
            y = ys[:b].to(device, non_blocking=True)
            done.record(torch.cuda.current_stream(device))
        self.slots[self.turn] = slot
        self.turn = 1 - self.turn
        return x, y


@dataclass(frozen=True)
class AugmentDraws:
    """One epoch's random augmentation parameters, one column per image of the set."""

    crop: torch.Tensor | None    # (2, N) crop offsets (rows, columns) into the padded image
    flip: torch.Tensor | None    # (N,) bool
    cutout: torch.Tensor | None  # (2, N) centres of the cutout squares

    def take(self, indices: torch.Tensor, device: torch.device) -> AugmentDraws:
        """The draws of the images at ``indices``, moved to ``device`` in one transfer (from pinned
        memory on a GPU, so the copy does not block the host)."""
        # the batch's columns first: joining the whole epoch's draws would cost O(set size) per batch
        parts = [t.index_select(-1, indices).view(-1, len(indices)).long()
                 for t in (self.crop, self.flip, self.cutout) if t is not None]
        if not parts:
            return self
        rows = torch.cat(parts)
        if device.type == "cuda":
            rows = rows.pin_memory().to(device, non_blocking=True)
        else:
            rows = rows.to(device)
        crop, rest = (rows[:2], rows[2:]) if self.crop is not None else (None, rows)
        flip, rest = (rest[0].bool(), rest[1:]) if self.flip is not None else (None, rest)
        return AugmentDraws(crop, flip, rest if self.cutout is not None else None)


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


# --- loaders -----------------------------------------------------------------------------------

class BatchLoader:
    """Batches of an :class:`ImageTensors` for one rank, deterministic per ``(seed, epoch, rank)``.

    Shuffled loaders order samples with ``DistributedSampler`` (world 1 for a plain run); unshuffled
    ones (evaluation) give each rank the disjoint shard ``rank::world`` without padding, so summed
    metrics over ranks count every test image exactly once.
    """

    def __init__(self, ds: ImageTensors, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 device: torch.device | None = None, dist: DistInfo = DistInfo(), augment: bool | None = None) -> None:
        if batch_size < 1:
            raise EdgenasError(f"batch size {batch_size} is not positive", "use --batch-size 1 or more")
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.epoch = epoch
        self.device = device or torch.device("cpu")
        self.dist = dist
        self.augment = shuffle if augment is None else augment

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            sampler = torch.utils.data.DistributedSampler(self.ds, num_replicas=self.dist.world,
                                                          rank=self.dist.rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(self.epoch)
            return torch.tensor(list(sampler), dtype=torch.int64)
        return torch.arange(self.dist.rank, len(self.ds), self.dist.world, dtype=torch.int64)

    def _count(self) -> int:
        if self.shuffle:  # DistributedSampler pads every rank to the same count
            return -(-len(self.ds) // self.dist.world)
        return len(range(self.dist.rank, len(self.ds), self.dist.world))

    def __len__(self) -> int:
        n = self._count()
        batches = -(-n // self.batch_size)
        return batches - 1 if self._drops_last(n) else batches

    def _drops_last(self, n: int) -> bool:
        # a lone last sample would make BatchNorm's training statistics undefined
        return self.shuffle and n > 1 and n % self.batch_size == 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        draws = None
        if self.augment:  # the same draws on every rank: see ImageTensors.draw_augment
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            draws = self.ds.draw_augment(torch.Generator().manual_seed(seed))
        if self._drops_last(len(idx)):
            idx = idx[:-1]
        for start in range(0, len(idx), self.batch_size):
            yield self.ds.batch(idx[start : start + self.batch_size], self.device, draws)


def make_loader(ds: ImageTensors, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                device: torch.device | None = None, dist: DistInfo = DistInfo(),
                augment: bool | None = None) -> BatchLoader:
    """A loader whose batches depend only on ``(seed, epoch, rank)``; call ``set_epoch`` each epoch.

    ``augment`` defaults to ``shuffle`` (training loaders augment, evaluation loaders do not).
    """
    return BatchLoader(ds, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, device=device, dist=dist,
                       augment=augment)


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
        raw = _load_cifar(spec, download)
    elif spec.kind == "fashion-mnist":
        raw = _load_fashion_mnist(spec)
    elif spec.kind == "imagefolder":
        assert spec.path is not None
        raw = _load_imagefolder(spec.path, image_size, info)
    else:
        raw = _make_synthetic(spec.count or SYNTHETIC_DEFAULT_N)
    (xtr, ytr), (xte, yte), classes = raw
    check_labels(spec, ytr, yte, classes)
    if channels is not None:
        xtr, xte = _to_channels(xtr, channels), _to_channels(xte, channels)
    if image_size is not None and spec.kind != "imagefolder":
        xtr, xte = _resize_all(xtr, image_size), _resize_all(xte, image_size)
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


def _default_flip(kind: str) -> bool:
    return kind != "synthetic"


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


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels not in (1, 3):
        raise EdgenasError(f"cannot make images with {channels} channels", "use 1 (grey) or 3 (RGB)")
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as PIL's "L"
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _resize_all(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[2] == size and x.shape[3] == size:
        return x
    out = [_resize(chunk, size) for chunk in x.split(1024)]
    return torch.cat(out)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    y = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


Raw = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], Sequence[str]]


def _load_cifar(spec: DataSpec, download: bool) -> Raw:
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


def _load_fashion_mnist(spec: DataSpec) -> Raw:
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


def _make_synthetic(n: int) -> Raw:
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


# --- image folders (directory or tar) ----------------------------------------------------------

def _source_key(path: Path, image_size: int | None) -> str:
    """Cache key: the resolved path and, for a folder, every file's size and mtime."""
    st = path.stat()
    parts = [str(path.resolve()), str(CACHE_VERSION), str(image_size)]
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                fs = f.stat()
                parts.append(f"{f.relative_to(path)}:{fs.st_size}:{fs.st_mtime_ns}")
    else:
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _load_imagefolder(path: Path, image_size: int | None, info: dict[str, Any]) -> Raw:
    if not path.exists():
        raise EdgenasError(f"dataset path {path} does not exist",
                           "pass imagefolder:PATH with a folder holding train/ and test/, or a .tar/.tar.gz")
    key = _source_key(path, image_size)
    cache = cache_dir() / f"imagefolder-{key}.pt"
    if cache.is_file():
        try:
            doc = torch.load(cache, weights_only=True)
            info.update({"cache": str(cache), "cache_hit": True})
            return ((doc["train_x"], doc["train_y"]), (doc["test_x"], doc["test_y"]), list(doc["classes"]))
        except Exception:  # a damaged cache is only a cache: decode again below
            cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files = _list_tar(path) if path.is_file() else _list_dir(path)
    raw = _decode_folder(path, files, image_size)
    info.update({"decode_s": round(time.perf_counter() - t0, 3), "cache_hit": False})
    (xtr, ytr), (xte, yte), classes = raw
    try:
        with atomic_path(cache) as tmp:
            torch.save({"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte, "classes": list(classes)},
                       tmp)
        info["cache"] = str(cache)
    except (OSError, EdgenasError) as e:  # no writable cache: still works, only slower next time
        info["cache"] = f"not written: {e}"
    return raw


# (split, class, name) -> a way to read the bytes
FileList = dict[tuple[str, str], list[tuple[str, Any]]]


def _split_parts(rel: PurePosixPath) -> tuple[str, str, str] | None:
    """``train/<class>/<file>`` (optionally under one top folder) -> (split, class, file)."""
    parts = rel.parts
    for i, p in enumerate(parts[:-2]):
        if p in ("train", "test") and len(parts) - i == 3:
            return p, parts[i + 1], parts[-1]
    return None


def _list_dir(root: Path) -> FileList:
    files: FileList = {}
    tops = [root] + [d for d in sorted(root.iterdir()) if d.is_dir()]
    base = next((t for t in tops if (t / "train").is_dir() and (t / "test").is_dir()), None)
    if base is None:
        raise EdgenasError(f"{root} does not hold train/ and test/ folders",
                           "lay it out as train/<class>/* and test/<class>/*")
    for split in ("train", "test"):
        for cdir in sorted(d for d in (base / split).iterdir() if d.is_dir()):
            images = sorted(f for f in cdir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            files[(split, cdir.name)] = [(str(f), f) for f in images]
    return files


def _list_tar(path: Path) -> FileList:
    files: FileList = {}
    dirs: set[tuple[str, str]] = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                rel = PurePosixPath(m.name.lstrip("./") or ".")
                if m.isdir():
                    parts = rel.parts
                    if len(parts) >= 2 and parts[-2] in ("train", "test"):
                        dirs.add((parts[-2], parts[-1]))
                    continue
                where = _split_parts(rel) if m.isfile() else None
                if where is None:
                    continue
                split, cls, name = where
                dirs.add((split, cls))
                if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                    f = tf.extractfile(m)
                    files.setdefault((split, cls), []).append((f"{path}:{m.name}", f.read() if f else b""))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EdgenasError(f"{path} is not a readable tar archive ({e})",
                           "pass a .tar/.tar.gz of train/<class>/* and test/<class>/*, or a folder") from None
    for d in dirs:
        files.setdefault(d, [])
    if not any(s == "train" for s, _ in files) or not any(s == "test" for s, _ in files):
        raise EdgenasError(f"{path} does not hold train/ and test/ folders",
                           "lay it out as train/<class>/* and test/<class>/*")
    for key in files:
        files[key].sort(key=lambda item: item[0])
    return files


def _decode(name: str, source: Any) -> torch.Tensor:
    """One image as uint8 (C, H, W) with C 1 or 3; alpha dropped, palettes expanded.

    torchvision's decoder is tried first (2.6x faster than PIL on CIFAR-10 JPEGs here); PIL reads
    whatever it cannot.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        with warnings.catch_warnings():  # torchvision 0.29 flags its decoders as moving to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image

            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        if img.shape[0] == 2:
            img = img[:1]
        elif img.shape[0] == 4:
            img = img[:3]
        return _to_uint8(img)
    except Exception:  # formats torchvision does not decode (BMP, TIFF, PPM...): try PIL
        pass
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.mode.startswith("I;16"):
                # PIL's convert("L") clips 16-bit values at 255; scale them down instead
                arr = np.asarray(_to_uint8(torch.from_numpy(np.asarray(im).astype(np.int32))))
            else:
                im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "F") else "RGB")
                arr = np.asarray(im)
    except Exception as e:
        raise EdgenasError(f"image {name} cannot be decoded ({type(e).__name__})",
                           "remove or replace the corrupt file") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    """16-bit (or wider) samples scaled to 0..255, rounded; uint8 passes through unchanged."""
    if img.dtype == torch.uint8:
        return img
    wide = img.to(torch.int64).clamp(0, 65535)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def _decode_folder(path: Path, files: FileList, image_size: int | None) -> Raw:
    train_classes = sorted(c for s, c in files if s == "train")
    test_classes = sorted(c for s, c in files if s == "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise EdgenasError(f"{path}: train and test have different classes (only in train: "
                           f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})",
                           "give both splits the same class folders")
    if not train_classes:
        raise EdgenasError(f"{path}: train/ has no class folders", "add train/<class>/* and test/<class>/*")
    for (split, cls), items in sorted(files.items()):
        if not items:
            raise EdgenasError(f"{path}: class folder {split}/{cls} has no images",
                               f"add images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) or remove the folder")
    decoded: dict[str, tuple[list[torch.Tensor], list[int]]] = {"train": ([], []), "test": ([], [])}
    first: torch.Tensor | None = None
    total = sum(len(v) for v in files.values())
    for (split, cls), items in sorted(files.items()):
        label = train_classes.index(cls)
        for name, source in items:
            img = _decode(name, source)
            if first is None:
                first = img
                side = image_size or max(img.shape[1], img.shape[2])
                if total * 3 * side * side > MAX_DECODED_BYTES:
                    raise EdgenasError(f"{path}: {total} images of {side}x{side} would need more than "
                                       f"{MAX_DECODED_BYTES / 2**30:.0f} GiB in memory",
                                       "use --image-size to store them smaller, or a smaller dataset")
            decoded[split][0].append(img)
            decoded[split][1].append(label)
    all_imgs = decoded["train"][0] + decoded["test"][0]
    channels = 3 if any(im.shape[0] == 3 for im in all_imgs) else 1  # mixed folders become RGB
    if image_size is None:
        sizes = Counter((im.shape[1], im.shape[2]) for im in all_imgs)
        (h, w), _ = sizes.most_common(1)[0]
    else:
        h = w = image_size
    out = []
    for split in ("train", "test"):
        imgs, labels = decoded[split]
        fixed = []
        for im in imgs:
            if im.shape[0] != channels:
                im = im.expand(3, -1, -1)
            if im.shape[1] != h or im.shape[2] != w:
                im = torch.nn.functional.interpolate(im[None].float(), size=(h, w), mode="bilinear",
                                                     antialias=True, align_corners=False)[0]
                im = im.round().clamp(0, 255).to(torch.uint8)
            fixed.append(im)
        out.append((torch.stack(fixed), torch.tensor(labels, dtype=torch.int64)))
    return out[0], out[1], train_classes


def describe(bundle: DataBundle) -> dict[str, Any]:
    """A JSON-able summary for run configs and reports."""
    return {"spec": str(bundle.spec), "train": len(bundle.train), "test": len(bundle.test),
            "classes": bundle.num_classes, "class_names": list(bundle.classes), "channels": bundle.in_channels,
            "image_hw": list(bundle.image_hw),
            "mean": list(bundle.mean), "std": list(bundle.std),
            "augment": {"crop_pad": bundle.train.augment.crop_pad, "flip": bundle.train.augment.flip,
                        "cutout": bundle.train.augment.cutout},
            **bundle.info}


__all__ = ["KINDS", "Augment", "BatchLoader", "DataBundle", "DataSpec", "ImageTensors", "balanced_subset",
           "channel_stats", "describe", "load_data", "make_loader", "parse_data_spec", "search_split"]
