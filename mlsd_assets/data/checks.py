"""Asset checks: drift of each raw partition (warns), and the cleaned split's rules, each backed by a pandera
schema; schema, leakage and near-duplicates block downstream."""

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pydantic import Field

from mlsd_assets.automation.partitions import raw_batches
from mlsd_assets.core.data.batches import OFFICIAL_TRAIN_BATCHES, RawBatch, image_hashes, image_signatures, within
from mlsd_assets.core.data.cleaning import NEAR_DUPLICATE_DISTANCE
from mlsd_assets.core.data.drift import CHANNELS, DriftLimits, Reference, batches_reference, compare, split_reference
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
from mlsd_assets.io_manager import ArtifactIOManager

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


class DriftConfig(dg.Config):
    """Thresholds above which the drift check warns (run config of the check, e.g. per deployment)."""

    max_label_tv: float = DriftLimits.max_label_tv
    label_p_value: float = DriftLimits.label_p_value
    max_mean_shift: float = DriftLimits.max_mean_shift
    max_std_ratio: float = DriftLimits.max_std_ratio


def _drift_reference(io_manager: ArtifactIOManager, partition: str) -> Reference | None:
    """The current split's train rows; before any split, the other materialized official training batches."""
    split_path = io_manager.path_for(dg.AssetKey("cifar10_split"), None, Cifar10Split.suffix)
    if split_path.exists():
        return split_reference(Cifar10Split.load(split_path), f"cifar10_split train rows ({split_path})")
    paths = [
        io_manager.path_for(dg.AssetKey("raw_cifar10"), key, RawBatch.suffix)
        for key in OFFICIAL_TRAIN_BATCHES
        if key != partition
    ]
    batches = [RawBatch.load(path) for path in paths if path.exists()]
    return batches_reference(batches) if batches else None


@dg.asset_check(
    asset="raw_cifar10",
    partitions_def=raw_batches,
    blocking=False,
    description="Warns when a raw partition's labels or per-channel pixel statistics leave the training's.",
)
def check_raw_cifar10_drift(
    context: dg.AssetCheckExecutionContext,
    config: DriftConfig,
    raw_cifar10: RawBatch,
    io_manager: dg.ResourceParam[ArtifactIOManager],
) -> dg.AssetCheckResult:
    partition = raw_cifar10.partition
    ref = _drift_reference(io_manager, partition)
    if ref is None:
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{partition}: no training data materialized yet to compare with",
            metadata={"reference": "none"},
        )
    drift = compare(raw_cifar10.images, raw_cifar10.labels, ref)
    reasons = drift.reasons(DriftLimits(**config.model_dump()))
    metadata: dict[str, dg.RawMetadataValue] = {
        "reference": ref.source,
        "images": len(raw_cifar10),
        "label_tv": round(drift.label_tv, 4),
        "label_p_value": float(f"{drift.label_p_value:.4g}"),
        "label_histogram": dg.MetadataValue.json(raw_cifar10.class_histogram()),
    }
    for i, name in enumerate(CHANNELS):
        metadata[f"{name}_mean_shift"] = round(float(drift.mean_shift[i]), 4)
        metadata[f"{name}_std_ratio"] = round(float(drift.std_ratio[i]), 4)
    if reasons:
        context.log.warning(f"raw_cifar10 {partition}: drift: {'; '.join(reasons)}")
    return dg.AssetCheckResult(
        passed=not reasons,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{partition}: " + ("; ".join(reasons) if reasons else f"in line with {ref.source}"),
        metadata=metadata,
    )
