"""MLflow as a typed resource: the experiment record of every model (replaces a hand-written model DB)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import dagster as dg

if TYPE_CHECKING:
    import mlflow
    from mlflow import MlflowClient

DAGSTER_RUN_TAG = "dagster.run_id"


class MLflowTracking(dg.ConfigurableResource):
    """Embedded by default (SQLite store + file artifacts under MLSD_HOME); any tracking server by URI.

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

    def start_run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """A new run, or `resume_run_id` when it still exists (a retried materialization continues it)."""
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
    def active_run(self, run_id: str, end_status: str | None = None) -> Iterator[mlflow.ActiveRun]:
        """Log into an existing run with the fluent API (`mlflow.log_*`, `mlflow.<flavor>.log_model`).

        On leaving, the run gets `end_status`, or keeps the status it had before (so logging an evaluation
        into a finished training run leaves it FINISHED); an exception marks it FAILED.
        """
        import mlflow

        previous = self.client().get_run(run_id).info.status
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        run = mlflow.start_run(run_id=run_id)
        try:
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status=end_status or previous)

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
