"""Pandera contracts of the split's tables; the asset checks validate against them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mlsd_assets.core.data.batches import CIFAR10_CLASSES, IMAGE_SHAPE
from mlsd_assets.core.data.cleaning import DROP_REASONS
from mlsd_assets.core.data.splits import SPLITS, Cifar10Split

HASH_PATTERN = r"^[0-9a-f]{32}$"

# Structure and dtypes of the index that travels with the arrays (blocking: downstream reads these names).
INDEX_SCHEMA = pa.DataFrameSchema(
    {
        "image_id": pa.Column(str, pa.Check.str_matches(r"^[A-Za-z0-9][A-Za-z0-9._-]*:\d+$"), unique=True),
        "partition": pa.Column(str),
        "source_index": pa.Column("int64", pa.Check.ge(0)),
        "label": pa.Column("int64"),
        "split": pa.Column(str, pa.Check.isin(SPLITS)),
        "hash": pa.Column(str, pa.Check.str_matches(HASH_PATTERN)),
    },
    strict=True,
    ordered=True,
    name="cifar10_split.index",
)

DROPPED_SCHEMA = pa.DataFrameSchema(
    {
        "partition": pa.Column(str),
        "source_index": pa.Column("int64", pa.Check.ge(0)),
        "hash": pa.Column(str, pa.Check.str_matches(HASH_PATTERN)),
        "reason": pa.Column(str, pa.Check.isin(DROP_REASONS)),
        "matched_test_id": pa.Column(str),
    },
    strict=True,
    name="cifar10_split.dropped",
)

LABEL_SCHEMA = pa.DataFrameSchema(
    {"label": pa.Column("int64", pa.Check.in_range(0, len(CIFAR10_CLASSES) - 1))}, name="labels"
)

# One row per image hash: the number of distinct splits it appears in (leakage when > 1).
LEAKAGE_SCHEMA = pa.DataFrameSchema(
    {"splits": pa.Column("int64", pa.Check.le(1, error="an image hash appears in more than one split"))},
    name="hash_splits",
)

# The recomputed hash of each image row must equal its index row's hash, or the leakage check proves nothing.
HASH_MATCH_SCHEMA = pa.DataFrameSchema(
    {"matches": pa.Column(bool, pa.Check.eq(True, error="index hash differs from the image bytes"))},
    name="hash_match",
)

IMAGES_SCHEMA = pa.DataFrameSchema(
    {
        "dtype": pa.Column(str, pa.Check.eq("uint8")),
        "ndim": pa.Column("int64", pa.Check.eq(4)),
        "height": pa.Column("int64", pa.Check.eq(IMAGE_SHAPE[0])),
        "width": pa.Column("int64", pa.Check.eq(IMAGE_SHAPE[1])),
        "channels": pa.Column("int64", pa.Check.eq(IMAGE_SHAPE[2])),
        "rows_minus_index_rows": pa.Column("int64", pa.Check.eq(0)),
    },
    name="images",
)


def images_frame(split: Cifar10Split) -> pd.DataFrame:
    """The image array's layout as a one-row table, so shape/dtype are validated like any other column."""
    shape = tuple(split.images.shape) + (0,) * max(0, 4 - split.images.ndim)
    return pd.DataFrame(
        {
            "dtype": [str(split.images.dtype)],
            "ndim": np.array([split.images.ndim], dtype=np.int64),
            "height": np.array([shape[1]], dtype=np.int64),
            "width": np.array([shape[2]], dtype=np.int64),
            "channels": np.array([shape[3]], dtype=np.int64),
            "rows_minus_index_rows": np.array([shape[0] - len(split.index)], dtype=np.int64),
        }
    )


def class_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per (split, class), zeros included, and each count's relative deviation from its split mean."""
    counts = (
        pd.crosstab(index["split"], index["label"])
        .reindex(index=list(SPLITS), columns=range(len(CIFAR10_CLASSES)), fill_value=0)
        .stack()
        .rename("count")
        .reset_index()
    )
    counts["class"] = [CIFAR10_CLASSES[int(i)] for i in counts["label"]]
    mean = counts.groupby("split")["count"].transform("mean")
    counts["deviation"] = ((counts["count"] - mean).abs() / mean.where(mean > 0)).fillna(0.0)
    counts["count"] = counts["count"].astype(np.int64)
    counts.index = counts["split"] + "/" + counts["class"]  # failure cases then name the split and class
    return counts[["split", "class", "count", "deviation"]]


def balance_schema(tolerance: float) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "deviation": pa.Column(
                float, pa.Check.le(tolerance, error=f"class share off its split mean by > {tolerance}")
            )
        },
        name="class_balance",
    )


def min_counts_schema(min_per_class: int) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {"count": pa.Column("int64", pa.Check.ge(min_per_class, error=f"fewer than {min_per_class} images"))},
        name="min_counts",
    )
