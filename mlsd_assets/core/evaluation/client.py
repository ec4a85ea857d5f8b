"""A keep-alive httpx client for the server's Open Inference Protocol v2 API (binary tensor data extension)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"


class ServerRequestError(RuntimeError):
    """The server answered a well-formed request with an error (or not at all)."""


def infer_body(input_name: str, output_name: str, images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 infer request: JSON header, then the uint8 NHWC pixels as binary; logits asked back as binary."""
    pixels = np.ascontiguousarray(images, dtype=np.uint8).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(images.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return header + pixels, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def infer_outputs(content: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Output tensors of a v2 infer response, binary or JSON."""
    split = int(header_length) if header_length is not None else len(content)
    doc = json.loads(content[:split])
    tensors, pos = {}, split
    for out in doc["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8", "UINT8": "u1"}[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            tensors[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        else:
            tensors[out["name"]] = np.frombuffer(content[pos : pos + size], dtype=dtype).reshape(out["shape"])
            pos += size
    return tensors


class ServerClient:
    """One persistent connection; the model's name and tensor names come from its v2 metadata."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._model: dict | None = None

    @property
    def model(self) -> dict:
        """The served model's v2 metadata (name, versions, inputs, outputs), fetched once."""
        if self._model is None:
            ready = self.http.get("/v2/health/ready")
            if ready.status_code != 200:
                raise ServerRequestError(f"GET /v2/health/ready -> {ready.status_code}: {ready.text[:300]}")
            index = self.http.post("/v2/repository/index")  # Triton's model repository extension
            if index.status_code != 200 or not index.json():
                raise ServerRequestError(f"POST /v2/repository/index -> {index.status_code}: {index.text[:300]}")
            self._model = json.loads(self.get(f"/v2/models/{index.json()[0]['name']}"))
        return self._model

    def logits(self, images: np.ndarray) -> np.ndarray:
        model = self.model
        output = model["outputs"][0]["name"]
        content, headers = infer_body(model["inputs"][0]["name"], output, images)
        try:
            r = self.http.post(f"/v2/models/{model['name']}/infer", content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ServerRequestError(f"POST infer ({len(images)} images): {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise ServerRequestError(f"POST infer ({len(images)} images) -> {r.status_code}: {r.text[:300]}")
        return infer_outputs(r.content, r.headers.get(HEADER_LENGTH))[output]

    def predict(self, images: np.ndarray) -> list[int]:
        return self.logits(images).argmax(axis=1).tolist()

    def get(self, path: str) -> bytes:
        try:
            r = self.http.get(path)
        except httpx.HTTPError as exc:
            raise ServerRequestError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise ServerRequestError(f"GET {path} -> {r.status_code}: {r.text[:300]}")
        return r.content

    def close(self) -> None:
        self.http.close()


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
        except ServerRequestError as exc:
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
        except ServerRequestError as exc:
            result.errors.append(f"images {lo}..{lo + batch_size - 1}: {exc}")
        result.seconds.append(time.perf_counter() - t0)
    result.wall_seconds = time.perf_counter() - start
    return result
