"""MLflow on a PostgreSQL backend store, chosen by MLFLOW_TRACKING_URI alone: the run lands in Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsd_assets.settings import load_settings
from mlsd_assets_tests.deployment.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def test_mlflow_run_recorded_in_postgres(
    postgres_server: PostgresServer, mlsd_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    database = postgres_server.create_database("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_server.url(database))
    monkeypatch.setenv("MLSD_MLFLOW_ARTIFACT_ROOT", (mlsd_home / "mlflow-artifacts").as_uri())
    settings = load_settings()
    assert settings.mlflow_tracking_uri.startswith("postgresql://")

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment_id = client.create_experiment("mlsd-deployment-test", artifact_location=settings.mlflow_artifact_root)
    run = client.create_run(experiment_id, tags={"mlsd.asset": "cifar10_model"})
    client.log_param(run.info.run_id, "epochs", "2")
    for step, accuracy in enumerate((0.31, 0.58)):
        client.log_metric(run.info.run_id, "val_accuracy", accuracy, step=step)
    client.set_terminated(run.info.run_id, status="FINISHED")

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.metrics["val_accuracy"] == pytest.approx(0.58)
    assert fetched.info.status == "FINISHED"

    with postgres_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, experiment_id FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED", int(experiment_id))
        cur.execute(
            "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy' ORDER BY step",
            (run.info.run_id,),
        )
        assert cur.fetchall() == [(0, pytest.approx(0.31)), (1, pytest.approx(0.58))]
        cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'epochs'", (run.info.run_id,))
        assert cur.fetchone() == ("2",)
