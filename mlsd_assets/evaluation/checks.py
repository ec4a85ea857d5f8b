"""Champion/challenger: a new version takes the `champion` alias only if it is not worse than the holder."""

import dagster as dg

from mlsd_assets.evaluation.assets import ACCURACY_TAG, P95_TAG
from mlsd_assets.evaluation.report import EvaluationReport
from mlsd_assets.training.resources import MLflowTracking

CHAMPION_ALIAS = "champion"


class PromotionConfig(dg.Config):
    """Tolerances: accuracy in percentage points, p95 latency as a fraction of the champion's."""

    max_accuracy_drop_pt: float = 0.5
    max_p95_increase: float = 0.20


def compare(
    challenger_accuracy: float,
    challenger_p95_ms: float,
    champion_accuracy: float,
    champion_p95_ms: float,
    config: PromotionConfig,
) -> list[str]:
    """Reasons the challenger loses (empty: it may be promoted), each with both figures."""
    reasons = []
    if challenger_accuracy < champion_accuracy - config.max_accuracy_drop_pt / 100:
        reasons.append(
            f"accuracy {challenger_accuracy:.4f} is more than {config.max_accuracy_drop_pt} pt below "
            f"the champion's {champion_accuracy:.4f}"
        )
    if challenger_p95_ms > champion_p95_ms * (1 + config.max_p95_increase):
        reasons.append(
            f"p95 latency {challenger_p95_ms:.3f} ms is more than {config.max_p95_increase:.0%} above "
            f"the champion's {champion_p95_ms:.3f} ms"
        )
    return reasons


@dg.asset_check(
    asset="evaluation_report",
    blocking=True,
    description="Challenger vs the registry's `champion` alias: accuracy not worse by more than "
    "max_accuracy_drop_pt, p95 latency not worse by more than max_p95_increase; on pass the alias moves.",
)
def check_evaluation_report_promotion(
    context: dg.AssetCheckExecutionContext,
    config: PromotionConfig,
    evaluation_report: EvaluationReport,
    mlflow: MLflowTracking,
) -> dg.AssetCheckResult:
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    name, version = evaluation_report.model_name, evaluation_report.model_version
    client.get_model_version(name, version)  # the challenger must be a registered version
    challenger = {"accuracy": evaluation_report.accuracy, "p95_ms": evaluation_report.latency_ms["p95"]}
    meta: dict = {"challenger_version": version, **{f"challenger_{k}": v for k, v in challenger.items()}}
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        champion = None
    if champion is not None and str(champion.version) == version:
        return dg.AssetCheckResult(
            passed=True, description=f"v{version} already holds `{CHAMPION_ALIAS}`", metadata=meta
        )
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        return dg.AssetCheckResult(
            passed=True,
            description=f"no `{CHAMPION_ALIAS}` for {name} yet: v{version} promoted as the first one",
            metadata=meta | {"promoted": True},
        )
    tags = champion.tags or {}
    if ACCURACY_TAG not in tags or P95_TAG not in tags:
        raise dg.Failure(
            f"champion {name} v{champion.version} has no evaluation figures ({ACCURACY_TAG}, {P95_TAG}): "
            "rematerialize its evaluation_report or move the alias by hand"
        )
    champion_accuracy, champion_p95 = float(tags[ACCURACY_TAG]), float(tags[P95_TAG])
    meta |= {"champion_version": str(champion.version), "champion_accuracy": champion_accuracy,
             "champion_p95_ms": champion_p95}
    reasons = compare(challenger["accuracy"], challenger["p95_ms"], champion_accuracy, champion_p95, config)
    if reasons:
        context.log.warning(f"v{version} not promoted: " + "; ".join(reasons))
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"v{version} not promoted, v{champion.version} stays champion: " + "; ".join(reasons),
            metadata=meta | {"promoted": False},
        )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return dg.AssetCheckResult(
        passed=True,
        description=f"v{version} promoted over v{champion.version}: accuracy {challenger['accuracy']:.4f} vs "
        f"{champion_accuracy:.4f}, p95 {challenger['p95_ms']:.3f} vs {champion_p95:.3f} ms",
        metadata=meta | {"promoted": True},
    )
