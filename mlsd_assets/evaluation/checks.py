"""The gate's verdict in the Checks tab: a rejected challenger shows as a warning on `model_promotion`."""

import dagster as dg

from mlsd_assets.core.evaluation.promotion import Promotion


@dg.asset_check(
    asset="model_promotion",
    description="Warns when the evaluated challenger was rejected (the champion stays); the reason cites the "
    "latency ratio, the disagreements b/c and McNemar's p.",
)
def check_model_promotion_accepted(model_promotion: Promotion) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=model_promotion.decision != "rejected",
        severity=dg.AssetCheckSeverity.WARN,
        description=model_promotion.reason,
        metadata={"decision": model_promotion.decision, "champion_after": model_promotion.champion_after},
    )
