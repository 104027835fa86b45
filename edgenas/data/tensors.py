"""Images held in memory as one ``uint8`` tensor, and their augmentation in batch form.

Batches are gathered from the tensor and augmented on the training device (random crop with zero
padding, horizontal flip, normalisation, cutout of DeVries & Taylor 2017, as in the DARTS
evaluation recipe) instead of per image with PIL in worker processes: on a machine with few cores
this keeps the model, not the input pipeline, the bottleneck, and it needs no worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
