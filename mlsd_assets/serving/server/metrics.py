"""Prometheus counters and histograms in the text exposition format (no client library in the image)."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str, labels: str) -> Iterable[str]:
        sep = "," if labels else ""
        running = 0
        for bound, count in zip((*map(repr, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}'
        yield f"{name}_sum{{{labels}}} {self.total}"
        yield f"{name}_count{{{labels}}} {running}"


class Metrics:
    """Request counts by path/method/status, errors, request and inference latency, images predicted."""

    def __init__(self, model_labels: dict[str, str]) -> None:
        self.model_labels = model_labels
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.request_seconds: dict[str, Histogram] = defaultdict(Histogram)
        self.inference_seconds = Histogram()
        self.images = 0

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        self.requests[(path, method, status)] += 1
        self.request_seconds[path].observe(seconds)

    def observe_inference(self, images: int, seconds: float) -> None:
        self.images += images
        self.inference_seconds.observe(seconds)

    def render(self) -> str:
        model = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(self.model_labels.items()))
        out = [
            "# HELP mlsd_model_info The model this server answers with.",
            "# TYPE mlsd_model_info gauge",
            f"mlsd_model_info{{{model}}} 1",
            "# HELP mlsd_http_requests_total HTTP requests by path, method and status.",
            "# TYPE mlsd_http_requests_total counter",
        ]
        for (path, method, status), n in sorted(self.requests.items()):
            out.append(f'mlsd_http_requests_total{{path="{path}",method="{method}",status="{status}"}} {n}')
        out += [
            "# HELP mlsd_http_request_errors_total HTTP requests answered with a 4xx or 5xx status.",
            "# TYPE mlsd_http_request_errors_total counter",
        ]
        errors: dict[tuple[str, str], int] = defaultdict(int)
        for (path, _, status), n in self.requests.items():
            if status >= 400:
                errors[(path, f"{status // 100}xx")] += n
        for (path, kind), n in sorted(errors.items()):
            out.append(f'mlsd_http_request_errors_total{{path="{path}",class="{kind}"}} {n}')
        out += [
            "# HELP mlsd_http_request_duration_seconds Request start to response end, in the server.",
            "# TYPE mlsd_http_request_duration_seconds histogram",
        ]
        for path, hist in sorted(self.request_seconds.items()):
            out.extend(hist.lines("mlsd_http_request_duration_seconds", f'path="{path}"'))
        out += [
            "# HELP mlsd_inference_duration_seconds ONNX Runtime time per predict call.",
            "# TYPE mlsd_inference_duration_seconds histogram",
            *self.inference_seconds.lines("mlsd_inference_duration_seconds", ""),
            "# HELP mlsd_predicted_images_total Images classified.",
            "# TYPE mlsd_predicted_images_total counter",
            f"mlsd_predicted_images_total {self.images}",
        ]
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts every HTTP request, including 404/405 and crashes, under a bounded set of path labels."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

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
            path = scope["path"] if scope["path"] in self.known_paths else "other"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe_request(path, method, status, time.perf_counter() - start)
