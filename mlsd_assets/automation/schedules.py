"""Nightly training that only trains when the data changed."""

import dagster as dg

from mlsd_assets.automation.jobs import TRAINING_TAGS, training_job
from mlsd_assets.automation.lineage import (
    distrusted_split,
    training_busy,
    training_skip_reason,
    training_state,
)
from mlsd_assets.settings import DEFAULT_TRAINING_CRON


def build_training_schedule(
    cron: str = DEFAULT_TRAINING_CRON, timezone: str = "UTC", force: bool = False
) -> dg.ScheduleDefinition:
    """`force` (MLSD_FORCE_TRAINING) trains even on an unchanged split, e.g. after changing training code.

    Schedules take no run-time input, so forcing is a deployment setting; a manual run is never skipped.
    """

    @dg.schedule(
        name="training_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=training_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Train on the current cifar10_split at '{cron}' ({timezone}) when it changed"
        + (" (forced: always)" if force else "; skips otherwise"),
    )
    def training_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        busy = training_busy(context.instance)
        if busy:
            return dg.SkipReason(busy)
        # Forcing retrains an unchanged split; it never trains on one its blocking checks did not pass.
        distrust = distrusted_split(context.instance, context.repository_def)
        if distrust:
            return dg.SkipReason(distrust)
        state = training_state(context.instance)
        reason = training_skip_reason(state)
        if reason and not (force and state.split_hash is not None):
            return dg.SkipReason(reason)
        tags = {**TRAINING_TAGS, "mlsd/dataset_hash": state.split_hash or "", "mlsd/forced": str(force)}
        return dg.RunRequest(tags=tags)

    return training_schedule
