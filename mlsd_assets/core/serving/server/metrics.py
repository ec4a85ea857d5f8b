"""Prometheus metrics (prometheus_client declarations, one registry per app) and the middleware counting requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECONDS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A client that went away mid-request gets this status (nginx's "client closed request"): it never reaches the
# client, and it is counted in mlsd_client_disconnects_total, not as a request or an error.
CLIENT_GONE = 499
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "OTHER" (bounded labels)
disable_created_metrics()  # no *_created series: half the exposition, and nothing here reads them


class Metrics:
    """The server's metrics in their own registry (tests start several apps in one process)."""

    def __init__(self, model_labels: dict[str, str]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        Info("mlsd_model", "The model this server answers with.", registry=r).info(model_labels)
        self.requests = Counter("mlsd_requests", "HTTP requests.", ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "mlsd_request_duration_seconds", "Request start to response end.", ["route"], buckets=SECONDS, registry=r
        )
        self.disconnects = Counter("mlsd_client_disconnects", "Clients gone before the answer.", ["route"], registry=r)
        self.rejected = Counter(
            "mlsd_rejected_requests", "Requests refused to protect the server.", ["reason"], registry=r
        )
        self.inference_seconds = Histogram(
            "mlsd_inference_duration_seconds", "Per ORT call.", buckets=SECONDS, registry=r
        )
        self.queue_seconds = Histogram("mlsd_queue_duration_seconds", "Wait for ORT.", buckets=SECONDS, registry=r)
        self.batch_size = Histogram(
            "mlsd_batch_size", "Images per ORT call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r
        )
        self.images = Counter("mlsd_inferred_images", "Images classified.", registry=r)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished request; the labelled children are looked up once per (route, method, status)."""
        if status == CLIENT_GONE:
            self.disconnects.labels(route).inc()
            return
        key = (route, method if method in METHODS else "OTHER", status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, key[1], str(status)), self.request_seconds.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, images: int, seconds: float, queued: list[float]) -> None:
        self.images.inc(images)
        self.batch_size.observe(images)
        self.inference_seconds.observe(seconds)
        for q in queued:
            self.queue_seconds.observe(q)


class MetricsMiddleware:
    """Counts every HTTP request (404/405 and crashes included) under its route template: bounded labels."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: dict) -> None:
        self.app, self.metrics, self.templates = app, metrics, templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self.templates.get(scope.get("endpoint"), "other")
            self.metrics.count_request(route, scope["method"], status[0], time.perf_counter() - start)
