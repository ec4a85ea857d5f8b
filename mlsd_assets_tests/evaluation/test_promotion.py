"""Champion and challenger side by side (local server processes), decided by model_promotion, real MLflow."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.evaluation.promotion import CHAMPION_ALIAS, Promotion
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.evaluation.assets import evaluation_report, model_promotion
from mlsd_assets.evaluation.checks import check_model_promotion_accepted
from mlsd_assets.resources import MLflowTracking
from mlsd_assets_tests.evaluation.stubs import (
    GOOD,
    MODEL_NAME,
    SPLIT,
    bad_weights,
    evaluation_resources,
    register_version,
    registered_onnx,
    unbuilt_image,
    upstream_assets,
)


def evaluate_and_decide(
    home: Path, tracking: MLflowTracking, model: OnnxModel, raise_on_error: bool = True, **eval_config
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [
            *upstream_assets(SPLIT, model),
            unbuilt_image(model),
            evaluation_report,
            model_promotion,
            check_model_promotion_accepted,
        ],
        resources=evaluation_resources(home, tracking),
        run_config={
            "ops": {"evaluation_report": {"config": {"runtime": "local_process", "batch_size": 64} | eval_config}}
        },
        raise_on_error=raise_on_error,
    )


def champion(tracking: MLflowTracking) -> str:
    return str(tracking.client().get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version)


def test_side_by_side_promotes_first_rejects_worse_promotes_equal(mlsd_home, mlflow_tracking, tmp_path):
    first = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    result = evaluate_and_decide(mlsd_home, mlflow_tracking, first)
    promotion = result.output_for_node("model_promotion")
    assert isinstance(promotion, Promotion) and promotion.decision == "promoted"
    assert "first champion" in promotion.reason and promotion.previous_champion == ""
    assert result.output_for_node("evaluation_report").comparison is None
    assert champion(mlflow_tracking) == first.registered_model_version

    worse = registered_onnx(mlflow_tracking, tmp_path, bad_weights())
    result = evaluate_and_decide(mlsd_home, mlflow_tracking, worse)
    report = result.output_for_node("evaluation_report")
    comparison = report.comparison
    assert comparison["champion_version"] == first.registered_model_version and comparison["images"] == 150
    assert comparison["b"] > 20 and comparison["c"] <= comparison["b"] // 4 and comparison["p_worse"] < 1e-4
    assert comparison["ratio"]["pairs"] == 150
    promotion = result.output_for_node("model_promotion")
    assert promotion.decision == "rejected" and promotion.champion_after == first.registered_model_version
    for fragment in (
        f"v{worse.registered_model_version} rejected",
        f"b={comparison['b']}",
        f"c={comparison['c']}",
        "latency ratio challenger/champion",
        "McNemar one-sided p=",
    ):
        assert fragment in promotion.reason
    assert champion(mlflow_tracking) == first.registered_model_version
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "Side by side with champion" in Path(report.files["markdown"]).read_text()
    tags = mlflow_tracking.client().get_model_version(MODEL_NAME, worse.registered_model_version).tags
    assert tags["mlsd.promotion.decision"] == "rejected" and "b=" in tags["mlsd.promotion.reason"]
    events = result.get_asset_materialization_events()
    meta = next(e for e in events if e.asset_key == dg.AssetKey("model_promotion")).materialization.metadata
    assert meta["decision"].value == "rejected" and meta["pushed"].value == "not pushed"

    equal = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    result = evaluate_and_decide(mlsd_home, mlflow_tracking, equal)
    comparison = result.output_for_node("evaluation_report").comparison
    assert (comparison["b"], comparison["c"], comparison["p_worse"]) == (0, 0, 1.0)
    promotion = result.output_for_node("model_promotion")
    assert promotion.decision == "promoted", promotion.reason
    assert promotion.previous_champion == first.registered_model_version
    assert champion(mlflow_tracking) == equal.registered_model_version


def test_both_servers_stop_when_measurement_fails(mlsd_home, mlflow_tracking, tmp_path, monkeypatch):
    trained_first = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    evaluate_and_decide(mlsd_home, mlflow_tracking, trained_first)
    seen: dict[str, str] = {}

    def induced(base_url, images, expected, batch_size, single, log, champion_url=None, seed=0):
        import httpx

        for who, url in (("challenger", base_url), ("champion", champion_url)):
            assert httpx.get(f"{url}/v2/health/ready").status_code == 200
            seen[who] = url
        raise dg.Failure("induced failure while both servers run", allow_retries=False)

    monkeypatch.setattr("mlsd_assets.core.evaluation.measure.measure_server", induced)
    challenger = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    result = evaluate_and_decide(mlsd_home, mlflow_tracking, challenger, raise_on_error=False)
    assert not result.success and set(seen) == {"challenger", "champion"}
    import httpx

    for url in seen.values():
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/health/ready", timeout=2)
    assert champion(mlflow_tracking) == trained_first.registered_model_version


def test_gate_refuses_a_comparison_with_a_stale_champion(mlsd_home, mlflow_tracking, tmp_path):
    first = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    evaluate_and_decide(mlsd_home, mlflow_tracking, first)
    second = registered_onnx(mlflow_tracking, tmp_path, GOOD)
    result = evaluate_and_decide(mlsd_home, mlflow_tracking, second, raise_on_error=False, compare_with_champion=False)
    assert result.output_for_node("evaluation_report").comparison is None
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "model_promotion"
    assert "compared with no champion: rematerialize evaluation_report" in str(failure.event_specific_data.error)
    assert champion(mlflow_tracking) == first.registered_model_version


def test_rollback_command_moves_the_alias_and_records_why(mlsd_home, monkeypatch):
    """No registry configured: the alias moves back and the record says who and why; a bad version is named."""
    import os
    import subprocess
    import sys

    monkeypatch.delenv("MLSD_IMAGE_REGISTRY", raising=False)
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{mlsd_home / 'mlflow' / 'mlflow.db'}",
        artifact_root=(mlsd_home / "mlflow" / "artifacts").as_uri(),
    )
    name = tracking.registered_model_name
    for _ in range(2):
        register_version(tracking, name)
    tracking.client().set_registered_model_alias(name, CHAMPION_ALIAS, "2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(
            [sys.executable, "-m", "mlsd_assets", "rollback", *args],
            cwd=root,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = cli("--to-version", "1", "--reason", "v2 drifts")
    assert done.returncode == 0, done.stderr
    assert "champion is now v1 (was v2); pushed: not pushed" in done.stdout
    client = tracking.client()
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["mlsd.rollback.reason"] == "v2 drifts" and tags["mlsd.rollback.previous_champion"] == "2"
    instance = dg.DagsterInstance.from_config(str(mlsd_home / "dagster"))
    event = instance.get_latest_materialization_event(dg.AssetKey("model_promotion"))
    assert event.asset_materialization.metadata["decision"].value == "rolled back"

    missing = cli("--to-version", "9")
    assert missing.returncode == 1
    assert "rollback failed: rollback_job" in missing.stderr and "has no version '9'" in missing.stderr
    again = cli("--to-version", "1")
    assert again.returncode == 1 and "already holds `champion`" in again.stderr
