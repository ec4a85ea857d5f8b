"""A real MLflow store (SQLite + file artifacts) under tmp, and registered versions to evaluate and gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsd_assets.training.resources import MLflowTracking

MODEL_NAME = "cifar10-classifier"


@pytest.fixture
def mlflow_tracking(mlsd_home: Path) -> MLflowTracking:
    return MLflowTracking(
        tracking_uri=f"sqlite:///{mlsd_home / 'mlflow' / 'mlflow.db'}",
        artifact_root=(mlsd_home / "mlflow" / "artifacts").as_uri(),
        registered_model_name=MODEL_NAME,
    )


def register_version(tracking: MLflowTracking, name: str = MODEL_NAME) -> tuple[str, str]:
    """A finished run and a registry version pointing at it: what training leaves behind."""
    client = tracking.client()
    run_id = tracking.start_run("test-training", {"source": "mlsd-tests"})
    client.set_terminated(run_id)
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return run_id, str(version.version)


# The real engine and the image wheelhouse, shared with the serving tests.
from mlsd_assets_tests.core.serving.conftest import docker_engine, wheelhouse_cache  # noqa: E402, F401
