"""Raw CIFAR-10 batches (one partition per batch) and the cleaned train/validation/test split."""

import dagster as dg
import pandas as pd
from pydantic import Field

from mlsd_assets.automation.partitions import raw_batches
from mlsd_assets.automation.trust import require_trusted_inputs
from mlsd_assets.core.data.batches import CIFAR10_CLASSES, OFFICIAL_BATCHES, RawBatch
from mlsd_assets.core.data.cleaning import NEAR_DUPLICATE_DISTANCE, build_split
from mlsd_assets.core.data.schemas import INDEX_SCHEMA
from mlsd_assets.core.data.sources import find_drop, read_drop
from mlsd_assets.core.data.splits import SPLITS, Cifar10Split
from mlsd_assets.resources import Cifar10Source, DataPaths

PREVIEW_ROWS = 20


def table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A small DataFrame as a table the UI renders (ints stay ints, everything else becomes text)."""
    is_int = {str(c): pd.api.types.is_integer_dtype(frame[c]) for c in frame.columns}
    columns = [dg.TableColumn(c, "int" if is_int[c] else "string") for c in is_int]
    records = [
        dg.TableRecord({c: int(v) if is_int[c] else str(v) for c, v in zip(is_int, row, strict=True)})
        for row in frame.itertuples(index=False)
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


@dg.asset(partitions_def=raw_batches, group_name="data", kinds={"numpy"})
def raw_cifar10(context: dg.AssetExecutionContext, cifar10_source: Cifar10Source, paths: DataPaths) -> RawBatch:
    """One batch as uint8 NHWC arrays: an official batch from the configured source, or a data drop."""
    partition = context.partition_key
    if partition in OFFICIAL_BATCHES:
        batch = cifar10_source.read(partition, paths.downloads_dir, context.log)
    else:
        batch = read_drop(find_drop(paths.drops_dir, partition), partition, context.log)
    histogram = batch.class_histogram()
    context.add_output_metadata(
        {
            "count": len(batch),
            "class_histogram": table(pd.DataFrame({"class": list(histogram), "count": list(histogram.values())})),
            "class_histogram_json": dg.MetadataValue.json(histogram),
            "source": batch.source,
            "source_files": dg.MetadataValue.json(batch.source_files),
            "kind": "official" if partition in OFFICIAL_BATCHES else "drop",
        }
    )
    return batch


class Cifar10SplitConfig(dg.Config):
    validation_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of training images held out for validation (by hash)."
    )
    near_duplicate_distance: int | None = Field(
        default=NEAR_DUPLICATE_DISTANCE,
        ge=0,
        le=128,
        description="Training images within this many signature bits of a test image are dropped; null keeps them.",
    )


@dg.asset(group_name="data", kinds={"numpy", "pandas"})
def cifar10_split(
    context: dg.AssetExecutionContext, config: Cifar10SplitConfig, raw_cifar10: dict[str, RawBatch]
) -> Cifar10Split:
    """Deduplicated train/validation/test split over every materialized raw batch (rules: ml/cleaning)."""
    require_trusted_inputs(context)
    split = build_split(raw_cifar10, config.validation_fraction, context.log, config.near_duplicate_distance)
    INDEX_SCHEMA.validate(split.index)
    per_class = pd.crosstab(split.index["label"], split.index["split"]).reindex(
        index=range(len(CIFAR10_CLASSES)), columns=list(SPLITS), fill_value=0
    )
    per_class.insert(0, "class", list(CIFAR10_CLASSES))
    context.add_output_metadata(
        {
            **{f"{name}_count": n for name, n in split.counts().items()},
            "dropped_by_reason": dg.MetadataValue.json(
                {str(k): int(v) for k, v in split.dropped["reason"].value_counts().items()}
            ),
            "dropped_count": len(split.dropped),
            "mean": dg.MetadataValue.json(list(split.mean)),
            "std": dg.MetadataValue.json(list(split.std)),
            "content_hash": split.content_hash,
            "partitions": dg.MetadataValue.json(split.partitions),
            "per_class": table(per_class.reset_index(drop=True)),
            "preview": table(split.index.head(PREVIEW_ROWS)),
            "validation_fraction": config.validation_fraction,
            "near_duplicate_distance": -1 if config.near_duplicate_distance is None else config.near_duplicate_distance,
        }
    )
    return split
