"""evaluation_report (the image beside the champion's, over HTTP), model_promotion (the gate), rollback."""

import hashlib
import logging
import uuid
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.evaluation.promotion import IMAGE_ID_TAG, IMAGE_TAG_TAG, Promotion
from mlsd_assets.core.evaluation.report import EvaluationReport
from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.resources import DataPaths
from mlsd_assets.serving.assets import TRANSIENT_RETRY
from mlsd_assets.serving.resources import DockerEngine
from mlsd_assets.training.resources import MLflowTracking

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# Model-version tags: the figures of the evaluation itself (the gate compares side by side, not these).
ACCURACY_TAG = "mlsd.eval.accuracy"
P95_TAG = "mlsd.eval.latency_p95_ms"


class EvaluationConfig(dg.Config):
    """`local_process` runs the same server module without Docker; the report then says so plainly.

    With a `champion` in the registry, its server runs beside the challenger's and gets the same
    single-image requests, interleaved (`seed` orders each pair); `champion_image` names its image by hand.
    """

    runtime: Literal["container", "local_process"] = "container"
    batch_size: int = 256
    single_image_requests: int = 0  # 0: every test image, one request each
    health_timeout_s: float = 120.0
    compare_with_champion: bool = True
    champion_image: str = ""
    seed: int = 0


def _check_image_serves(image: ServerImage, model: OnnxModel, model_sha256: str, labels: dict) -> None:
    """What is promoted must be what was measured: the image has to carry exactly this ONNX file."""
    if labels.get("mlsd.model_sha256") != model_sha256:
        raise dg.Failure(
            f"image {image.tag} ({image.image_id[:19]}) carries model sha256 "
            f"{labels.get('mlsd.model_sha256')!r}, "
            f"but cifar10_onnx v{model.registered_model_version} is {model_sha256}: rematerialize "
            "inference_server_image"
        )


@dg.asset(group_name="evaluation", kinds={"docker", "mlflow"}, retry_policy=TRANSIENT_RETRY)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    inference_server_image: ServerImage,
    cifar10_onnx: OnnxModel,
    cifar10_split: Cifar10Split,
    docker: DockerEngine,
    mlflow: MLflowTracking,
    paths: DataPaths,
) -> EvaluationReport:
    """The container is always removed afterwards (also on failure or interrupt); every server prediction
    must equal the offline ONNX one, or the asset fails instead of reporting a number."""
    from mlsd_assets.core.evaluation.gate import compare_predictions
    from mlsd_assets.core.evaluation.measure import measure_server, offline_predictions
    from mlsd_assets.core.evaluation.promotion import current_champion
    from mlsd_assets.core.evaluation.report import classification_metrics, draw_confusion, latency_summary_ms
    from mlsd_assets.core.platform.pictures import markdown_image
    from mlsd_assets.core.serving.runtime import running_container, running_local_process

    images, labels = cifar10_split.arrays("test")
    if len(images) == 0:
        raise dg.Failure("cifar10_split has no test images: nothing to evaluate")
    version = cifar10_onnx.registered_model_version
    model_sha256 = hashlib.sha256(cifar10_onnx.model_bytes).hexdigest()
    out_dir = paths.reports_dir / "evaluation" / f"v{version}-{context.run.run_id[:8]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = offline_predictions(cifar10_onnx.model_bytes, images)
    single = min(config.single_image_requests or len(images), len(images))

    champion = current_champion(mlflow.client(), cifar10_onnx.registered_model_name)
    if champion is not None and (str(champion.version) == version or not config.compare_with_champion):
        champion = None
    run_tag = f"{context.run.run_id[:8]}-{uuid.uuid4().hex[:6]}"
    with ExitStack() as servers:  # both servers stop here, whatever happens while they run
        if config.runtime == "container":
            client = docker.client()
            image_labels = client.images.get(inference_server_image.image_id).labels or {}
            _check_image_serves(inference_server_image, cifar10_onnx, model_sha256, image_labels)
            running = servers.enter_context(
                running_container(
                    client,
                    inference_server_image.image_id,
                    f"mlsd-eval-{run_tag}",
                    context.log,
                    config.health_timeout_s,
                )
            )
        else:
            model_path = out_dir / "model.onnx"
            model_path.write_bytes(cifar10_onnx.model_bytes)
            running = servers.enter_context(
                running_local_process(model_path, out_dir / "server.log", context.log, config.health_timeout_s)
            )
        champion_server, champion_source = None, ""
        if champion is not None:
            starting, champion_source = _champion_server(
                champion, config, docker, mlflow, out_dir, f"mlsd-champion-{run_tag}", context.log
            )
            champion_server = servers.enter_context(starting)
        measured = measure_server(
            running.base_url,
            images,
            expected,
            config.batch_size,
            single,
            context.log,
            champion_server.base_url if champion_server else None,
            config.seed,
        )

    classes = cifar10_onnx.classes
    accuracy, per_class, confusion = classification_metrics(labels, measured.predictions, classes)
    comparison = None
    if champion_server is not None and measured.champion_predictions is not None:
        comparison = compare_predictions(
            labels[:single],
            measured.champion_predictions,
            measured.predictions[:single],
            measured.champion_seconds,
            measured.single_seconds,
            str(champion.version),
            champion_source,
        ).to_dict()
    title = f"{cifar10_onnx.registered_model_name} v{version}"
    png = draw_confusion(confusion, classes, out_dir / "confusion_matrix.png", title)
    report = EvaluationReport(
        model_name=cifar10_onnx.registered_model_name,
        model_version=version,
        mlflow_run_id=cifar10_onnx.mlflow_run_id,
        runtime=running.runtime,
        server=running.name,
        image_tag=inference_server_image.tag,
        image_id=inference_server_image.image_id,
        image_size_bytes=inference_server_image.size_bytes,
        test_images=len(images),
        accuracy=accuracy,
        per_class=per_class,
        confusion=confusion,
        latency_ms=latency_summary_ms(measured.single_seconds),
        single_requests=measured.single_requests,
        batch_size=config.batch_size,
        batched_images_per_s=measured.batched_images_per_s,
        errors=measured.errors,
        parity_images=len(images),
        parity_mismatches=0,
        server_metrics=measured.server_metrics,
        comparison=comparison,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        served_variant=cifar10_onnx.served_variant,
        files={
            "json": str(out_dir / "report.json"),
            "markdown": str(out_dir / "report.md"),
            "confusion_png": str(png),
        },
    )
    report.save(out_dir / "report.json")
    (out_dir / "report.md").write_text(report.markdown())
    _log_to_mlflow(mlflow, report, out_dir)
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(f"{report.markdown()}\n{markdown_image(png, 'confusion matrix')}\n"),
            "confusion_matrix": dg.MetadataValue.path(str(png)),
            "runtime": report.runtime,
            "accuracy": report.accuracy,
            "latency_p50_ms": round(report.latency_ms["p50"], 3),
            "latency_p95_ms": round(report.latency_ms["p95"], 3),
            "latency_p99_ms": round(report.latency_ms["p99"], 3),
            "batched_images_per_s": round(report.batched_images_per_s, 1),
            "errors": report.errors,
            "parity": f"{report.parity_images - report.parity_mismatches}/{report.parity_images}",
            "image_size_mb": round(report.image_size_bytes / 1e6, 1),
            "mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(report.mlflow_run_id)),
            "champion_compared": f"v{comparison['champion_version']}" if comparison else "none",
            **(_comparison_metadata(comparison) if comparison else {}),
        }
    )
    return report


def _comparison_metadata(comparison: dict) -> dict:
    ratio = comparison["ratio"]
    return {
        "latency_ratio_median": round(ratio["median"], 4),
        "latency_ratio_iqr": f"{ratio['q1']:.3f}-{ratio['q3']:.3f}",
        "latency_ratio_ci95": f"{ratio['ci_low']:.3f}-{ratio['ci_high']:.3f}",
        "disagreements_b_champion_only": comparison["b"],
        "disagreements_c_challenger_only": comparison["c"],
        "mcnemar_p_worse": comparison["p_worse"],
        "champion_accuracy_same_images": comparison["champion_accuracy"],
    }


def _champion_server(
    champion: "ModelVersion",
    config: EvaluationConfig,
    docker: DockerEngine,
    mlflow: MLflowTracking,
    out_dir: Path,
    name: str,
    log: logging.Logger,
) -> tuple[AbstractContextManager, str]:
    """The champion served like the challenger (its image from the engine or registry, or its ONNX file from
    MLflow), and what it is."""
    from mlsd_assets.core.evaluation.promotion import champion_onnx, resolve_image
    from mlsd_assets.core.serving.runtime import running_container, running_local_process

    if config.runtime == "container":
        client = docker.client()
        image_id = resolve_image(
            client,
            champion.name,
            str(champion.version),
            champion.tags or {},
            docker.registry,
            docker.auth_config(),
            log,
            config.champion_image,
        )
        return running_container(client, image_id, name, log, config.health_timeout_s), f"image {image_id[:19]}"
    model_path = champion_onnx(mlflow.client(), champion, out_dir / "champion")
    server = running_local_process(model_path, out_dir / "champion-server.log", log, config.health_timeout_s)
    return server, f"local process on {model_path.name} from run {champion.run_id}"


def _log_to_mlflow(mlflow: MLflowTracking, report: EvaluationReport, out_dir: Path) -> None:
    """Into the model's own run (figures + files) and onto its registry version (what the gate reads)."""
    client = mlflow.client()
    run_id = report.mlflow_run_id
    figures = {
        "eval_accuracy": report.accuracy,
        "eval_latency_p50_ms": report.latency_ms["p50"],
        "eval_latency_p95_ms": report.latency_ms["p95"],
        "eval_latency_p99_ms": report.latency_ms["p99"],
        "eval_batched_images_per_s": report.batched_images_per_s,
        "eval_errors": float(report.errors),
    }
    for key, value in figures.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "mlsd.eval.runtime", report.runtime)
    for name in ("report.json", "report.md", "confusion_matrix.png"):
        client.log_artifact(run_id, str(out_dir / name), artifact_path="evaluation")
    version_tags = {
        ACCURACY_TAG: str(report.accuracy),
        P95_TAG: str(report.latency_ms["p95"]),
        "mlsd.eval.runtime": report.runtime,
    }
    if report.runtime == "container":  # where the side-by-side of a later challenger finds this server
        version_tags |= {IMAGE_ID_TAG: report.image_id, IMAGE_TAG_TAG: report.image_tag}
    for key, value in version_tags.items():
        client.set_model_version_tag(report.model_name, report.model_version, key, value)


class PromotionConfig(dg.Config):
    """The gate: promote unless McNemar's one-sided p < alpha, or the median latency ratio > max_latency_ratio."""

    alpha: float = 0.05
    max_latency_ratio: float = 1.25


@dg.asset(group_name="evaluation", kinds={"mlflow", "docker"}, retry_policy=TRANSIENT_RETRY)
def model_promotion(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    evaluation_report: EvaluationReport,
    docker: DockerEngine,
    mlflow: MLflowTracking,
) -> Promotion:
    """The gate's decision on the evaluated challenger. Only a promoted image is pushed (`:v<N>` and
    `:champion`, when MLSD_IMAGE_REGISTRY is set), and the push comes before the alias moves."""
    from mlsd_assets.core.evaluation.promotion import PromotionError, decide_promotion

    try:
        promotion = decide_promotion(
            mlflow.client(),
            docker.client() if docker.registry else None,
            evaluation_report,
            config.alpha,
            config.max_latency_ratio,
            docker.registry,
            docker.auth_config(),
            f"dagster run {context.run.run_id}",
            context.log,
        )
    except PromotionError as exc:  # a wrong input, not a flaky registry: retrying would not help
        raise dg.Failure(str(exc), allow_retries=False) from exc
    context.add_output_metadata(promotion_metadata(promotion))
    return promotion


def promotion_metadata(promotion: Promotion) -> dict:
    figures = promotion.figures or {}
    return {
        "decision": promotion.decision,
        "reason": dg.MetadataValue.md(promotion.reason),
        "candidate_version": promotion.candidate_version,
        "previous_champion": promotion.previous_champion or "none",
        "champion_after": promotion.champion_after,
        "pushed": ", ".join(promotion.pushed) or "not pushed",
        "digest": promotion.digest or "not pushed",
        "by": promotion.by,
        **({"figures": dg.MetadataValue.json(figures)} if figures else {}),
        "mlflow_model": f"{promotion.model_name} v{promotion.candidate_version}",
    }


class RollbackConfig(dg.Config):
    """Which registered version takes `champion` back, and why (both recorded)."""

    version: str
    reason: str
    requested_by: str = ""


@dg.op(tags={"kind": "mlflow"})
def champion_rollback(
    context: dg.OpExecutionContext, config: RollbackConfig, docker: DockerEngine, mlflow: MLflowTracking
) -> None:
    """Recorded like a promotion: a `model_promotion` materialization event, plus tags on the version."""
    from mlsd_assets.core.evaluation.promotion import rollback

    by = config.requested_by or context.run.tags.get("mlsd/requested_by") or "unknown"
    promotion = rollback(
        mlflow.client(),
        docker.client() if docker.registry else None,
        mlflow.registered_model_name,
        config.version,
        config.reason,
        f"{by} (dagster run {context.run.run_id})",
        docker.registry,
        docker.auth_config(),
        context.log,
    )
    context.log_event(
        dg.AssetMaterialization(
            asset_key="model_promotion",
            description=promotion.reason,
            metadata=promotion_metadata(promotion),
        )
    )
