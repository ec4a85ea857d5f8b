"""The inference server in-process: contract, predictions, input validation (4xx with reasons) and metrics."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from starlette.testclient import TestClient

from mlsd_assets.serving.server.app import create_app
from mlsd_assets.serving.server.inputs import Limits
from mlsd_assets.serving.server.model import ModelContractError, Predictor
from mlsd_assets_tests.serving.onnx_models import write_tiny_model

RAW = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(tiny_model: Path):
    app = create_app(Predictor(tiny_model), Limits(max_batch=64, max_body_bytes=1_000_000))
    with TestClient(app) as c:
        yield c


def offline(model: Path, images: np.ndarray) -> list[int]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0].argmax(axis=1).tolist()


def test_health_and_metadata(client: TestClient):
    assert client.get("/health").json() == {"status": "ok", "model_version": "7"}
    meta = client.get("/metadata").json()
    assert meta["model_version"] == "7"
    assert meta["mlflow_run_id"] == "run-test"
    assert meta["classes"][3] == "cat" and len(meta["classes"]) == 10
    assert meta["input"] | {"mean": None, "std": None} == {
        "name": "images", "dtype": "uint8", "layout": "NHWC", "shape": [-1, 32, 32, 3],
        "mean": None, "std": None, "normalisation": "inside the graph: send raw 0..255 pixels",
    }
    assert meta["limits"] == {"max_batch": 64, "max_body_bytes": 1_000_000}


def test_raw_predictions_match_offline_onnx(client: TestClient, tiny_model: Path, test_images):
    images, _ = test_images
    expected = offline(tiny_model, images)
    for headers, url in [
        ({"x-shape": f"{len(images)},32,32,3"}, "/v1/predict"),
        ({}, f"/v1/predict?n={len(images)}"),
        ({}, "/v1/predict"),  # batch inferred from the body length
    ]:
        r = client.post(url, content=images.tobytes(), headers=RAW | headers)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == expected
    single = client.post("/v1/predict?logits=1", content=images[0].tobytes(), headers=RAW)
    assert single.json()["predictions"] == expected[:1] and len(single.json()["logits"][0]) == 10


def test_json_forms_match_raw(client: TestClient, tiny_model: Path, test_images):
    images, _ = test_images
    expected = offline(tiny_model, images[:4])
    r = client.post("/v1/predict", json={"instances": images[:4].tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected
    single = client.post("/v1/predict", json={"instances": images[0].tolist()})
    assert single.json()["predictions"] == expected[:1]
    b64 = {"b64": base64.b64encode(images[:4].tobytes()).decode(), "shape": [4, 32, 32, 3]}
    assert client.post("/v1/predict", json=b64).json()["predictions"] == expected


one = bytes(3072)


def raw(body: bytes = one, params: dict | None = None, **headers: str) -> dict:
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    return {"content": body, "headers": RAW | extra, "params": params or {}}


def as_json(doc: object) -> dict:
    return {"json": doc}


BAD_REQUESTS = [
    # (description, request kwargs, status, words the reason must contain)
    ("empty body", raw(b""), 400, "empty body"),
    ("not a whole image", raw(bytes(3000)), 422, "whole number"),
    ("shape disagrees with body", raw(x_shape="2,32,32,3"), 422, "needs 6144"),
    ("wrong image size", raw(x_shape="1,32,32,1"), 422, "X-Shape must be N,32,32,3"),
    ("garbage shape", raw(x_shape="one,two"), 400, "integers"),
    ("wrong dtype", raw(x_dtype="float32"), 422, "X-Dtype must be uint8"),
    ("n not a number", raw(params={"n": "x"}), 400, "must be an integer"),
    ("zero batch", raw(params={"n": "0"}), 422, "batch size must be >= 1"),
    ("batch over limit", raw(bytes(3072 * 65)), 413, "exceeds the limit of 64"),
    ("body over limit", raw(bytes(1_000_001)), 413, "exceeds the limit of 1000000 bytes"),
    ("unsupported type", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
    ("malformed json", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "valid JSON"),
    ("json without instances", as_json({"images": []}), 422, "exactly one of"),
    ("ragged instances", as_json({"instances": [[[0, 0, 0]], [[0]]]}), 422, "rectangular"),
    ("wrong json shape", as_json({"instances": np.zeros((1, 8, 8, 3), int).tolist()}), 422, "[1, 8, 8, 3]"),
    ("float pixels", as_json({"instances": np.full((32, 32, 3), 0.5).tolist()}), 422, "integers 0..255"),
    ("pixels out of range", as_json({"instances": np.full((32, 32, 3), 300).tolist()}), 422, "0..300"),
    ("bad base64", as_json({"b64": "%%%"}), 400, "not valid base64"),
]
IDS = [b[0] for b in BAD_REQUESTS]


@pytest.mark.parametrize(("what", "kwargs", "status", "reason"), BAD_REQUESTS, ids=IDS)
def test_bad_input_gets_4xx_with_reason(client: TestClient, what, kwargs, status, reason):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, (what, r.text)
    assert reason in r.json()["error"], (what, r.json())


def test_wrong_method_and_path(client: TestClient):
    assert client.get("/v1/predict").status_code == 405
    assert client.post("/health").status_code == 405
    assert client.get("/nope").status_code == 404


def requests_total(metrics_text: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    pattern = r'mlsd_http_requests_total\{path="([^"]+)",method="\w+",status="(\d+)"\} (\d+)'
    for path, status, n in re.findall(pattern, metrics_text):
        counts[(path, status)] = counts.get((path, status), 0) + int(n)
    return counts


def test_thousand_mixed_requests_no_crash_and_counted(tiny_model: Path, test_images):
    images, _ = test_images
    app = create_app(Predictor(tiny_model), Limits(max_batch=64, max_body_bytes=1_000_000))
    rng = random.Random(0)
    good = [
        lambda: dict(content=images[: rng.randint(1, 8)].tobytes(), headers=RAW),
        lambda: dict(json={"instances": images[rng.randrange(len(images))].tolist()}),
    ]
    bad = [b[1] for b in BAD_REQUESTS]
    sent: dict[tuple[str, str], int] = {}
    with TestClient(app, raise_server_exceptions=True) as c:
        for _ in range(1000):
            kind = rng.random()
            kwargs = rng.choice(good)() if kind < 0.5 else rng.choice(bad)
            r = c.post("/v1/predict", **kwargs)
            assert r.status_code < 500, r.text
            key = ("/v1/predict", str(r.status_code))
            sent[key] = sent.get(key, 0) + 1
        assert c.get("/health").status_code == 200
        text = c.get("/metrics").text
    counted = requests_total(text)
    assert {k: v for k, v in counted.items() if k[0] == "/v1/predict"} == sent
    assert sum(sent.values()) == 1000 and sent[("/v1/predict", "200")] > 300
    errors = re.search(r'mlsd_http_request_errors_total\{path="/v1/predict",class="4xx"\} (\d+)', text)
    assert int(errors.group(1)) == 1000 - sent[("/v1/predict", "200")]
    assert 'mlsd_http_request_duration_seconds_count{path="/v1/predict"} 1000' in text
    info = 'mlsd_model_info{mlflow_run_id="run-test",model_name="cifar10-classifier",model_version="7"} 1'
    assert info in text


def test_model_without_contract_is_refused_at_start(tmp_path: Path):
    path = write_tiny_model(tmp_path / "m.onnx", metadata={"mlsd.classes": None})
    with pytest.raises(ModelContractError, match=r"lacks \['mlsd.classes'\]"):
        Predictor(path)
    path = write_tiny_model(tmp_path / "n.onnx", metadata={"mlsd.input_layout": "NCHW"})
    with pytest.raises(ModelContractError, match="uint8 NHWC"):
        Predictor(path)


def test_metrics_exposition_is_well_formed(client: TestClient):
    client.post("/v1/predict", content=one, headers=RAW)
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line), line
    assert json.loads(client.get("/metadata").text)["model_version"] == "7"
