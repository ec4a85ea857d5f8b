"""cifar10_tuning: an Optuna study over the training recipe, each trial in the run log and as an MLflow child run."""

import json
from typing import TYPE_CHECKING

import dagster as dg

from mlsd_assets.automation.trust import require_trusted_inputs
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.tuning.result import TuningResult
from mlsd_assets.resources import MLflowTracking
from mlsd_assets.tuning import tracking
from mlsd_assets.tuning.config import TuningConfig
from mlsd_assets.tuning.resources import TuningStorage

if TYPE_CHECKING:
    from mlsd_assets.core.training.recipes import TrainConfig

TUNING_ASSET = dg.AssetKey("cifar10_tuning")


@dg.asset(group_name="tuning", kinds={"optuna", "mlflow"}, pool="training")
def cifar10_tuning(
    context: dg.AssetExecutionContext,
    config: TuningConfig,
    cifar10_split: Cifar10Split,
    mlflow: MLflowTracking,
    tuning_storage: TuningStorage,
) -> TuningResult:
    """Trials train on train and are pruned and selected on validation (test is never read). The study is named by
    the split's content hash, the search space and the settings: a re-run with all three unchanged returns the
    finished study's best without training, and a killed run's study resumes without repeating finished trials."""
    require_trusted_inputs(context)  # the split's blocking checks passed (or an operator overrode them)
    from mlsd_assets.core.tuning.study import open_study, run_study, study_name, tuning_data

    space, settings = config.space(), config.settings()
    name = study_name(space, settings, cifar10_split.content_hash)
    study = open_study(tuning_storage.url, name, settings, config.heartbeat_interval_s, config.grace_period_s)
    identity = {"space": space.identity(), "settings": settings.identity(), "dataset": cifar10_split.content_hash}
    parent = tracking.parent_run(mlflow, study, context.run.run_id, identity, tuning_storage.redacted())
    hooks = tracking.TrialRecorder(context.log, mlflow, parent, name)
    data = tuning_data(cifar10_split, settings.train_images, settings.seed)
    result = run_study(study, data, space, settings, context.log, hooks)
    tracking.log_result(mlflow, parent, result)
    context.add_output_metadata(_metadata(result, tuning_storage.redacted(), mlflow.run_url(parent)))
    return result


def _metadata(result: TuningResult, storage: str, parent_url: str) -> dict[str, object]:
    columns = ["trial", "state", "val_accuracy", "last_step", "last_report", "seconds", "params"]
    records = [
        dg.TableRecord(
            {
                "trial": t.number,
                "state": t.state,
                "val_accuracy": t.value,
                "last_step": t.last_step,
                "last_report": t.last_report,
                "seconds": t.seconds,
                "params": ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
                ),
            }
        )
        for t in result.trials
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "float" if c == "val_accuracy" else "string") for c in columns])
    return {
        "study": result.study_name,
        "storage": storage,
        "skipped": result.skipped,
        "best_trial": result.best_trial,
        "best_val_accuracy": result.best_value,
        "baseline_val_accuracy": result.baseline_value if result.baseline_value is not None else "not run",
        "best_params": dg.MetadataValue.json(result.best_params),
        "trials_complete": result.count("COMPLETE"),
        "trials_pruned": result.count("PRUNED"),
        "trials_failed": result.count("FAIL"),
        "spent_seconds": result.spent_seconds,
        "dataset_hash": result.dataset_hash,
        "mlflow_parent_run_url": dg.MetadataValue.url(parent_url),
        "trials": dg.MetadataValue.table(records=records, schema=schema),
    }


def latest_tuning(instance: dg.DagsterInstance) -> TuningResult:
    """The last materialized cifar10_tuning result, for `cifar10_model(use_tuned=True)`; tuning is not upstream of
    the model, so ordinary pipeline runs never wait for a study. Raises when there is none."""
    from pathlib import Path

    event = instance.get_latest_materialization_event(TUNING_ASSET)
    materialization = event.asset_materialization if event else None
    path = materialization.metadata.get("path") if materialization else None
    if path is None:
        raise dg.Failure(
            description="use_tuned is set but cifar10_tuning has never been materialized: run tuning_job (or "
            "materialize cifar10_tuning) first, or unset use_tuned"
        )
    return TuningResult.load(Path(str(path.value)))


def tuned_config(
    context: dg.AssetExecutionContext, config: "TrainConfig", dataset_hash: str
) -> tuple["TrainConfig", dict[str, str]]:
    """`config` with the last study's best params, and tags that name the study and trial for the model's run."""
    from mlsd_assets.core.tuning.space import apply

    result = latest_tuning(context.instance)
    if result.dataset_hash != dataset_hash:
        context.log.warning(
            f"use_tuned: study {result.study_name} tuned on dataset {result.dataset_hash[:12]}, training on"
            f" {dataset_hash[:12]}; re-run tuning_job to tune on this data"
        )
    context.log.info(
        f"use_tuned: study {result.study_name}, trial {result.best_trial} (val acc {result.best_value:.4f}):"
        f" {result.best_params}"
    )
    tags = {
        "tuning.study": result.study_name,
        "tuning.trial": str(result.best_trial),
        "tuning.val_accuracy": f"{result.best_value:.4f}",
        "tuning.dataset_hash": result.dataset_hash,
        "tuning.params": json.dumps(result.best_params, sort_keys=True),
    }
    return apply(config, result.best_params), tags
