"""Champion/challenger gate against a real local MLflow registry: better moves the alias, worse does not."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.evaluation.assets import ACCURACY_TAG, P95_TAG
from mlsd_assets.evaluation.checks import CHAMPION_ALIAS, check_evaluation_report_promotion
from mlsd_assets.evaluation.report import EvaluationReport
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.training.resources import MLflowTracking
from mlsd_assets_tests.evaluation.conftest import register_version


def report(name: str, version: str, run_id: str, accuracy: float, p95: float) -> EvaluationReport:
    return EvaluationReport(
        model_name=name, model_version=version, mlflow_run_id=run_id, runtime="container",
        server="test", image_tag="t", image_id="sha256:x", image_size_bytes=1, test_images=100,
        accuracy=accuracy, per_class={}, confusion=[], latency_ms={"p50": p95 / 2, "p95": p95, "p99": p95},
        single_requests=100, batch_size=10, batched_images_per_s=1.0, errors=0, parity_images=100,
        parity_mismatches=0, server_metrics={}, created_at="now",
    )


def gate(tracking: MLflowTracking, tmp: Path, challenger: EvaluationReport) -> dg.AssetCheckEvaluation:
    """Runs the real check on `challenger`, stored by the real IO manager as `evaluation_report`."""

    @dg.asset(name="evaluation_report")
    def stored_report() -> EvaluationReport:
        return challenger

    result = dg.materialize(
        [stored_report, check_evaluation_report_promotion],
        resources={"io_manager": ArtifactIOManager(root=str(tmp / "artifacts")), "mlflow": tracking},
        raise_on_error=False,
    )
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1
    return evaluations[0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MLflowTracking:
    """One real store for the module (creating one costs seconds); each test uses its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    return MLflowTracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=(root / "a").as_uri())


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return "model-" + "".join(c if c.isalnum() else "-" for c in request.node.name)


def champion(tracking: MLflowTracking, name: str) -> str:
    return str(tracking.client().get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def crown(tracking: MLflowTracking, name: str, accuracy: float, p95: float) -> str:
    """A registered, evaluated version holding the alias (figures as the evaluation writes them)."""
    _, version = register_version(tracking, name)
    client = tracking.client()
    client.set_model_version_tag(name, version, ACCURACY_TAG, str(accuracy))
    client.set_model_version_tag(name, version, P95_TAG, str(p95))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version


def test_first_version_becomes_champion(registry, name, tmp_path):
    run_id, version = register_version(registry, name)
    evaluation = gate(registry, tmp_path, report(name, version, run_id, 0.8, 1.0))
    assert evaluation.passed
    assert "promoted as the first one" in evaluation.description
    assert champion(registry, name) == version


def test_better_challenger_takes_the_alias(registry, name, tmp_path):
    old = crown(registry, name, accuracy=0.80, p95=1.0)
    run_id, new = register_version(registry, name)
    # 0.4 pt worse is inside the 0.5 pt margin; 15% slower is inside the 20% margin.
    evaluation = gate(registry, tmp_path, report(name, new, run_id, 0.796, 1.15))
    assert evaluation.passed, evaluation.description
    assert champion(registry, name) == new != old
    assert evaluation.metadata["champion_version"].value == old


@pytest.mark.parametrize(
    ("accuracy", "p95", "reason"),
    [
        (0.794, 1.0, "accuracy 0.7940 is more than 0.5 pt below the champion's 0.8000"),
        (0.85, 1.21, "p95 latency 1.210 ms is more than 20% above the champion's 1.000 ms"),
    ],
    ids=["accuracy", "p95"],
)
def test_worse_challenger_leaves_the_alias(registry, name, tmp_path, accuracy, p95, reason):
    old = crown(registry, name, accuracy=0.80, p95=1.0)
    run_id, new = register_version(registry, name)
    evaluation = gate(registry, tmp_path, report(name, new, run_id, accuracy, p95))
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert reason in evaluation.description
    assert champion(registry, name) == old
