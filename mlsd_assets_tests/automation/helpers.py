"""Instance history for automation tests: materializations reported as if the assets had run."""

import dagster as dg

from mlsd_assets.data.partitions import raw_batches


def report_split(instance: dg.DagsterInstance, content_hash: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="cifar10_split", metadata={"content_hash": content_hash})
    )


def report_model(instance: dg.DagsterInstance, dataset_hash: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="cifar10_model", metadata={"dataset_hash": dataset_hash})
    )


def report_raw(instance: dg.DagsterInstance, partition: str) -> None:
    if not instance.has_dynamic_partition(raw_batches.name, partition):
        instance.add_dynamic_partitions(raw_batches.name, [partition])
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="raw_cifar10", partition=partition))
