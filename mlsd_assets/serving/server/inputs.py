"""Request bodies to uint8 NHWC arrays, or an `InputError` that says exactly what is wrong (never a 500)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np


class InputError(Exception):
    """A client error: HTTP status and a reason the client can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one request from exhausting the server."""

    max_batch: int = 1024
    max_body_bytes: int = 16 * 1024 * 1024


def _batch_size(n: int, limits: Limits, where: str) -> int:
    if n < 1:
        raise InputError(422, f"{where}: batch size must be >= 1, got {n}")
    if n > limits.max_batch:
        raise InputError(413, f"{where}: batch of {n} images exceeds the limit of {limits.max_batch}")
    return n


def _declared_batch(shape_header: str | None, n_query: str | None, image_shape: tuple) -> int | None:
    """N from `X-Shape: N,H,W,C` or `?n=N`; None when the client declared neither."""
    if shape_header is not None:
        try:
            dims = tuple(int(d) for d in shape_header.replace(" ", "").strip("()[]").split(","))
        except ValueError:
            raise InputError(400, f"X-Shape must be integers like N,32,32,3, got {shape_header!r}") from None
        if len(dims) != 4 or dims[1:] != image_shape:
            raise InputError(
                422, f"X-Shape must be N,{','.join(map(str, image_shape))} (NHWC), got {shape_header!r}"
            )
        if n_query is not None and n_query != str(dims[0]):
            raise InputError(422, f"X-Shape batch {dims[0]} disagrees with ?n={n_query}")
        return dims[0]
    if n_query is not None:
        try:
            return int(n_query)
        except ValueError:
            raise InputError(400, f"query parameter n must be an integer, got {n_query!r}") from None
    return None


def images_from_raw(
    body: bytes,
    shape_header: str | None,
    n_query: str | None,
    dtype_header: str | None,
    image_shape: tuple[int, int, int],
    limits: Limits,
) -> np.ndarray:
    """Raw uint8 NHWC bytes; a zero-copy view over the body."""
    if dtype_header is not None and dtype_header.strip().lower() != "uint8":
        raise InputError(422, f"X-Dtype must be uint8 (raw 0..255 pixels), got {dtype_header!r}")
    per_image = int(np.prod(image_shape))
    if not body:
        raise InputError(400, f"empty body: send N*{per_image} bytes of uint8 NHWC pixels")
    n = _declared_batch(shape_header, n_query, image_shape)
    if n is None:
        if len(body) % per_image:
            raise InputError(
                422, f"body of {len(body)} bytes is not a whole number of {per_image}-byte images "
                f"({'x'.join(map(str, image_shape))} uint8); declare the shape with X-Shape"
            )
        n = len(body) // per_image
    _batch_size(n, limits, "raw body")
    if len(body) != n * per_image:
        raise InputError(
            422, f"body has {len(body)} bytes but shape {n},{','.join(map(str, image_shape))} uint8 "
            f"needs {n * per_image}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(n, *image_shape)


def images_from_json(body: bytes, image_shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """`{"instances": [N][H][W][C] ints}` (or one [H][W][C] image) or `{"b64": ..., "shape": [N,H,W,C]}`."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or ("instances" in doc) == ("b64" in doc):
        raise InputError(422, 'JSON body must be an object with exactly one of "instances" or "b64"')
    if "b64" in doc:
        return _from_b64(doc, image_shape, limits)
    try:
        array = np.asarray(doc["instances"])
    except (ValueError, OverflowError) as exc:
        raise InputError(422, f"instances is not a rectangular array: {exc}") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != image_shape:
        raise InputError(
            422, f"instances must have shape [N,{','.join(map(str, image_shape))}] (NHWC), "
            f"got {list(array.shape)}"
        )
    _batch_size(array.shape[0], limits, "instances")
    if array.dtype.kind not in "iu":
        raise InputError(422, f"instances must be integers 0..255, got {array.dtype} values")
    if array.min() < 0 or array.max() > 255:
        raise InputError(422, f"instances must be in 0..255, got range {array.min()}..{array.max()}")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _from_b64(doc: dict, image_shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    if not isinstance(doc["b64"], str):
        raise InputError(422, "b64 must be a base64 string of raw uint8 NHWC bytes")
    try:
        raw = base64.b64decode(doc["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(400, f"b64 is not valid base64: {exc}") from None
    shape = doc.get("shape")
    if shape is not None and not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
        raise InputError(422, f"shape must be a list of integers like [N,32,32,3], got {shape!r}")
    header = ",".join(map(str, shape)) if shape is not None else None
    return images_from_raw(raw, header, None, None, image_shape, limits)
