"""The code location: every asset, check, job, schedule, sensor and resource of mlsd."""

import dagster as dg

from mlsd_assets.automation.jobs import JOBS
from mlsd_assets.automation.schedules import build_training_schedule
from mlsd_assets.automation.sensors import build_sensors
from mlsd_assets.data import assets as data_assets
from mlsd_assets.data import checks as data_checks
from mlsd_assets.evaluation import assets as evaluation_assets
from mlsd_assets.evaluation import checks as evaluation_checks
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import Cifar10Source, DataPaths, MLflowTracking, alert_webhook, docker_engine
from mlsd_assets.serving import assets as serving_assets
from mlsd_assets.settings import load_settings
from mlsd_assets.training import assets as training_assets
from mlsd_assets.training import checks as training_checks
from mlsd_assets.tuning import assets as tuning_assets
from mlsd_assets.tuning.resources import tuning_storage

settings = load_settings()
_asset_modules = [data_assets, training_assets, serving_assets, evaluation_assets, tuning_assets]
_check_modules = [data_checks, training_checks, evaluation_checks]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_asset_modules),
    asset_checks=dg.load_asset_checks_from_modules(_check_modules),
    jobs=JOBS,
    schedules=[build_training_schedule(settings.training_cron, settings.training_timezone, settings.force_training)],
    sensors=build_sensors(settings.sensor_interval_s),
    resources={
        "io_manager": ArtifactIOManager(root=str(settings.artifacts_dir)),
        "paths": DataPaths(root=str(settings.data_dir), landing=str(settings.landing_dir or "")),
        "mlflow": MLflowTracking(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        ),
        "alerts": alert_webhook(settings),
        "cifar10_source": Cifar10Source(location=settings.cifar10_source),
        "docker": docker_engine(settings),
        "tuning_storage": tuning_storage(settings),
    },
)
