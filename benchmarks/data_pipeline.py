"""Input pipeline: batch-form augmentation on uint8 tensors vs torchvision's per-image PIL transforms.

Both produce the DARTS CIFAR training batch (random crop 32 with padding 4, horizontal flip,
ToTensor+Normalize, cutout 16) from images already in memory; printed side by side with their
ratio, in one process. Also times a first decode of an image-folder archive against a cached load.

    .venv/bin/python benchmarks/data_pipeline.py [--data imagefolder:../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from edgenas.data.load import load_data
from edgenas.data.tensors import Augment


def _pil_pipeline(mean: tuple[float, ...], std: tuple[float, ...], cutout: int):
    from torchvision import transforms

    def cut(t: torch.Tensor) -> torch.Tensor:  # the usual per-image cutout after normalisation
        h, w = t.shape[1:]
        y, x = np.random.randint(h), np.random.randint(w)
        t[:, max(0, y - cutout // 2) : min(h, y + cutout // 2), max(0, x - cutout // 2) : min(w, x + cutout // 2)] = 0
        return t

    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(mean, std), cut])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="imagefolder:" + os.path.join(os.path.dirname(__file__), "..", "..",
                                                                     "shared", "data", "cifar10-jpeg.tar.gz"))
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as cache:
        os.environ["EDGENAS_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        bundle = load_data(args.data, cutout=16)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_data(args.data, cutout=16)
        cached = time.perf_counter() - t0
    print(f"{args.data}: first load (decode + cache write) {first:.1f} s "
          f"[decode {bundle.info.get('decode_s', float('nan')):.1f} s], cached load {cached:.2f} s, "
          f"ratio {first / cached:.1f}x")

    ds = bundle.train.with_augment(Augment(crop_pad=4, flip=True, cutout=16))
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    draws = ds.draw_augment(gen)  # one epoch's draws, looked up per image as training does
    pil_images = [Image.fromarray(img.permute(1, 2, 0).numpy().squeeze()) for img in ds.images[: args.batch * 4]]
    pil = _pil_pipeline(bundle.mean, bundle.std, 16)

    def ours() -> None:
        idx = torch.randint(0, len(ds), (args.batch,), generator=gen)
        ds.batch(idx, cpu, draws)

    def per_image() -> None:
        idx = np.random.randint(0, len(pil_images), args.batch)
        torch.stack([pil(pil_images[i]) for i in idx])

    results = {}
    for name, fn in (("batch-form (edgenas)", ours), ("per-image PIL (torchvision)", per_image)):
        for _ in range(3):
            fn()
        samples = []
        for _ in range(args.batches):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
        results[name] = statistics.median(samples)
        print(f"{name:30s} median {results[name]:7.2f} ms per batch of {args.batch} "
              f"(p10 {np.percentile(samples, 10):.2f}, p90 {np.percentile(samples, 90):.2f}, n {len(samples)})")
    a, b = results.values()
    print(f"ratio per-image / batch-form: {b / a:.1f}x  (torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
