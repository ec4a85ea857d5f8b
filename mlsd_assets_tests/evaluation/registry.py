"""A reference registry (services.docker_registry) read over its HTTP API: catalog, tags, manifest digests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

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
