"""Fixtures for the scale-out deployment: a real PostgreSQL server, Docker engine and user-code image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlsd_assets_tests.deployment.images import engine_unavailable_reason, ensure_light_image, prepare_engine
from mlsd_assets_tests.deployment.postgres import PostgresServer, ensure_cluster_online, unavailable_reason


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The machine's PostgreSQL cluster (started if down) with a throwaway role; its databases die with it."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer(port=ensure_cluster_online())
    server.create_role()
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine with the offline base image (docker/engine/prepare.sh starts one if none answers)."""
    reason = engine_unavailable_reason()
    if reason:
        pytest.skip(reason)
    prepare_engine()


@pytest.fixture(scope="session")
def user_code_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The light user-code image of this tree, built offline (wheelhouse, `docker build --network=none`)."""
    return ensure_light_image(tmp_path_factory.mktemp("docker-build"))
