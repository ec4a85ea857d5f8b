"""Dagster on PostgreSQL storage (docker/dagster.yaml, env vars only): runs, events, assets land there."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from mlsd_assets_tests.cifar_files import write_cifar_python_dir
from mlsd_assets_tests.data.materialize import data_resources, materialize_partitions, materialize_split
from mlsd_assets_tests.deployment.instance import write_dagster_home
from mlsd_assets_tests.deployment.postgres import PostgresServer

pytestmark = pytest.mark.postgres

PARTITIONS = ["data_batch_1", "test_batch"]
TINY_SPLIT = {
    "ops": {
        "cifar10_split": {"config": {"validation_fraction": 0.3}},
        "cifar10_split_check_cifar10_split_class_balance": {"config": {"tolerance": 1.0}},
    }
}


def test_materializations_recorded_in_postgres(
    postgres_server: PostgresServer, mlsd_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_server.create_database("dagster")
    for name, value in postgres_server.dagster_env(database).items():
        monkeypatch.setenv(name, value)
    # Storage, queue and limits as deployed; runs execute in this process instead of in containers.
    home = write_dagster_home(
        mlsd_home / "dagster-pg", run_launcher=None, local_artifact_storage=None, compute_logs=None
    )
    resources = data_resources(mlsd_home, str(write_cifar_python_dir(mlsd_home / "src", per_batch=60)))

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        results = materialize_partitions(instance, resources, PARTITIONS)
        split = materialize_split(instance, resources, TINY_SPLIT)
        assert all(r.success for r in results) and split.success
        run_ids = [r.run_id for r in [*results, split]]
        checks = {e.check_name: e.passed for e in split.get_asset_check_evaluations()}
        assert len(checks) >= 6, checks

    with postgres_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        assert dict(cur.fetchall()) == {run_id: "SUCCESS" for run_id in run_ids}
        cur.execute("SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        materialized = sorted((json.loads(key)[0], partition) for key, partition in cur.fetchall())
        assert materialized == [("cifar10_split", None), *(("raw_cifar10", p) for p in sorted(PARTITIONS))]
        cur.execute("SELECT asset_key FROM asset_keys WHERE last_materialization IS NOT NULL")
        assert {json.loads(key)[0] for (key,) in cur.fetchall()} == {"raw_cifar10", "cifar10_split"}
        cur.execute("SELECT check_name, execution_status FROM asset_check_executions")
        assert dict(cur.fetchall()) == {n: "SUCCEEDED" if ok else "FAILED" for n, ok in checks.items()}
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'cifar10_batches'")
        assert set(PARTITIONS) <= {p for (p,) in cur.fetchall()}
