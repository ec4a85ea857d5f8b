"""cifar10_model (trained, tracked, registered) and cifar10_onnx (the file the server runs)."""

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg

from mlsd_assets.automation.trust import require_trusted_inputs
from mlsd_assets.core.data.batches import CIFAR10_CLASSES
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.training.artifacts import META_PREFIX, OnnxModel, TrainedModel
from mlsd_assets.resources import DAGSTER_RUN_TAG, DataPaths, MLflowTracking
from mlsd_assets.training import tracking
from mlsd_assets.training.config import ModelConfig
from mlsd_assets.tuning.assets import tuned_config

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from mlsd_assets.core.serving.graph import Choice
    from mlsd_assets.core.training.recipes import TrainConfig
    from mlsd_assets.core.training.train import TrainResult


def split_source(context: dg.AssetExecutionContext) -> str:
    """Where the split the model trains on is stored (its last materialization's `path`), for MLflow."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("cifar10_split"))
    path = event.asset_materialization.metadata.get("path") if event and event.asset_materialization else None
    return str(path.value) if path is not None else "cifar10_split"


def checkpoint_key(hyperparameters: dict[str, object], dataset_hash: str) -> str:
    """Same config on the same data -> same folder, so a retry or re-launch finds its checkpoint."""
    payload = json.dumps({"config": hyperparameters, "dataset": dataset_hash}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"}, pool="training")
def cifar10_model(
    context: dg.AssetExecutionContext,
    config: ModelConfig,
    cifar10_split: Cifar10Split,
    mlflow: MLflowTracking,
    paths: DataPaths,
) -> TrainedModel:
    """Trains on the train split, selects the epoch by validation accuracy (test is never read here), logs the
    run to MLflow and registers the model. Resumes from the per-epoch checkpoint of an interrupted attempt."""
    overrides = require_trusted_inputs(context)  # the split's blocking checks passed, or an operator overrode them
    from mlsd_assets.core.training.curves import plot_curves
    from mlsd_assets.core.training.train import TrainData, read_checkpoint, train

    asked, budget_s, data = config.train_config(), config.budget_seconds(), TrainData.from_split(cifar10_split)
    tuned: dict[str, str] = {}
    if config.use_tuned:  # the last cifar10_tuning's best trial, read from the instance; none: fails here
        asked, tuned = tuned_config(context, asked, cifar10_split.content_hash)
    # Keyed on the config as asked (budget, not the planned steps) so a re-launch finds the checkpoint.
    ckpt_dir = paths.checkpoints_dir / checkpoint_key(
        {**asked.hyperparameters(), "time_budget_s": budget_s}, cifar10_split.content_hash
    )
    previous = read_checkpoint(ckpt_dir)
    tags = {DAGSTER_RUN_TAG: context.run.run_id, "dagster.asset": "cifar10_model", **overrides, **tuned}
    tags |= {"architecture": asked.architecture, "dataset.content_hash": cifar10_split.content_hash}
    resume = (previous or {}).get("extra", {}).get("mlflow_run_id")
    with mlflow.run(f"{asked.architecture}-{context.run.run_id[:8]}", tags, resume) as run_id:
        with tracking.system_metrics(mlflow, run_id):
            wider = config.wider_config()  # a long budget may train airbench94's widths instead
            train_config, budget = tracking.sized_config(
                mlflow, run_id, asked, data, budget_s, previous, context.log, wider
            )
            tracking.log_setup(mlflow, run_id, train_config, cifar10_split, split_source(context))
            on_epoch, extra = tracking.epoch_logger(mlflow, run_id), {"mlflow_run_id": run_id}
            result = train(
                data,
                train_config,
                context.log,
                checkpoint_dir=ckpt_dir,
                on_epoch=on_epoch,
                checkpoint_extra=extra,
                budget=budget,
            )
        out_dir = paths.reports_dir / "training" / run_id
        curves = plot_curves(result.history, out_dir / "training_curves.png", _title(train_config, cifar10_split))
        info = tracking.log_result(mlflow, run_id, result, curves)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the model lives in MLflow and the artifact store
    model = trained_model(result, train_config, cifar10_split, mlflow.registered_model_name, info)
    context.add_output_metadata(_model_metadata(model, result, budget_s, curves, mlflow.run_url(run_id)))
    return model


def _title(config: "TrainConfig", split: Cifar10Split) -> str:
    return f"{config.architecture} on dataset {split.content_hash[:12]}"


def _model_metadata(
    model: TrainedModel, result: "TrainResult", budget_s: float | None, curves: Path, run_url: str
) -> dict[str, object]:
    from mlsd_assets.core.platform.pictures import markdown_image

    return {
        "mlflow_run_id": model.mlflow_run_id,
        "mlflow_run_url": dg.MetadataValue.url(run_url),
        "registered_model": f"{model.registered_model_name} v{model.registered_model_version}",
        "architecture": model.architecture,
        "val_accuracy": result.validation["accuracy"],
        "val_loss": result.validation["loss"],
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "steps": result.steps,
        "time_budget_minutes": round(budget_s / 60, 2) if budget_s else "none (epochs fixed)",
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.history[-1].images_per_second, 1),
        "precision": result.precision,
        "dataset_hash": model.dataset_hash,
        "hyperparameters": dg.MetadataValue.json(model.hyperparameters),
        "training_curves": dg.MetadataValue.md(markdown_image(curves, "training curves")),
    }


def trained_model(
    result: "TrainResult", train_config: "TrainConfig", split: Cifar10Split, registered_as: str, info: "ModelInfo"
) -> TrainedModel:
    """The asset's value: the selected weights and how they were made, as registered in MLflow."""
    import torch

    buffer = io.BytesIO()
    torch.save(result.model.state_dict(), buffer)
    return TrainedModel(
        architecture=train_config.architecture,
        hyperparameters=train_config.hyperparameters(),
        state_dict_bytes=buffer.getvalue(),
        mean=split.mean,
        std=split.std,
        classes=CIFAR10_CLASSES,
        validation_metrics={k: float(v) for k, v in result.validation.items()},
        dataset_hash=split.content_hash,
        partitions=tuple(split.partitions),
        mlflow_run_id=info.run_id,
        registered_model_name=registered_as,
        registered_model_version=str(info.registered_model_version),
        best_epoch=result.best_epoch,
        extra={"mlflow_model_uri": info.model_uri, "precision": result.precision},
    )


class OnnxConfig(dg.Config):
    """How the served graph is chosen: every listed variant is measured on validation, and the fastest within
    `max_accuracy_drop_pt` points of the most accurate is served (see mlsd_assets/core/serving/graph.py)."""

    variants: list[str] = ["fp32_tta", "fp32", "ort_tta", "ort", "int8_tta", "int8"]
    max_accuracy_drop_pt: float = 0.3
    calibration_images: int = 512  # train images for int8 calibration
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    threads: int = 0  # ORT intra-op threads for the latency figures; 0 = all cores, as the server runs
    latency_runs: int = 500  # single-image calls per variant
    int8_reduce_range: bool = False  # 7-bit int8 weights: set when the image may run on CPUs without VNNI


@dg.asset(group_name="training", kinds={"onnx"})
def cifar10_onnx(
    context: dg.AssetExecutionContext,
    config: OnnxConfig,
    cifar10_model: TrainedModel,
    cifar10_split: Cifar10Split,
    mlflow: MLflowTracking,
) -> OnnxModel:
    """Raw uint8 NHWC pixels in, float32 logits out; preprocessing is inside the graph so no server
    can normalise wrongly. The fp32 export is the reference (`check_cifar10_onnx_parity` holds it to PyTorch);
    the served file is the variant chosen by measurement on validation (`check_cifar10_onnx_served_agreement`)."""
    from mlsd_assets.core.serving.export import INPUT_NAME, OPSET, OUTPUT_NAME, contract_metadata
    from mlsd_assets.core.serving.graph import Selection, select_served_graph

    metadata = contract_metadata(
        classes=cifar10_model.classes,
        mean=cifar10_model.mean,
        std=cifar10_model.std,
        architecture=cifar10_model.architecture,
        mlflow_run_id=cifar10_model.mlflow_run_id,
        registered_model_name=cifar10_model.registered_model_name,
        registered_model_version=cifar10_model.registered_model_version,
        dataset_hash=cifar10_model.dataset_hash,
    )
    trained_tta = bool(cifar10_model.hyperparameters.get("flip_tta", False))
    fp32, fp32_tta = _export_both(cifar10_model, metadata, context.log)
    x_val, y_val = cifar10_split.arrays("validation")
    selection = Selection(**config.model_dump() | {"variants": tuple(config.variants)})
    model, choice = select_served_graph(
        fp32,
        fp32_tta,
        trained_tta,
        metadata,
        cifar10_split.arrays("train")[0],
        x_val,
        y_val,
        selection,
        context.log,
    )
    _log_served_graph(mlflow, cifar10_model.mlflow_run_id, model, choice)
    context.add_output_metadata(
        {
            "opset": OPSET,
            "size_bytes": len(model.model_bytes),
            "input": f"{INPUT_NAME}: uint8 [batch, 32, 32, 3] NHWC",
            "output": f"{OUTPUT_NAME}: float32 [batch, 10]",
            "served_variant": choice.served,
            "served_val_accuracy": choice.served_figures.accuracy,
            "served_agreement_with_fp32": choice.served_figures.agreement,
            "served_p50_ms": round(choice.served_figures.p50_ms, 4),
            "accuracy_drop_pt": choice.accuracy_drop_pt,
            "selection_rule": choice.rule(),
            "variants": dg.MetadataValue.md(choice.markdown()),
            "mean": dg.MetadataValue.json(list(cifar10_model.mean)),
            "std": dg.MetadataValue.json(list(cifar10_model.std)),
            "classes": dg.MetadataValue.json(list(cifar10_model.classes)),
            "mlflow_run_id": cifar10_model.mlflow_run_id,
            "registered_model_version": cifar10_model.registered_model_version,
        }
    )
    return model


def _export_both(model: TrainedModel, metadata: dict[str, str], log) -> tuple[bytes, bytes]:  # noqa: ANN001
    """The fp32 graph without and with flip test-time augmentation (same weights)."""
    from mlsd_assets.core.serving.export import export_onnx

    module = model.inference_model()
    graphs = []
    for tta in (False, True):
        module.flip_tta = tta
        graphs.append(export_onnx(module, metadata, log))
    return graphs[0], graphs[1]


def _log_served_graph(mlflow: MLflowTracking, run_id: str, model: OnnxModel, choice: "Choice") -> None:
    """Into the model's MLflow run: both files, the choice as tags (a re-export may choose differently, and
    params are immutable), per-variant figures as metrics and a table."""
    import tempfile
    from pathlib import Path

    client = mlflow.client()
    with tempfile.TemporaryDirectory(prefix="mlsd-onnx-") as tmp:
        for name, data in (("cifar10.onnx", model.model_bytes), ("cifar10.fp32.onnx", model.fp32_bytes)):
            (Path(tmp) / name).write_bytes(data)
            client.log_artifact(run_id, str(Path(tmp) / name), artifact_path="onnx")
    for key, value in choice.metadata().items():
        if key != f"{META_PREFIX}serving.figures":
            client.set_tag(run_id, key, value)
    for f in choice.figures:
        for figure in ("accuracy", "agreement", "p50_ms", "p99_ms", "images_per_s"):
            client.log_metric(run_id, f"serving.{f.name}.{figure}", float(getattr(f, figure)))
    client.log_table(run_id, data=choice.table(), artifact_file="serving/variants.json")
    client.log_text(run_id, f"{choice.rule()}\n\n{choice.markdown()}", "serving/variants.md")
