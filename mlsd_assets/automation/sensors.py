"""Sensors: drops become raw partitions, new partitions a split and a model, failed runs alerts."""

import json
import os
import time
from collections.abc import Iterable
from typing import Any

import dagster as dg

from mlsd_assets.automation import drops
from mlsd_assets.automation.jobs import (
    RAW_ASSET,
    ingestion_job,
    split_job,
    training_job,
)
from mlsd_assets.automation.lineage import retraining_request
from mlsd_assets.automation.partitions import raw_batches
from mlsd_assets.core.data.batches import OFFICIAL_BATCHES
from mlsd_assets.resources import AlertWebhook, DataPaths
from mlsd_assets.settings import DEFAULT_SENSOR_INTERVAL_S


def _intake(
    context: dg.SensorEvaluationContext, paths: DataPaths, done: set[str], limits: drops.IntakeLimits
) -> tuple[list[str], list[str]]:
    """Vet and move every complete drop; returns (accepted partition keys, quarantine reports).

    Each drop is handled on its own: whatever goes wrong with one (any exception, a reader killed by the
    watchdog) quarantines that drop with the reason, and the tick goes on with the next. Drops left when
    the tick's time is used up wait for the next tick.
    """
    accepted: list[str] = []
    reports: list[str] = []
    paths.landing_dir.mkdir(parents=True, exist_ok=True)  # so users find where drops go
    deadline = time.monotonic() + limits.tick_s
    for drop in drops.complete_drops(paths.landing_dir):
        left = deadline - time.monotonic()
        if left < 1:
            context.log.info(f"tick time used up: {drops.shown(drop.path.name)} and later drops wait for the next")
            break
        try:
            reason, images = _judge(drop, paths, done | set(accepted), min(limits.drop_s, left))
        except Exception as exc:  # noqa: BLE001 - one drop's failure must not stop the others
            reason, images = f"{drops.shown(drop.path)}: {type(exc).__name__}: {exc}", None
        try:
            if reason is not None:
                moved = drops.quarantine(drop, paths.quarantine_dir, reason)
                reports.append(f"{drops.shown(drop.path.name)} -> {drops.shown(moved)}: {drops.shown(reason)}")
                context.log.warning(f"quarantined drop {drops.shown(drop.path.name)}: {drops.shown(reason)}")
                continue
            dest = drops.accept(drop, paths.drops_dir)
        except OSError as exc:
            context.log.error(f"could not move drop {drops.shown(drop.path.name)} ({exc}); retried next tick")
            continue
        accepted.append(drop.partition_key)
        context.log.info(
            f"accepted drop {drops.shown(drop.path.name)} ({images} images) as {drop.partition_key!r} at {dest}"
        )
    return accepted, reports


def _judge(drop: drops.Drop, paths: DataPaths, taken: set[str], timeout_s: float) -> tuple[str | None, int | None]:
    """(reason to quarantine or None, image count): name and key first, file kind, then the content."""
    key = drop.partition_key
    if not key:
        try:
            drops.partition_key_for(drop.path.name)
        except ValueError as exc:
            return str(exc), None
    if key in taken or key in OFFICIAL_BATCHES or os.path.lexists(paths.drops_dir / key):
        return f"partition {key!r} already exists: rename the drop to add it as new data", None
    refused = drops.refusal(drop)
    if refused:
        return refused, None
    verdict = drops.vet(drop, timeout_s)
    return verdict.reason, verdict.images


def build_new_data_sensor(
    interval_s: int = DEFAULT_SENSOR_INTERVAL_S, limits: drops.IntakeLimits | None = None
) -> dg.SensorDefinition:
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
        accepted, reports = _intake(context, paths, done | registered, limits or drops.IntakeLimits())
        # A tick that died after moving a drop but before its result was stored left it unregistered.
        if paths.drops_dir.is_dir():
            for entry in sorted(paths.drops_dir.iterdir()):
                key = entry.name
                if key not in done | registered and key not in accepted and _valid_key(key):
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


def _valid_key(key: str) -> bool:
    """Only keys a drop could have been accepted under (no temp files, nothing too long to ingest)."""
    from mlsd_assets.core.data.batches import InvalidBatchError
    from mlsd_assets.core.data.sources import check_drop_key

    try:
        check_drop_key(key)
    except InvalidBatchError:
        return False
    return True


def build_retraining_sensor(interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    @dg.sensor(
        name="retraining_sensor",
        jobs=[split_job, training_job],
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After ingestion settles: rebuilds cifar10_split when raw partitions are newer than "
        "it, then trains when the split's content hash is not the one the last model was trained on.",
    )
    def retraining_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return retraining_request(context.instance, context.repository_def)

    return retraining_sensor


def step_errors(step_failures: Iterable[dg.DagsterEvent]) -> list[str]:
    """`<step>: <message>` per failed step: the user's exception, not Dagster's "error occurred while
    executing op" wrapper around it. Shared by the alert and the CLI."""
    found = []
    for event in step_failures:
        error = event.event_specific_data.error if event.event_specific_data is not None else None
        if error is None:
            continue
        while error.cause is not None:
            error = error.cause
        found.append(f"{event.step_key}: {error.message.strip()}")
    return found


def failure_payload(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """Asset(s), run id, job and the first error: enough to triage from a chat message."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    errors = step_errors(step_failures)
    assets = sorted(key.to_user_string() for key in run.asset_selection or ())
    if not assets:
        assets = sorted({event.step_key for event in step_failures if event.step_key})
    return {
        "text": f"mlsd run failed: {run.job_name} ({run.run_id})",
        "run_id": run.run_id,
        "job": run.job_name,
        "assets": assets,
        "partition": run.tags.get("dagster/partition"),
        "error": errors[0] if errors else (context.failure_event.message or "run failed"),
        "failed_steps": [event.step_key for event in step_failures],
    }


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


def build_sensors(interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> list[dg.SensorDefinition]:
    return [build_new_data_sensor(interval_s), build_retraining_sensor(interval_s), run_failure_alert_sensor]
