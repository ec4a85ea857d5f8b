"""The real image: tiny trained model -> ONNX -> Docker image -> container evaluated over HTTP -> removed."""

from __future__ import annotations

import io
import logging
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.evaluation.measure import offline_predictions
from mlsd_assets.core.evaluation.promotion import CHAMPION_ALIAS
from mlsd_assets.core.serving.runtime import ServerStartError, free_port, running_container, wait_healthy
from mlsd_assets.evaluation.assets import evaluation_report, model_promotion
from mlsd_assets.evaluation.checks import check_model_promotion_accepted
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import DataPaths, MLflowTracking
from mlsd_assets.serving.assets import inference_server_image
from mlsd_assets.training.assets import cifar10_model, cifar10_onnx
from mlsd_assets.training.checks import check_cifar10_onnx_parity
from mlsd_assets_tests.core.serving.test_server import BAD_REQUESTS, answer, binary
from mlsd_assets_tests.services import prometheus
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

pytestmark = pytest.mark.docker
MODEL_ASSETS = [cifar10_model, cifar10_onnx, check_cifar10_onnx_parity]
TINY_MODEL_CONFIG = {k: v for k, v in TINY.items() if k != "eval_batch_size"} | {"widths": [*TINY["widths"]]}
SERVING_ASSETS = [inference_server_image, evaluation_report, model_promotion, check_model_promotion_accepted]
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
    assert report.test_images == 100
    assert report.image_id == image.image_id and report.image_size_bytes == built.attrs["Size"]
    assert eval_containers(client, report.server) == [], "evaluation container left behind"
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["check_cifar10_onnx_parity"].passed
    assert checks["check_model_promotion_accepted"].passed
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
        meta = http.get(f"/v2/models/{image.model_name}").json()["parameters"]["mlsd"]
        assert meta["model_version"] == image.model_version and meta["mlflow_run_id"] == image.mlflow_run_id
        rng = random.Random(1)
        infer = f"/v2/models/{image.model_name}/infer"
        for i in range(300):
            what, kwargs, status, reason = rng.choice(BAD_REQUESTS)
            if "limit" in what or "too big" in what:  # the image runs with its default limits: checked below
                continue
            if i % 2:
                r = http.post(infer, **binary(split_images[: 1 + i % 5]))
                assert answer(r).shape == (1 + i % 5, 10)
            else:
                r = http.post(infer, **kwargs)
                assert r.status_code == status and reason in r.json()["error"], (what, r.text)
        too_many = http.post(infer, **binary(np.zeros((1025, 32, 32, 3), np.uint8)))
        assert too_many.status_code == 413 and "limit of 1024" in too_many.json()["error"]
        too_big = http.post(infer, content=bytes(16 * 2**20 + 1))
        assert too_big.status_code == 413 and "limit of 16777216 bytes" in too_big.json()["error"]
        assert "mlsd_requests_total" in http.get("/metrics").text
    assert eval_containers(client, name) == []


@contextmanager
def published_container(client, image: str, name: str, **environment: str) -> Iterator[str]:
    """The image on the default bridge, its port published on 127.0.0.1 only; removed afterwards."""
    port = free_port()
    container = client.containers.run(
        image, name=name, detach=True, ports={"8080/tcp": ("127.0.0.1", port)}, environment=environment
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, 60, lambda: None)
        yield base_url
    finally:
        container.remove(force=True)


def test_triton_http_client_talks_to_the_container(pipeline, docker_engine, tmp_path: Path):
    """Compatibility with a standard Open Inference Protocol client from PyPI (NVIDIA's tritonclient)."""
    import tritonclient.http as triton
    from PIL import Image

    result, _ = pipeline
    image = result.output_for_node("inference_server_image")
    onnx_model = result.output_for_node("cifar10_onnx")
    images, _ = make_split(n_train=10, n_validation=0, n_test=16, seed=4).arrays("test")
    expected = offline_predictions(onnx_model.model_bytes, images)
    client = docker_engine.client()
    with published_container(client, image.image_id, "mlsd-test-triton") as base_url:
        tc = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
        assert tc.is_server_live() and tc.is_server_ready()
        assert "binary_tensor_data" in tc.get_server_metadata()["extensions"]
        name, version = image.model_name, image.model_version
        assert tc.is_model_ready(name) and tc.is_model_ready(name, model_version=version)
        meta = tc.get_model_metadata(name, model_version=version)
        input_name, output_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        for binary_data in (True, False):
            tensor = triton.InferInput(input_name, list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images, binary_data=binary_data)
            wanted = [triton.InferRequestedOutput(output_name, binary_data=binary_data)]
            answer = tc.infer(name, [tensor], outputs=wanted, request_id="r1")
            logits = answer.as_numpy(output_name)
            assert logits.shape == (16, 10) and (logits.argmax(axis=1) == expected).all()
            assert answer.get_response()["id"] == "r1" and answer.get_response()["model_version"] == version
        files = []
        for im in images:
            out = io.BytesIO()
            Image.fromarray(im).save(out, format="PNG")
            files.append(out.getvalue())
        encoded = triton.InferInput(input_name, [len(files)], "BYTES")
        encoded.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
        logits = tc.infer(name, [encoded], model_version=version).as_numpy(output_name)
        assert (logits.argmax(axis=1) == expected).all()
        with pytest.raises(InferenceServerException, match="is not served here"):
            tc.get_model_metadata("resnet50")
        tc.close()
    assert eval_containers(client, "mlsd-test-triton") == []


def test_prometheus_scrapes_the_container_and_counts_what_was_sent(pipeline, docker_engine, tmp_path: Path):
    """A real Prometheus (Debian's package) scrapes /metrics; PromQL returns exactly the requests sent."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    result, _ = pipeline
    image = result.output_for_node("inference_server_image")
    images, _ = make_split(n_train=10, n_validation=0, n_test=10, seed=6).arrays("test")
    client = docker_engine.client()
    sent = {"200": 23, "400": 7}
    with (
        published_container(client, image.image_id, "mlsd-test-prometheus") as base_url,
        prometheus(tmp_path, [base_url.removeprefix("http://")], job="mlsd") as prom,
    ):
        with httpx.Client(base_url=base_url) as http:
            infer = f"/v2/models/{image.model_name}/infer"
            for i in range(sent["200"]):
                assert http.post(infer, **binary(images[i % 10 : i % 10 + 1])).status_code == 200
            for _ in range(sent["400"]):
                assert http.post(infer, content=b"{").status_code == 400
        query = 'sum by (status) (mlsd_requests_total{route="/v2/models/{name}/infer",job="mlsd"})'
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while seen != {k: float(v) for k, v in sent.items()} and time.monotonic() < deadline:
            time.sleep(1)
            r = prom.get("/api/v1/query", params={"query": query}).raise_for_status()
            seen = {v["metric"]["status"]: float(v["value"][1]) for v in r.json()["data"]["result"]}
        assert seen == {k: float(v) for k, v in sent.items()}, (seen, (tmp_path / "prometheus.log").read_text()[-2000:])
        up = prom.get("/api/v1/query", params={"query": 'up{job="mlsd"}'}).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    assert eval_containers(client, "mlsd-test-prometheus") == []


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


def test_labels_reach_the_image_verbatim_from_one_build_step(docker_engine, tmp_path: Path):
    """Quotes, dollars, backslashes and spaces survive the Dockerfile, and nine labels cost one build step."""
    from mlsd_assets.core.serving.image import DEFAULT_BASE_IMAGE, build_image, label_instruction

    labels = {f"mlsd.k{i}": f"v{i}" for i in range(7)} | {
        "org.opencontainers.image.title": "mlsd CIFAR-10 inference server",
        "mlsd.odd": 'a "quoted" $HOME ${PATH} \\ \\n value',
    }
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" + label_instruction(labels))
    client = docker_engine.client()
    built = build_image(client, tmp_path, f"mlsd-test/labels:{random.getrandbits(32):08x}", DEFAULT_BASE_IMAGE, log)
    try:
        image = client.images.get(built.image_id)
        assert {k: v for k, v in image.labels.items() if k in labels} == labels
        steps = [h["CreatedBy"] for h in image.history() if "LABEL" in h["CreatedBy"]]
        assert len(steps) == 1, steps
    finally:
        client.images.remove(built.image_id, force=True)


def test_a_label_with_a_control_character_is_refused_by_name():
    from mlsd_assets.core.serving.image import label_instruction

    with pytest.raises(ValueError, match=r"image label 'two\\nlines'.*control characters"):
        label_instruction({"mlsd.note": "two\nlines"})


def test_no_engine_is_a_clear_failure(tmp_path: Path):
    from mlsd_assets.resources import DockerEngine, EngineUnavailableError

    with pytest.raises(EngineUnavailableError, match=r"unix:///nonexistent\.sock.*docker/engine/prepare\.sh"):
        DockerEngine(base_url="unix:///nonexistent.sock").client()


def test_a_build_the_engine_refuses_says_why(tmp_path: Path):
    """A build the engine refuses over HTTP, before any build log (a full disk did this to command 1: the step
    failed with a 500 and a 700-character URL); a real engine cannot be made to do it on demand, so the client
    raises what docker-py raised then."""
    import docker.errors
    import requests

    from mlsd_assets.core.serving.image import ImageBuildError, build_image

    refused = requests.Response()
    refused.status_code = 500
    reason = "Error processing tar file(exit status 1): write /app/mlsd_server/batching.py: no space left on device"

    class RefusingEngine:
        class images:  # noqa: N801 (docker-py's attribute names)
            get = staticmethod(lambda name: object())

        class api:  # noqa: N801
            @staticmethod
            def build(**kwargs: object) -> None:
                url = "http+docker://localhost/v1.41/build?t=" + "x" * 700
                raise docker.errors.APIError(f"500 Server Error for {url}", refused, explanation=reason)

    with pytest.raises(ImageBuildError) as e:
        build_image(RefusingEngine(), tmp_path, "mlsd/cifar10-server:v1", "base", logging.getLogger("t"))
    assert str(e.value) == f"building mlsd/cifar10-server:v1 failed: the engine refused it (500): {reason}"
