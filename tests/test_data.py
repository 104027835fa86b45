"""Datasets, the batch augmentation, deterministic loaders and every bad-input case of data.py."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.data.load import load_data, search_split
from edgenas.data.loaders import make_loader
from edgenas.data.prepare import balanced_subset
from edgenas.data.sources import FASHION_MNIST_DIR
from edgenas.data.spec import parse_data_spec
from edgenas.data.tensors import Augment, ImageTensors
from edgenas.distributed import DistInfo
from edgenas.errors import EdgenasError

CPU = torch.device("cpu")
needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST idx files not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGENAS_CACHE_DIR", str(tmp_path / "cache"))


def test_parse_data_spec():
    assert parse_data_spec("synthetic:64").count == 64
    assert parse_data_spec("cifar10").path is None
    assert parse_data_spec("imagefolder:/x/y.tar.gz").path == Path("/x/y.tar.gz")
    assert str(parse_data_spec("fashion-mnist:/d")) == "fashion-mnist:/d"
    for bad, msg in (("mnist", "unknown dataset"), ("imagefolder", "needs a path"), ("synthetic:3", "synthetic")):
        with pytest.raises(EdgenasError, match=msg):
            parse_data_spec(bad)


def test_synthetic_is_deterministic_and_balanced():
    a, b = load_data("synthetic:80"), load_data("synthetic:80")
    assert torch.equal(a.train.images, b.train.images)
    assert (a.num_classes, a.in_channels, a.image_hw) == (10, 3, (16, 16))
    assert not a.train.augment.flip  # the patterns are not mirror-symmetric
    sub = load_data("synthetic:80", subset=30, seed=1)
    counts = torch.bincount(sub.train.labels, minlength=10)
    assert len(sub.train) == 30 and counts.max() - counts.min() <= 1


def test_balanced_subset_is_seeded():
    labels = torch.tensor([0] * 50 + [1] * 10)
    one, two = balanced_subset(labels, 20, 0), balanced_subset(labels, 20, 0)
    assert torch.equal(one, two)
    assert (labels[one] == 1).sum() == 10  # the small class is used up before the big one dominates
    assert not torch.equal(one, balanced_subset(labels, 20, 1))


def test_search_split_halves_deterministically():
    bundle = load_data("synthetic:100")
    w1, a1 = search_split(bundle, seed=3)
    w2, a2 = search_split(bundle, seed=3)
    assert torch.equal(w1.images, w2.images) and torch.equal(a1.labels, a2.labels)
    assert len(w1) == len(a1) == 50
    both = torch.cat([w1.images, a1.images]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == 100  # disjoint halves cover the set
    w3, _ = search_split(bundle, seed=4)
    assert not torch.equal(w1.images, w3.images)


def _toy(n=12, c=3, hw=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) % 3, [0.5] * c, [0.25] * c)


def test_batch_crop_and_flip_match_a_per_image_reference():
    ds = _toy().with_augment(Augment(crop_pad=2, flip=True))
    idx = torch.tensor([3, 0, 7, 5])
    x, y = ds.batch(idx, CPU, ds.draw_augment(torch.Generator().manual_seed(11)))
    g = torch.Generator().manual_seed(11)  # replay the same draws: one column per image of the set
    off = torch.randint(0, 5, (2, len(ds)), generator=g)
    flip = torch.rand(len(ds), generator=g) < 0.5
    for i, j in enumerate(idx.tolist()):
        padded = torch.nn.functional.pad(ds.images[j].float(), (2, 2, 2, 2))
        ref = padded[:, off[0, j] : off[0, j] + 8, off[1, j] : off[1, j] + 8]
        ref = ref.flip(2) if flip[j] else ref
        assert torch.allclose(x[i], (ref - 127.5) / 63.75)
    assert torch.equal(y, ds.labels[idx])


def test_cutout_zeroes_one_square_after_normalising():
    ds = ImageTensors(torch.full((6, 1, 16, 16), 255, dtype=torch.uint8), torch.zeros(6), [0.0], [1.0],
                      Augment(cutout=4))
    x, _ = ds.batch(torch.arange(6), CPU, ds.draw_augment(torch.Generator().manual_seed(0)))
    zeros = (x == 0).sum(dim=(1, 2, 3))
    assert (zeros >= 4).all() and (zeros <= 16).all()  # a 4x4 square, clipped at the border
    assert ((x == 0) | (x == 1)).all()  # mean 0, std 1 on the 0..1 scale


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = _toy(20).with_augment(Augment(crop_pad=1, flip=True))
    first = [x for x, _ in make_loader(ds, 6, shuffle=True, seed=5, epoch=2)]
    again = [x for x, _ in make_loader(ds, 6, shuffle=True, seed=5, epoch=2)]
    other = [x for x, _ in make_loader(ds, 6, shuffle=True, seed=5, epoch=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    # 20 % 6 == 2: four batches; a lone last sample (21 images) would be dropped for BatchNorm
    assert len(first) == len(make_loader(ds, 6, shuffle=True)) == 4
    assert len(make_loader(_toy(19), 6, shuffle=True)) == 3


def test_loader_shards_are_disjoint_across_ranks():
    ds = _toy(11)
    seen = []
    for rank in range(2):
        loader = make_loader(ds, 4, shuffle=False, dist=DistInfo(rank, 2, rank))
        seen += [y for _, ys in loader for y in ys.tolist()]
    assert sorted(seen) == sorted(ds.labels.tolist())  # every test image exactly once
    train_ranks = [torch.cat([y for _, y in make_loader(ds, 3, shuffle=True, dist=DistInfo(r, 2, r))])
                   for r in range(2)]
    assert len(train_ranks[0]) == len(train_ranks[1]) == 6  # DistributedSampler pads to equal shards


def test_two_ranks_see_one_process_batches_augmented_alike():
    """Rank r's batch k is the r-th interleaved half of the one-process batch k of twice the size,
    with each image augmented alike: what makes a distributed search equal a one-process one."""
    ds = _toy(16).with_augment(Augment(crop_pad=2, flip=True, cutout=2))
    one = list(make_loader(ds, 8, shuffle=True, seed=3, epoch=1))
    ranks = [list(make_loader(ds, 4, shuffle=True, seed=3, epoch=1, dist=DistInfo(r, 2, r))) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2
    for k, (x, y) in enumerate(one):
        for r in range(2):
            assert torch.equal(ranks[r][k][0], x[r::2]) and torch.equal(ranks[r][k][1], y[r::2])


def _write_folder(root: Path, classes=("cat", "dog"), per_class=3, gray_class=None, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                if c == gray_class:
                    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(d / f"{i}.png")
                else:
                    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
            (d / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_mixed_grey_rgb_folder_and_tar_agree(tmp_path):
    root = _write_folder(tmp_path / "ds", gray_class="dog")
    bundle = load_data(f"imagefolder:{root}")
    assert bundle.classes == ("cat", "dog") and bundle.in_channels == 3 and len(bundle.train) == 6
    grey = bundle.train.images[bundle.train.labels == 1]
    assert torch.equal(grey[:, 0], grey[:, 1])  # grey images expanded to RGB consistently
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="wrapped")  # one top-level folder, as archives often have
    from_tar = load_data(f"imagefolder:{archive}")
    assert torch.equal(from_tar.train.images, bundle.train.images)
    assert from_tar.info["cache_hit"] is False and "decode_s" in from_tar.info
    again = load_data(f"imagefolder:{archive}")
    assert again.info["cache_hit"] is True and torch.equal(again.test.images, bundle.test.images)
    as_grey = load_data(f"imagefolder:{archive}", channels=1)
    assert as_grey.in_channels == 1


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_split", "does not hold train/ and test/"),
    ("empty_class", "class folder train/dog has no images"),
    ("corrupt", r"image .*1\.png cannot be decoded"),
    ("class_sets", r"different classes \(only in train: dog; only in test: -\)"),
])
def test_imagefolder_bad_input(tmp_path, case, message):
    root = tmp_path / "ds"
    if case == "no_split":
        (root / "images" / "cat").mkdir(parents=True)
    elif case != "missing":
        _write_folder(root)
    if case == "empty_class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink() if f.suffix == ".png" else None
    elif case == "corrupt":
        (root / "test" / "cat" / "1.png").write_bytes(b"\x89PNG garbage")
    elif case == "class_sets":
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
        (root / "test" / "dog").rmdir()
    with pytest.raises(EdgenasError, match=message):
        load_data(f"imagefolder:{root}")
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_missing_builtin_dataset_paths(tmp_path):
    with pytest.raises(EdgenasError, match="cifar10 not found"):
        load_data(f"cifar10:{tmp_path}")
    (tmp_path / "cifar-100-python").mkdir()  # present but empty: torchvision's integrity check fails
    with pytest.raises(EdgenasError, match="cifar100 in .* cannot be read"):
        load_data(f"cifar100:{tmp_path}")
    with pytest.raises(EdgenasError, match="Fashion-MNIST folder"):
        load_data(f"fashion-mnist:{tmp_path / 'nope'}")
    with pytest.raises(EdgenasError, match="train-images-idx3-ubyte"):
        load_data(f"fashion-mnist:{tmp_path}")


@pytest.mark.needs_data
@needs_fashion
def test_fashion_mnist_matches_published_statistics():
    bundle = load_data("fashion-mnist", subset=100, test_subset=50)
    assert (len(bundle.train), len(bundle.test), bundle.in_channels, bundle.image_hw) == (100, 50, 1, (28, 28))
    # the commonly quoted Fashion-MNIST statistics, recomputed from the full training set
    assert bundle.mean == pytest.approx((0.2860,), abs=1e-4) and bundle.std == pytest.approx((0.3530,), abs=1e-4)
    assert bundle.classes[0] == "T-shirt/top"
    rgb = load_data("fashion-mnist", subset=10, test_subset=10, channels=3)
    assert rgb.in_channels == 3
