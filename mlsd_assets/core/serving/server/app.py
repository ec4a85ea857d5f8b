"""The ASGI app: Open Inference Protocol v2 (KServe v2) REST with the binary tensor data extension, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import onnxruntime as ort
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batching import Batcher, BatchingConfig
from .inputs import InferRequest, InputError, Limits, infer_request, parse_header
from .metrics import CLIENT_GONE, Metrics, MetricsMiddleware
from .model import Predictor

log = logging.getLogger("mlsd_server")

JSON_TYPE = "application/json"
HEADER_LENGTH = "inference-header-content-length"
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


async def _read_body(request: Request, limits: Limits, budget: ByteBudget, held: list[int]) -> bytes | bytearray:
    """The body within the per-request size, the global in-flight budget and the body deadline.
    `held` gets the bytes reserved in `budget`, which the caller gives back when the request is done."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limits.max_body_bytes:
            raise InputError(413, f"body of {declared} bytes exceeds the limit of {limits.max_body_bytes} bytes")
        if int(declared) > SMALL_BODY_BYTES:
            budget.take(int(declared))
            held[0] = int(declared)
    buffer = bytearray(int(declared)) if declared is not None and int(declared) > PREALLOCATE_BYTES else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
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
    except TimeoutError:
        raise InputError(408, f"body not received within {limits.body_timeout_s:g} s ({size} bytes came)") from None
    except ClientDisconnect:
        raise _Gone from None
    if buffer is not None:
        return buffer
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(
    predictor: Predictor, limits: Limits | None = None, batching: BatchingConfig | None = None
) -> MetricsMiddleware:
    """One event loop parses, queues, runs the batched model (batching.py) and answers."""
    limits = limits or Limits()
    batching = batching or BatchingConfig()
    contract = predictor.contract
    name, version = contract.name, contract.version
    metrics = Metrics(
        {"model_name": name, "model_version": version, "mlflow_run_id": contract.metadata.get("mlsd.mlflow_run_id", "")}
    )
    batcher = Batcher(predictor.logits, batching, metrics.observe_batch)
    budget = ByteBudget(limits.max_inflight_bytes)
    n_classes = len(contract.classes)
    server_body = {"name": "mlsd", "version": ort.__version__, "extensions": ["binary_tensor_data"]}
    model_body = {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": contract.input_name, "datatype": "UINT8", "shape": [-1, *contract.image_shape]}],
        "outputs": [{"name": contract.output_name, "datatype": "FP32", "shape": [-1, n_classes]}],
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
            },
            "runtime": {"onnxruntime": ort.__version__, "providers": predictor.session.get_providers()},
        },
    }
    model_json = json.dumps(model_body).encode()

    def error(status: int, reason: str) -> Response:
        headers = {"retry-after": "1"} if status == 503 else {}
        if status in (408, 413, 503):  # the body may be unread: close, rather than wait for the rest of it
            headers["connection"] = "close"
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    def check_model(request: Request) -> Response | None:
        asked, asked_version = request.path_params["name"], request.path_params.get("version")
        if asked != name:
            return error(404, f"model {asked!r} is not served here; this server serves {name!r} version {version!r}")
        if asked_version is not None and asked_version != version:
            return error(404, f"model {name!r} has no version {asked_version!r} here; it serves version {version!r}")
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(server_body)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def repository_index(request: Request) -> Response:
        return JSONResponse([{"name": name, "version": version, "state": "READY"}])

    async def model_metadata(request: Request) -> Response:
        return check_model(request) or Response(model_json, media_type=JSON_TYPE)

    async def model_ready(request: Request) -> Response:
        return check_model(request) or JSONResponse({"name": name, "ready": True})

    def parse(body: bytes | bytearray, header_length: str | None) -> InferRequest:
        doc, binary = parse_header(body, header_length)
        return infer_request(doc, binary, contract.input_name, contract.image_shape, limits)

    async def infer(request: Request) -> Response:
        refused = check_model(request)
        if refused is not None:
            return refused
        held = [0]
        try:
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise InputError(415, f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed")
            body = await _read_body(request, limits, budget, held)
            header_length = request.headers.get(HEADER_LENGTH)
            if len(body) > OFFLOAD_BYTES:
                parsed = await asyncio.to_thread(parse, body, header_length)
            else:
                parsed = parse(body, header_length)
            wanted = parsed.outputs or (contract.output_name,)
            unknown = [o for o in wanted if o != contract.output_name]
            if unknown:
                raise InputError(400, f"unknown outputs {unknown}: this model's output is {contract.output_name!r}")
            logits = await batcher.infer(parsed.images)
        except InputError as exc:
            if exc.status == 503:
                metrics.rejected.labels("inflight_bytes").inc()
            elif exc.status == 408:
                metrics.rejected.labels("body_timeout").inc()
            return error(exc.status, exc.reason)
        except _Gone:
            return Response(status_code=CLIENT_GONE)
        finally:
            budget.give(held[0])
        return _infer_response(parsed, logits, name, version, contract.output_name)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal server error: {type(exc).__name__}: {exc}")

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(
            getattr(exc, "status_code", 404),
            f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}",
        )

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [  # infer first: Starlette tries the routes in order, and infer is the hot path
        *(Route(f"{base}/infer", infer, methods=["POST"]) for base in (model, versioned)),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        *(Route(base, model_metadata, methods=["GET"]) for base in (model, versioned)),
        *(Route(f"{base}/ready", model_ready, methods=["GET"]) for base in (model, versioned)),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={Exception: server_error, 404: not_found, 405: not_found},
    )
    # Label by template, the versioned form folded into the plain one: a bounded set of route labels.
    templates = {r.endpoint: r.path.replace("/versions/{version}", "") for r in routes}
    wrapped = MetricsMiddleware(app, metrics, templates)
    wrapped.metrics = metrics  # type: ignore[attr-defined]
    wrapped.batcher = batcher  # type: ignore[attr-defined]
    wrapped.budget = budget  # type: ignore[attr-defined]
    return wrapped


def _infer_response(parsed: InferRequest, logits: np.ndarray, name: str, version: str, output: str) -> Response:
    """JSON outputs, or the JSON header followed by raw little-endian FP32 when the client asked for binary."""
    out: dict = {"name": output, "datatype": "FP32", "shape": list(logits.shape)}
    doc: dict = {"model_name": name, "model_version": version, "outputs": [out]}
    if parsed.request_id is not None:
        doc["id"] = parsed.request_id
    if output in parsed.binary_outputs or "*" in parsed.binary_outputs:
        raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(doc, separators=(",", ":")).encode()
        return Response(header + raw, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})
    out["data"] = logits.ravel().tolist()
    return Response(json.dumps(doc, separators=(",", ":")), media_type=JSON_TYPE)
