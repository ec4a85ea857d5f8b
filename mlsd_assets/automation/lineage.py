"""What the instance knows about the data a model was trained on: shared by schedule and retraining sensor."""

from dataclasses import dataclass

import dagster as dg

from mlsd_assets.automation.jobs import (
    MODEL_ASSET,
    RAW_ASSET,
    SPLIT_ASSET,
    TRAINING_TAGS,
    ingestion_job,
    split_job,
    training_job,
)
from mlsd_assets.automation.trust import code_location_graph, distrust_reason, distrusted_inputs

# Materialization metadata: the split's fingerprint, and the fingerprint of the split a model was trained on.
SPLIT_HASH_KEY = "content_hash"
MODEL_DATASET_HASH_KEY = "dataset_hash"

_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class TrainingState:
    split_hash: str | None
    model_hash: str | None
    model_run_id: str | None

    @property
    def stale(self) -> bool:
        """True when a split exists that no model has been trained on yet."""
        return self.split_hash is not None and self.split_hash != self.model_hash


def _metadata_text(instance: dg.DagsterInstance, key: dg.AssetKey, field: str) -> tuple[str | None, str | None]:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None, None
    value = event.asset_materialization.metadata.get(field)
    if value is None:
        raise dg.DagsterInvariantViolationError(
            f"{key.to_user_string()} materialization of run {event.run_id} has no {field!r} metadata"
        )
    return str(value.value), event.run_id


def training_state(instance: dg.DagsterInstance) -> TrainingState:
    split_hash, _ = _metadata_text(instance, SPLIT_ASSET, SPLIT_HASH_KEY)
    model_hash, model_run = _metadata_text(instance, MODEL_ASSET, MODEL_DATASET_HASH_KEY)
    return TrainingState(split_hash=split_hash, model_hash=model_hash, model_run_id=model_run)


def training_skip_reason(state: TrainingState) -> str | None:
    """Why training would be wasted now, or None when there is something new to learn from."""
    if state.split_hash is None:
        return "cifar10_split was never materialized: ingest data first (ingestion_job, then split_job)"
    if not state.stale:
        return (
            f"nothing changed since the last model: cifar10_split content_hash {state.split_hash[:12]} "
            f"is the dataset_hash of cifar10_model from run {state.model_run_id}"
        )
    return None


def runs_in_progress(instance: dg.DagsterInstance, job_name: str) -> int:
    return instance.get_runs_count(dg.RunsFilter(job_name=job_name, statuses=_IN_PROGRESS))


def training_busy(instance: dg.DagsterInstance) -> str | None:
    """A reason to hold off while a split or training run is queued or running (it changes the answer)."""
    for job in (split_job, training_job):
        count = runs_in_progress(instance, job.name)
        if count:
            return f"{count} {job.name} run(s) queued or in progress"
    return None


def distrusted_split(instance: dg.DagsterInstance, repository: dg.RepositoryDefinition | None) -> str | None:
    """Why the current cifar10_split must not be trained on (a blocking check failed or did not run), or None."""
    graph = repository.asset_graph if repository is not None else code_location_graph()
    return distrust_reason(distrusted_inputs(instance, graph, [SPLIT_ASSET]))


def retraining_request(
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition | None
) -> dg.RunRequest | dg.SkipReason:
    """What retraining_sensor asks for: once ingestion settles, a split when raw partitions are newer than it,
    else training when the split's content hash is not the one the last model was trained on."""
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
    if not state.stale:
        return dg.SkipReason("model is up to date with cifar10_split" if split else "no raw data yet")
    distrust = distrusted_split(instance, repository)
    if distrust:
        return dg.SkipReason(distrust)
    return dg.RunRequest(
        job_name=training_job.name,
        run_key=f"train-{state.split_hash}",
        tags={**TRAINING_TAGS, "mlsd/dataset_hash": state.split_hash or ""},
    )
