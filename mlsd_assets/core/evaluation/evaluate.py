"""One evaluation: the challenger's server (and the champion's beside it) started, measured, written up, logged."""

from __future__ import annotations

import hashlib
import logging
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlsd_assets.core.evaluation.promotion import IMAGE_ID_TAG, IMAGE_TAG_TAG
from mlsd_assets.core.evaluation.report import EvaluationReport

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    import docker
    from mlsd_assets.core.data.splits import Cifar10Split
    from mlsd_assets.core.evaluation.measure import Measurements
    from mlsd_assets.core.serving.artifacts import ServerImage
    from mlsd_assets.core.serving.runtime import RunningServer
    from mlsd_assets.core.training.artifacts import OnnxModel

# Model-version tags: the figures of the evaluation itself (the gate compares side by side, not these).
ACCURACY_TAG = "mlsd.eval.accuracy"
P95_TAG = "mlsd.eval.latency_p95_ms"


class ImageMismatchError(RuntimeError):
    """The image does not carry the ONNX file being evaluated: what is promoted must be what was measured."""


@dataclass(frozen=True)
class Servers:
    """Where the servers under test run: containers on `docker`'s engine, or local processes when it is None.

    Containers are named `mlsd-eval-<name>` and `mlsd-champion-<name>`; `champion_image` names the champion's
    image by hand instead of the one recorded on its registry version.
    """

    docker: docker.DockerClient | None
    registry: str
    auth: dict[str, str] | None
    health_timeout_s: float
    name: str
    champion_image: str = ""

    def challenger(
        self, image: ServerImage, model: OnnxModel, out_dir: Path, log: logging.Logger
    ) -> AbstractContextManager[RunningServer]:
        from mlsd_assets.core.serving.runtime import running_container, running_local_process

        if self.docker is None:
            model_path = out_dir / "model.onnx"
            model_path.write_bytes(model.model_bytes)
            return running_local_process(model_path, out_dir / "server.log", log, self.health_timeout_s)
        check_image_serves(image, model, self.docker.images.get(image.image_id).labels or {})
        return running_container(self.docker, image.image_id, f"mlsd-eval-{self.name}", log, self.health_timeout_s)

    def champion(
        self, champion: ModelVersion, mlflow: MlflowClient, out_dir: Path, log: logging.Logger
    ) -> tuple[AbstractContextManager[RunningServer], str]:
        """The champion served like the challenger (its image from the engine or registry, or its ONNX file
        from MLflow), and what it is."""
        from mlsd_assets.core.evaluation.promotion import champion_onnx, resolve_image
        from mlsd_assets.core.serving.runtime import running_container, running_local_process

        if self.docker is None:
            model_path = champion_onnx(mlflow, champion, out_dir / "champion")
            server = running_local_process(model_path, out_dir / "champion-server.log", log, self.health_timeout_s)
            return server, f"local process on {model_path.name} from run {champion.run_id}"
        version, tags = str(champion.version), champion.tags or {}
        image_id = resolve_image(
            self.docker, champion.name, version, tags, self.registry, self.auth, log, self.champion_image
        )
        name = f"mlsd-champion-{self.name}"
        return running_container(self.docker, image_id, name, log, self.health_timeout_s), f"image {image_id[:19]}"


@dataclass(frozen=True)
class Requests:
    """How the servers are asked: every image in batches of `batch_size`; the first `single` images (0: all)
    one request each, interleaved with the champion's in an order drawn from `seed`."""

    batch_size: int
    single: int = 0
    seed: int = 0


def check_image_serves(image: ServerImage, model: OnnxModel, labels: dict[str, str]) -> None:
    """What is promoted must be what was measured: the image has to carry exactly this ONNX file."""
    model_sha256 = hashlib.sha256(model.model_bytes).hexdigest()
    if labels.get("mlsd.model_sha256") != model_sha256:
        raise ImageMismatchError(
            f"image {image.tag} ({image.image_id[:19]}) carries model sha256 {labels.get('mlsd.model_sha256')!r}, "
            f"but cifar10_onnx v{model.registered_model_version} is {model_sha256}: rematerialize "
            "inference_server_image"
        )


def champion_to_compare(mlflow: MlflowClient, model: OnnxModel, compare: bool) -> ModelVersion | None:
    """The registry's champion, unless comparing is off or the challenger already is the champion."""
    from mlsd_assets.core.evaluation.promotion import current_champion

    champion = current_champion(mlflow, model.registered_model_name) if compare else None
    if champion is None or str(champion.version) == model.registered_model_version:
        return None
    return champion


def evaluate(
    model: OnnxModel,
    image: ServerImage,
    split: Cifar10Split,
    servers: Servers,
    champion: ModelVersion | None,
    mlflow: MlflowClient,
    requests: Requests,
    out_dir: Path,
    log: logging.Logger,
) -> EvaluationReport:
    """The servers always stop (also on failure or interrupt); every server prediction must equal the offline
    ONNX one, or EvaluationError is raised instead of a number reported. Writes report.json/.md and the PNG."""
    from mlsd_assets.core.evaluation.gate import compare_predictions
    from mlsd_assets.core.evaluation.measure import EvaluationError, measure_server, offline_predictions

    images, labels = split.arrays("test")
    if len(images) == 0:
        raise EvaluationError("cifar10_split has no test images: nothing to evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = offline_predictions(model.model_bytes, images)
    single = min(requests.single or len(images), len(images))
    with ExitStack() as running:  # both servers stop here, whatever happens while they run
        challenger = running.enter_context(servers.challenger(image, model, out_dir, log))
        champion_server, champion_source = None, ""
        if champion is not None:
            starting, champion_source = servers.champion(champion, mlflow, out_dir, log)
            champion_server = running.enter_context(starting)
        champion_url = champion_server.base_url if champion_server else None
        measured = measure_server(
            challenger.base_url, images, expected, requests.batch_size, single, log, champion_url, requests.seed
        )
    comparison = None
    if champion is not None and measured.champion_predictions is not None:
        comparison = compare_predictions(
            labels[:single],
            measured.champion_predictions,
            measured.predictions[:single],
            measured.champion_seconds,
            measured.single_seconds,
            str(champion.version),
            champion_source,
        ).to_dict()
    return _write_report(model, image, challenger, labels, measured, requests.batch_size, comparison, out_dir)


def _write_report(
    model: OnnxModel,
    image: ServerImage,
    served: RunningServer,
    labels: np.ndarray,
    measured: Measurements,
    batch_size: int,
    comparison: dict | None,
    out_dir: Path,
) -> EvaluationReport:
    """The figures, the confusion matrix as PNG, and the report as JSON and Markdown beside it."""
    from mlsd_assets.core.evaluation.report import classification_metrics, draw_confusion, latency_summary_ms

    accuracy, per_class, confusion = classification_metrics(labels, measured.predictions, model.classes)
    title = f"{model.registered_model_name} v{model.registered_model_version}"
    png = draw_confusion(confusion, model.classes, out_dir / "confusion_matrix.png", title)
    report = EvaluationReport(
        model_name=model.registered_model_name,
        model_version=model.registered_model_version,
        mlflow_run_id=model.mlflow_run_id,
        runtime=served.runtime,
        server=served.name,
        image_tag=image.tag,
        image_id=image.image_id,
        image_size_bytes=image.size_bytes,
        test_images=len(labels),
        accuracy=accuracy,
        per_class=per_class,
        confusion=confusion,
        latency_ms=latency_summary_ms(measured.single_seconds),
        single_requests=measured.single_requests,
        batch_size=batch_size,
        batched_images_per_s=measured.batched_images_per_s,
        server_metrics=measured.server_metrics,
        comparison=comparison,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        served_variant=model.served_variant,
        files={
            "json": str(out_dir / "report.json"),
            "markdown": str(out_dir / "report.md"),
            "confusion_png": str(png),
        },
    )
    report.save(out_dir / "report.json")
    (out_dir / "report.md").write_text(report.markdown())
    return report


def log_evaluation(mlflow: MlflowClient, report: EvaluationReport) -> None:
    """Into the model's own run (figures + files) and onto its registry version (what the gate reads)."""
    run_id = report.mlflow_run_id
    figures = {
        "eval_accuracy": report.accuracy,
        "eval_latency_p50_ms": report.latency_ms["p50"],
        "eval_latency_p95_ms": report.latency_ms["p95"],
        "eval_latency_p99_ms": report.latency_ms["p99"],
        "eval_batched_images_per_s": report.batched_images_per_s,
    }
    for key, value in figures.items():
        mlflow.log_metric(run_id, key, value)
    mlflow.set_tag(run_id, "mlsd.eval.runtime", report.runtime)
    for path in report.files.values():
        mlflow.log_artifact(run_id, path, artifact_path="evaluation")
    version_tags = {
        ACCURACY_TAG: str(report.accuracy),
        P95_TAG: str(report.latency_ms["p95"]),
        "mlsd.eval.runtime": report.runtime,
    }
    if report.runtime == "container":  # where the side-by-side of a later challenger finds this server
        version_tags |= {IMAGE_ID_TAG: report.image_id, IMAGE_TAG_TAG: report.image_tag}
    for key, value in version_tags.items():
        mlflow.set_model_version_tag(report.model_name, report.model_version, key, value)
