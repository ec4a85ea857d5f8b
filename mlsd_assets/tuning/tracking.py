"""A study in MLflow: one parent run per study (continued by a resumed attempt), one child run per trial."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mlsd_assets.core.tuning.study import TrialHooks
from mlsd_assets.resources import DAGSTER_RUN_TAG, MLflowTracking

if TYPE_CHECKING:
    import logging

    import optuna

    from mlsd_assets.core.training.train import EpochStats
    from mlsd_assets.core.tuning.result import TuningResult

PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: every attempt logs under the same parent
PARENT_TAG = "mlflow.parentRunId"  # what makes MLflow nest a run under another
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def parent_run(
    mlflow: MLflowTracking, study: optuna.Study, dagster_run_id: str, identity: dict[str, Any], storage: str
) -> str:
    """The study's parent run: created by its first attempt (with the space and settings as params), continued by
    later ones, whose killed predecessors' trial runs are closed as FAILED."""
    from mlflow.entities import Param

    previous = study.user_attrs.get(PARENT_RUN_ATTR)
    tags = {DAGSTER_RUN_TAG: dagster_run_id, "dagster.asset": "cifar10_tuning", STUDY_TAG: study.study_name}
    run_id = mlflow.start_run(f"tuning-{study.study_name}", {**tags, "optuna.storage": storage}, previous)
    client = mlflow.client()
    if run_id != previous:
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
        params = {k: json.dumps(v, sort_keys=True) for k, v in identity.items()}
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        return run_id
    stale = client.search_runs(
        [mlflow.experiment_id()], f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, "FAILED")
    return run_id


class TrialRecorder(TrialHooks):
    """Each trial as a log line per event in Dagster and as a child run (params, per-report metrics) in MLflow."""

    def __init__(self, log: logging.Logger, mlflow: MLflowTracking, parent_run_id: str, study_name: str) -> None:
        self.log, self.mlflow, self.parent, self.study_name = log, mlflow, parent_run_id, study_name
        self.client = mlflow.client()
        self.experiment_id = mlflow.experiment_id()
        self.runs: dict[int, str] = {}

    def started(self, number: int, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.log.info(f"trial {number} starts: {params}")
        tags = {PARENT_TAG: self.parent, STUDY_TAG: self.study_name, TRIAL_TAG: str(number)}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags)
        self.runs[number] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def epoch(self, number: int, step: int, stats: EpochStats) -> None:
        import time

        from mlflow.entities import Metric

        self.log.info(
            f"trial {number} epoch {stats.epoch} (report step {step}): val acc {stats.val_accuracy:.4f},"
            f" train loss {stats.train_loss:.4f}, {stats.images_per_second:.0f} img/s"
        )
        now = int(time.time() * 1000)
        names = ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "images_per_second")
        metrics = [Metric(k, float(getattr(stats, k)), now, step) for k in names]
        self.client.log_batch(self.runs[number], metrics=metrics)

    def finished(self, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name
        value = f"val acc {trial.value:.4f}" if state == "COMPLETE" else f"last report at step {trial.last_step}"
        self.log.info(f"trial {trial.number} {state}: {value}")
        run_id = self.runs.get(trial.number)
        if run_id is None:
            return
        self.client.set_tag(run_id, "optuna.state", state)
        if state == "COMPLETE" and trial.value is not None:
            self.client.log_metric(run_id, "value", float(trial.value))
        self.client.set_terminated(run_id, STATUS.get(state, "FAILED"))


def log_result(mlflow: MLflowTracking, run_id: str, result: TuningResult) -> None:
    """The outcome on the parent run: best value and trial, counts, the whole result as JSON; then closed."""
    client = mlflow.client()
    metrics = {
        "best_val_accuracy": result.best_value,
        "trials_complete": result.count("COMPLETE"),
        "trials_pruned": result.count("PRUNED"),
        "trials_failed": result.count("FAIL"),
        "spent_seconds": result.spent_seconds,
    }
    if result.baseline_value is not None:
        metrics["baseline_val_accuracy"] = result.baseline_value
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "best_trial", str(result.best_trial))
    client.set_tag(run_id, "best_params", json.dumps(result.best_params, sort_keys=True))
    client.log_dict(run_id, result.to_json(), "tuning/result.json")
    client.set_terminated(run_id, "FINISHED")
