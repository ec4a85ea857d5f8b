"""A real reference registry (Debian's docker-registry, distribution) on a free loopback port, read over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlsd_assets.core.serving.runtime import free_port, stop_process

REGISTRY_BINARY = "/usr/bin/docker-registry"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@dataclass(frozen=True)
class Registry:
    address: str  # host:port, what MLSD_IMAGE_REGISTRY holds

    def _get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://{self.address}{path}", timeout=10)

    def catalog(self) -> list[str]:
        return self._get("/v2/_catalog").raise_for_status().json()["repositories"] or []

    def tags(self, repository: str) -> list[str]:
        r = self._get(f"/v2/{repository}/tags/list")
        return [] if r.status_code == 404 else sorted(r.raise_for_status().json()["tags"] or [])

    def digest(self, repository: str, tag: str) -> str | None:
        r = httpx.head(
            f"http://{self.address}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        return None if r.status_code == 404 else r.raise_for_status().headers["Docker-Content-Digest"]


@contextmanager
def running_registry(root: Path) -> Iterator[Registry]:
    """Storage under `root`; stopped (and its process reaped) when the block ends, also on failure."""
    port = free_port()
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(root / 'registry.log').read_text()[-2000:]}")
            try:
                if registry._get("/v2/").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        yield registry
    finally:
        stop_process(proc, timeout_s=10)
        log.close()
        shutil.rmtree(root / "storage", ignore_errors=True)


def registry_available() -> bool:
    return Path(REGISTRY_BINARY).exists()
