"""DockerRunLauncher for real: ingestion_job runs in a container of the user-code image, on Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlsd_assets.automation.partitions import add_official_batches
from mlsd_assets.automation.run_launcher import DOCKER_ENGINE_TAG
from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.cifar_files import write_cifar_python_tarball
from mlsd_assets_tests.deployment.instance import code_server_args, deployment_instance_config, write_dagster_home
from mlsd_assets_tests.deployment.postgres import PostgresServer

# the session fixture builds the light image first when its inputs changed (about 11 min on a busy 2-core machine)
pytestmark = [pytest.mark.postgres, pytest.mark.docker, pytest.mark.timeout(1800)]

PARTITION = "data_batch_1"
DAGSTER_BIN = Path(sys.executable).parent / "dagster"


@pytest.fixture
def deployment_env(postgres_server: PostgresServer, tmp_path: Path) -> dict[str, str]:
    """Every variable docker/dagster.yaml forwards to run containers: this test's Postgres and files."""
    home = tmp_path / "mlsd-home"
    source = write_cifar_python_tarball(home / "sources", per_batch=40)
    env = {
        **postgres_server.dagster_env(postgres_server.create_database("launcher")),
        "MLSD_HOME": str(home),
        "MLSD_DATA_DIR": str(home / "data"),
        "MLSD_CIFAR10_SOURCE": str(source),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLSD_MLFLOW_ARTIFACT_ROOT": (home / "mlflow-artifacts").as_uri(),
    }
    forwarded = deployment_instance_config()["run_launcher"]["config"]["env_vars"]
    assert set(forwarded) == set(env) - {"DAGSTER_CURRENT_IMAGE"}
    return env


@pytest.fixture
def code_server(user_code_image: str, deployment_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """The user-code image serving the location over gRPC on the host network, like the compose service."""
    port = free_port()
    name = f"mlsd-test-code-server-{uuid.uuid4().hex[:8]}"
    env_args = [
        a for k, v in {**deployment_env, "DAGSTER_CURRENT_IMAGE": user_code_image}.items() for a in ("-e", f"{k}={v}")
    ]
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-v",
            f"{tmp_path}:{tmp_path}",
            *env_args,
            user_code_image,
            "dagster",
            *code_server_args(port),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while (
            subprocess.run(
                [str(DAGSTER_BIN), "api", "grpc-health-check", "-p", str(port)], capture_output=True
            ).returncode
            != 0
        ):
            state = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
            )
            if state.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
                pytest.fail(f"code server container {name} did not serve on {port}:\n{logs.stdout}{logs.stderr}")
            time.sleep(2)
        yield port
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_ingestion_run_launched_in_a_container(
    user_code_image: str,
    code_server: int,
    deployment_env: dict[str, str],
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launcher = deployment_instance_config()["run_launcher"]
    # The deployed launcher with this machine's networking: host network (no bridge), test folder as volume.
    launcher["config"] |= {"network": "host", "container_kwargs": {"volumes": [f"{tmp_path}:{tmp_path}"]}}
    home = write_dagster_home(
        tmp_path / "dagster-home",
        run_launcher=launcher,
        # launch at once instead of queueing for a daemon (the queue is the daemon's job, not under test here)
        run_coordinator={"module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"},
        local_artifact_storage={
            "module": "dagster.core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": str(tmp_path / "dagster-storage")},
        },
        compute_logs=None,
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "grpc_server": {
                            "host": "127.0.0.1",
                            "port": code_server,
                            "location_name": "mlsd_assets",
                        }
                    }
                ]
            }
        )
    )
    env = {**os.environ, **deployment_env, "DAGSTER_HOME": str(home)}
    run_id = str(uuid.uuid4())
    started = time.monotonic()

    for name, value in deployment_env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        add_official_batches(instance)
        subprocess.run(
            [
                str(DAGSTER_BIN),
                "job",
                "launch",
                "-w",
                str(workspace),
                "-j",
                "ingestion_job",
                "--run-id",
                run_id,
                "--tags",
                json.dumps({"dagster/partition": PARTITION}),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        )
        deadline = time.monotonic() + 300
        while (run := instance.get_run_by_id(run_id)) is None or not run.is_finished:
            assert time.monotonic() < deadline, f"run {run_id} still {run and run.status} after 300 s"
            time.sleep(2)
        messages = [entry.message for entry in instance.all_logs(run_id)]
    duration = time.monotonic() - started
    container_id = run.tags.get("docker/container_id")
    try:
        assert run.status == dg.DagsterRunStatus.SUCCESS, _container_logs(container_id)
        assert run.tags["dagster/image"] == user_code_image
        assert container_id, "the launcher recorded no container"
        inspect = json.loads(
            subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, check=True).stdout
        )[0]
        assert inspect["Config"]["Image"] == user_code_image and inspect["State"]["ExitCode"] == 0
        assert inspect["HostConfig"]["NetworkMode"] == "host"
        # DockerEngineRunLauncher names the engine that got the container, in a tag and an engine event
        engine = json.loads(
            subprocess.run(
                ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, check=True
            ).stdout
        )
        assert run.tags[DOCKER_ENGINE_TAG] == f"{engine['Name']}/{engine['ID']}"
        assert (
            f"Run container {container_id[:12]} is on Docker engine {engine['Name']} (ID {engine['ID']},"
            in "\n".join(messages)
        )
    finally:
        if container_id:
            subprocess.run(["docker", "rm", "-f", container_id], capture_output=True)

    with postgres_server.connect(deployment_env["DAGSTER_POSTGRES_DB"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT dagster_event_type, partition FROM event_logs WHERE run_id = %s", (run_id,))
        events = cur.fetchall()
    kinds = {kind for kind, _ in events}
    expected = [dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.RUN_SUCCESS]
    assert {e.value for e in expected} <= kinds, kinds
    assert (dg.DagsterEventType.ASSET_MATERIALIZATION.value, PARTITION) in events
    artifact = Path(deployment_env["MLSD_DATA_DIR"]) / "artifacts" / "raw_cifar10" / f"{PARTITION}.npz"
    assert artifact.is_file(), "the run container wrote no artifact on the shared volume"
    print(f"DockerRunLauncher run {run_id}: {run.status.value} in {duration:.1f} s (launch to finish)")


def _container_logs(container_id: str | None) -> str:
    if not container_id:
        return "no container was started"
    logs = subprocess.run(["docker", "logs", container_id], capture_output=True, text=True)
    return f"run container {container_id} logs:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
