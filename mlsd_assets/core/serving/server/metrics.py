"""Prometheus metrics (prometheus_client) and the ASGI middleware that counts every request by route."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: half the exposition, and nothing here reads them


class Metrics:
    """One registry per app (tests start several apps in one process)."""

    def __init__(self, model_labels: dict[str, str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("mlsd_model", "The model this server answers with.", registry=r).info(model_labels)
        self.requests = Counter(
            "mlsd_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "mlsd_request_duration_seconds",
            "Request start to response end, in the server.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.disconnects = Counter(
            "mlsd_client_disconnects",
            "Requests whose client went away before the answer (not errors).",
            ["route"],
            registry=r,
        )
        self.rejected = Counter(
            "mlsd_rejected_requests",
            "Requests refused to protect the server (in-flight bytes, slow body).",
            ["reason"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "mlsd_inference_duration_seconds",
            "ONNX Runtime time per call (one call per batch).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "mlsd_queue_duration_seconds",
            "Time a request (or chunk of one) waited for the inference worker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlsd_batch_size", "Images per ONNX Runtime call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("mlsd_inferred_images", "Images classified.", registry=r)

    def observe_batch(self, images: int, seconds: float, queued: list[float]) -> None:
        """Called from the inference thread: prometheus_client metrics are thread-safe."""
        self.images.inc(images)
        self.batch_size.observe(images)
        self.inference_seconds.observe(seconds)
        for q in queued:
            self.queue_seconds.observe(q)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# The handlers answer a client that went away mid-request with this status (nginx's "client closed request"):
# it never reaches the client, and it is counted in mlsd_client_disconnects_total, not as a request or an error.
CLIENT_GONE = 499
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts every HTTP request, 404/405 and crashes included, under the route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: dict[Callable, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self.templates.get(scope.get("endpoint"), "other")
            if status == CLIENT_GONE:
                self.metrics.disconnects.labels(route).inc()
            else:
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"
                self.metrics.requests.labels(route, method, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
