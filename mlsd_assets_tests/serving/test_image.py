"""The real image: tiny trained model -> ONNX -> Docker image -> container evaluated over HTTP -> removed."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mlsd_assets.evaluation.assets import evaluation_report
from mlsd_assets.evaluation.checks import CHAMPION_ALIAS, check_evaluation_report_promotion
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.ml.splits import Cifar10Split
from mlsd_assets.resources import DataPaths
from mlsd_assets.serving.assets import inference_server_image
from mlsd_assets.serving.runtime import ServerStartError, running_container
from mlsd_assets.training.assets import cifar10_model, cifar10_onnx
from mlsd_assets.training.checks import check_cifar10_onnx_parity
from mlsd_assets.training.resources import MLflowTracking
from mlsd_assets_tests.serving.test_server import BAD_REQUESTS, RAW
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

pytestmark = pytest.mark.docker
MODEL_ASSETS = [cifar10_model, cifar10_onnx, check_cifar10_onnx_parity]
TINY_MODEL_CONFIG = {k: v for k, v in TINY.items() if k != "eval_batch_size"} | {"widths": [*TINY["widths"]]}
SERVING_ASSETS = [inference_server_image, evaluation_report, check_evaluation_report_promotion]
log = logging.getLogger("test")


def eval_containers(client, prefix: str) -> list:
    return client.containers.list(all=True, filters={"name": prefix})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, docker_engine, wheelhouse_cache):
    """split -> cifar10_model -> cifar10_onnx (+ torch parity) -> image -> evaluation (+ gate), for real."""
    home = tmp_path_factory.mktemp("home")
    split = make_split(n_train=300, n_validation=50, n_test=100, seed=11)

    @dg.asset(name="cifar10_split")
    def split_asset() -> Cifar10Split:
        return split

    mlflow = MLflowTracking(
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=(home / "mlartifacts").as_uri()
    )
    result = dg.materialize(
        [split_asset, *MODEL_ASSETS, *SERVING_ASSETS],
        resources={
            "io_manager": ArtifactIOManager(root=str(home / "artifacts")),
            "paths": DataPaths(root=str(home / "data")),
            "mlflow": mlflow,
            "docker": docker_engine,
        },
        run_config={
            "ops": {
                "cifar10_model": {"config": TINY_MODEL_CONFIG},
                "inference_server_image": {"config": {"wheelhouse_dir": str(wheelhouse_cache)}},
            }
        },
    )
    return result, mlflow


def test_image_built_run_evaluated_and_removed(pipeline, docker_engine):
    result, mlflow = pipeline
    image = result.output_for_node("inference_server_image")
    report = result.output_for_node("evaluation_report")
    client = docker_engine.client()
    built = client.images.get(image.image_id)
    assert built.labels["mlsd.model_sha256"] == image.model_sha256
    assert image.tag == f"mlsd/cifar10-server:v{image.model_version}" and image.tag in built.tags
    assert built.attrs["Config"]["User"] == "mlsd" and built.attrs["Config"]["Healthcheck"]["Test"]
    assert report.runtime == "container" and report.server.startswith("mlsd-eval-")
    assert report.test_images == 100 and report.parity_mismatches == 0 and report.errors == 0
    assert report.image_id == image.image_id and report.image_size_bytes == built.attrs["Size"]
    assert eval_containers(client, report.server) == [], "evaluation container left behind"
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["check_cifar10_onnx_parity"].passed
    assert checks["check_evaluation_report_promotion"].passed
    registry = mlflow.client()
    champion = registry.get_model_version_by_alias(report.model_name, CHAMPION_ALIAS)
    assert str(champion.version) == report.model_version


def test_real_container_answers_bad_input_with_4xx(pipeline, docker_engine):
    result, _ = pipeline
    image = result.output_for_node("inference_server_image")
    split_images, _ = make_split(n_train=10, n_validation=0, n_test=10, seed=2).arrays("test")
    client = docker_engine.client()
    name = "mlsd-test-bad-input"
    with (
        running_container(client, image.image_id, name, log) as server,
        httpx.Client(base_url=server.base_url) as http,
    ):
        meta = http.get("/metadata").json()
        assert meta["model_version"] == image.model_version and meta["mlflow_run_id"] == image.mlflow_run_id
        rng = random.Random(1)
        for i in range(300):
            what, kwargs, status, reason = rng.choice(BAD_REQUESTS)
            if "over limit" in what:  # the image runs with its default limits: checked below
                continue
            if i % 2:
                r = http.post("/v1/predict", content=split_images[: 1 + i % 5].tobytes(), headers=RAW)
                assert r.status_code == 200 and len(r.json()["predictions"]) == 1 + i % 5
            else:
                r = http.post("/v1/predict", **kwargs)
                assert r.status_code == status and reason in r.json()["error"], (what, r.text)
        too_many = http.post("/v1/predict", content=bytes(3072 * 1025), headers=RAW)
        assert too_many.status_code == 413 and "limit of 1024" in too_many.json()["error"]
        too_big = http.post("/v1/predict", content=bytes(16 * 2**20 + 1), headers=RAW)
        assert too_big.status_code == 413 and "limit of 16777216 bytes" in too_big.json()["error"]
        assert "mlsd_http_request_errors_total" in http.get("/metrics").text
    assert eval_containers(client, name) == []


def test_container_removed_after_induced_failures(pipeline, docker_engine):
    result, _ = pipeline
    image = result.output_for_node("inference_server_image")
    client = docker_engine.client()
    with (
        pytest.raises(RuntimeError, match="induced"),
        running_container(client, image.image_id, "mlsd-test-induced", log),
    ):
        raise RuntimeError("induced failure while the server runs")
    assert eval_containers(client, "mlsd-test-induced") == []
    # An image whose entrypoint exits at once: the wait for /health stops early and still cleans up.
    with (
        pytest.raises(ServerStartError, match="exited before becoming healthy"),
        running_container(client, image.base_image, "mlsd-test-dead", log, health_timeout_s=60),
    ):
        pass
    assert eval_containers(client, "mlsd-test-dead") == []


def test_no_engine_is_a_clear_failure(tmp_path: Path):
    from mlsd_assets.serving.resources import DockerEngine, EngineUnavailableError

    with pytest.raises(EngineUnavailableError, match=r"unix:///nonexistent\.sock.*docker/engine/prepare\.sh"):
        DockerEngine(base_url="unix:///nonexistent.sock").client()
