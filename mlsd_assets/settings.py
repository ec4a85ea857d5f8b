"""Where everything lives. The only module that reads the environment, so deployments differ by env vars alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class Settings:
    """Resolved locations and endpoints; embedded (single machine) defaults when nothing is set."""

    home: Path
    data_dir: Path
    dagster_home: Path
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    cifar10_source: str
    deployment: str

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"


def load_settings() -> Settings:
    home = _path("MLSD_HOME", Path.cwd() / ".mlsd")
    data_dir = _path("MLSD_DATA_DIR", home / "data")
    mlflow_dir = home / "mlflow"
    return Settings(
        home=home,
        data_dir=data_dir,
        dagster_home=_path("DAGSTER_HOME", home / "dagster"),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifact_root=os.environ.get("MLSD_MLFLOW_ARTIFACT_ROOT") or (mlflow_dir / "artifacts").as_uri(),
        cifar10_source=os.environ.get("MLSD_CIFAR10_SOURCE", "download"),
        deployment=os.environ.get("MLSD_DEPLOYMENT", "embedded"),
    )
