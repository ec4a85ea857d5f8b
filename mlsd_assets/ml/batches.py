"""One raw data batch as arrays: the unit `raw_cifar10` stores per partition."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlsd_assets.ml.atomic import atomic_path

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
OFFICIAL_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
OFFICIAL_TEST_BATCH = "test_batch"
OFFICIAL_BATCHES: tuple[str, ...] = (*OFFICIAL_TRAIN_BATCHES, OFFICIAL_TEST_BATCH)


class InvalidBatchError(ValueError):
    """Raised for input that cannot become a batch; the message names the file or partition and the field."""


def image_hashes(images: np.ndarray) -> np.ndarray:
    """Content hash per image (blake2b-128 of its raw bytes): identity for dedup and leakage checks."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return np.array([hashlib.blake2b(row, digest_size=16).hexdigest() for row in flat], dtype="U32")


@dataclass(frozen=True)
class RawBatch:
    """uint8 NHWC images with labels and per-image hashes, plus where they came from."""

    partition: str
    images: np.ndarray
    labels: np.ndarray
    hashes: np.ndarray
    source: str
    source_files: dict[str, str] = field(default_factory=dict)

    suffix: ClassVar[str] = ".npz"

    def __post_init__(self) -> None:
        where = f"partition {self.partition!r} ({self.source})"
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE:
            raise InvalidBatchError(
                f"{where}: images must be uint8 of shape (N, 32, 32, 3), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) == 0:
            raise InvalidBatchError(f"{where}: batch is empty")
        if self.labels.shape != (len(self.images),) or self.hashes.shape != (len(self.images),):
            raise InvalidBatchError(
                f"{where}: {len(self.images)} images but labels {self.labels.shape}, hashes {self.hashes.shape}"
            )
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(CIFAR10_CLASSES)))
        if bad.size:
            raise InvalidBatchError(
                f"{where}: label out of range 0..9 at index {int(bad[0])} (value {int(self.labels[bad[0]])})"
            )

    def __len__(self) -> int:
        return len(self.images)

    def class_histogram(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CIFAR10_CLASSES))
        return {name: int(c) for name, c in zip(CIFAR10_CLASSES, counts, strict=True)}

    def save(self, path: Path) -> None:
        names = sorted(self.source_files)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                images=self.images,
                labels=self.labels.astype(np.int64),
                hashes=self.hashes.astype("U32"),
                partition=np.array(self.partition),
                source=np.array(self.source),
                source_file_names=np.array(names, dtype=str),
                source_file_hashes=np.array([self.source_files[n] for n in names], dtype=str),
            )

    @classmethod
    def load(cls, path: Path) -> RawBatch:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                partition=str(z["partition"]),
                images=z["images"],
                labels=z["labels"],
                hashes=z["hashes"],
                source=str(z["source"]),
                source_files=dict(zip(z["source_file_names"].tolist(), z["source_file_hashes"].tolist(), strict=True)),
            )
