"""Serving fixtures: a tiny contract-honouring model, and a real Docker engine with the base image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlsd_assets.core.serving.image import DEFAULT_BASE_IMAGE
from mlsd_assets.resources import DockerEngine, EngineUnavailableError
from mlsd_assets_tests.core.serving.onnx_models import nearest_mean_weights, write_tiny_model
from mlsd_assets_tests.synthetic import make_split


@pytest.fixture(scope="session")
def tiny_split():
    return make_split(n_train=200, n_validation=20, n_test=60, seed=3)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_split) -> Path:
    images, labels = tiny_split.arrays("train")
    return write_tiny_model(
        tmp_path_factory.mktemp("model") / "model.onnx", nearest_mean_weights(images, labels), version="7"
    )


@pytest.fixture(scope="session")
def test_images(tiny_split) -> tuple[np.ndarray, np.ndarray]:
    return tiny_split.arrays("test")


PREPARE = Path(__file__).resolve().parents[3] / "docker" / "engine" / "prepare.sh"


@pytest.fixture(scope="session")
def docker_engine() -> DockerEngine:
    """An engine with the base image: prepare.sh starts/builds what is missing when we are root."""
    engine = DockerEngine()
    try:
        client = engine.client()
        missing_base = not client.images.list(name=DEFAULT_BASE_IMAGE)
    except EngineUnavailableError as exc:
        client, missing_base = None, True
        reason = str(exc)
    if client is not None and not missing_base:
        return engine
    if os.geteuid() != 0:
        pytest.skip(
            f"needs a Docker engine with {DEFAULT_BASE_IMAGE}; "
            + (reason if client is None else "the base image is missing")
            + "; docker/engine/prepare.sh must run as root and we are not root"
        )
    if client is None and shutil.which("dockerd") is None:
        pytest.skip("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    done = subprocess.run([str(PREPARE)], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"docker/engine/prepare.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    engine.client()
    return engine


@pytest.fixture(scope="session")
def wheelhouse_cache(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kept between sessions (.pytest_cache): the image's wheels come from PyPI once, not per test run."""
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    return Path(cache.mkdir("mlsd-wheelhouses")) if cache else tmp_path_factory.mktemp("wheelhouses")
