"""evaluation_report (the image beside the champion's, over HTTP), model_promotion (the gate), rollback."""

import uuid
from pathlib import Path
from typing import Literal

import dagster as dg

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.evaluation.promotion import Promotion
from mlsd_assets.core.evaluation.report import EvaluationReport
from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.resources import TRANSIENT_RETRY, DataPaths, DockerEngine, MLflowTracking


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
    """The served image measured over HTTP beside the champion's; a prediction differing from the offline
    ONNX one fails the asset instead of reporting a number."""
    from mlsd_assets.core.evaluation.evaluate import Requests, Servers, champion_to_compare, evaluate, log_evaluation

    client, run = mlflow.client(), context.run.run_id[:8]
    out_dir = paths.reports_dir / "evaluation" / f"v{cifar10_onnx.registered_model_version}-{run}"
    engine = docker.client() if config.runtime == "container" else None
    name = f"{run}-{uuid.uuid4().hex[:6]}"
    servers = Servers(
        engine, docker.registry, docker.auth_config(), config.health_timeout_s, name, config.champion_image
    )
    champion = champion_to_compare(client, cifar10_onnx, config.compare_with_champion)
    requests = Requests(config.batch_size, config.single_image_requests, config.seed)
    report = evaluate(
        cifar10_onnx, inference_server_image, cifar10_split, servers, champion, client, requests, out_dir, context.log
    )
    log_evaluation(client, report)
    context.add_output_metadata(
        report_metadata(report) | {"mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(report.mlflow_run_id))}
    )
    return report


def report_metadata(report: EvaluationReport) -> dict:
    """The figures people look for first, and the report with its confusion matrix inline."""
    from mlsd_assets.core.platform.pictures import markdown_image

    png = report.files["confusion_png"]
    comparison = report.comparison
    ratio = comparison["ratio"] if comparison else {}
    return {
        "report": dg.MetadataValue.md(f"{report.markdown()}\n{markdown_image(Path(png), 'confusion matrix')}\n"),
        "confusion_matrix": dg.MetadataValue.path(png),
        "runtime": report.runtime,
        "accuracy": report.accuracy,
        "latency_p50_ms": round(report.latency_ms["p50"], 3),
        "latency_p95_ms": round(report.latency_ms["p95"], 3),
        "latency_p99_ms": round(report.latency_ms["p99"], 3),
        "batched_images_per_s": round(report.batched_images_per_s, 1),
        "image_size_mb": round(report.image_size_bytes / 1e6, 1),
        "champion_compared": f"v{comparison['champion_version']}" if comparison else "none",
        **(
            {
                "latency_ratio_median": round(ratio["median"], 4),
                "latency_ratio_iqr": f"{ratio['q1']:.3f}-{ratio['q3']:.3f}",
                "latency_ratio_ci95": f"{ratio['ci_low']:.3f}-{ratio['ci_high']:.3f}",
                "disagreements_b_champion_only": comparison["b"],
                "disagreements_c_challenger_only": comparison["c"],
                "mcnemar_p_worse": comparison["p_worse"],
                "champion_accuracy_same_images": comparison["champion_accuracy"],
            }
            if comparison
            else {}
        ),
    }


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
