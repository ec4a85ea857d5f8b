"""A small keep-alive HTTP client for the server's raw-bytes API: stdlib only, cheap per request."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np


class ServerRequestError(RuntimeError):
    """The server answered a well-formed request with an error (or not at all)."""


class ServerClient:
    """One persistent connection; reconnects once if the server closed it between requests."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        parsed = urlparse(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def predict(self, images: np.ndarray) -> list[int]:
        headers = {"Content-Type": "application/octet-stream", "X-Shape": ",".join(map(str, images.shape))}
        status, body = self._request("POST", "/v1/predict", np.ascontiguousarray(images).tobytes(), headers)
        if status != 200:
            raise ServerRequestError(f"POST /v1/predict ({len(images)} images) -> {status}: {body[:300]!r}")
        return json.loads(body)["predictions"]

    def get(self, path: str) -> bytes:
        status, body = self._request("GET", path)
        if status != 200:
            raise ServerRequestError(f"GET {path} -> {status}: {body[:300]!r}")
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Pass:
    """Predictions of one pass over the images; -1 where a request failed, with its error kept."""

    predictions: np.ndarray
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def single_image_pass(client: ServerClient, images: np.ndarray) -> Pass:
    """One request per image: the latency a caller of the API sees, request by request."""
    result = Pass(predictions=np.full(len(images), -1, dtype=np.int64))
    start = time.perf_counter()
    for i in range(len(images)):
        t0 = time.perf_counter()
        try:
            result.predictions[i] = client.predict(images[i : i + 1])[0]
        except (ServerRequestError, OSError, http.client.HTTPException) as exc:
            result.errors.append(f"image {i}: {exc}")
        result.seconds.append(time.perf_counter() - t0)
    result.wall_seconds = time.perf_counter() - start
    return result


def batched_pass(client: ServerClient, images: np.ndarray, batch_size: int) -> Pass:
    """The whole set in batches: throughput of the server when callers batch."""
    result = Pass(predictions=np.full(len(images), -1, dtype=np.int64))
    start = time.perf_counter()
    for lo in range(0, len(images), batch_size):
        t0 = time.perf_counter()
        try:
            result.predictions[lo : lo + batch_size] = client.predict(images[lo : lo + batch_size])
        except (ServerRequestError, OSError, http.client.HTTPException) as exc:
            result.errors.append(f"images {lo}..{lo + batch_size - 1}: {exc}")
        result.seconds.append(time.perf_counter() - t0)
    result.wall_seconds = time.perf_counter() - start
    return result
