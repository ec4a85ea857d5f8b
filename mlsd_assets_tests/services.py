"""Host services for tests (dagster-webserver, registry, Prometheus): start, wait for HTTP, always stop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mlsd_assets.core.serving.runtime import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
REGISTRY_BINARY = Path("/usr/bin/docker-registry")


def wait_for_http(url: str, timeout_s: float, proc: subprocess.Popen, log_path: Path) -> None:
    """Until `url` answers 200; fails at once with the log tail when `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not answering after {timeout_s:.0f} s ({last}):\n{log_path.read_text()[-3000:]}")


@contextmanager
def running_service(
    cmd: list[str], log_path: Path, ready_url: str, timeout_s: float = 60, **popen: object
) -> Iterator[subprocess.Popen]:
    """`cmd` (output to `log_path`), yielded once `ready_url` answers; stopped and reaped after, also on failure."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    try:
        wait_for_http(ready_url, timeout_s, proc, log_path)
        yield proc
    finally:
        stop_process(proc, timeout_s=30)


@contextmanager
def dagster_webserver(home: Path) -> Iterator[str]:
    """`dagster-webserver` on the repo's workspace.yaml and dagster.yaml, DAGSTER_HOME under `home`; yields its URL."""
    dagster_home = home / "dagster-home"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    webserver = Path(sys.executable).parent / "dagster-webserver"
    cmd = [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MLSD_HOME": str(home / "mlsd-home")}
    with running_service(cmd, home / "webserver.log", f"{url}/server_info", timeout_s=180, cwd=REPO, env=env):
        yield url


@contextmanager
def docker_registry(root: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution) with storage under `root`; yields its host:port."""
    port = free_port()
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    address = f"127.0.0.1:{port}"
    try:
        with running_service(
            [str(REGISTRY_BINARY), "serve", str(config)], root / "registry.log", f"http://{address}/v2/"
        ):
            yield address
    finally:
        shutil.rmtree(root / "storage", ignore_errors=True)


@contextmanager
def prometheus(root: Path, targets: list[str], job: str) -> Iterator[httpx.Client]:
    """Debian's Prometheus scraping `targets` every second as `job`; yields a client on its HTTP API."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (apt-get install prometheus)"
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: {job}, static_configs: [{{targets: {targets!r}}}]}}]\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    with running_service(cmd, root / "prometheus.log", f"{url}/-/ready"), httpx.Client(base_url=url) as client:
        yield client
