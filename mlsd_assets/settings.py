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
    # automation (mlsd_assets/automation): where drops land, when training runs, whether alerts are posted
    landing_dir_override: Path | None = None
    training_cron: str = "0 0 * * *"
    training_timezone: str = "UTC"
    force_training: bool = False
    sensor_interval_s: int = 30
    alert_webhook_configured: bool = False
    # serving (mlsd_assets/serving): where server images are pushed, whether registry credentials are set
    image_registry: str = ""
    registry_credentials_configured: bool = False
    # tuning (mlsd_assets/tuning): whether studies go to an RDB URL (else SQLite under data_dir/tuning)
    tuning_storage_configured: bool = False

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def landing_dir(self) -> Path:
        return self.landing_dir_override or self.data_dir / "landing"


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
        landing_dir_override=_path("MLSD_LANDING_DIR", data_dir / "landing"),
        training_cron=os.environ.get("MLSD_TRAINING_CRON") or "0 0 * * *",
        training_timezone=os.environ.get("MLSD_TRAINING_TIMEZONE") or "UTC",
        force_training=os.environ.get("MLSD_FORCE_TRAINING", "").strip().lower() in ("1", "true", "yes"),
        sensor_interval_s=int(os.environ.get("MLSD_SENSOR_INTERVAL_S") or 30),
        alert_webhook_configured=bool(os.environ.get(ALERT_WEBHOOK_ENV, "").strip()),
        image_registry=os.environ.get("MLSD_IMAGE_REGISTRY", "").strip(),
        registry_credentials_configured=bool(os.environ.get(REGISTRY_USERNAME_ENV, "").strip()),
        tuning_storage_configured=bool(os.environ.get(TUNING_STORAGE_ENV, "").strip()),
    )
