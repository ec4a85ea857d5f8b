"""End to end with real processes: a code server and dagster-daemon turn a landed drop into a partition."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.cifar_files import write_pickle_batch
from mlsd_assets_tests.deployment.instance import code_server_args, write_grpc_workspace
from mlsd_assets_tests.synthetic import make_images

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEADLINE_S = 240


class Processes:
    """Long-running children, each in its own process group so run workers they spawn die with them."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env, self.procs, self.logs = cwd, env, [], []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.cwd / f"{name}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            args,
            cwd=self.cwd,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: Dagster's processes shut down cleanly
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in self.logs if log.exists())


@pytest.fixture
def processes(mlsd_home: Path) -> Iterator[Processes]:
    shutil.copy(REPO / "dagster.yaml", mlsd_home / "dagster" / "dagster.yaml")
    env = {
        **os.environ,
        "MLSD_SENSOR_INTERVAL_S": "2",
        "MLSD_CIFAR10_SOURCE": str(mlsd_home / "no-official-data"),
    }
    procs = Processes(mlsd_home, env)
    try:
        yield procs
    finally:
        procs.stop()


def test_daemon_ingests_a_landed_drop(processes: Processes, mlsd_home: Path) -> None:
    port = free_port()
    workspace = write_grpc_workspace(mlsd_home / "workspace.yaml", port)
    dagster = str(BIN / "dagster")
    # Create the storage once before two processes can race to (alembic ended with two heads, issue 11).
    migrated = processes.run(dagster, "instance", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    processes.start("code-server", dagster, *code_server_args(port))
    # Only the drop sensor: the others would go on to split and train, which is not what this test is about.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        started = processes.run(dagster, "sensor", "start", "new_data_sensor", "-w", str(workspace))
        if started.returncode == 0:
            break
        assert time.monotonic() < deadline, f"code server never served: {started.stderr[-2000:]}\n{processes.tails()}"
        time.sleep(2)
    for name in ("retraining_sensor", "run_failure_alert_sensor"):
        assert processes.run(dagster, "sensor", "stop", name, "-w", str(workspace)).returncode == 0
    assert processes.run(dagster, "schedule", "stop", "training_schedule", "-w", str(workspace)).returncode == 0
    processes.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", str(workspace))

    landing = mlsd_home / "data" / "landing"
    images, labels = make_images(40, seed=21)
    write_pickle_batch(landing / "batch_e2e", images, labels, "batch_e2e")
    (landing / "batch_e2e.ready").touch()
    dropped = time.monotonic()

    instance = dg.DagsterInstance.get()
    records = []
    while not records:
        assert time.monotonic() < dropped + DEADLINE_S, f"drop not ingested in {DEADLINE_S}s\n{processes.tails()}"
        time.sleep(1)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_cifar10"), asset_partitions=["batch_e2e"]),
            limit=1,
        ).records
    seconds = time.monotonic() - dropped
    record = instance.get_run_record_by_id(records[0].run_id)
    while record.end_time is None:  # the materialization is stored just before the run's end
        assert time.monotonic() < dropped + DEADLINE_S, f"run never finished\n{processes.tails()}"
        time.sleep(0.5)
        record = instance.get_run_record_by_id(records[0].run_id)
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    created = record.create_timestamp.timestamp()
    print(
        f"daemon took {seconds:.1f} s from drop to materialized partition "
        f"(run queued by the sensor after {created - (time.time() - seconds):.1f} s, "
        f"started {record.start_time - created:.1f} s later, ran {record.end_time - record.start_time:.1f} s)"
    )

    run = record.dagster_run
    assert run.job_name == "ingestion_job" and run.tags["dagster/sensor_name"] == "new_data_sensor"
    assert run.tags["dagster/partition"] == "batch_e2e"
    assert (mlsd_home / "data" / "drops" / "batch_e2e").is_file() and not (landing / "batch_e2e").exists()
    assert (mlsd_home / "data" / "artifacts" / "raw_cifar10" / "batch_e2e.npz").exists()
