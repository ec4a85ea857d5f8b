"""A real MLflow store (SQLite + file artifacts) under tmp, and registered versions to evaluate and gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsd_assets.resources import MLflowTracking
from mlsd_assets_tests.evaluation.stubs import MODEL_NAME


@pytest.fixture
def mlflow_tracking(mlsd_home: Path) -> MLflowTracking:
    return MLflowTracking(
        tracking_uri=f"sqlite:///{mlsd_home / 'mlflow' / 'mlflow.db'}",
        artifact_root=(mlsd_home / "mlflow" / "artifacts").as_uri(),
        registered_model_name=MODEL_NAME,
    )


# The real engine and the image wheelhouse, shared with the serving tests.
from mlsd_assets_tests.core.serving.conftest import docker_engine, wheelhouse_cache  # noqa: E402, F401
