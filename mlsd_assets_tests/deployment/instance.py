"""Dagster instances on the deployment's PostgreSQL storage, configured exactly like docker/dagster.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"


def code_server_args(port: int) -> list[str]:
    """Arguments to `dagster` that serve the code location on 127.0.0.1:`port`, as the compose service does."""
    return ["code-server", "start", "-h", "127.0.0.1", "-p", str(port), "-m", "mlsd_assets.definitions"]


def write_grpc_workspace(path: Path, port: int) -> Path:
    """A workspace.yaml that loads the code location from the code server on 127.0.0.1:`port`."""
    path.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: mlsd_assets\n"
    )
    return path


def deployment_instance_config() -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())


def write_dagster_home(home: Path, **overrides: Any) -> Path:
    """A DAGSTER_HOME with docker/dagster.yaml, top-level sections replaced (or removed when None)."""
    config = deployment_instance_config()
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home
