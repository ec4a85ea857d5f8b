"""Where Optuna studies live: SQLite under the data root (embedded), a PostgreSQL URL for scale-out."""

import dagster as dg

from mlsd_assets.settings import TUNING_STORAGE_ENV, Settings


class TuningStorage(dg.ConfigurableResource):
    """An SQLAlchemy URL for Optuna's RDB storage. With PostgreSQL, several runs (or hosts) can work on one
    study at once: each asks the storage for its next trial."""

    url: str

    def redacted(self) -> str:
        """The URL without its password, for logs, metadata and MLflow."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


def tuning_storage(settings: Settings) -> TuningStorage:
    """The URL may carry a password: bound through dg.EnvVar when set, else the embedded SQLite file."""
    if settings.tuning_storage_configured:
        return TuningStorage(url=dg.EnvVar(TUNING_STORAGE_ENV))
    return TuningStorage(url=f"sqlite:///{settings.data_dir / 'tuning' / 'optuna.db'}")
