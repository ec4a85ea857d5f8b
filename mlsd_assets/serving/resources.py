"""The Docker engine images are built on and evaluation containers run on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from mlsd_assets.settings import REGISTRY_PASSWORD_ENV, REGISTRY_USERNAME_ENV, Settings

if TYPE_CHECKING:
    import docker


class EngineUnavailableError(RuntimeError):
    """No Docker engine answers: said plainly instead of pretending to build or run anything."""


class DockerEngine(dg.ConfigurableResource):
    """An engine at `base_url`, or wherever DOCKER_HOST points (default socket when unset).

    `registry` is where `inference_server_image` pushes when asked (e.g. a private Harbor project,
    `harbor.example.com/mlsd`); the credentials are secrets and only ever come from dg.EnvVar.
    """

    base_url: str = ""
    timeout_s: int = 600
    registry: str = ""
    registry_username: str = ""
    registry_password: str = ""

    def client(self) -> docker.DockerClient:
        import docker  # docker.errors comes with it

        where = self.base_url or docker.utils.kwargs_from_env().get("base_url") or "unix:///var/run/docker.sock"
        try:
            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, version="auto", timeout=self.timeout_s)
            else:
                client = docker.from_env(timeout=self.timeout_s)
            client.ping()
        except docker.errors.DockerException as exc:
            raise EngineUnavailableError(
                f"no Docker engine answers at {where} (DOCKER_HOST or the DockerEngine base_url): {exc}. "
                "Start one with `sudo docker/engine/prepare.sh` (see docker/engine/README.md) or point "
                "DOCKER_HOST at a running engine."
            ) from exc
        return client

    def auth_config(self) -> dict[str, str] | None:
        if not self.registry_username:
            return None
        return {"username": self.registry_username, "password": self.registry_password}


def docker_engine(settings: Settings) -> DockerEngine:
    """Bind registry secrets only when set: dg.EnvVar on an unset variable fails every run at config time."""
    if not settings.registry_credentials_configured:
        return DockerEngine(registry=settings.image_registry)
    return DockerEngine(
        registry=settings.image_registry,
        registry_username=dg.EnvVar(REGISTRY_USERNAME_ENV),
        registry_password=dg.EnvVar(REGISTRY_PASSWORD_ENV),
    )
