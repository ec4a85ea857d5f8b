"""One raw data batch as arrays: the unit `raw_cifar10` stores per partition."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlsd_assets.core.platform.atomic import atomic_path

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
OFFICIAL_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
OFFICIAL_TEST_BATCH = "test_batch"
OFFICIAL_BATCHES: tuple[str, ...] = (*OFFICIAL_TRAIN_BATCHES, OFFICIAL_TEST_BATCH)


class InvalidBatchError(ValueError):
    """Raised for input that cannot become a batch; the message names the file or partition and the field."""


def image_hashes(images: np.ndarray) -> np.ndarray:
    """Content hash per image (blake2b-128 of its raw bytes): identity for dedup and leakage checks."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1) if len(images) else ()
    return np.array([hashlib.blake2b(row, digest_size=16).hexdigest() for row in flat], dtype="U32")


def _area_weights(n_out: int, n_in: int) -> np.ndarray:
    """Row i averages the input cells that output cell i covers (area resampling as a matrix)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    cells = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells)
    weights = np.clip(overlap, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


_ROWS8, _COLS9 = _area_weights(8, IMAGE_SHAPE[0]), _area_weights(9, IMAGE_SHAPE[1])
_COLS8 = _area_weights(8, IMAGE_SHAPE[1])
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SIGNATURE_BITS = 128
_SIGNATURE_CHUNK = 4096


def image_signatures(images: np.ndarray) -> np.ndarray:
    """Perceptual signature per image, (N, 2) uint64: a difference hash (9x8 grey thumbnail, left < right)
    and an average hash (8x8, above the mean). Re-encodings, single pixels and small colour changes move
    few of the 128 bits; distinct images differ in about half (benchmarks/near_duplicates.py)."""
    out = np.empty((len(images), 2), dtype=np.uint64)
    for start in range(0, len(images), _SIGNATURE_CHUNK):
        grey = images[start : start + _SIGNATURE_CHUNK].astype(np.float32) @ _LUMA
        rows = _ROWS8 @ grey  # (n, 8, 32): matrix products, not einsum's unoptimised loops
        wide, square = rows @ _COLS9.T, rows @ _COLS8.T
        bits = (wide[:, :, 1:] > wide[:, :, :-1], square > square.mean(axis=(1, 2), keepdims=True))
        for column, b in enumerate(bits):
            packed = np.packbits(b.reshape(len(b), 64), axis=1)
            out[start : start + len(b), column] = packed.view(">u8").ravel()
    return out


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query signature, the Hamming distance to its nearest reference and that reference's row."""
    distance = np.full(len(queries), SIGNATURE_BITS + 1, dtype=np.int64)
    row = np.full(len(queries), -1, dtype=np.int64)
    if len(references) == 0:
        return distance, row
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        d = np.bitwise_count(q[:, None, 0] ^ references[None, :, 0])
        d += np.bitwise_count(q[:, None, 1] ^ references[None, :, 1])
        row[start : start + len(q)] = d.argmin(axis=1)
        distance[start : start + len(q)] = d.min(axis=1)
    return distance, row


def _band_keys(signatures: np.ndarray, bands: int) -> list[np.ndarray]:
    """The 128 bits dealt into `bands` disjoint bands (every `bands`-th bit, so each band mixes image regions
    and both hashes: contiguous bands of flat regions are shared by thousands of images), one integer each."""
    bits = np.unpackbits(np.ascontiguousarray(signatures).view(np.uint8), axis=1).astype(np.int64)
    return [bits[:, b::bands] @ (1 << np.arange(bits[:, b::bands].shape[1], dtype=np.int64)) for b in range(bands)]


def within(
    queries: np.ndarray, references: np.ndarray, max_distance: int, max_candidates: int = 20_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Like `nearest`, but only answers "is a reference within `max_distance` bits?" (other queries get
    distance SIGNATURE_BITS + 1, row -1), fast: two signatures within d bits agree exactly on at least one of
    d + 1 bands (pigeonhole), so only pairs sharing a band value are compared. Exact, not approximate."""
    if max_distance < 2 or len(references) == 0 or len(queries) == 0:
        return _within_by_scan(queries, references, max_distance)
    pairs_q, pairs_r = [], []
    candidates = 0
    bands = max_distance + 1
    for q_keys, r_keys in zip(_band_keys(queries, bands), _band_keys(references, bands), strict=True):
        order = np.argsort(r_keys, kind="stable")
        ordered = r_keys[order]
        start = np.searchsorted(ordered, q_keys, "left")
        counts = np.searchsorted(ordered, q_keys, "right") - start
        candidates += int(counts.sum())
        if candidates > max_candidates:  # a few band values shared by very many images: compare everything
            return _within_by_scan(queries, references, max_distance)
        first = np.repeat(start - np.cumsum(counts) + counts, counts)
        pairs_q.append(np.repeat(np.arange(len(queries)), counts))
        pairs_r.append(order[first + np.arange(int(counts.sum()))])
    q, r = np.concatenate(pairs_q), np.concatenate(pairs_r)
    d = np.bitwise_count(queries[q] ^ references[r]).sum(axis=1).astype(np.int64)
    keep = d <= max_distance
    q, r, d = q[keep], r[keep], d[keep]
    best = np.lexsort((r, d, q))  # per query: the smallest distance, then the lowest reference row
    q, r, d = q[best], r[best], d[best]
    first = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    distance = np.full(len(queries), SIGNATURE_BITS + 1, dtype=np.int64)
    row = np.full(len(queries), -1, dtype=np.int64)
    distance[q[first]], row[q[first]] = d[first], r[first]
    return distance, row


def _within_by_scan(queries: np.ndarray, references: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    distance, row = nearest(queries, references)
    far = distance > max_distance
    distance[far], row[far] = SIGNATURE_BITS + 1, -1
    return distance, row


@dataclass(frozen=True)
class RawBatch:
    """uint8 NHWC images with labels and per-image hashes, plus where they came from."""

    partition: str
    images: np.ndarray
    labels: np.ndarray
    hashes: np.ndarray
    source: str
    source_files: dict[str, str] = field(default_factory=dict)
    # computed from the pixels at ingestion when not given; stored with the partition
    signatures: np.ndarray | None = None

    suffix: ClassVar[str] = ".npz"

    def __post_init__(self) -> None:
        where = f"partition {self.partition!r} ({self.source})"
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE:
            raise InvalidBatchError(
                f"{where}: images must be uint8 of shape (N, 32, 32, 3), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) == 0:  # the one emptiness check: a folder, tarball or pickle with no images
            raise InvalidBatchError(f"{where}: batch is empty")
        if self.labels.shape != (len(self.images),) or self.hashes.shape != (len(self.images),):
            raise InvalidBatchError(
                f"{where}: {len(self.images)} images but labels {self.labels.shape}, hashes {self.hashes.shape}"
            )
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(CIFAR10_CLASSES)))
        if bad.size:  # the one range check: every reader's labels arrive here
            raise InvalidBatchError(
                f"{where}: field 'labels' out of range 0..9 at index {int(bad[0])} (value {int(self.labels[bad[0]])})"
            )
        if self.signatures is None:
            object.__setattr__(self, "signatures", image_signatures(self.images))
        elif self.signatures.shape != (len(self.images), 2) or self.signatures.dtype != np.uint64:
            raise InvalidBatchError(
                f"{where}: signatures must be uint64 of shape ({len(self.images)}, 2), "
                f"got {self.signatures.dtype} {self.signatures.shape}"
            )

    @classmethod
    def of(
        cls, partition: str, images: np.ndarray, labels: np.ndarray, source: str, source_files: dict[str, str]
    ) -> RawBatch:
        """A batch of freshly read arrays: content hashes and signatures are computed here, then validated."""
        return cls(partition, images, labels, image_hashes(images), source, source_files)

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
                signatures=self.signatures,
            )

    @classmethod
    def load(cls, path: Path) -> RawBatch:
        """Partitions stored before signatures existed load too: theirs are computed from the pixels."""
        with np.load(path, allow_pickle=False) as z:
            return cls(
                partition=str(z["partition"]),
                images=z["images"],
                labels=z["labels"],
                hashes=z["hashes"],
                source=str(z["source"]),
                source_files=dict(zip(z["source_file_names"].tolist(), z["source_file_hashes"].tolist(), strict=True)),
                signatures=z["signatures"] if "signatures" in z.files else None,
            )
