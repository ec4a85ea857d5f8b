"""Shared fixtures: every test runs against its own project home under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def mlsd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every project location (data, Dagster, MLflow) at a fresh temporary home."""
    home = tmp_path / "mlsd-home"
    monkeypatch.setenv("MLSD_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for var in ("MLSD_DATA_DIR", "MLFLOW_TRACKING_URI", "MLSD_MLFLOW_ARTIFACT_ROOT", "MLSD_CIFAR10_SOURCE"):
        monkeypatch.delenv(var, raising=False)
    (home / "dagster").mkdir(parents=True)
    return home
