"""Blocking checks that hold across runs: an input whose latest materialization a blocking check has not
passed is never consumed, by a schedule, a sensor or a run started by hand.

Dagster's blocking checks only stop later steps of the same run (dagster-io/dagster#17332); our jobs are cut
across runs, so every consumer asks Dagster's own check records here (no bookkeeping of our own).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

# Run tag an operator sets (the value is the reason) to consume inputs whose blocking checks did not pass.
OVERRIDE_TAG = "mlsd/override_blocking_checks"
# How far back a check's history is searched for the evaluation of one materialization.
HISTORY_LIMIT = 100


@dataclass(frozen=True)
class Distrust:
    """A blocking check that does not vouch for the latest materialization of an input."""

    check: dg.AssetCheckKey
    status: str  # "failed" | "not evaluated" | "still running"
    storage_id: int
    materialization_run_id: str
    check_run_id: str | None
    partition: str | None = None

    def describe(self) -> str:
        asset = self.check.asset_key.to_user_string()
        part = f" partition {self.partition!r}" if self.partition else ""
        check_run = f" (check run {self.check_run_id})" if self.check_run_id else ""
        return (
            f"blocking check {self.check.name} {self.status}{check_run} for the latest {asset}{part} "
            f"materialization (storage id {self.storage_id}, run {self.materialization_run_id or 'runless'})"
        )


def _verdict(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, record: dg.EventLogRecord, partition: str | None
) -> Distrust | None:
    """The check's latest execution that targets this materialization decides; none means not evaluated."""
    status, check_run = "not evaluated", None
    history = instance.event_log_storage.get_asset_check_execution_history(check, limit=HISTORY_LIMIT)
    for execution in history:  # newest first
        evaluation = execution.evaluation
        target = getattr(evaluation, "target_materialization_data", None)
        if execution.status == AssetCheckExecutionRecordStatus.PLANNED:
            if execution.run_id == record.run_id:
                run = instance.get_run_by_id(execution.run_id)
                status = "still running" if run is not None and not run.is_finished else "not evaluated"
                check_run = execution.run_id
                break
            continue
        if target is not None and target.storage_id == record.storage_id:
            if execution.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
                return None
            status, check_run = "failed", execution.run_id
            break
    return Distrust(check, status, record.storage_id, record.run_id, check_run, partition)


def _latest_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitioned: bool
) -> list[tuple[str | None, dg.EventLogRecord]]:
    if not partitioned:
        records = instance.fetch_materializations(key, limit=1).records
        return [(None, records[0])] if records else []
    latest = []
    for partition in sorted(instance.get_materialized_partitions(key)):
        filter_ = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
        latest += [(partition, r) for r in instance.fetch_materializations(filter_, limit=1).records]
    return latest


def distrusted_inputs(
    instance: dg.DagsterInstance,
    graph: BaseAssetGraph,
    inputs: Iterable[dg.AssetKey],
    current_run_id: str | None = None,
) -> list[Distrust]:
    """Every blocking check (as defined in `graph`) that has not passed on the latest materialization of an
    input; materializations of `current_run_id` are left to Dagster, which blocks within a run."""
    found: list[Distrust] = []
    for key in inputs:
        if not graph.has(key):
            continue
        checks = sorted(
            (c for c in graph.get_check_keys_for_assets({key}) if graph.get(c).blocking),
            key=lambda c: c.name,
        )
        if not checks:
            continue
        for partition, record in _latest_materializations(instance, key, graph.get(key).is_partitioned):
            if record.run_id == current_run_id:
                continue
            found += [d for c in checks if (d := _verdict(instance, c, record, partition)) is not None]
    return found


def distrust_reason(distrust: list[Distrust]) -> str | None:
    if not distrust:
        return None
    return "refusing to consume unchecked data: " + "; ".join(d.describe() for d in distrust)


@functools.cache
def code_location_graph() -> BaseAssetGraph:
    """The asset graph of this code location: which checks are blocking, whoever runs the consumer."""
    from mlsd_assets.definitions import defs

    return defs.resolve_asset_graph()


def require_trusted_inputs(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Fail the step before any work unless every input's blocking checks passed, or the run carries
    the override tag; returns the override as tags to record (empty without an override)."""
    inputs = [k for k in context.assets_def.dependency_keys if k not in context.assets_def.keys]
    distrust = distrusted_inputs(context.instance, code_location_graph(), inputs, context.run.run_id)
    reason = distrust_reason(distrust)
    override = context.run.tags.get(OVERRIDE_TAG, "").strip()
    if not override:
        if reason:
            raise dg.Failure(
                description=f"{reason}. Fix the data and re-run its job, or launch with run tag "
                f"{OVERRIDE_TAG}=<reason> to override",
                metadata={"distrusted_checks": [d.check.to_user_string() for d in distrust]},
            )
        return {}
    context.log.warning(f"operator override {OVERRIDE_TAG}={override!r}: {reason or 'all checks passed'}")
    return {"mlsd.override_blocking_checks": override, "mlsd.overridden": reason or "nothing"}
