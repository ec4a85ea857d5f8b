"""The inference server in-process: the v2 protocol, predictions, input validation (4xx with reasons), metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mlsd_assets.core.evaluation.client import infer_body, infer_outputs
from mlsd_assets.core.evaluation.measure import server_counters
from mlsd_assets.core.serving.server.app import create_app
from mlsd_assets.core.serving.server.batching import Batcher, BatchingConfig
from mlsd_assets.core.serving.server.inputs import Limits
from mlsd_assets.core.serving.server.model import ModelContractError, Predictor
from mlsd_assets_tests.core.serving.onnx_models import write_tiny_model

MODEL = "/v2/models/cifar10-classifier"
INFER = f"{MODEL}/infer"
LIMITS = Limits(max_batch=64, max_body_bytes=1_000_000, max_encoded_image_bytes=20_000)


@pytest.fixture(scope="module")
def client(tiny_model: Path):
    with TestClient(create_app(Predictor(tiny_model), LIMITS)) as c:
        yield c


def offline_logits(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def offline(model: Path, images: np.ndarray) -> list[int]:
    return offline_logits(model, images).argmax(axis=1).tolist()


def binary(images: np.ndarray) -> dict:
    content, headers = infer_body("images", "logits", images)
    return {"content": content, "headers": headers}


def answer(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return infer_outputs(r.content, r.headers.get("inference-header-content-length"))["logits"]


def tensor(data: object = None, shape: list | None = None, datatype: str = "UINT8", **extra) -> dict:
    t = {"name": "images", "shape": shape or [1, 32, 32, 3], "datatype": datatype} | extra
    if data is not None:
        t["data"] = data
    return {"json": {"inputs": [t]}}


def split_body(doc: dict, payload: bytes) -> dict:
    header = json.dumps(doc).encode()
    return {"content": header + payload, "headers": {"inference-header-content-length": str(len(header))}}


def encoded(files: list[bytes], shape: list | None = None) -> dict:
    payload = b"".join(struct.pack("<I", len(f)) + f for f in files)
    doc = {
        "inputs": [
            {
                "name": "images",
                "shape": shape or [len(files)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ]
    }
    return split_body(doc, payload)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_server_and_model_metadata(client: TestClient):
    assert client.get("/v2").json() == {
        "name": "mlsd",
        "version": ort.__version__,
        "extensions": ["binary_tensor_data"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get(MODEL).json()
    assert client.get(f"{MODEL}/versions/7").json() == meta
    assert meta["name"] == "cifar10-classifier" and meta["versions"] == ["7"]
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    mlsd = meta["parameters"]["mlsd"]
    assert mlsd["model_version"] == "7" and mlsd["mlflow_run_id"] == "run-test" and mlsd["classes"][3] == "cat"
    assert meta["parameters"]["limits"]["max_batch"] == 64
    assert client.get(f"{MODEL}/ready").json() == {"name": "cifar10-classifier", "ready": True}
    assert client.post("/v2/repository/index").json() == [
        {"name": "cifar10-classifier", "version": "7", "state": "READY"}
    ]


def test_unknown_model_version_route_and_method_in_v2_error_format(client: TestClient):
    r = client.get("/v2/models/resnet/ready")
    assert r.status_code == 404 and "serves 'cifar10-classifier' version '7'" in r.json()["error"]
    r = client.post(f"{MODEL}/versions/3/infer", **binary(np.zeros((1, 32, 32, 3), np.uint8)))
    assert r.status_code == 404 and "no version '3'" in r.json()["error"]
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    assert client.get(INFER).status_code == 405 and "error" in client.get(INFER).json()
    # The former API is gone: one protocol, the standard one.
    assert client.post("/v1/predict", content=bytes(3072)).status_code == 404


def test_binary_and_json_tensors_match_offline_onnx(client: TestClient, tiny_model: Path, test_images):
    images, _ = test_images
    expected = offline_logits(tiny_model, images)
    got = answer(client.post(INFER, **binary(images)))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(answer(client.post(f"{MODEL}/versions/7/infer", **binary(images[:3]))), expected[:3])
    flat = client.post(INFER, **tensor(images[:2].ravel().tolist(), [2, 32, 32, 3]), params=None)
    doc = flat.json()
    assert doc["model_name"] == "cifar10-classifier" and doc["model_version"] == "7"
    assert doc["outputs"][0]["shape"] == [2, 10] and doc["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"]).reshape(2, 10), expected[:2], rtol=1e-6)
    nested = client.post(
        INFER,
        json={
            "id": "req-1",
            "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": images[0].tolist()}],
        },
    )
    assert nested.json()["id"] == "req-1"
    np.testing.assert_allclose(nested.json()["outputs"][0]["data"], expected[0], rtol=1e-6)
    # binary_data_output on the request asks every output back as binary
    body = {
        "inputs": [
            {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": images[0].ravel().tolist()}
        ],
        "parameters": {"binary_data_output": True},
    }
    np.testing.assert_array_equal(answer(client.post(INFER, json=body))[0], expected[0])


def test_encoded_png_and_jpeg_images(client: TestClient, tiny_model: Path, test_images):
    images, _ = test_images
    files = [png(im) for im in images[:5]]
    np.testing.assert_array_equal(answer(client.post(INFER, **encoded(files))), offline_logits(tiny_model, images[:5]))
    jpeg = io.BytesIO()
    Image.fromarray(images[0]).save(jpeg, format="JPEG", quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"))[None]
    np.testing.assert_array_equal(
        answer(client.post(INFER, **encoded([jpeg.getvalue()]))), offline_logits(tiny_model, decoded)
    )
    as_json = tensor([base64.b64encode(f).decode() for f in files[:2]], [2], "BYTES")
    assert client.post(INFER, **as_json).json()["outputs"][0]["shape"] == [2, 10]


def _png_claiming(width: int, height: int) -> bytes:
    """A real 32x32 PNG whose IHDR claims width x height (CRC fixed): decoding it would need the full size."""
    import zlib

    data = bytearray(png(np.zeros((32, 32, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _deep(depth: int) -> dict:
    body = "[" * depth + "]" * depth
    return {"content": f'{{"inputs": {body}}}'.encode(), "headers": {"content-type": "application/json"}}


one = np.zeros((1, 32, 32, 3), np.uint8)

BAD_REQUESTS = [
    # (description, request kwargs, status, words the reason must contain)
    ("empty body", {"content": b""}, 400, "empty body"),
    ("malformed json", {"content": b"{"}, 400, "valid JSON"),
    ("json array", {"json": [1]}, 400, "JSON object"),
    ("no inputs", {"json": {"outputs": []}}, 400, "exactly one tensor"),
    ("two inputs", {"json": {"inputs": [{"name": "images"}, {"name": "images"}]}}, 400, "exactly one tensor"),
    (
        "wrong input name",
        {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8"}]}},
        400,
        "this model's input is 'images'",
    ),
    ("wrong datatype", tensor([0], datatype="FP32"), 400, "datatype must be UINT8"),
    ("shape not a list", tensor([0], shape="1,32,32,3"), 400, "list of integers"),
    ("negative dims", tensor([0], shape=[-1, 32, 32, 3]), 400, "must not be negative"),
    ("wrong image size", tensor([0], shape=[1, 8, 8, 3]), 400, "[N,32,32,3]"),
    ("zero batch", tensor([], shape=[0, 32, 32, 3]), 400, "batch size must be >= 1"),
    ("batch over limit", tensor([0], shape=[65, 32, 32, 3]), 413, "exceeds the limit of 64"),
    ("data size disagrees", tensor([0] * 5), 400, "needs 3072 values, data has 5"),
    ("ragged data", tensor([[0, 0], [0]]), 400, "rectangular"),
    ("float pixels", tensor([0.5] * 3072), 400, "integers 0..255"),
    ("pixels out of range", tensor([300] * 3072), 400, "0..300"),
    (
        "data and binary",
        split_body(tensor([0], parameters={"binary_data_size": 1})["json"], b"\x00"),
        400,
        "either data or",
    ),
    ("binary size disagrees", {**binary(one), "headers": {"inference-header-content-length": "50"}}, 400, "valid JSON"),
    (
        "header length garbage",
        {**binary(one), "headers": {"inference-header-content-length": "x"}},
        400,
        "Inference-Header-Content-Length",
    ),
    ("bytes after json", split_body(tensor([0] * 3072)["json"], b"xx"), 400, "binary_data_size"),
    ("body over limit", {"content": bytes(1_000_001)}, 413, "exceeds the limit of 1000000 bytes"),
    ("compressed body", {"content": b"x", "headers": {"content-encoding": "gzip"}}, 415, "uncompressed"),
    ("json nested 1000 deep", _deep(1000), 400, "nested 1001 deep exceeds the limit of 32"),
    (
        "unknown output",
        {
            "json": {
                "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}],
                "outputs": [{"name": "probs"}],
            }
        },
        400,
        "unknown outputs ['probs']",
    ),
    ("bytes shape", encoded([b"x"], shape=[1, 2]), 400, "BYTES shape must be [N]"),
    ("bytes count", encoded([b"x"], shape=[2]), 400, "shape says 2 BYTES elements"),
    ("not an image", encoded([b"hello"]), 415, "not a PNG or JPEG"),
    ("image too big in bytes", encoded([bytes(20_001)]), 413, "over the limit of 20000 per encoded image"),
    ("image wrong size", encoded([png(np.zeros((8, 8, 3), np.uint8))]), 422, "declares 8x8 pixels"),
    (
        "png header claims 65000x65000",
        encoded([_png_claiming(65000, 65000)]),
        422,
        "takes 32x32; Image size (4225000000",
    ),
    ("png header claims 64x64", encoded([_png_claiming(64, 64)]), 422, "declares 64x64"),
    ("truncated png", encoded([png(np.zeros((32, 32, 3), np.uint8))[:60]]), 422, "cannot decode"),
    (
        "16-bit png",
        encoded(
            [
                (lambda b: (Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(b, "PNG"), b.getvalue())[1])(
                    io.BytesIO()
                )
            ]
        ),
        422,
        "8-bit only",
    ),
    ("bad base64", tensor(["%%%"], [1], "BYTES"), 400, "not valid base64"),
]
IDS = [b[0] for b in BAD_REQUESTS]


@pytest.mark.parametrize(("what", "kwargs", "status", "reason"), BAD_REQUESTS, ids=IDS)
def test_bad_input_gets_4xx_with_reason(client: TestClient, what, kwargs, status, reason):
    r = client.post(INFER, **kwargs)
    assert r.status_code == status, (what, r.text)
    assert reason in r.json()["error"], (what, r.json())


def test_thousand_mixed_requests_no_crash_and_counted(tiny_model: Path, test_images):
    images, _ = test_images
    app = create_app(Predictor(tiny_model), LIMITS)
    rng = random.Random(0)
    statuses: dict[str, int] = {}
    with TestClient(app, raise_server_exceptions=True) as c:
        for _ in range(1000):
            good = rng.random() < 0.5
            kwargs = binary(images[: rng.randint(1, 8)]) if good else rng.choice(BAD_REQUESTS)[1]
            r = c.post(INFER, **kwargs)
            assert r.status_code < 500, r.text
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
        text = c.get("/metrics").text
    counted = {
        s.labels["status"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "mlsd_requests_total" and s.labels["route"] == "/v2/models/{name}/infer"
    }
    assert counted == {k: float(v) for k, v in statuses.items()}
    totals = server_counters(text)
    assert totals["requests"] == 1000 and totals["errors_5xx"] == 0
    assert totals["errors_4xx"] == 1000 - statuses["200"]
    assert 'mlsd_model_info{mlflow_run_id="run-test",model_name="cifar10-classifier",model_version="7"} 1.0' in text


def test_model_without_contract_is_refused_at_start(tmp_path: Path):
    path = write_tiny_model(tmp_path / "m.onnx", metadata={"mlsd.classes": None})
    with pytest.raises(ModelContractError, match=r"lacks \['mlsd.classes'\]"):
        Predictor(path)
    path = write_tiny_model(tmp_path / "n.onnx", metadata={"mlsd.input_layout": "NCHW"})
    with pytest.raises(ModelContractError, match="uint8 NHWC"):
        Predictor(path)


def test_model_of_an_earlier_version_without_a_registered_name_is_served(tmp_path: Path):
    path = write_tiny_model(tmp_path / "old.onnx", metadata={"mlsd.registered_model_name": None})
    with TestClient(create_app(Predictor(path))) as c:
        assert c.get("/v2/models/model/ready").status_code == 200
        assert answer(c.post("/v2/models/model/infer", **binary(one))).shape == (1, 10)


class SlowPredictor:
    """The tiny model behind a delay, to see what the event loop does while inference runs."""

    def __init__(self, inner: Predictor, delay_s: float) -> None:
        self.inner, self.delay_s, self.calls = inner, delay_s, []
        self.contract, self.session = inner.contract, inner.session

    def logits(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        time.sleep(self.delay_s)
        return self.inner.logits(images)


def test_health_answers_while_inference_runs_and_big_requests_do_not_starve_small_ones(tiny_model: Path):
    slow = SlowPredictor(Predictor(tiny_model), delay_s=0.05)
    app = create_app(slow, Limits(), BatchingConfig(max_batch_size=64))

    async def scenario() -> tuple[list[str], list[int]]:
        order: list[str] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

            async def call(tag: str, method: str, url: str, **kw) -> None:
                r = await http.request(method, url, **kw)
                assert r.status_code == 200, r.text
                order.append(tag)

            big = asyncio.create_task(call("big", "POST", INFER, **binary(np.zeros((1024, 32, 32, 3), np.uint8))))
            await asyncio.sleep(0.12)  # the big request is in its chunks by now
            await call("health", "GET", "/v2/health/ready")
            await call("small", "POST", INFER, **binary(one))
            await big
        return order, slow.calls

    order, calls = asyncio.run(scenario())
    # 16 chunks of 64 take >= 0.8 s; health and the small request finish long before the big one.
    assert order == ["health", "small", "big"]
    assert calls.count(64) == 16 and 1 in calls
    assert calls.index(1) < 15, f"the small request waited for the whole big one: {calls}"


def test_inference_error_is_a_500_with_the_reason(tiny_model: Path):
    class Broken(SlowPredictor):
        def logits(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("ORT exploded")

    with TestClient(create_app(Broken(Predictor(tiny_model), 0), LIMITS), raise_server_exceptions=False) as c:
        r = c.post(INFER, **binary(one))
        assert r.status_code == 500 and "ORT exploded" in r.json()["error"]
        assert c.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(("enabled", "expected_calls"), [(True, [1, 7]), (False, [1] * 8)])
def test_batching_on_coalesces_and_off_runs_one_call_per_request(
    tiny_model: Path, test_images, enabled, expected_calls
):
    images, _ = test_images
    slow = SlowPredictor(Predictor(tiny_model), delay_s=0.1)
    app = create_app(slow, LIMITS, BatchingConfig(enabled=enabled, max_batch_size=64))
    expected = offline_logits(tiny_model, images[:8])

    async def scenario() -> list[np.ndarray]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            first = asyncio.create_task(http.post(INFER, **binary(images[:1])))
            await asyncio.sleep(0.03)  # the worker is busy with the first: the other 7 queue up meanwhile
            rest = [http.post(INFER, **binary(images[i : i + 1])) for i in range(1, 8)]
            return [answer(r) for r in await asyncio.gather(first, *rest)]

    got = asyncio.run(scenario())
    assert slow.calls == expected_calls
    np.testing.assert_array_equal(np.concatenate(got), expected)


def test_queue_delay_waits_for_company_unless_the_batch_is_full():
    """max_queue_delay_us: requests spread over a few ms share one call; a full batch runs without waiting."""
    calls: list[int] = []

    def run(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :1].astype(np.float32)

    async def scenario(delay_us: int, max_batch: int) -> tuple[list[np.ndarray], float]:
        batcher = Batcher(run, BatchingConfig(max_batch_size=max_batch, max_queue_delay_us=delay_us), lambda *a: None)

        async def one(i: int) -> np.ndarray:
            await asyncio.sleep(0.002 * i)
            return await batcher.infer(np.full((1, 2, 2, 3), i, np.uint8))

        start = time.perf_counter()
        got = await asyncio.gather(*(one(i) for i in range(3)))
        return got, time.perf_counter() - start

    got, _ = asyncio.run(scenario(delay_us=200_000, max_batch=16))
    assert calls == [3] and [int(g[0, 0]) for g in got] == [0, 1, 2]  # each its own answer
    calls.clear()
    _, seconds = asyncio.run(scenario(delay_us=5_000_000, max_batch=3))
    assert calls == [3] and seconds < 2.5, f"a full batch waited for the 5 s delay: {seconds:.2f} s"


def test_a_request_alone_runs_at_once_unless_a_queue_delay_asks_to_wait():
    """`alone`: one chunk runs in the caller's task; chunks of a big request and any configured wait still queue."""

    async def scenario(delay_us: int) -> list[bool]:
        in_task: list[bool] = []

        def run(images: np.ndarray) -> np.ndarray:
            in_task.append(asyncio.current_task() is not None)
            return images.reshape(len(images), -1)[:, :1].astype(np.float32)

        batcher = Batcher(run, BatchingConfig(max_batch_size=16, max_queue_delay_us=delay_us), lambda *a: None)
        one = await batcher.infer(np.full((1, 2, 2, 3), 7, np.uint8), alone=True)
        big = await batcher.infer(np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(12, 1), alone=True)
        assert one.tolist() == [[7.0]] and big[:, 0].tolist() == list(range(40))
        return in_task

    assert asyncio.run(scenario(0)) == [True, False, False, False]  # 40 images: 3 queued chunks
    assert asyncio.run(scenario(2000)) == [False] * 4


def test_workers_run_batches_side_by_side_and_each_request_gets_its_own_rows():
    """Two workers: the chunks of a big request run two at a time on worker threads, in the right order, and
    small requests queued meanwhile are answered with their own rows."""
    import threading

    running, peak, threads = [0], [0], set()
    lock = threading.Lock()

    def run_single(images: np.ndarray) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return images.reshape(len(images), -1)[:, :1].astype(np.float32)

    def run_on_loop(images: np.ndarray) -> np.ndarray:
        raise AssertionError("with two workers, queued batches must not run on the loop's thread")

    async def scenario() -> tuple[np.ndarray, list[np.ndarray]]:
        batcher = Batcher(run_on_loop, BatchingConfig(max_batch_size=8, workers=2), lambda *a: None, run_single)
        big = np.arange(64, dtype=np.uint8).reshape(64, 1, 1, 1)
        smalls = [np.full((1, 1, 1, 1), 100 + i, np.uint8) for i in range(6)]
        answers = await asyncio.gather(batcher.infer(big), *(batcher.infer(s) for s in smalls))
        return answers[0], answers[1:]

    big, smalls = asyncio.run(scenario())
    assert big[:, 0].tolist() == list(range(64))
    assert [s[:, 0].tolist() for s in smalls] == [[100.0 + i] for i in range(6)]
    assert peak[0] == 2 and all(name.startswith("mlsd-ort") for name in threads), (peak, threads)


def test_a_slow_chunk_does_not_hold_the_other_worker_idle():
    """The chunks of a big request keep both workers busy: while the first chunk is slow, the other worker
    runs all the others (queued one by one as each is answered), and the rows still come back in order."""
    import threading

    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def run_single(images: np.ndarray) -> np.ndarray:
        first = int(images[0, 0, 0, 0])
        with lock:
            events.append(("start", first))
        time.sleep(0.3 if first == 0 else 0.01)
        with lock:
            events.append(("end", first))
        return images.reshape(len(images), -1)[:, :1].astype(np.float32)

    async def scenario() -> np.ndarray:
        batcher = Batcher(lambda x: x, BatchingConfig(max_batch_size=4, workers=2), lambda *a: None, run_single)
        return await batcher.infer(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1))

    rows = asyncio.run(scenario())
    assert rows[:, 0].tolist() == list(range(20))
    slow_end = events.index(("end", 0))
    assert {first for kind, first in events[:slow_end] if kind == "end"} == {4, 8, 12, 16}, events


@pytest.mark.parametrize("workers", [1, 2])
def test_the_command_line_opens_the_one_thread_session_only_for_workers(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """`--workers 1` runs every batch on the loop's thread: the server does not open (and warm) a second ORT
    session it would never call; with two workers it does, and the workers run batches on it."""
    import uvicorn

    from mlsd_assets.core.serving.server import __main__ as cli

    made: list = []
    monkeypatch.setattr(cli, "create_app", lambda predictor, *a: made.append(predictor) or create_app(predictor, *a))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: made.append(app))
    cli.main(["--model", str(tiny_model), "--workers", str(workers), "--log-level", "warning"])
    predictor, app = made
    assert app.batcher.workers == workers
    assert (predictor.one_thread is not None) == (workers > 1)
    assert (app.batcher._run_single is not None) == (workers > 1)


@pytest.mark.parametrize(
    ("one_thread_faster_up_to", "expected", "timed"),
    [
        (0, 0, [1]),
        (1, 1, [1, 2]),
        (3, 2, [1, 2, 4]),
        (16, 16, [1, 2, 4, 8, 16]),
        (64, 16, [1, 2, 4, 8, 16]),
    ],
)
def test_one_thread_takes_the_batch_sizes_it_was_timed_faster_at(
    one_thread_faster_up_to: int, expected: int, timed: list[int]
):
    """The crossover is the last size of 1, 2, 4, ... 16 at which one thread beat all of them by the margin:
    timing stops at the first size where it did not (a larger batch only gains from more threads) and never goes
    past `max_images`."""
    from mlsd_assets.core.serving.server.model import one_thread_crossover

    sizes: list[int] = []

    def time_sessions(images: int) -> tuple[float, float]:
        sizes.append(images)
        return 1.0, (0.9 if images <= one_thread_faster_up_to else 0.97)  # 3% faster: within the margin

    assert one_thread_crossover(time_sessions, max_images=16, margin=0.05) == expected
    assert sizes == timed


def test_logits_are_the_same_on_either_session(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    """Whichever session `logits` picks for a batch size, the answer is the model's; a predictor on one
    intra-op thread has nothing to choose and times nothing."""
    predictor = Predictor(tiny_model, intra_op_threads=2)
    assert predictor.one_thread_up_to in (0, 1, 2, 4, 8, 16)
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    name = predictor.contract.input_name
    expected = predictor.session.run(None, {name: images})[0]
    for up_to in (0, 16):
        predictor.one_thread_up_to = up_to
        np.testing.assert_allclose(predictor.logits(images), expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(Predictor, "_time_sessions", lambda self, n: pytest.fail("timed a one-thread predictor"))
    assert Predictor(tiny_model, intra_op_threads=1).one_thread_up_to == 0


def test_the_crossover_is_timed_up_to_the_largest_batch_the_server_runs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server batching up to 4 images times 1, 2 and 4 (not 16); one batching 64 times past 16."""
    sizes: list[int] = []

    def one_thread_always_faster(self: Predictor, images: int) -> tuple[float, float]:
        sizes.append(images)
        return 1.0, 0.5

    monkeypatch.setattr(Predictor, "_time_sessions", one_thread_always_faster)
    monkeypatch.setattr(Predictor, "confirm_after_s", 0.01)
    assert Predictor(tiny_model, intra_op_threads=2, largest_batch=4).one_thread_up_to == 4
    assert sizes == [1, 2, 4] * 2  # one thread won, so it was timed again
    sizes.clear()
    assert Predictor(tiny_model, intra_op_threads=2, largest_batch=64).one_thread_up_to == 64
    assert sizes == [1, 2, 4, 8, 16, 32, 64] * 2


@pytest.mark.parametrize(
    ("first", "second", "expected", "slept"),
    [(0, None, 0, []), (4, 0, 0, [0.5]), (4, 2, 2, [0.5]), (2, 16, 2, [0.5])],
)
def test_a_choice_of_one_thread_holds_only_where_it_is_timed_again_later(
    first: int, second: int | None, expected: int, slept: list[float]
):
    """A transient state of the machine (all threads as slow as one) must not fix the server's choice for its
    life: one thread is chosen for the sizes it won at two timings `confirm_after_s` apart; all threads, the
    usual outcome, needs no second timing."""
    from mlsd_assets.core.serving.server.model import confirmed_crossover

    rounds = iter([first, second])
    current: list[int] = []
    naps: list[float] = []

    def time_sessions(images: int) -> tuple[float, float]:
        if images == 1:
            current[:] = [next(rounds)]
        return 1.0, (0.5 if images <= current[0] else 1.0)

    assert confirmed_crossover(time_sessions, 16, 0.5, sleep=naps.append) == expected
    assert naps == slept


def test_the_answer_is_sent_before_the_request_is_measured(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    """uvloop writes a response at the end of the loop iteration that sent it: the metrics of an infer request
    are recorded in a later iteration, so the client's bytes never wait for them."""
    from mlsd_assets.core.serving.server.metrics import Metrics
    from mlsd_assets.core.serving.server.protocol import REQUEST_TASKS

    events: list[str] = []
    monkeypatch.setattr(Metrics, "observe_batch", lambda self, *a: events.append("observe_batch"))
    monkeypatch.setattr(Metrics, "count_request", lambda self, route, method, status, s: events.append(str(status)))
    app = create_app(Predictor(tiny_model), LIMITS)
    body, headers = infer_body("images", "logits", np.zeros((1, 32, 32, 3), np.uint8))

    async def scenario() -> list[str]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        scope = {
            "type": "http",
            "method": "POST",
            "path": INFER,
            "headers": [
                (k.lower().encode(), v.encode()) for k, v in {**headers, "content-length": str(len(body))}.items()
            ],
            "extensions": {REQUEST_TASKS: {"this request"}},  # alone: the model runs on the loop's thread
        }

        async def send(message: dict) -> None:
            events.append(message["type"])

        await app(scope, lambda: asyncio.sleep(0, messages.pop()), send)
        answered = list(events)
        await asyncio.sleep(0)
        return answered

    answered = asyncio.run(scenario())
    assert answered == ["http.response.start", "http.response.body"]
    assert events == [*answered, "observe_batch", "200"]
