"""Three jobs, cut where the run shape changes: one run per raw partition, one split, one training chain.

Dagster 1.13 runs one partition per run of a partitioned job and would rebuild the unpartitioned split in
every one of them; so the split has its own job, run once after ingestion (by `retraining_sensor` or the
CLI). It is left out of `training_job` so training uses exactly the split that passed its checks, and
"did anything change?" is one comparison: the split's content hash against the one the last model used.
"""

import dagster as dg

from mlsd_assets.evaluation.assets import champion_rollback

RAW_ASSET = dg.AssetKey("raw_cifar10")
SPLIT_ASSET = dg.AssetKey("cifar10_split")
MODEL_ASSET = dg.AssetKey("cifar10_model")
TUNING_ASSET = dg.AssetKey("cifar10_tuning")

# dagster.yaml (concurrency.runs.tag_concurrency_limits): one training run at a time, whoever starts it.
CONCURRENCY_TAG = "mlsd/concurrency"
TRAINING_TAGS = {CONCURRENCY_TAG: "training"}

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.assets(RAW_ASSET),
    description="One raw_cifar10 partition (an official batch or an accepted drop) and its checks.",
    # Reading a batch touches the network (download) or a shared disk: cheap to retry, often transient.
    op_retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
    # Two small steps: a process per step would cost more than the work on a 2-core machine.
    executor_def=dg.in_process_executor,
)

split_job = dg.define_asset_job(
    "split_job",
    selection=dg.AssetSelection.assets(SPLIT_ASSET),
    description="Rebuild cifar10_split from every materialized raw_cifar10 partition, with its checks.",
)

training_job = dg.define_asset_job(
    "training_job",
    # tuning is on demand (tuning_job), never part of a training run
    selection=dg.AssetSelection.assets(SPLIT_ASSET).downstream(include_self=False)
    - dg.AssetSelection.assets(TUNING_ASSET),
    description="Train, export, build the server image, evaluate it beside the champion and decide promotion "
    "(a promoted image is pushed).",
    tags=TRAINING_TAGS,
)

tuning_job = dg.define_asset_job(
    "tuning_job",
    selection=dg.AssetSelection.assets(TUNING_ASSET),
    description="Tune the training recipe on the current split (an Optuna study, budgeted, pruned, resumable); "
    "then train with it: training_job with ops.cifar10_model.config.use_tuned=true.",
    tags=TRAINING_TAGS,  # one CPU-heavy run at a time, beside training
)


@dg.job(
    description="Move the registry's `champion` back to an earlier version and re-push its image as :champion; "
    "recorded as a model_promotion materialization. Config: ops.champion_rollback.config {version, reason}.",
    executor_def=dg.in_process_executor,
)
def rollback_job() -> None:
    champion_rollback()


JOBS = [ingestion_job, split_job, training_job, tuning_job, rollback_job]
