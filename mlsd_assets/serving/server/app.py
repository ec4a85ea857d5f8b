"""The ASGI app: /v1/predict, /health, /metadata, /metrics."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .inputs import InputError, Limits, images_from_json, images_from_raw
from .metrics import Metrics, MetricsMiddleware
from .model import Predictor

log = logging.getLogger("mlsd_server")

RAW_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known (or seen) to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise InputError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"body exceeds the limit of {limit} bytes")
        if chunk:
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(predictor: Predictor, limits: Limits | None = None) -> MetricsMiddleware:
    """Inference runs on the event loop: for sub-millisecond models a thread hop costs more than it saves."""
    limits = limits or Limits()
    contract = predictor.contract
    metadata = contract.describe() | {
        "limits": {"max_batch": limits.max_batch, "max_body_bytes": limits.max_body_bytes},
        "runtime": {"onnxruntime": ort.__version__, "providers": predictor.session.get_providers()},
    }
    metadata_body = json.dumps(metadata).encode()
    health_body = json.dumps({"status": "ok", "model_version": contract.version}).encode()
    metrics = Metrics(
        {
            "model_name": contract.metadata.get("mlsd.registered_model_name", ""),
            "model_version": contract.version,
            "mlflow_run_id": contract.metadata.get("mlsd.mlflow_run_id", ""),
        }
    )

    async def predict(request: Request) -> Response:
        try:
            ctype = request.headers.get("content-type", RAW_TYPE).split(";")[0].strip().lower()
            if ctype not in (RAW_TYPE, JSON_TYPE):
                raise InputError(415, f"Content-Type must be {RAW_TYPE} or {JSON_TYPE}, got {ctype!r}")
            body = await _read_body(request, limits.max_body_bytes)
            if ctype == RAW_TYPE:
                q = request.query_params
                images = images_from_raw(
                    body, request.headers.get("x-shape"), q.get("n"), request.headers.get("x-dtype"),
                    contract.image_shape, limits,
                )
            else:
                images = images_from_json(body, contract.image_shape, limits)
        except InputError as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        start = time.perf_counter()
        logits = predictor.logits(images)
        metrics.observe_inference(len(images), time.perf_counter() - start)
        result: dict = {"model_version": contract.version, "predictions": np.argmax(logits, axis=1).tolist()}
        if request.query_params.get("logits") in ("1", "true"):
            result["logits"] = logits.tolist()
        return Response(json.dumps(result, separators=(",", ":")), media_type=JSON_TYPE)

    async def health(request: Request) -> Response:
        return Response(health_body, media_type=JSON_TYPE)

    async def model_metadata(request: Request) -> Response:
        return Response(metadata_body, media_type=JSON_TYPE)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error: {type(exc).__name__}: {exc}"}, status_code=500)

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metadata", model_metadata, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: server_error})
    app.state.metrics = metrics
    wrapped = MetricsMiddleware(app, metrics, frozenset(r.path for r in routes))
    wrapped.metrics = metrics
    return wrapped
