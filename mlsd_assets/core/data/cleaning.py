"""From raw batches to the cleaned split: drop duplicates and invalid images, assign splits, train-only stats.

Rules (each kept or dropped row is decided by its own content, so adding a drop never moves an image):
  - test = the official test batch; every other partition (official train batches and drops) is training data;
  - invalid = a constant image (every pixel the same value: blank frames, failed captures carry no signal);
  - the official test split never shrinks because of a drop: a training copy of a test image is dropped as
    "duplicate_of_test" (same label) or "conflicts_with_test" (other label), naming the test image;
  - otherwise an image hash seen with two different labels is ambiguous: every copy is dropped
    ("conflicting_labels");
  - exact duplicates (same hash) keep one copy: the first in partition order (official batches, then drops by
    key), then position;
  - near-duplicates of test images (perceptual signature within `near_duplicate_distance` bits of a test
    image's: re-encodings, single pixels, small colour changes) are dropped from training as
    "near_duplicate_of_test", naming the matched test image;
  - validation = training rows whose hash, read as a fraction in [0, 1), is below `validation_fraction`:
    stratified in expectation per class, and stable when drops arrive;
  - mean/std per channel (0..1 scale) over train rows only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, OFFICIAL_TEST_BATCH, RawBatch, within
from mlsd_assets.core.data.splits import Cifar10Split

DROP_REASONS = (
    "invalid_constant_image",
    "conflicting_labels",
    "duplicate_of_test",
    "conflicts_with_test",
    "duplicate",
    "near_duplicate_of_test",
)
# Largest Hamming distance (of 128 signature bits) at which a training image counts as a near-duplicate of a
# test image; chosen in benchmarks/near_duplicates.py (README: "Near-duplicates").
NEAR_DUPLICATE_DISTANCE = 8
_STATS_CHUNK = 2048


def partition_order(partitions: list[str]) -> list[str]:
    """Official batches in their order, then drops sorted by key: the tie-break order for duplicates."""
    official = [p for p in OFFICIAL_BATCHES if p in partitions]
    return official + sorted(p for p in partitions if p not in OFFICIAL_BATCHES)


def hash_fraction(hashes: np.ndarray) -> np.ndarray:
    """The first 52 bits of each hex hash as a float in [0, 1): a per-image coin that never changes."""
    return np.array([int(h[:13], 16) for h in hashes], dtype=np.float64) / float(16**13)


def build_split(
    batches: Mapping[str, RawBatch],
    validation_fraction: float,
    log: logging.Logger,
    near_duplicate_distance: int | None = NEAR_DUPLICATE_DISTANCE,
) -> Cifar10Split:
    """`near_duplicate_distance=None` keeps near-duplicates of test images (exact copies are always dropped)."""
    if not batches:
        raise ValueError("no raw batches: materialize raw_cifar10 partitions first")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    order = partition_order(list(batches))
    rows = pd.DataFrame(
        {
            "partition": np.concatenate([np.full(len(batches[p]), p, dtype=object) for p in order]),
            "source_index": np.concatenate([np.arange(len(batches[p]), dtype=np.int64) for p in order]),
            "label": np.concatenate([batches[p].labels.astype(np.int64) for p in order]),
            "hash": np.concatenate([batches[p].hashes.astype(str) for p in order]),
        }
    )
    rows["is_test"] = rows["partition"] == OFFICIAL_TEST_BATCH
    rows["image_id"] = rows["partition"] + ":" + rows["source_index"].astype(str)
    rows["reason"], rows["matched_test_id"] = _drop_reasons(
        rows, np.concatenate([_constant(batches[p].images) for p in order])
    )
    if near_duplicate_distance is not None:
        signatures = np.concatenate([batches[p].signatures for p in order])
        _drop_near_duplicates(rows, signatures, near_duplicate_distance)
    kept = rows[rows["reason"] == ""]
    is_validation = hash_fraction(kept["hash"].to_numpy()) < validation_fraction
    split = np.where(kept["is_test"], "test", np.where(is_validation, "validation", "train"))
    index = pd.DataFrame(
        {
            "image_id": kept["image_id"].to_numpy(),
            "partition": kept["partition"].to_numpy(),
            "source_index": kept["source_index"].to_numpy(),
            "label": kept["label"].to_numpy(),
            "split": split,
            "hash": kept["hash"].to_numpy(),
        }
    ).astype({"image_id": str, "partition": str, "split": str, "hash": str})
    images = _gather(batches, order, kept.index.to_numpy())
    mean, std = channel_stats(images[split == "train"])
    columns = ["partition", "source_index", "hash", "reason", "matched_test_id"]
    dropped = rows.loc[rows["reason"] != "", columns].reset_index(drop=True)
    dropped = dropped.astype({"partition": str, "hash": str, "reason": str, "matched_test_id": str})
    counts = {str(k): int(v) for k, v in pd.Series(split).value_counts().items()}
    log.info(f"split over {len(order)} partitions: {counts}, dropped {len(dropped)}")
    return Cifar10Split(images=images, index=index, dropped=dropped, mean=mean, std=std)


def _constant(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    return flat.min(axis=1) == flat.max(axis=1)


def _drop_reasons(rows: pd.DataFrame, constant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reason per row ("" = kept) and, for training copies of a test image, the test image's id."""
    reason = np.where(constant, "invalid_constant_image", "").astype(object)
    matched = np.full(len(rows), "", dtype=object)
    is_test = rows["is_test"].to_numpy()
    # Test rows are judged among themselves only, so nothing a drop contains can remove a test image.
    test = rows[(reason == "") & is_test]
    test_labels = test.groupby("hash")["label"].nunique()
    reason[(rows["hash"].isin(test_labels.index[test_labels > 1]) & is_test).to_numpy()] = "conflicting_labels"
    first_test = test.drop_duplicates("hash").set_index("hash")
    copies = ((reason == "") & ~is_test) & rows["hash"].isin(first_test.index).to_numpy()
    hashes = rows.loc[copies, "hash"]
    same_label = rows.loc[copies, "label"].to_numpy() == first_test.loc[hashes, "label"].to_numpy()
    reason[copies] = np.where(same_label, "duplicate_of_test", "conflicts_with_test")
    matched[copies] = first_test.loc[hashes, "image_id"].to_numpy()
    train = rows[(reason == "") & ~is_test]
    train_labels = train.groupby("hash")["label"].nunique()
    reason[(rows["hash"].isin(train_labels.index[train_labels > 1]) & ~is_test).to_numpy() & (reason == "")] = (
        "conflicting_labels"
    )
    candidates = rows[reason == ""]  # test rows first by their partition's place, then the row order
    duplicate = candidates.sort_values("is_test", ascending=False, kind="stable").duplicated("hash")
    reason[duplicate.index[duplicate.to_numpy()]] = "duplicate"
    return reason.astype(str), matched.astype(str)


def _drop_near_duplicates(rows: pd.DataFrame, signatures: np.ndarray, max_distance: int) -> None:
    """Kept training rows within `max_distance` signature bits of a kept test image leave the split."""
    kept = (rows["reason"] == "").to_numpy()
    test = np.flatnonzero(kept & rows["is_test"].to_numpy())
    train = np.flatnonzero(kept & ~rows["is_test"].to_numpy())
    distance, nearest_row = within(signatures[train], signatures[test], max_distance)
    near = distance <= max_distance
    rows.loc[rows.index[train[near]], "reason"] = "near_duplicate_of_test"
    rows.loc[rows.index[train[near]], "matched_test_id"] = rows["image_id"].to_numpy()[test[nearest_row[near]]]


def _gather(batches: Mapping[str, RawBatch], order: list[str], keep: np.ndarray) -> np.ndarray:
    """Kept rows of the concatenated batches, copied partition by partition (no full concatenated copy)."""
    out = np.empty((len(keep), *batches[order[0]].images.shape[1:]), dtype=np.uint8)
    start, filled = 0, 0
    for p in order:
        images = batches[p].images
        local = keep[(keep >= start) & (keep < start + len(images))] - start
        if len(local) == len(images):  # nothing dropped here: one contiguous copy
            out[filled : filled + len(local)] = images
        else:
            np.take(images, local, axis=0, out=out[filled : filled + len(local)])
        filled += len(local)
        start += len(images)
    return out


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std on a 0..1 scale, exact, from 256-bin histograms (flat memory)."""
    if len(images) == 0:
        raise ValueError("the train split is empty: cannot compute normalisation statistics")
    channels = images.shape[-1]
    histogram = np.zeros((channels, 256), dtype=np.int64)
    for i in range(0, len(images), _STATS_CHUNK):
        chunk = images[i : i + _STATS_CHUNK]
        for c in range(channels):
            histogram[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = histogram.sum(axis=1)
    mean = histogram @ values / n
    std = np.sqrt(np.maximum(histogram @ values**2 / n - mean**2, 0.0))
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)
