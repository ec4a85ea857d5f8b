"""What goes into a training run's MLflow record, in one place (the asset only decides when)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.resources import MLflowTracking

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.models.model import ModelInfo

    from mlsd_assets.core.training.budget import BudgetPlan, Throughput, TimeBudget
    from mlsd_assets.core.training.models import InferenceModel
    from mlsd_assets.core.training.recipes import TrainConfig
    from mlsd_assets.core.training.train import EpochStats, TrainData, TrainResult


def sized_config(
    tracking: MLflowTracking,
    run_id: str,
    config: TrainConfig,
    data: TrainData,
    budget_s: float | None,
    previous: dict[str, Any] | None,
    logger: logging.Logger,
    wider: TrainConfig | None = None,
) -> tuple[TrainConfig, TimeBudget | None]:
    """`config` as asked, or sized to the time budget: by a throughput probe (recorded in the run; `wider`: a
    wider net the budget may choose instead), or as the checkpoint was (a resumed run keeps its checkpoint's
    plan, net included); and the budget for training to keep re-sizing to (None when nothing is to be
    re-sized). The budget counts from this call."""
    from mlsd_assets.core.training.budget import size_to_budget
    from mlsd_assets.core.training.recipes import TrainConfig

    if budget_s is None:
        return config, None
    if previous is not None:
        return TrainConfig.from_hyperparameters(previous["config"]), None
    sized, budget, probe, plan = size_to_budget(config, data, budget_s, logger, wider)
    log_budget(tracking, run_id, probe, plan)
    return sized, budget


def log_setup(
    tracking: MLflowTracking,
    run_id: str,
    config: TrainConfig,
    split: Cifar10Split,
    source: str,
) -> None:
    """Hyperparameters and dataset identity as params (immutable), software versions as tags + a JSON file,
    the split as the run's dataset inputs (`source`: where it is stored)."""
    from mlflow.entities import Param, RunTag

    from mlsd_assets.core.platform.env_info import environment as environment_info

    environment = environment_info()

    counts = split.counts()
    params: dict[str, Any] = {
        **config.hyperparameters(),
        "dataset.content_hash": split.content_hash,
        "dataset.partitions": ",".join(split.partitions),
    }
    params |= {f"dataset.{name}_images": n for name, n in counts.items()}
    client = tracking.client()
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in environment.items()],
    )
    with tempfile.TemporaryDirectory(prefix="mlsd-mlflow-") as tmp:
        path = Path(tmp) / "environment.json"
        path.write_text(json.dumps(environment, indent=2, sort_keys=True))
        client.log_artifact(run_id, str(path))
    log_dataset(tracking, run_id, split, source)


def log_dataset(tracking: MLflowTracking, run_id: str, split: Cifar10Split, source: str) -> None:
    """The train and validation splits as the run's dataset inputs (digest: the split's content hash)."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, context in (("train", "training"), ("validation", "validation")):
        images, labels = split.arrays(name)
        dataset = mlflow.data.from_numpy(
            images, source=source, targets=labels, name=f"cifar10_split/{name}", digest=split.content_hash[:32]
        )
        tags = [InputTag("mlflow.data.context", context), InputTag("content_hash", split.content_hash)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    tracking.client().log_inputs(run_id, datasets=inputs)


def log_budget(tracking: MLflowTracking, run_id: str, throughput: Throughput, plan: BudgetPlan) -> None:
    """What the throughput probe measured on this CPU and how many steps the budget bought."""
    from mlflow.entities import Param

    record = {**throughput.record(), **plan.record()}
    tracking.client().log_batch(run_id, params=[Param(k, str(v)) for k, v in record.items()])


@contextmanager
def system_metrics(tracking: MLflowTracking, run_id: str) -> Iterator[None]:
    """CPU, memory, disk and network of this machine as `system/*` metrics of the run, every 10 s, plus one
    closing sample: MLflow's monitor drops what it collected when it is stopped inside its first interval."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=10, resume_logging=True, tracking_uri=tracking.tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


def epoch_logger(tracking: MLflowTracking, run_id: str) -> Callable[[EpochStats], None]:
    """The `on_epoch` hook of a tracked training: each epoch's figures as metrics at step = epoch."""
    return lambda stats: log_epoch(tracking, run_id, stats)


def log_epoch(tracking: MLflowTracking, run_id: str, stats: EpochStats) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, stats.epoch) for k, v in stats.metrics().items()]
    tracking.client().log_batch(run_id, metrics=metrics)


def log_result(tracking: MLflowTracking, run_id: str, result: TrainResult, curves: Path | None) -> ModelInfo:
    """Final validation metrics, training curves, and the model (uint8 NHWC in, logits out), registered."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from mlsd_assets.core.platform.env_info import package_versions

    client = tracking.client()
    final = {f"final_val_{k}": v for k, v in result.validation.items() if k != "count"}
    final |= {
        "best_epoch": float(result.best_epoch),
        "train_seconds": result.train_seconds,
        "train_steps": result.steps,
    }
    for key, value in final.items():
        client.log_metric(run_id, key, float(value))
    if curves is not None:
        client.log_artifact(run_id, str(curves))
    example = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    signature = infer_signature(example, _logits(result.model, example))
    versions = package_versions()
    requirements = [f"torch=={versions['torch']}", f"numpy=={versions['numpy']}", "mlsd-assets"]
    with tracking.active_run(run_id):
        return mlflow.pytorch.log_model(
            result.model,
            name="model",
            signature=signature,
            pip_requirements=requirements,
            registered_model_name=tracking.registered_model_name,
            serialization_format="pickle",  # "pt2" would freeze the batch size of the example
        )


def _logits(model: InferenceModel, images: Any) -> Any:
    from mlsd_assets.core.training.steps import predict_logits

    return predict_logits(model, images)
