"""cifar10_model -> cifar10_onnx -> parity check, materialized with a real local MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mlsd_assets.core.data.batches import CIFAR10_CLASSES
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.training.artifacts import OnnxModel, TrainedModel
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import DAGSTER_RUN_TAG, DataPaths, MLflowTracking
from mlsd_assets.settings import load_settings
from mlsd_assets.training.assets import cifar10_model, cifar10_onnx
from mlsd_assets.training.checks import check_cifar10_onnx_parity, check_cifar10_onnx_served_agreement
from mlsd_assets_tests.core.serving.test_export import tamper_normalisation
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

SPLIT = make_split(300, 256, 20)


@dg.asset(name="cifar10_split")
def split_stub() -> Cifar10Split:
    """Stands in for the data domain's asset, so this domain is tested on its own."""
    return SPLIT


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLSD_HOME", str(home))
    for var in ("MLSD_DATA_DIR", "MLFLOW_TRACKING_URI", "MLSD_MLFLOW_ARTIFACT_ROOT"):
        mp.delenv(var, raising=False)
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # the tiny run lasts seconds, not minutes
    mp.chdir(home)
    settings = load_settings()
    tracking = MLflowTracking(tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root)
    io = ArtifactIOManager(root=str(settings.artifacts_dir))
    config = {k: v for k, v in TINY.items() if k != "eval_batch_size"} | {"widths": list(TINY["widths"])}
    onnx_config = {"latency_runs": 50, "calibration_images": 128}
    run_config = {"ops": {"cifar10_model": {"config": config}, "cifar10_onnx": {"config": onnx_config}}}
    result = dg.materialize(
        [split_stub, cifar10_model, cifar10_onnx, check_cifar10_onnx_parity, check_cifar10_onnx_served_agreement],
        resources={"io_manager": io, "mlflow": tracking, "paths": DataPaths(root=str(settings.data_dir))},
        run_config=run_config,
    )
    yield {"result": result, "home": home, "tracking": tracking, "io": io, "settings": settings}
    mp.undo()


def _load(pipeline, name: str, cls):  # type: ignore[no-untyped-def]
    io: ArtifactIOManager = pipeline["io"]
    return cls.load(io.path_for(dg.AssetKey(name), None, cls.suffix))


def test_chain_materializes_and_parity_check_passes(pipeline) -> None:  # type: ignore[no-untyped-def]
    result: dg.ExecuteInProcessResult = pipeline["result"]
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    evaluation = checks["check_cifar10_onnx_parity"]
    assert evaluation.passed
    assert evaluation.metadata["max_abs_diff"].value <= 1e-4
    assert evaluation.metadata["images"].value == 256
    assert evaluation.metadata["validation_images"].value == 256


def test_mlflow_run_records_everything(pipeline) -> None:  # type: ignore[no-untyped-def]
    tracking: MLflowTracking = pipeline["tracking"]
    model: TrainedModel = _load(pipeline, "cifar10_model", TrainedModel)
    client = tracking.client()
    run = client.get_run(model.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[DAGSTER_RUN_TAG] == pipeline["result"].run_id
    for key in (
        "version.python",
        "version.torch",
        "version.torchvision",
        "version.onnx",
        "version.onnxruntime",
        "version.numpy",
        "os",
        "git_sha",
        "cpu.model",
        "cpu.capability",
    ):
        assert run.data.tags[key], key
    assert run.data.tags["allocator"] in ("jemalloc", "tcmalloc", "system")
    params = run.data.params
    assert params["epochs"] == "2" and params["lr"] == "0.2" and params["optimizer"] == "muon"
    assert params["label_smoothing"] and params["weight_decay"] and params["seed"] == "0"
    assert params["dataset.content_hash"] == SPLIT.content_hash
    assert params["dataset.partitions"] == ",".join(SPLIT.partitions)
    assert params["dataset.train_images"] == "300"
    history = client.get_metric_history(model.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    validated = client.get_metric_history(model.mlflow_run_id, "val_accuracy")
    assert [m.step for m in validated] == [2]  # epoch 1 trained at low resolution: not validated
    assert {"train_loss", "images_per_second", "final_val_accuracy", "final_val_loss"} <= set(run.data.metrics)
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(model.validation_metrics["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(model.mlflow_run_id)}
    assert {"training_curves.png", "environment.json", "onnx"} <= artifacts
    assert sorted(a.path for a in client.list_artifacts(model.mlflow_run_id, "onnx")) == [
        "onnx/cifar10.fp32.onnx",
        "onnx/cifar10.onnx",
    ]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10_split/train", "cifar10_split/validation"}
    train_input = inputs["cifar10_split/train"]
    assert train_input.dataset.digest == SPLIT.content_hash[:32]
    assert {t.key: t.value for t in train_input.tags}["mlflow.data.context"] == "training"
    assert json.loads(train_input.dataset.profile)["features_shape"] == [300, 32, 32, 3]
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics.keys()
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location.startswith(pipeline["settings"].mlflow_artifact_root)
    assert not (Path(pipeline["home"]) / "mlruns").exists()


def test_training_curves_are_inline_in_the_asset_page(pipeline) -> None:  # type: ignore[no-untyped-def]
    import base64

    metadata = pipeline["result"].asset_materializations_for_node("cifar10_model")[0].metadata
    text = metadata["training_curves"].value
    assert text.startswith("![training curves](data:image/png;base64,")
    png = base64.b64decode(text.split("base64,", 1)[1].rstrip(")"))
    assert png.startswith(b"\x89PNG")
    assert metadata["time_budget_minutes"].value == "none (epochs fixed)"


def test_model_is_registered_with_a_signature(pipeline) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    tracking: MLflowTracking = pipeline["tracking"]
    model: TrainedModel = _load(pipeline, "cifar10_model", TrainedModel)
    version = tracking.client().get_model_version(model.registered_model_name, model.registered_model_version)
    assert version.run_id == model.mlflow_run_id
    mlflow.set_tracking_uri(tracking.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{model.registered_model_name}/{model.registered_model_version}")
    inputs = loaded.metadata.get_input_schema().inputs[0]
    assert inputs.type == np.dtype("uint8") and tuple(inputs.shape) == (-1, 32, 32, 3)
    images, _ = SPLIT.arrays("validation")
    assert loaded.predict(images[:3]).shape == (3, 10)


def test_artifacts_carry_the_contract(pipeline) -> None:  # type: ignore[no-untyped-def]
    model: TrainedModel = _load(pipeline, "cifar10_model", TrainedModel)
    onnx_model: OnnxModel = _load(pipeline, "cifar10_onnx", OnnxModel)
    assert model.dataset_hash == SPLIT.content_hash and model.classes == CIFAR10_CLASSES
    assert model.mean == SPLIT.mean and 0.0 <= model.validation_metrics["accuracy"] <= 1.0
    meta = onnx_model.metadata
    assert json.loads(meta["mlsd.classes"]) == list(CIFAR10_CLASSES)
    assert (meta["mlsd.input_name"], meta["mlsd.output_name"]) == ("images", "logits")
    assert (meta["mlsd.input_layout"], meta["mlsd.input_dtype"]) == ("NHWC", "uint8")
    assert json.loads(meta["mlsd.mean"]) == list(SPLIT.mean) and json.loads(meta["mlsd.std"]) == list(SPLIT.std)
    assert int(meta["mlsd.opset"]) >= 17 and meta["mlsd.dataset_hash"] == SPLIT.content_hash
    assert onnx_model.mlflow_run_id == model.mlflow_run_id
    assert onnx_model.registered_model_version == model.registered_model_version
    materialization = pipeline["result"].asset_materializations_for_node("cifar10_model")[0]
    assert materialization.metadata["mlflow_run_id"].value == model.mlflow_run_id
    assert model.mlflow_run_id in materialization.metadata["mlflow_run_url"].value
    checkpoints = Path(pipeline["settings"].data_dir) / "checkpoints"
    assert not any(checkpoints.glob("*/last.pt")), "a finished training leaves no checkpoint behind"


def test_served_variant_is_chosen_recorded_and_checked(pipeline) -> None:  # type: ignore[no-untyped-def]
    onnx_model: OnnxModel = _load(pipeline, "cifar10_onnx", OnnxModel)
    model: TrainedModel = _load(pipeline, "cifar10_model", TrainedModel)
    meta = onnx_model.metadata
    figures = {f["name"]: f for f in json.loads(meta["mlsd.serving.figures"])}
    assert set(figures) == {"fp32_tta", "fp32", "ort_tta", "ort", "int8_tta", "int8"}
    served = onnx_model.served_variant
    assert served in figures and float(meta["mlsd.serving.accuracy_drop_pt"]) <= 0.3
    best = max(f["accuracy"] for f in figures.values())
    assert (best - figures[served]["accuracy"]) * 100 <= 0.3 + 1e-9
    assert onnx_model.reference_bytes is not None and onnx_model.fp32_bytes != onnx_model.model_bytes
    # the served file is what the image carries; the fp32 reference is kept beside it for the parity check
    assert _load(pipeline, "cifar10_onnx", OnnxModel).reference_bytes == onnx_model.reference_bytes
    run = pipeline["tracking"].client().get_run(model.mlflow_run_id)
    assert run.data.tags["mlsd.serving.variant"] == served
    assert run.data.metrics[f"serving.{served}.accuracy"] == pytest.approx(figures[served]["accuracy"])
    artifacts = {a.path for a in pipeline["tracking"].client().list_artifacts(model.mlflow_run_id, "serving")}
    assert artifacts == {"serving/variants.json", "serving/variants.md"}
    materialization = pipeline["result"].asset_materializations_for_node("cifar10_onnx")[0]
    assert materialization.metadata["served_variant"].value == served
    checks = {e.check_name: e for e in pipeline["result"].get_asset_check_evaluations()}
    agreement = checks["check_cifar10_onnx_served_agreement"]
    assert agreement.passed and agreement.metadata["served_variant"].value == served
    assert agreement.metadata["agreement"].value == pytest.approx(figures[served]["agreement"])


def test_served_agreement_check_fails_on_a_degraded_served_graph(pipeline) -> None:  # type: ignore[no-untyped-def]
    good: OnnxModel = _load(pipeline, "cifar10_onnx", OnnxModel)
    bad = OnnxModel(
        model_bytes=tamper_normalisation(good.model_bytes, delta=3.0),
        metadata=good.metadata,
        reference_bytes=good.reference_bytes,
    )
    outcome = check_cifar10_onnx_served_agreement(cifar10_onnx=bad, cifar10_split=SPLIT)
    assert not outcome.passed and outcome.severity == dg.AssetCheckSeverity.ERROR
    assert outcome.metadata["accuracy_drop_pt"].value > 0.3
    assert "MORE than" in outcome.description


def test_parity_check_fails_on_a_tampered_export(pipeline) -> None:  # type: ignore[no-untyped-def]
    model: TrainedModel = _load(pipeline, "cifar10_model", TrainedModel)
    good: OnnxModel = _load(pipeline, "cifar10_onnx", OnnxModel)
    bad = OnnxModel(good.model_bytes, good.metadata, reference_bytes=tamper_normalisation(good.fp32_bytes))
    outcome = check_cifar10_onnx_parity(cifar10_onnx=bad, cifar10_model=model, cifar10_split=SPLIT)
    assert not outcome.passed
    assert outcome.severity == dg.AssetCheckSeverity.ERROR
    assert outcome.metadata["max_abs_diff"].value > 1e-4


def test_relaunch_after_a_crash_resumes_checkpoint_and_mlflow_run(
    mlsd_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsd_assets.training import tracking as tracking_module

    monkeypatch.chdir(mlsd_home)
    settings = load_settings()
    tracking = MLflowTracking(tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root)
    resources = {
        "io_manager": ArtifactIOManager(root=str(settings.artifacts_dir)),
        "mlflow": tracking,
        "paths": DataPaths(root=str(settings.data_dir)),
    }
    config = {k: v for k, v in TINY.items() if k != "eval_batch_size"} | {"widths": list(TINY["widths"])}
    run_config = {"ops": {"cifar10_model": {"config": config}}}
    log_epoch = tracking_module.log_epoch

    def crash_after_first_epoch(tracking_: MLflowTracking, run_id: str, stats) -> None:  # type: ignore[no-untyped-def]
        log_epoch(tracking_, run_id, stats)
        if stats.epoch == 1:
            raise RuntimeError("simulated worker loss after epoch 1")

    monkeypatch.setattr(tracking_module, "log_epoch", crash_after_first_epoch)
    failed = dg.materialize(
        [split_stub, cifar10_model], resources=resources, run_config=run_config, raise_on_error=False
    )
    assert not failed.success
    (crashed_run,) = tracking.client().search_runs([tracking.experiment_id()])
    assert crashed_run.info.status == "FAILED"

    monkeypatch.setattr(tracking_module, "log_epoch", log_epoch)
    again = dg.materialize([split_stub, cifar10_model], resources=resources, run_config=run_config)
    metadata = again.asset_materializations_for_node("cifar10_model")[0].metadata
    assert metadata["resumed_from_epoch"].value == 1
    assert metadata["mlflow_run_id"].value == crashed_run.info.run_id
    run = tracking.client().get_run(crashed_run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[DAGSTER_RUN_TAG] == again.run_id
    steps = [m.step for m in tracking.client().get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2]
