"""Sensors: drops become raw partitions, new partitions a split and a model, failed runs alerts."""

import json

import dagster as dg

from mlsd_assets.automation import drops
from mlsd_assets.automation.jobs import (
    RAW_ASSET,
    SPLIT_ASSET,
    TRAINING_TAGS,
    ingestion_job,
    split_job,
    training_job,
)
from mlsd_assets.automation.lineage import distrusted_split, runs_in_progress, training_busy, training_state
from mlsd_assets.automation.resources import AlertWebhook, failure_payload
from mlsd_assets.data.partitions import OFFICIAL_BATCHES, raw_batches
from mlsd_assets.resources import DataPaths


def _intake(context: dg.SensorEvaluationContext, paths: DataPaths, done: set[str]) -> tuple[list[str], list[str]]:
    """Validate and move every complete drop; returns (accepted partition keys, quarantine reports)."""
    from mlsd_assets.ml.batches import InvalidBatchError
    from mlsd_assets.ml.sources import read_drop

    accepted: list[str] = []
    reports: list[str] = []
    paths.landing_dir.mkdir(parents=True, exist_ok=True)  # so users find where drops go
    for drop in drops.complete_drops(paths.landing_dir):
        key = drop.partition_key
        taken = key in done or key in OFFICIAL_BATCHES or key in accepted or (paths.drops_dir / key).exists()
        reason = f"partition {key!r} already exists: rename the drop to add it as new data" if taken else None
        if not key:
            reason = f"drop name {drop.path.name!r} leaves no usable partition key: rename it"
        if reason is None:
            try:
                batch = read_drop(drop.path, key)
            except InvalidBatchError as exc:
                reason = str(exc)
        if reason is not None:
            moved = drops.quarantine(drop, paths.quarantine_dir, reason)
            reports.append(f"{drop.path.name} -> {moved}: {reason}")
            context.log.warning(f"quarantined drop {drop.path.name} to {moved}: {reason}")
            continue
        dest = drops.accept(drop, paths.drops_dir)
        accepted.append(key)
        context.log.info(f"accepted drop {drop.path.name} ({len(batch)} images) as {key!r} at {dest}")
    return accepted, reports


def build_new_data_sensor(interval_s: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="new_data_sensor",
        job=ingestion_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Turns each complete drop in the landing directory (marker `<name>.ready`) into a new "
        "raw_cifar10 partition and its ingestion run; invalid drops go to quarantine with a reason.",
    )
    def new_data_sensor(context: dg.SensorEvaluationContext, paths: DataPaths) -> dg.SensorResult:
        # Cursor: partition keys already requested, so a drop is processed once even if its run fails.
        done = set(json.loads(context.cursor)) if context.cursor else set()
        registered = set(context.instance.get_dynamic_partitions(raw_batches.name))
        accepted, reports = _intake(context, paths, done | registered)
        # A tick that died after moving a drop but before its result was stored left it unregistered.
        if paths.drops_dir.is_dir():
            for entry in sorted(paths.drops_dir.iterdir()):
                key = entry.name
                if not key.startswith(".") and key not in done | registered and key not in accepted:
                    accepted.append(key)
        events = [dg.AssetObservation(asset_key=RAW_ASSET, metadata={"quarantined_drop": report}) for report in reports]
        cursor = json.dumps(sorted(done | set(accepted)))
        if not accepted:
            idle = f"no complete drop in {paths.landing_dir}"
            skip = f"{len(reports)} drop(s) quarantined" if reports else idle
            return dg.SensorResult(skip_reason=skip, asset_events=events, cursor=cursor)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=key, run_key=f"drop:{key}") for key in accepted],
            dynamic_partitions_requests=[raw_batches.build_add_request(accepted)],
            asset_events=events,
            cursor=cursor,
        )

    return new_data_sensor


def build_retraining_sensor(interval_s: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="retraining_sensor",
        jobs=[split_job, training_job],
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After ingestion settles: rebuilds cifar10_split when raw partitions are newer than "
        "it, then trains when the split's content hash is not the one the last model was trained on.",
    )
    def retraining_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        instance = context.instance
        pending = runs_in_progress(instance, ingestion_job.name)
        if pending:
            return dg.SkipReason(f"waiting for {pending} ingestion_job run(s) to finish")
        busy = training_busy(instance)
        if busy:
            return dg.SkipReason(busy)
        splits = instance.fetch_materializations(SPLIT_ASSET, limit=1, ascending=False).records
        split = splits[0] if splits else None
        newer = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RAW_ASSET, after_storage_id=split.storage_id if split else None),
            limit=1,
            ascending=False,
        ).records
        if newer:
            # Run keys make both requests idempotent: one split per raw state, one training per split hash.
            return dg.RunRequest(job_name=split_job.name, run_key=f"split-after-{newer[0].storage_id}")
        state = training_state(instance)
        distrust = distrusted_split(instance, context.repository_def) if state.stale else None
        if distrust:
            return dg.SkipReason(distrust)
        if state.stale:
            return dg.RunRequest(
                job_name=training_job.name,
                run_key=f"train-{state.split_hash}",
                tags={**TRAINING_TAGS, "mlsd/dataset_hash": state.split_hash or ""},
            )
        return dg.SkipReason("model is up to date with cifar10_split" if split else "no raw data yet")

    return retraining_sensor


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs every failed run of this code location; posts it to MLSD_ALERT_WEBHOOK_URL when set.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertWebhook) -> None:
    payload = failure_payload(context)
    context.log.error(f"run {payload['run_id']} of {payload['job']} failed: {payload['error']}")
    if alerts.url:
        alerts.post(payload)


def build_sensors(interval_s: int = 30) -> list[dg.SensorDefinition]:
    return [build_new_data_sensor(interval_s), build_retraining_sensor(interval_s), run_failure_alert_sensor]
