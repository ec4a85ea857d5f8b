"""Helpers to materialize the data assets on a temporary project with real Dagster runs."""

from pathlib import Path

import dagster as dg

from mlsd_assets.automation.partitions import add_official_batches, raw_batches
from mlsd_assets.data import checks
from mlsd_assets.data.assets import cifar10_split, raw_cifar10
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import Cifar10Source, DataPaths

SPLIT_CHECKS = [c for c in vars(checks).values() if isinstance(c, dg.AssetChecksDefinition)]


def data_resources(home: Path, location: str) -> dict[str, object]:
    return {
        "io_manager": ArtifactIOManager(root=str(home / "artifacts")),
        "paths": DataPaths(root=str(home / "data")),
        "cifar10_source": Cifar10Source(location=location),
    }


def materialize_partitions(
    instance: dg.DagsterInstance, resources: dict[str, object], keys: list[str]
) -> list[dg.ExecuteInProcessResult]:
    """One run per partition, as a backfill would launch them; registers the keys first."""
    add_official_batches(instance)
    instance.add_dynamic_partitions(
        raw_batches.name, [k for k in keys if not instance.has_dynamic_partition(raw_batches.name, k)]
    )
    return [
        dg.materialize([raw_cifar10], partition_key=key, resources=resources, instance=instance, raise_on_error=False)
        for key in keys
    ]


def materialize_split(
    instance: dg.DagsterInstance, resources: dict[str, object], run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_cifar10, cifar10_split, *SPLIT_CHECKS],
        selection=[cifar10_split.key],
        resources=resources,
        instance=instance,
        run_config=run_config or {},
        raise_on_error=False,
    )
