"""Where everything lives. The only module that reads the environment, so deployments differ by env vars alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Read by Dagster itself (dg.EnvVar) so the secret never sits in config; here only whether it is set.
ALERT_WEBHOOK_ENV = "MLSD_ALERT_WEBHOOK_URL"
REGISTRY_USERNAME_ENV = "MLSD_REGISTRY_USERNAME"
REGISTRY_PASSWORD_ENV = "MLSD_REGISTRY_PASSWORD"
TUNING_STORAGE_ENV = "MLSD_TUNING_STORAGE_URL"  # Optuna RDB URL, e.g. postgresql+psycopg://user:pw@host/db

# Minute and hour pinned: "* 0 * * *" would fire sixty times between 00:00 and 00:59.
DEFAULT_TRAINING_CRON = "0 0 * * *"
DEFAULT_SENSOR_INTERVAL_S = 30


def _optional_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _path(var: str, default: Path) -> Path:
    return _optional_path(var) or default


@dataclass(frozen=True)
class Settings:
    """Resolved locations and endpoints; embedded (single machine) defaults when nothing is set."""

    data_dir: Path
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    cifar10_source: str
    # automation (mlsd_assets/automation): where drops land (None: DataPaths' default), when training runs,
    # whether alerts are posted
    landing_dir: Path | None
    training_cron: str
    training_timezone: str
    force_training: bool
    sensor_interval_s: int
    alert_webhook_configured: bool
    # serving (mlsd_assets/serving): where server images are pushed, whether registry credentials are set
    image_registry: str
    registry_credentials_configured: bool
    # tuning (mlsd_assets/tuning): whether studies go to an RDB URL (else SQLite under data_dir/tuning)
    tuning_storage_configured: bool

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def load_settings() -> Settings:
    home = _path("MLSD_HOME", Path.cwd() / ".mlsd")
    data_dir = _path("MLSD_DATA_DIR", home / "data")
    mlflow_dir = home / "mlflow"
    return Settings(
        data_dir=data_dir,
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifact_root=os.environ.get("MLSD_MLFLOW_ARTIFACT_ROOT") or (mlflow_dir / "artifacts").as_uri(),
        cifar10_source=os.environ.get("MLSD_CIFAR10_SOURCE", "download"),
        landing_dir=_optional_path("MLSD_LANDING_DIR"),
        training_cron=os.environ.get("MLSD_TRAINING_CRON") or DEFAULT_TRAINING_CRON,
        training_timezone=os.environ.get("MLSD_TRAINING_TIMEZONE") or "UTC",
        force_training=os.environ.get("MLSD_FORCE_TRAINING", "").strip().lower() in ("1", "true", "yes"),
        sensor_interval_s=int(os.environ.get("MLSD_SENSOR_INTERVAL_S") or DEFAULT_SENSOR_INTERVAL_S),
        alert_webhook_configured=bool(os.environ.get(ALERT_WEBHOOK_ENV, "").strip()),
        image_registry=os.environ.get("MLSD_IMAGE_REGISTRY", "").strip(),
        registry_credentials_configured=bool(os.environ.get(REGISTRY_USERNAME_ENV, "").strip()),
        tuning_storage_configured=bool(os.environ.get(TUNING_STORAGE_ENV, "").strip()),
    )


def environment() -> dict[str, str]:
    """The whole environment, for entry points that re-exec themselves with it changed (the allocator)."""
    return dict(os.environ)
