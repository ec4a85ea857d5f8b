"""Run the server (container or local process) for as long as a block needs it, and always stop it after."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import docker

Runtime = Literal["container", "local_process"]


class ServerStartError(RuntimeError):
    """The server did not come up healthy; the message carries its log tail."""


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """Ask politely (SIGTERM), then insist (SIGKILL), so no server outlives its caller."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    runtime: Runtime
    name: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout_s: float, exited: Callable[[], str | None]) -> dict:
    """Poll /v2/health/ready until 200; `exited` returns the server's logs if it died, so we stop waiting at once."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        dead = exited()
        if dead is not None:
            raise ServerStartError(f"server at {base_url} exited before becoming healthy:\n{dead}")
        try:
            with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=2) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ServerStartError(f"server at {base_url} not healthy after {timeout_s:.0f}s (last: {last})")


@contextmanager
def running_container(
    client: docker.DockerClient, image: str, name: str, log: logging.Logger, health_timeout_s: float = 60.0
) -> Iterator[RunningServer]:
    """Host network (engines here have no bridge); removed in `finally`, so also on failure or interrupt."""
    import docker.errors

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"

    def exited() -> str | None:
        container = client.containers.get(name)
        if container.status in ("exited", "dead"):
            return container.logs(tail=40).decode(errors="replace")
        return None

    try:
        container = client.containers.create(
            image,
            name=name,
            network_mode="host",
            detach=True,
            environment={"MLSD_HOST": "127.0.0.1", "MLSD_PORT": str(port)},
            labels={"mlsd.role": "evaluation"},
        )
        container.start()
        log.info("started container %s (%s) from %s on %s", name, container.short_id, image, base_url)
        wait_healthy(base_url, health_timeout_s, exited)
        yield RunningServer(base_url, "container", name)
    finally:
        try:
            client.containers.get(name).remove(force=True)
            log.info("removed container %s", name)
        except docker.errors.NotFound:
            pass


@contextmanager
def running_local_process(
    model_path: Path, log_path: Path, log: logging.Logger, health_timeout_s: float = 60.0
) -> Iterator[RunningServer]:
    """The same server module under this Python, for machines without a Docker engine."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlsd_assets.core.serving.server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def exited() -> str | None:
        return None if proc.poll() is None else log_path.read_text(errors="replace")[-4000:]

    try:
        log.info("started local server process %d on %s", proc.pid, base_url)
        wait_healthy(base_url, health_timeout_s, exited)
        yield RunningServer(base_url, "local_process", f"pid {proc.pid}")
    finally:
        stop_process(proc, timeout_s=10)
        log.info("stopped local server process %d", proc.pid)
