"""The server process (real uvicorn, real sockets) under hostile clients, and dynamic batching under concurrency."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlsd_assets.core.evaluation.client import infer_body, infer_outputs
from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.services import running_service
from mlsd_assets_tests.synthetic import make_images

INFER = "/v2/models/cifar10-classifier/infer"
MiB = 1024 * 1024


@contextmanager
def serve(model: Path, log_path: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlsd_assets.core.serving.server",
        "--model",
        str(model),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    base_url = f"http://127.0.0.1:{port}"
    with running_service(cmd, log_path, f"{base_url}/v2/health/ready") as proc:
        yield base_url, proc


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    limits = [
        "--max-inflight-bytes",
        str(8 * MiB),
        "--body-timeout-s",
        "2",
        "--head-timeout-s",
        "1",
        "--max-queue-delay-us",
        "5000",
        "--max-batch-size",
        "32",
    ]
    with serve(tiny_model, log_path, *limits) as (base_url, proc):
        yield base_url, proc, log_path


def samples(base_url: str, name: str) -> dict[tuple, float]:
    text = httpx.get(f"{base_url}/metrics").text
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def recv_all(sock: socket.socket, timeout_s: float = 10) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_concurrent_distinct_images_each_get_their_own_answer_in_shared_batches(server, tiny_model: Path):
    """The MLServer#1306 bug class: coalesced requests must not get each other's answers."""
    base_url, _, _ = server
    images, _ = make_images(96, seed=5)
    session = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"images": images})[0]
    before = samples(base_url, "mlsd_batch_size_count").get((), 0.0)

    async def one(http: httpx.AsyncClient, i: int) -> np.ndarray:
        content, headers = infer_body("images", "logits", images[i : i + 1])
        r = await http.post(INFER, content=content, headers=headers)
        assert r.status_code == 200, r.text
        return infer_outputs(r.content, r.headers.get("inference-header-content-length"))["logits"][0]

    async def all_at_once() -> list[np.ndarray]:
        limits = httpx.Limits(max_connections=96)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            return await asyncio.gather(*(one(http, i) for i in range(len(images))))

    got = np.stack(asyncio.run(all_at_once()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    calls = samples(base_url, "mlsd_batch_size_count")[()] - before
    assert calls < len(images) / 2, f"{calls:.0f} ORT calls for {len(images)} concurrent requests: no batching"


def test_header_over_limit_is_refused_with_431_and_memory_stays_flat(server):
    base_url, proc, _ = server
    peak = peak_rss_mb(proc.pid)
    with socket.create_connection(("127.0.0.1", port_of(base_url))) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64 * 16):  # up to 64 MiB, the server hangs up long before
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"exceed 65536 bytes" in answer
    assert peak_rss_mb(proc.pid) - peak < 30, "the header was buffered"
    assert httpx.get(f"{base_url}/v2/health/live").status_code == 200


def test_slow_request_head_times_out_with_408(server):
    base_url, _, _ = server
    with socket.create_connection(("127.0.0.1", port_of(base_url))) as sock:
        sock.sendall(b"POST /v2 HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.9 < time.monotonic() - start < 5


def stalled_upload(port: int, size: int) -> tuple[socket.socket, bytes]:
    """Declares `size` bytes; unless refused at once, sends all but one and waits. Returns any early answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    sock.settimeout(0.3)
    try:
        early = sock.recv(65536)
    except TimeoutError:
        early = b""
    if not early:
        sock.sendall(bytes(size - 1))
    return sock, early


def test_stalled_uploads_are_bounded_in_total_and_in_time(server):
    base_url, proc, _ = server
    rejected = samples(base_url, "mlsd_rejected_requests_total")
    uploads = [stalled_upload(port_of(base_url), 4 * MiB) for _ in range(6)]
    socks = [sock for sock, _ in uploads]
    try:
        time.sleep(0.5)
        # Two fill the 8 MiB in-flight budget; the other four are refused at once (503), not held. A single-image
        # request still gets through: small bodies do not compete with big uploads for the budget.
        content, headers = infer_body("images", "logits", np.zeros((1, 32, 32, 3), np.uint8))
        assert httpx.post(base_url + INFER, content=content, headers=headers).status_code == 200
        answers = [early or recv_all(sock, timeout_s=5) for sock, early in uploads]
    finally:
        for s in socks:
            s.close()
    heads = sorted(a.split(b"\r\n")[0] for a in answers)
    assert heads == [b"HTTP/1.1 408 Request Timeout"] * 2 + [b"HTTP/1.1 503 Service Unavailable"] * 4, heads
    assert any(b"retry-after: 1" in a.lower() for a in answers)
    after = samples(base_url, "mlsd_rejected_requests_total")
    for reason, n in (("inflight_bytes", 4), ("body_timeout", 2)):
        key = (("reason", reason),)
        assert after[key] - rejected.get(key, 0.0) == n
    assert peak_rss_mb(proc.pid) < 400


def test_disconnect_mid_body_is_counted_as_a_disconnect_not_an_error(server):
    base_url, _, log_path = server
    with socket.create_connection(("127.0.0.1", port_of(base_url))) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + bytes(5000))
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not samples(base_url, "mlsd_client_disconnects_total") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert samples(base_url, "mlsd_client_disconnects_total") == {(("route", "/v2/models/{name}/infer"),): 1.0}
    statuses = {dict(k)["status"] for k in samples(base_url, "mlsd_requests_total")}
    assert "500" not in statuses, statuses
    assert "Traceback" not in log_path.read_text()


def test_connection_limit_answers_503_beyond_it(tiny_model: Path, tmp_path: Path):
    with serve(tiny_model, tmp_path / "server.log", "--max-connections", "4") as (base_url, _):
        idle = [socket.create_connection(("127.0.0.1", port_of(base_url))) for _ in range(4)]
        try:
            time.sleep(0.2)
            r = httpx.get(f"{base_url}/v2/health/live")
            assert r.status_code == 503
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        assert httpx.get(f"{base_url}/v2/health/live").status_code == 200


class RecordingPredictor:
    """The tiny model, noting per ORT call its images and whether it ran in a request's own task (the batcher
    runs queued batches from a loop callback, outside any task); `hold_s` delays the next call once."""

    def __init__(self, model: Path) -> None:
        from mlsd_assets.core.serving.server.model import Predictor

        inner = Predictor(model)
        self.contract, self.session, self._logits = inner.contract, inner.session, inner.logits
        self.hold_s, self.calls = 0.0, []

    def logits(self, images: np.ndarray) -> np.ndarray:
        self.calls.append((len(images), asyncio.current_task() is not None))
        time.sleep(self.hold_s)
        self.hold_s = 0.0
        return self._logits(images)


@contextmanager
def serve_in_thread(app, protocol: type | None = None) -> Iterator[str]:  # noqa: ANN001
    """uvicorn with a protocol class of the server's (default: without the infer fast path), in a thread of this
    process (so the test sees the app)."""
    import threading

    import uvicorn

    from mlsd_assets.core.serving.server.protocol import BoundedHttpToolsProtocol

    port = free_port()
    http = protocol or BoundedHttpToolsProtocol
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, log_level="warning", loop="uvloop", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_request_alone_runs_at_once_and_concurrent_ones_still_share_batches(tiny_model: Path):
    """Default batching (no queue delay), through the ASGI app: a request alone in the server runs the model in
    its own task, with no hop through the queue; requests that arrive together on open connections are still
    coalesced, each answered with its own logits."""
    from mlsd_assets.core.serving.server.app import create_app

    images, _ = make_images(40, seed=11)
    expected = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": images}
    )[0]
    predictor = RecordingPredictor(tiny_model)

    async def post(http: httpx.AsyncClient, i: int) -> np.ndarray:
        content, headers = infer_body("images", "logits", images[i : i + 1])
        r = await http.post(INFER, content=content, headers=headers)
        assert r.status_code == 200, r.text
        return infer_outputs(r.content, r.headers.get("inference-header-content-length"))["logits"][0]

    async def scenario(base_url: str) -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=16)) as http:
            answers = await asyncio.gather(*(post(http, i) for i in range(16)))  # opens 16 keep-alive connections
            predictor.calls.clear()
            predictor.hold_s = 0.3  # the next call holds the model: the others arrive meanwhile
            first = asyncio.create_task(post(http, 16))
            await asyncio.sleep(0.1)
            answers += await asyncio.gather(first, *(post(http, i) for i in range(17, 32)))
            answers += [await post(http, i) for i in range(32, 40)]
        return answers

    with serve_in_thread(create_app(predictor)) as base_url:
        answers = asyncio.run(scenario(base_url))
    np.testing.assert_allclose(np.stack(answers), expected, rtol=1e-5, atol=1e-6)
    calls = predictor.calls
    assert calls[0] == (1, True), calls  # alone: ran at once, in its own task
    assert calls[-8:] == [(1, True)] * 8, calls  # one by one: each alone
    shared = calls[1:-8]
    assert sum(n for n, _ in shared) == 15 and max(n for n, _ in shared) > 1, calls
    assert all(not in_task for n, in_task in shared if n > 1), calls  # batches run from the queue


def _fast_path_spy(app) -> list[bool]:  # noqa: ANN001
    """Notes, per request the protocol offered to the app's fast path, whether it was answered there."""
    offered, answer_now = [], app.answer_now

    def spy(scope, body):  # noqa: ANN001, ANN202
        answer = answer_now(scope, body)
        offered.append(answer is not None)
        return answer

    app.answer_now = spy
    return offered


def test_the_server_protocol_answers_a_request_alone_without_a_task_and_still_batches_company(tiny_model: Path):
    """The server's own protocol: a request alone is answered from the protocol (no ASGI task), with the same
    logits and the same request metrics; requests that arrive together still start tasks and share batches."""
    from mlsd_assets.core.serving.server.app import create_app
    from mlsd_assets.core.serving.server.protocol import InferProtocol

    images, _ = make_images(40, seed=12)
    expected = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": images}
    )[0]
    predictor = RecordingPredictor(tiny_model)
    app = create_app(predictor)
    offered = _fast_path_spy(app)

    async def post(http: httpx.AsyncClient, i: int) -> np.ndarray:
        content, headers = infer_body("images", "logits", images[i : i + 1])
        r = await http.post(INFER, content=content, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream" and "date" in r.headers
        return infer_outputs(r.content, r.headers.get("inference-header-content-length"))["logits"][0]

    async def scenario(base_url: str) -> tuple[list[np.ndarray], list, list[bool]]:
        async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=16)) as http:
            answers = await asyncio.gather(*(post(http, i) for i in range(16)))  # opens 16 keep-alive connections
            predictor.calls.clear()
            answers += [await post(http, i) for i in range(16, 24)]  # one by one: each alone
            alone = (list(predictor.calls), offered[-8:])
            predictor.calls.clear()
            predictor.hold_s = 0.3  # the next call holds the model: the others arrive meanwhile
            first = asyncio.create_task(post(http, 24))
            await asyncio.sleep(0.1)
            answers += await asyncio.gather(first, *(post(http, i) for i in range(25, 40)))
        return answers, *alone

    with serve_in_thread(app, InferProtocol) as base_url:
        answers, alone_calls, alone_offered = asyncio.run(scenario(base_url))
        counted = samples(base_url, "mlsd_requests_total")
    np.testing.assert_allclose(np.stack(answers), expected, rtol=1e-5, atol=1e-6)
    assert alone_calls == [(1, False)] * 8 and alone_offered == [True] * 8, (alone_calls, alone_offered)
    shared = predictor.calls[1:]
    assert predictor.calls[0] == (1, False), predictor.calls  # the held one: alone, answered from the protocol
    assert sum(n for n, _ in shared) == 15 and max(n for n, _ in shared) > 1, predictor.calls
    infer_200 = (("method", "POST"), ("route", "/v2/models/{name}/infer"), ("status", "200"))
    assert counted[infer_200] == 40, counted


def _responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The HTTP/1.1 responses in `data`, in order: (status, headers, body)."""
    import httptools

    class Collect:
        def __init__(self) -> None:
            self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []

        def on_message_begin(self) -> None:
            self.headers, self.body = {}, b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.done.append((parser.get_status_code(), self.headers, self.body))

    collect = Collect()
    parser = httptools.HttpResponseParser(collect)
    parser.feed_data(data)
    return collect.done


def _raw_request(images: np.ndarray, *extra: bytes) -> tuple[bytes, bytes]:
    content, headers = infer_body("images", "logits", images)
    head = [f"POST {INFER} HTTP/1.1", "Host: test", f"Content-Length: {len(content)}"]
    head += [f"{k}: {v}" for k, v in headers.items()] + [e.decode() for e in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode(), content


def test_the_server_protocol_keeps_http_semantics_on_its_fast_path(tiny_model: Path):
    """Pipelined requests are answered in order, each with its own logits; a body slower than the hold and a
    `Connection: close` request go through the ASGI app (and the latter's connection is closed); a client error
    is answered by the app with its reason. (A body right behind its head, as httpx sends it: the test above.)"""
    from mlsd_assets.core.serving.server.app import create_app
    from mlsd_assets.core.serving.server.model import Predictor
    from mlsd_assets.core.serving.server.protocol import InferProtocol

    images, _ = make_images(4, seed=13)
    expected = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": images}
    )[0]
    app = create_app(Predictor(tiny_model))
    offered = _fast_path_spy(app)

    def logits(response: tuple[int, dict[bytes, bytes], bytes]) -> np.ndarray:
        status, headers, body = response
        assert status == 200, body
        length = headers.get(b"inference-header-content-length")
        return infer_outputs(body, length.decode() if length else None)["logits"][0]

    quick = type("QuickProtocol", (InferProtocol,), {"hold_body_s": 0.05})
    with serve_in_thread(app, quick) as base_url:
        with socket.create_connection(("127.0.0.1", port_of(base_url))) as sock:
            sock.sendall(b"".join(b"".join(_raw_request(images[i : i + 1])) for i in range(3)))  # pipelined
            data = b""
            sock.settimeout(10)
            while len(_responses(data)) < 3:
                data += sock.recv(65536)
            pipelined = [logits(r) for r in _responses(data)]
            head, content = _raw_request(images[3:4])
            sock.sendall(head + content[:10])
            time.sleep(0.2)
            sock.sendall(content[10:])  # the rest after the hold: the ASGI app had started reading it
            data = b""
            while not _responses(data):
                data += sock.recv(65536)
            split = logits(_responses(data)[0])
            head, content = _raw_request(images[:1], b"Connection: close")
            sock.sendall(head + content)
            closing = _responses(recv_all(sock))
        bad = httpx.post(base_url + INFER, content=b'{"inputs": 3}', headers={"content-type": "application/json"})
    np.testing.assert_allclose(np.stack([*pipelined, split]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits(closing[0]), expected[0], rtol=1e-5, atol=1e-6)
    assert len(closing) == 1 and closing[0][1].get(b"connection") == b"close", closing
    assert bad.status_code == 400 and "inputs" in bad.json()["error"], bad.text
    # 3 pipelined (the first alone: answered there; the others alone once the one before is answered), the
    # slow body and the closing request never offered, the bad one offered and left to the app.
    assert offered == [True, True, True, False], offered
