"""From raw batches to the cleaned split: drop duplicates and invalid images, assign splits, train-only stats.

Rules (each kept or dropped row is decided by its own content, so adding a drop never moves an image):
  - test = the official test batch; every other partition (official train batches and drops) is training data;
  - invalid = a constant image (every pixel the same value: blank frames, failed captures carry no signal);
  - an image hash seen with two different labels is ambiguous: every copy is dropped ("conflicting_labels");
  - exact duplicates (same hash) keep one copy: a test copy if there is one (the training copy is dropped as
    "duplicate_of_test", so nothing leaks), else the first in partition order (official batches, then drops by
    key), then position;
  - validation = training rows whose hash, read as a fraction in [0, 1), is below `validation_fraction`:
    stratified in expectation per class, and stable when drops arrive;
  - mean/std per channel (0..1 scale) over train rows only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mlsd_assets.ml.batches import OFFICIAL_BATCHES, OFFICIAL_TEST_BATCH, RawBatch
from mlsd_assets.ml.splits import Cifar10Split

DROP_REASONS = ("invalid_constant_image", "conflicting_labels", "duplicate_of_test", "duplicate")
_STATS_CHUNK = 2048


def partition_order(partitions: list[str]) -> list[str]:
    """Official batches in their order, then drops sorted by key: the tie-break order for duplicates."""
    official = [p for p in OFFICIAL_BATCHES if p in partitions]
    return official + sorted(p for p in partitions if p not in OFFICIAL_BATCHES)


def hash_fraction(hashes: np.ndarray) -> np.ndarray:
    """The first 52 bits of each hex hash as a float in [0, 1): a per-image coin that never changes."""
    return np.array([int(h[:13], 16) for h in hashes], dtype=np.float64) / float(16**13)


def build_split(
    batches: Mapping[str, RawBatch], validation_fraction: float, log: logging.Logger
) -> Cifar10Split:
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
    rows["reason"] = _drop_reasons(rows, np.concatenate([_constant(batches[p].images) for p in order]))
    kept = rows[rows["reason"] == ""]
    is_validation = hash_fraction(kept["hash"].to_numpy()) < validation_fraction
    split = np.where(kept["is_test"], "test", np.where(is_validation, "validation", "train"))
    index = pd.DataFrame(
        {
            "image_id": (kept["partition"] + ":" + kept["source_index"].astype(str)).to_numpy(),
            "partition": kept["partition"].to_numpy(),
            "source_index": kept["source_index"].to_numpy(),
            "label": kept["label"].to_numpy(),
            "split": split,
            "hash": kept["hash"].to_numpy(),
        }
    ).astype({"image_id": str, "partition": str, "split": str, "hash": str})
    images = _gather(batches, order, kept.index.to_numpy())
    mean, std = channel_stats(images[split == "train"])
    dropped = rows.loc[rows["reason"] != "", ["partition", "source_index", "hash", "reason"]].reset_index(
        drop=True
    )
    dropped = dropped.astype({"partition": str, "hash": str, "reason": str})
    counts = {str(k): int(v) for k, v in pd.Series(split).value_counts().items()}
    log.info(f"split over {len(order)} partitions: {counts}, dropped {len(dropped)}")
    return Cifar10Split(images=images, index=index, dropped=dropped, mean=mean, std=std)


def _constant(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    return flat.min(axis=1) == flat.max(axis=1)


def _drop_reasons(rows: pd.DataFrame, constant: np.ndarray) -> np.ndarray:
    reason = np.where(constant, "invalid_constant_image", "").astype(object)
    valid = reason == ""
    labels_per_hash = rows[valid].groupby("hash")["label"].nunique()
    conflicting = rows["hash"].isin(labels_per_hash.index[labels_per_hash > 1]) & valid
    reason[conflicting.to_numpy()] = "conflicting_labels"
    candidates = rows[reason == ""]
    # test copies first, then the row order (partition order, position): the first of each hash is kept
    ranked = candidates.sort_values("is_test", ascending=False, kind="stable")
    duplicate = ranked.duplicated("hash", keep="first")
    keeper_is_test = ranked.drop_duplicates("hash").set_index("hash")["is_test"]
    dup_rows = ranked[duplicate]
    reason[dup_rows.index.to_numpy()] = np.where(
        keeper_is_test.loc[dup_rows["hash"]].to_numpy() & ~dup_rows["is_test"].to_numpy(),
        "duplicate_of_test",
        "duplicate",
    )
    return reason.astype(str)


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
