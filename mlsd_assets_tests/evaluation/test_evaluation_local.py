"""evaluation_report with runtime=local_process: full test split over HTTP, parity, report files, MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.evaluation.evaluate import ACCURACY_TAG
from mlsd_assets.core.evaluation.measure import EvaluationError, measure_server, offline_predictions
from mlsd_assets.core.evaluation.report import EvaluationReport, classification_metrics
from mlsd_assets.core.serving.runtime import running_local_process
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.evaluation.assets import evaluation_report
from mlsd_assets_tests.core.serving.onnx_models import nearest_mean_weights, write_tiny_model
from mlsd_assets_tests.evaluation.stubs import evaluation_resources, register_version, unbuilt_image, upstream_assets
from mlsd_assets_tests.synthetic import make_split

log = logging.getLogger("test")


def tiny_onnx(tmp: Path, split: Cifar10Split, run_id: str, version: str) -> OnnxModel:
    weights = nearest_mean_weights(*split.arrays("train"))
    path = write_tiny_model(tmp / "model.onnx", weights, version=version, run_id=run_id)
    return OnnxModel.load(path)


def test_local_process_report(mlsd_home, mlflow_tracking, tmp_path):
    split = make_split(n_train=200, n_validation=20, n_test=120, seed=4)
    run_id, version = register_version(mlflow_tracking)
    model = tiny_onnx(tmp_path, split, run_id, version)

    result = dg.materialize(
        [*upstream_assets(split, model), unbuilt_image(model), evaluation_report],
        resources=evaluation_resources(mlsd_home, mlflow_tracking),
        run_config={"ops": {"evaluation_report": {"config": {"runtime": "local_process", "batch_size": 32}}}},
    )
    report = result.output_for_node("evaluation_report")
    assert isinstance(report, EvaluationReport)
    images, labels = split.arrays("test")
    expected = offline_predictions(model.model_bytes, images)
    assert report.accuracy == pytest.approx(float((expected == labels).mean()))
    assert report.runtime == "local_process" and report.test_images == 120 and report.single_requests == 120
    assert report.server_metrics["requests"] == 120 + 4  # singles + ceil(120 / 32) batches
    assert report.latency_ms["p50"] <= report.latency_ms["p95"] <= report.latency_ms["p99"]
    assert sum(map(sum, report.confusion)) == 120
    markdown = Path(report.files["markdown"]).read_text()
    assert "local process, not the Docker image" in markdown
    assert Path(report.files["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
    client = mlflow_tracking.client()
    assert client.get_run(run_id).data.metrics["eval_accuracy"] == pytest.approx(report.accuracy)
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert artifacts == {"evaluation/report.json", "evaluation/report.md", "evaluation/confusion_matrix.png"}
    tags = client.get_model_version(model.registered_model_name, version).tags
    assert float(tags[ACCURACY_TAG]) == report.accuracy


def test_parity_mismatch_fails_loudly(tmp_path):
    split = make_split(n_train=200, n_validation=0, n_test=40, seed=5)
    model = tiny_onnx(tmp_path, split, "r", "1")
    images, _ = split.arrays("test")
    expected = offline_predictions(model.model_bytes, images)
    wrong = expected.copy()
    wrong[7] = (wrong[7] + 1) % 10
    with running_local_process(tmp_path / "model.onnx", tmp_path / "server.log", log) as server:
        measure_server(server.base_url, images, expected, 16, 5, log)
        with pytest.raises(EvaluationError, match=r"offline ONNX on 1/40 images \(first at index 7"):
            measure_server(server.base_url, images, wrong, 16, 5, log)
        with pytest.raises(EvaluationError, match="requests to .* failed"):
            many = np.concatenate([images] * 28)  # 1120 images in one request: over the 1024 batch limit
            measure_server(server.base_url, many, np.tile(expected, 28), 2000, 0, log)


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    accuracy, per_class, confusion = classification_metrics(labels, preds, ["a", "b", "c"])
    assert accuracy == pytest.approx(3 / 5)
    assert confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert per_class["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert per_class["b"]["precision"] == pytest.approx(2 / 3) and per_class["b"]["recall"] == 1.0
    assert per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
