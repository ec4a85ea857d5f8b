"""Instance history for automation tests: materializations reported as if the assets had run."""

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from mlsd_assets.automation.jobs import SPLIT_ASSET
from mlsd_assets.automation.partitions import raw_batches
from mlsd_assets.automation.trust import code_location_graph


def report_split(instance: dg.DagsterInstance, content_hash: str, checks_pass: bool | None = True) -> None:
    """A split materialization; its blocking checks then pass, fail (False), or are never evaluated (None)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=SPLIT_ASSET, metadata={"content_hash": content_hash})
    )
    if checks_pass is None:
        return
    [record] = instance.fetch_materializations(SPLIT_ASSET, limit=1).records
    target = AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )
    graph = code_location_graph()
    for key in sorted(graph.get_check_keys_for_assets({SPLIT_ASSET}), key=lambda k: k.name):
        if graph.get(key).blocking:
            evaluation = dg.AssetCheckEvaluation(
                asset_key=SPLIT_ASSET,
                check_name=key.name,
                passed=checks_pass,
                target_materialization_data=target,
                blocking=True,
            )
            instance.report_runless_asset_event(evaluation)


def report_model(instance: dg.DagsterInstance, dataset_hash: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="cifar10_model", metadata={"dataset_hash": dataset_hash})
    )


def report_raw(instance: dg.DagsterInstance, partition: str) -> None:
    if not instance.has_dynamic_partition(raw_batches.name, partition):
        instance.add_dynamic_partitions(raw_batches.name, [partition])
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="raw_cifar10", partition=partition))
