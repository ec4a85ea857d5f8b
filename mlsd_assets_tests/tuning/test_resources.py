"""The study storage: SQLite under the data root by default, a secret PostgreSQL URL only through dg.EnvVar."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.settings import TUNING_STORAGE_ENV, load_settings
from mlsd_assets.tuning.resources import TuningStorage, tuning_storage


def test_default_is_sqlite_under_the_data_root(mlsd_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TUNING_STORAGE_ENV, raising=False)
    resource = tuning_storage(load_settings())
    assert resource.url == f"sqlite:///{mlsd_home / 'data' / 'tuning' / 'optuna.db'}"


def test_a_configured_url_is_bound_as_a_secret(mlsd_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://tuner:s3cret@db.internal:5432/optuna"
    monkeypatch.setenv(TUNING_STORAGE_ENV, url)
    resource = tuning_storage(load_settings())
    assert resource.url == dg.EnvVar(TUNING_STORAGE_ENV)  # resolved by Dagster at run time, never in config
    shown = TuningStorage(url=url).redacted()
    assert "s3cret" not in shown and shown.startswith("postgresql+psycopg://tuner:***@db.internal:5432/optuna")
