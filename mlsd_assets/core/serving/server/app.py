"""The ASGI app: Open Inference Protocol v2 (KServe v2) REST with the binary tensor data extension, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .batching import Batcher, BatchingConfig
from .inputs import InferRequest, InputError, Limits, RequestParser
from .metrics import CLIENT_GONE, Metrics, MetricsMiddleware
from .model import Predictor
from .protocol import REQUEST_TASKS

log = logging.getLogger("mlsd_server")

JSON_TYPE = "application/json"
HEADER_LENGTH = b"inference-header-content-length"  # as ASGI headers spell it, in requests and answers
INFER_ROUTE = "/v2/models/{name}/infer"  # the metrics label of both infer paths
OFFLOAD_BYTES = 64 * 1024  # bodies above this are parsed on a thread, not on the event loop
PREALLOCATE_BYTES = 256 * 1024  # bodies above this are read into one buffer of the declared size
# Declared bodies up to this size skip the in-flight budget, so stalled big uploads cannot starve single-image
# requests; they are bounded by the connection limit instead (512 x 64 KiB = 32 MiB).
SMALL_BODY_BYTES = 64 * 1024


class ByteBudget:
    """Request-body bytes held by all requests together (the event loop is single-threaded: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise InputError(
                503, f"server busy: {self.used} bytes of request bodies in flight, the limit is {self.limit}; retry"
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class _Gone(Exception):
    """The client disconnected while its request was read or served."""


async def _read_body(
    headers: dict[bytes, bytes], receive: Receive, limits: Limits, budget: ByteBudget, held: list[int]
) -> bytes | bytearray:
    """The body within the per-request size, the global in-flight budget and the body
    deadline. `held` gets the bytes reserved in `budget`, which the caller gives back when the request is done."""
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(400, f"invalid Content-Length {declared.decode('latin-1')!r}")
        if int(declared) > limits.max_body_bytes:
            raise InputError(413, f"body of {int(declared)} bytes exceeds the limit of {limits.max_body_bytes} bytes")
        if int(declared) > SMALL_BODY_BYTES:
            budget.take(int(declared))
            held[0] = int(declared)
    buffer = bytearray(int(declared)) if declared is not None and int(declared) > PREALLOCATE_BYTES else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Gone
                chunk = message.get("body", b"")
                if size + len(chunk) > limits.max_body_bytes:
                    raise InputError(413, f"body exceeds the limit of {limits.max_body_bytes} bytes")
                if declared is None:
                    budget.take(len(chunk))
                    held[0] += len(chunk)
                if buffer is not None:
                    buffer[size : size + len(chunk)] = chunk
                elif chunk:
                    chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body"):
                    break
    except TimeoutError:
        raise InputError(408, f"body not received within {limits.body_timeout_s:g} s ({size} bytes came)") from None
    if buffer is not None:
        return buffer
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Answer(NamedTuple):
    """An infer answer as its raw ASGI parts, sent as they are. Building and sending an answer took ~0.2 ms per
    request on a 2-core VM, where the Python after ORT runs with cold caches; a Starlette Response per request
    (its header normalisation, then its own send) was 0.02-0.06 ms of that (README, Benchmarks)."""

    status_code: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @classmethod
    def of(cls, response: Response) -> Answer:
        return cls(response.status_code, response.raw_headers, bytes(response.body))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def _check_encoding(headers: dict[bytes, bytes]) -> None:
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding != b"identity":
        raise InputError(
            415, f"Content-Encoding {encoding.decode('latin-1')!r} is not accepted: send the body uncompressed"
        )


def _error(status: int, reason: str) -> Response:
    headers = {"retry-after": "1"} if status == 503 else {}
    if status in (408, 413, 503):  # the body may be unread: close, rather than wait for the rest of it
        headers["connection"] = "close"
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _internal_error(path: str, exc: Exception) -> Response:
    log.exception("internal error on POST %s", path)
    return _error(500, f"internal server error: {type(exc).__name__}: {exc}")


def _model_metadata(predictor: Predictor, limits: Limits, batching: BatchingConfig, workers: int) -> bytes:
    """`GET /v2/models/{name}`, rendered once: the contract, the limits and the batching this server runs with."""
    contract = predictor.contract
    body = {
        "name": contract.name,
        "versions": [contract.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": contract.input_name, "datatype": "UINT8", "shape": [-1, *contract.image_shape]}],
        "outputs": [{"name": contract.output_name, "datatype": "FP32", "shape": [-1, len(contract.classes)]}],
        "parameters": {
            "mlsd": contract.describe(),
            "encoded_images": "or a BYTES [N] tensor of PNG/JPEG files under the same input name",
            "limits": {
                "max_batch": limits.max_batch,
                "max_body_bytes": limits.max_body_bytes,
                "max_encoded_image_bytes": limits.max_encoded_image_bytes,
            },
            "batching": {
                "enabled": batching.enabled,
                "max_batch_size": batching.max_batch_size,
                "max_queue_delay_us": batching.max_queue_delay_us,
                "workers": workers,
            },
            "runtime": {
                "onnxruntime": ort.__version__,
                "providers": predictor.session.get_providers(),
                "one_thread_up_to_images": getattr(predictor, "one_thread_up_to", 0),
            },
        },
    }
    return json.dumps(body).encode()


class _Endpoints:
    """The v2 endpoints of one model; one event loop parses, queues, runs the batched model and answers."""

    def __init__(self, predictor: Predictor, limits: Limits, batching: BatchingConfig) -> None:
        self.contract = contract = predictor.contract
        self.limits = limits
        run_id = contract.metadata.get("mlsd.mlflow_run_id", "")
        labels = {"model_name": contract.name, "model_version": contract.version, "mlflow_run_id": run_id}
        self.metrics = Metrics(labels)
        # Predictors without a one-thread session (one worker; test doubles) run every batch on the loop's thread.
        one_thread = predictor.one_thread_logits if getattr(predictor, "one_thread", None) is not None else None
        self.batcher = Batcher(predictor.logits, batching, self.metrics.observe_batch, one_thread)
        self.budget = ByteBudget(limits.max_inflight_bytes)
        self.parser = RequestParser(contract.input_name, contract.image_shape, limits)
        self.model_json = _model_metadata(predictor, limits, batching, self.batcher.workers)
        name, version = contract.name, contract.version
        self.infer_paths = frozenset({f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{version}/infer"})

    def routes(self) -> list[Route]:
        model, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        return [
            *(Route(f"{base}/infer", self.other_model, methods=["POST"]) for base in (model, versioned)),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            *(Route(base, self.model_metadata, methods=["GET"]) for base in (model, versioned)),
            *(Route(f"{base}/ready", self.model_ready, methods=["GET"]) for base in (model, versioned)),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]

    def check_model(self, request: Request) -> Response | None:
        name, version = self.contract.name, self.contract.version
        asked, asked_version = request.path_params["name"], request.path_params.get("version")
        if asked != name:
            return _error(404, f"model {asked!r} is not served here; this server serves {name!r} version {version!r}")
        if asked_version is not None and asked_version != version:
            return _error(404, f"model {name!r} has no version {asked_version!r} here; it serves version {version!r}")
        return None

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "mlsd", "version": ort.__version__, "extensions": ["binary_tensor_data"]})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def repository_index(self, request: Request) -> Response:
        return JSONResponse([{"name": self.contract.name, "version": self.contract.version, "state": "READY"}])

    async def model_metadata(self, request: Request) -> Response:
        return self.check_model(request) or Response(self.model_json, media_type=JSON_TYPE)

    async def model_ready(self, request: Request) -> Response:
        return self.check_model(request) or JSONResponse({"name": self.contract.name, "ready": True})

    async def other_model(self, request: Request) -> Response:
        """Infer on a model name or version not served here (the served ones go to `infer`, never to Starlette)."""
        return self.check_model(request) or _error(404, f"{request.url.path} is not an infer path of this server")

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST infer on the served model, as a plain ASGI app: Starlette's request and response objects and its
        middleware stack cost more per request than parsing the HTTP does. The request is counted in the next
        loop iteration: uvloop writes the answer at the end of this one, and the client should not wait for that."""
        start, status = time.perf_counter(), 500
        try:
            response = await self._answer(scope, receive)
            status = response.status_code
            if status != CLIENT_GONE:
                await response(scope, receive, send)
        finally:
            seconds = time.perf_counter() - start
            asyncio.get_running_loop().call_soon(self.metrics.count_request, INFER_ROUTE, "POST", status, seconds)

    def answer_now(self, scope: Scope, body: bytes | bytearray) -> Answer | None:
        """An infer request alone in the server whose whole small body the protocol already holds, answered on the
        spot: no task, no ASGI messages, no queue. None: not one (another path, a big body, a client error, a
        request the batcher would queue); the protocol then serves it through `infer`, which parses it again."""
        start = time.perf_counter()
        if scope["method"] != "POST" or scope["path"] not in self.infer_paths or len(body) > OFFLOAD_BYTES:
            return None
        headers = dict(scope["headers"])
        try:
            _check_encoding(headers)
            parsed = self._parse(headers, body)
        except InputError:
            return None
        if not self.batcher.can_run_now(parsed.images):
            return None
        try:
            answer = self._respond(parsed, self.batcher.run_now(parsed.images))
        except Exception as exc:
            answer = Answer.of(_internal_error(scope["path"], exc))
        seconds = time.perf_counter() - start
        asyncio.get_running_loop().call_soon(
            self.metrics.count_request, INFER_ROUTE, "POST", answer.status_code, seconds
        )
        return answer

    def _respond(self, parsed: InferRequest, logits: np.ndarray) -> Answer:
        contract = self.contract
        return _infer_response(parsed, logits, contract.name, contract.version, contract.output_name)

    def _parse(self, headers: dict[bytes, bytes], body: bytes | bytearray) -> InferRequest:
        length = headers.get(HEADER_LENGTH)
        parsed = self.parser.parse(body, length.decode("latin-1") if length is not None else None)
        output = self.contract.output_name
        unknown = [o for o in parsed.outputs or (output,) if o != output]
        if unknown:
            raise InputError(400, f"unknown outputs {unknown}: this model's output is {output!r}")
        return parsed

    async def _answer(self, scope: Scope, receive: Receive) -> Answer | Response:
        headers = dict(scope["headers"])
        held = [0]
        try:
            _check_encoding(headers)
            body = await _read_body(headers, receive, self.limits, self.budget, held)
            if len(body) > OFFLOAD_BYTES:
                parsed = await asyncio.to_thread(self._parse, headers, body)
            else:
                parsed = self._parse(headers, body)
            in_flight = scope.get("extensions", {}).get(REQUEST_TASKS)
            logits = await self.batcher.infer(parsed.images, alone=in_flight is not None and len(in_flight) <= 1)
        except InputError as exc:
            if exc.status == 503:
                self.metrics.rejected.labels("inflight_bytes").inc()
            elif exc.status == 408:
                self.metrics.rejected.labels("body_timeout").inc()
            return _error(exc.status, exc.reason)
        except _Gone:
            return Response(status_code=CLIENT_GONE)
        except Exception as exc:
            return _internal_error(scope["path"], exc)
        finally:
            self.budget.give(held[0])
        return self._respond(parsed, logits)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal server error: {type(exc).__name__}: {exc}")

    async def not_found(self, request: Request, exc: Exception) -> Response:
        reason = f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}"
        return _error(getattr(exc, "status_code", 404), reason)


class InferenceApp:
    """The ASGI app: infer on the served model goes straight to its handler, everything else through Starlette
    (routing, errors) inside the metrics middleware. `.metrics`, `.batcher` and `.budget` are exposed for tests."""

    def __init__(self, predictor: Predictor, limits: Limits, batching: BatchingConfig) -> None:
        endpoints = _Endpoints(predictor, limits, batching)
        routes = endpoints.routes()
        handlers = {Exception: endpoints.server_error, 404: endpoints.not_found, 405: endpoints.not_found}
        # Label by template, the versioned form folded into the plain one: a bounded set of route labels.
        templates = {r.endpoint: r.path.replace("/versions/{version}", "") for r in routes}
        self.other = MetricsMiddleware(
            Starlette(routes=routes, exception_handlers=handlers), endpoints.metrics, templates
        )
        self.infer, self.answer_now, self.infer_paths = endpoints.infer, endpoints.answer_now, endpoints.infer_paths
        self.metrics, self.batcher, self.budget = endpoints.metrics, endpoints.batcher, endpoints.budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.infer_paths:
            await self.infer(scope, receive, send)
        else:
            await self.other(scope, receive, send)


def create_app(
    predictor: Predictor, limits: Limits | None = None, batching: BatchingConfig | None = None
) -> InferenceApp:
    """The server's ASGI app for `predictor`, with the default limits and batching where none are given."""
    return InferenceApp(predictor, limits or Limits(), batching or BatchingConfig())


def _infer_response(parsed: InferRequest, logits: np.ndarray, name: str, version: str, output: str) -> Answer:
    """JSON outputs, or the JSON header followed by raw little-endian FP32 when the client asked for binary."""
    out: dict = {"name": output, "datatype": "FP32", "shape": list(logits.shape)}
    doc: dict = {"model_name": name, "model_version": version, "outputs": [out]}
    if parsed.request_id is not None:
        doc["id"] = parsed.request_id
    if output in parsed.binary_outputs or "*" in parsed.binary_outputs:
        raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(doc, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/octet-stream"),
            (HEADER_LENGTH, b"%d" % len(header)),
            (b"content-length", b"%d" % (len(header) + len(raw))),
        ]
        return Answer(200, headers, header + raw)
    out["data"] = logits.ravel().tolist()
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Answer(200, [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))], body)
