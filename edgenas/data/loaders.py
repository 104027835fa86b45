"""Batches of an in-memory dataset for one rank, a pure function of ``(seed, epoch, rank)``.

The order of epoch ``e`` comes from ``DistributedSampler(seed, epoch)`` (world 1 for a plain run;
the ranks take interleaved shards of the one permutation) and each image's augmentation from a
generator seeded with ``(seed, epoch)``, drawn per image, so ``--resume`` needs no loader state, and
N processes with batch B see exactly the images, augmented alike, that one process sees with batch
N * B.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from edgenas.data.tensors import ImageTensors
from edgenas.distributed import DistInfo
from edgenas.errors import EdgenasError


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
