"""Resources shared by every domain, and the retry policy of steps that talk to them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import dagster as dg

from mlsd_assets.core.data.batches import RawBatch
from mlsd_assets.core.data.sources import CIFAR10_MD5, CIFAR10_URL, read_official_batch
from mlsd_assets.settings import ALERT_WEBHOOK_ENV, REGISTRY_PASSWORD_ENV, REGISTRY_USERNAME_ENV, Settings

if TYPE_CHECKING:
    import mlflow
    from mlflow import MlflowClient

    import docker

# Steps that talk to an engine, a registry or a tracking server: their failures are often transient.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


class DataPaths(dg.ConfigurableResource):
    """The project data root and the folders under it that assets and sensors agree on."""

    root: str
    landing: str = ""  # overrides `<root>/landing` (MLSD_LANDING_DIR), e.g. a shared inbox elsewhere

    @property
    def root_dir(self) -> Path:
        return Path(self.root)

    @property
    def downloads_dir(self) -> Path:
        return self.root_dir / "downloads"

    @property
    def landing_dir(self) -> Path:
        """Where new data drops are put by people or upstream systems."""
        return Path(self.landing) if self.landing else self.root_dir / "landing"

    @property
    def drops_dir(self) -> Path:
        """Accepted drops, one entry named after its partition key; `raw_cifar10` reads drop partitions here."""
        return self.root_dir / "drops"

    @property
    def quarantine_dir(self) -> Path:
        return self.root_dir / "quarantine"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root_dir / "checkpoints"

    @property
    def builds_dir(self) -> Path:
        """Docker build contexts and wheelhouses."""
        return self.root_dir / "builds"

    @property
    def reports_dir(self) -> Path:
        return self.root_dir / "reports"


class Cifar10Source(dg.ConfigurableResource):
    """Where the official batches come from: "download" (canonical URL, md5-checked) or a local path
    (see mlsd_assets.core.data.sources). `url`/`md5` exist for mirrors and for tests (a file:// archive)."""

    location: str = "download"
    url: str = CIFAR10_URL
    md5: str = CIFAR10_MD5

    def read(self, partition: str, downloads_dir: Path, log: logging.Logger) -> RawBatch:
        return read_official_batch(self.location, partition, downloads_dir, log, url=self.url, md5=self.md5)


class EngineUnavailableError(RuntimeError):
    """No Docker engine answers: said plainly instead of pretending to build or run anything."""


class DockerEngine(dg.ConfigurableResource):
    """The engine images are built on and servers run on: `base_url`, or DOCKER_HOST (default socket).

    `registry` is where `model_promotion` pushes a promoted image (e.g. a private Harbor project,
    `harbor.example.com/mlsd`); the credentials are secrets and only ever come from dg.EnvVar.
    """

    base_url: str = ""
    timeout_s: int = 600
    registry: str = ""
    registry_username: str = ""
    registry_password: str = ""

    def client(self) -> docker.DockerClient:
        import docker  # docker.errors comes with it

        where = self.base_url or docker.utils.kwargs_from_env().get("base_url") or "unix:///var/run/docker.sock"
        try:
            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, version="auto", timeout=self.timeout_s)
            else:
                client = docker.from_env(timeout=self.timeout_s)
            client.ping()
        except docker.errors.DockerException as exc:
            raise EngineUnavailableError(
                f"no Docker engine answers at {where} (DOCKER_HOST or the DockerEngine base_url): {exc}. "
                "Start one with `sudo docker/engine/prepare.sh` (see docker/engine/README.md) or point "
                "DOCKER_HOST at a running engine."
            ) from exc
        return client

    def auth_config(self) -> dict[str, str] | None:
        if not self.registry_username:
            return None
        return {"username": self.registry_username, "password": self.registry_password}


class AlertWebhook(dg.ConfigurableResource):
    """Where failure alerts go: POSTs a short JSON alert; an empty `url` means alerts are only logged."""

    url: str = ""
    timeout_s: float = 10.0

    def post(self, payload: dict[str, Any]) -> int:
        import httpx

        response = httpx.post(self.url, json=payload, headers={"User-Agent": "mlsd-alerts"}, timeout=self.timeout_s)
        # Non-2xx raises: the sensor tick fails visibly instead of losing the alert.
        response.raise_for_status()
        return response.status_code


def docker_engine(settings: Settings) -> DockerEngine:
    """Bind registry secrets only when set: dg.EnvVar on an unset variable fails every run at config time."""
    if not settings.registry_credentials_configured:
        return DockerEngine(registry=settings.image_registry)
    return DockerEngine(
        registry=settings.image_registry,
        registry_username=dg.EnvVar(REGISTRY_USERNAME_ENV),
        registry_password=dg.EnvVar(REGISTRY_PASSWORD_ENV),
    )


def alert_webhook(settings: Settings) -> AlertWebhook:
    """The webhook URL is a secret: bound through dg.EnvVar, and only when set (as for the registry)."""
    if not settings.alert_webhook_configured:
        return AlertWebhook()
    return AlertWebhook(url=dg.EnvVar(ALERT_WEBHOOK_ENV))


DAGSTER_RUN_TAG = "dagster.run_id"


class MLflowTracking(dg.ConfigurableResource):
    """MLflow, the experiment record of every model: embedded by default (SQLite store + file artifacts under
    MLSD_HOME), any tracking server by URI. `run()` owns a run's lifecycle.

    Experiments are created with `artifact_root/<experiment>` as artifact location, so nothing lands in
    ./mlruns. `ui_url` is where people open the MLflow UI (`mlflow ui --backend-store-uri <uri>`) when
    the tracking URI itself is not an HTTP server; it is only used to build links in asset metadata.
    """

    tracking_uri: str
    artifact_root: str
    experiment_name: str = "mlsd-cifar10"
    registered_model_name: str = "mlsd-cifar10-classifier"
    ui_url: str = "http://127.0.0.1:5000"

    def _prepare(self) -> None:
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme == "sqlite":
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
        if urlparse(self.artifact_root).scheme == "file":
            Path(urlparse(self.artifact_root).path).mkdir(parents=True, exist_ok=True)

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        self._prepare()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        """The project's experiment, created on first use with its artifact location under `artifact_root`."""
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{self.experiment_name}"
        return client.create_experiment(self.experiment_name, artifact_location=location)

    @contextmanager
    def run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> Iterator[str]:
        """A run (its id) for the duration of the block: `resume_run_id` continued when it still exists (a
        retried materialization), else a new one. On leaving it is FINISHED; an error marks it FAILED, an
        interruption (Ctrl-C, a terminated Dagster run, SystemExit) KILLED, and the exception propagates."""
        run_id = self.start_run(run_name, tags, resume_run_id)
        try:
            yield run_id
        except Exception:
            self.client().set_terminated(run_id, "FAILED")
            raise
        except BaseException:
            self.client().set_terminated(run_id, "KILLED")
            raise
        self.client().set_terminated(run_id, "FINISHED")

    def start_run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """A new RUNNING run, or `resume_run_id` set RUNNING again when it still exists; prefer `run()`,
        which also ends it."""
        client = self.client()
        if resume_run_id:
            run = _existing_run(client, resume_run_id)
            if run is not None:
                client.update_run(resume_run_id, status="RUNNING")
                for key, value in tags.items():
                    client.set_tag(resume_run_id, key, value)
                return resume_run_id
        return client.create_run(self.experiment_id(), run_name=run_name, tags=tags).info.run_id

    @contextmanager
    def active_run(self, run_id: str) -> Iterator[mlflow.ActiveRun]:
        """Log into an existing run with the fluent API (`mlflow.log_*`, `mlflow.<flavor>.log_model`); the
        run keeps its status (`run()` decides how it ends)."""
        import mlflow

        previous = self.client().get_run(run_id).info.status
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.start_run(run_id=run_id)
        try:
            yield mlflow.active_run()
        finally:
            mlflow.end_run(status=previous)

    def run_url(self, run_id: str) -> str:
        base = self.tracking_uri if urlparse(self.tracking_uri).scheme in ("http", "https") else self.ui_url
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"


def _existing_run(client: MlflowClient, run_id: str) -> object | None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run
