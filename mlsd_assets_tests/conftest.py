"""Shared fixtures: every test runs against its own project home under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsd_assets_tests.deployment.browser import Browser, chromium_unavailable_reason
from mlsd_assets_tests.services import dagster_webserver


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


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    """`dagster-webserver` on the repo's workspace.yaml and dagster.yaml, DAGSTER_HOME at tmp_path/dagster-home."""
    with dagster_webserver(tmp_path) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless system Chromium through Playwright; skips where Debian's chromium is not installed."""
    reason = chromium_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Browser(tmp_path / "chromium-profile") as opened:
        yield opened
