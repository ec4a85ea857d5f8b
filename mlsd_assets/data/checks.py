"""Asset checks on the cleaned split, each backed by a pandera schema; schema and leakage block downstream."""

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pydantic import Field

from mlsd_assets.core.data.batches import image_hashes, image_signatures, within
from mlsd_assets.core.data.cleaning import NEAR_DUPLICATE_DISTANCE
from mlsd_assets.core.data.schemas import (
    DROPPED_SCHEMA,
    HASH_MATCH_SCHEMA,
    IMAGES_SCHEMA,
    INDEX_SCHEMA,
    LABEL_SCHEMA,
    LEAKAGE_SCHEMA,
    balance_schema,
    class_counts,
    images_frame,
    min_counts_schema,
)
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.data.assets import cifar10_split, table

MAX_FAILURE_ROWS = 20


def validated(checks: dict[str, tuple[pa.DataFrameSchema, pd.DataFrame]], **metadata: object) -> dg.AssetCheckResult:
    """Run every schema lazily; fail with pandera's failure cases (first rows) as a table in the UI."""
    failures = []
    for name, (schema, frame) in checks.items():
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases.astype(str)
            cases.insert(0, "table", name)
            failures.append(cases)
    if not failures:
        return dg.AssetCheckResult(passed=True, metadata=metadata)
    cases = pd.concat(failures, ignore_index=True)
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(cases)} failure case(s) in {', '.join(sorted(set(cases['table'])))}",
        metadata={
            **metadata,
            "failure_count": len(cases),
            "failure_cases": table(cases.head(MAX_FAILURE_ROWS)),
        },
    )


@dg.asset_check(asset=cifar10_split, blocking=True)
def check_cifar10_split_schema(cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """Columns, dtypes, unique ids and split names of the index and of the dropped-rows table."""
    return validated(
        {"index": (INDEX_SCHEMA, cifar10_split.index), "dropped": (DROPPED_SCHEMA, cifar10_split.dropped)},
        rows=len(cifar10_split.index),
    )


@dg.asset_check(asset=cifar10_split, blocking=True)
def check_cifar10_split_leakage(cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """No image (by content hash, recomputed from the pixels) is in two splits."""
    index = cifar10_split.index
    splits_per_hash = index.groupby("hash")["split"].nunique().astype("int64").rename("splits").to_frame()
    if len(cifar10_split.images) == len(index):
        pixels = image_hashes(cifar10_split.images) == index["hash"].to_numpy(dtype=str)
        matches = pd.DataFrame({"matches": pixels}, index=index["image_id"].to_numpy(dtype=str))
    else:  # rows cannot be paired: the hashes vouch for nothing
        matches = pd.DataFrame({"matches": [False]}, index=["<image rows != index rows>"])
    return validated(
        {
            "splits_per_hash": (LEAKAGE_SCHEMA, splits_per_hash),
            "hash_matches_pixels": (HASH_MATCH_SCHEMA, matches),
        },
        distinct_hashes=len(splits_per_hash),
    )


class NearDuplicatesConfig(dg.Config):
    max_distance: int = Field(
        default=NEAR_DUPLICATE_DISTANCE,
        ge=0,
        le=128,
        description="Largest signature Hamming distance (of 128 bits) that counts as a near-duplicate.",
    )


@dg.asset_check(asset=cifar10_split, blocking=True)
def check_cifar10_split_near_duplicates(
    config: NearDuplicatesConfig, cifar10_split: Cifar10Split
) -> dg.AssetCheckResult:
    """No train/validation image is a near-duplicate of a test image (signatures recomputed from the pixels)."""
    index = cifar10_split.index
    signatures = image_signatures(cifar10_split.images)
    is_test = (index["split"] == "test").to_numpy()
    distance, row = within(signatures[~is_test], signatures[is_test], config.max_distance)
    near = distance <= config.max_distance
    pairs = pd.DataFrame(
        {
            "image_id": index["image_id"].to_numpy()[~is_test][near],
            "split": index["split"].to_numpy()[~is_test][near],
            "test_image_id": index["image_id"].to_numpy()[is_test][row[near]],
            "distance": distance[near],
        }
    ).sort_values("distance", kind="stable")
    metadata = {"max_distance": config.max_distance, "pairs": len(pairs)}
    if pairs.empty:
        return dg.AssetCheckResult(passed=True, metadata=metadata)
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(pairs)} train/validation image(s) within {config.max_distance} bits of a test image",
        metadata={**metadata, "near_duplicate_pairs": table(pairs.head(MAX_FAILURE_ROWS))},
    )


@dg.asset_check(asset=cifar10_split)
def check_cifar10_split_label_range(cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """Every label is a CIFAR-10 class id (0..9)."""
    return validated({"index": (LABEL_SCHEMA, cifar10_split.index[["label"]])})


@dg.asset_check(asset=cifar10_split)
def check_cifar10_split_image_shape(cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """Images are uint8 (N, 32, 32, 3) with one row per index row."""
    return validated({"images": (IMAGES_SCHEMA, images_frame(cifar10_split))}, shape=str(cifar10_split.images.shape))


class ClassBalanceConfig(dg.Config):
    tolerance: float = Field(
        default=0.25,
        ge=0.0,
        description="Largest allowed |class count - split mean| / split mean, per split.",
    )


@dg.asset_check(asset=cifar10_split)
def check_cifar10_split_class_balance(config: ClassBalanceConfig, cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """Each class's count within each split stays within `tolerance` of that split's mean class count."""
    counts = class_counts(cifar10_split.index)
    return validated(
        {"class_counts": (balance_schema(config.tolerance), counts)},
        tolerance=config.tolerance,
        max_deviation=float(counts["deviation"].max()),
    )


class MinCountsConfig(dg.Config):
    min_per_class: int = Field(default=1, ge=0, description="Fewest images of each class in each split.")


@dg.asset_check(asset=cifar10_split)
def check_cifar10_split_min_counts(config: MinCountsConfig, cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    """Every class has at least `min_per_class` images in train, validation and test."""
    counts = class_counts(cifar10_split.index)
    return validated(
        {"class_counts": (min_counts_schema(config.min_per_class), counts)},
        min_per_class=config.min_per_class,
        smallest=int(counts["count"].min()),
    )
