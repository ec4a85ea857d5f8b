"""Training batches straight from the split's uint8 arrays, augmented a batch at a time (no per-image PIL)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Augmentation:
    """Random crop after reflect padding by `pad` pixels, and horizontal flips.

    `alternate_flip` flips each image on every other epoch (a fixed random half first): every image
    is seen both ways within two epochs, which beats independent coin flips in short runs.
    """

    pad: int = 2
    flip: bool = True
    alternate_flip: bool = True


class TrainBatches:
    """Shuffled, augmented uint8 NHWC batches; seeded per (seed, epoch) so a resumed run replays."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        augmentation: Augmentation,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"train images: expected uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise ValueError("train images: the train split is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        p = augmentation.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect") if p else images
        self.padded = torch.from_numpy(np.ascontiguousarray(padded))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.seed = seed
        self.drop_last = drop_last and len(images) >= batch_size
        self._flip_phase = torch.rand(len(images), generator=torch.Generator().manual_seed(seed)) < 0.5

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.labels), generator=gen)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._augment(idx, epoch, gen), self.labels[idx]

    def _augment(self, idx: torch.Tensor, epoch: int, gen: torch.Generator) -> torch.Tensor:
        aug, n = self.augmentation, len(idx)
        if aug.pad:
            dy = torch.randint(0, 2 * aug.pad + 1, (n,), generator=gen)
            dx = torch.randint(0, 2 * aug.pad + 1, (n,), generator=gen)
            base = torch.arange(32)
            rows = (dy[:, None] + base)[:, :, None]
            cols = (dx[:, None] + base)[:, None, :]
            batch = self.padded[idx[:, None, None], rows, cols]
        else:
            batch = self.padded[idx]
        if aug.flip:
            alternating = self._flip_phase[idx] ^ bool(epoch % 2)
            flip = alternating if aug.alternate_flip else torch.rand(n, generator=gen) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(2), batch)
        return batch


def eval_batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Plain uint8 NHWC batches in order, for evaluation."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    for start in range(0, len(tensor), batch_size):
        yield tensor[start : start + batch_size]
