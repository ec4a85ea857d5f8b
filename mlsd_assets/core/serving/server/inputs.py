"""Open Inference Protocol v2 request bodies to uint8 NHWC arrays, or an `InputError` that says what is wrong.

Accepted: one input tensor named like the model's input, either UINT8 [N,H,W,C] (JSON `data`, flat or nested,
or binary via the binary tensor data extension), or BYTES [N] of encoded PNG/JPEG images (binary: 4-byte
little-endian length + bytes per element; JSON: base64 strings). Every size is checked before anything is
allocated or decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})  # 8-bit (or 1-bit) colour
MAX_JSON_DEPTH = 32  # a v2 request nests ~8 deep; json's C parser raises RecursionError near 1000


class InputError(Exception):
    """A client error: HTTP status and a reason the client can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one request, and all of them together, from exhausting the server."""

    max_batch: int = 1024  # images per request
    max_body_bytes: int = 16 * 1024 * 1024  # per request
    max_inflight_bytes: int = 256 * 1024 * 1024  # bodies being received or held, all requests together
    body_timeout_s: float = 30.0  # the whole body must arrive within this
    max_encoded_image_bytes: int = 256 * 1024  # one PNG/JPEG element


@dataclass(frozen=True)
class InferRequest:
    """What the server needs from a v2 infer request."""

    images: np.ndarray
    request_id: str | None
    outputs: tuple[str, ...] | None  # None: all outputs
    binary_outputs: frozenset[str]


def json_depth(body: bytes | memoryview) -> int:
    """Maximum bracket nesting, counted before parsing (vectorised; strings with brackets only overcount)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    step = np.zeros(len(raw), dtype=np.int32)
    step[(raw == 0x5B) | (raw == 0x7B)] = 1
    step[(raw == 0x5D) | (raw == 0x7D)] = -1
    return int(np.cumsum(step).max(initial=0))


def parse_header(body: bytes | memoryview, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON part of the body (all of it, or the first Inference-Header-Content-Length bytes) and the rest."""
    view = memoryview(body)
    if header_length is None:
        json_part, binary = view, view[len(view) :]
    else:
        if not header_length.isdigit() or int(header_length) > len(view):
            raise InputError(
                400,
                f"Inference-Header-Content-Length must be an integer <= the body size ({len(view)}), "
                f"got {header_length!r}",
            )
        json_part, binary = view[: int(header_length)], view[int(header_length) :]
    if not json_part:
        raise InputError(400, "empty body: send a v2 inference request (JSON object with an inputs list)")
    text = bytes(json_part)
    if text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH:  # fewer brackets cannot nest deeper: skip the scan
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise InputError(400, f"JSON nested {depth} deep exceeds the limit of {MAX_JSON_DEPTH}")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(400, "the inference request must be a JSON object with an inputs list")
    return doc, binary


def _dims(shape: object, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InputError(400, f"{where}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InputError(400, f"{where}: shape must not be negative, got {shape}")
    return tuple(shape)


def _batch(n: int, limits: Limits, where: str) -> int:
    if n < 1:
        raise InputError(400, f"{where}: batch size must be >= 1, got {n}")
    if n > limits.max_batch:
        raise InputError(413, f"{where}: batch of {n} images exceeds the limit of {limits.max_batch}")
    return n


def infer_request(
    doc: dict, binary: memoryview, input_name: str, image_shape: tuple[int, int, int], limits: Limits
) -> InferRequest:
    """Validate a parsed v2 request and produce the images it carries (a zero-copy view where possible)."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(400, f"inputs must be a list with exactly one tensor, named {input_name!r}")
    tensor = inputs[0]
    if tensor.get("name") != input_name:
        raise InputError(400, f"unknown input {tensor.get('name')!r}: this model's input is {input_name!r}")
    where = f"input {input_name!r}"
    shape = _dims(tensor.get("shape"), where)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(400, f"{where}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(400, f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if size != len(binary):
            raise InputError(400, f"{where}: binary_data_size is {size} but {len(binary)} bytes follow the JSON header")
        if "data" in tensor:
            raise InputError(400, f"{where}: give either data or binary_data_size, not both")
    elif len(binary):
        raise InputError(400, f"{len(binary)} bytes after the JSON header but no input declares binary_data_size")
    decode = {"UINT8": _uint8, "BYTES": _encoded}.get(tensor.get("datatype"))
    if decode is None:
        raise InputError(
            400,
            f"{where}: datatype must be UINT8 (raw NHWC pixels) or BYTES (PNG/JPEG files), got "
            f"{tensor.get('datatype')!r}",
        )
    images = decode(_Tensor(tensor, shape, binary if size is not None else None, where), image_shape, limits)
    outputs, binary_outputs = _requested_outputs(doc)
    request_id = doc.get("id")
    return InferRequest(images, str(request_id) if request_id is not None else None, outputs, binary_outputs)


@dataclass(frozen=True)
class _Tensor:
    """The input tensor of a request: its JSON object, declared shape, binary data (None: JSON data), and where
    it is, for error messages."""

    doc: dict
    shape: tuple[int, ...]
    binary: memoryview | None
    where: str


def _uint8(t: _Tensor, image_shape: tuple, limits: Limits) -> np.ndarray:
    tensor, shape, binary, where = t.doc, t.shape, t.binary, t.where
    expected = ",".join(map(str, image_shape))
    if len(shape) != 4 or shape[1:] != image_shape:
        raise InputError(400, f"{where}: UINT8 shape must be [N,{expected}] (NHWC), got {list(shape)}")
    n = _batch(shape[0], limits, where)
    need = n * math.prod(image_shape)
    if binary is not None:
        if len(binary) != need:
            raise InputError(400, f"{where}: shape {list(shape)} needs {need} bytes, binary data has {len(binary)}")
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InputError(400, f"{where}: data must be a list of integers 0..255 (flat or nested)")
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError) as exc:
        raise InputError(400, f"{where}: data is not a rectangular array of integers: {exc}") from None
    if array.size != need:
        raise InputError(400, f"{where}: shape {list(shape)} needs {need} values, data has {array.size}")
    if array.dtype.kind not in "iu":
        raise InputError(400, f"{where}: data must be integers 0..255, got {array.dtype} values")
    if array.min() < 0 or array.max() > 255:
        raise InputError(400, f"{where}: data must be in 0..255, got range {array.min()}..{array.max()}")
    return array.astype(np.uint8).reshape(shape)


def _elements(binary: memoryview, n: int, limits: Limits, where: str) -> list[memoryview]:
    """BYTES binary layout: per element a uint32 little-endian length, then that many bytes."""
    out, pos = [], 0
    while pos < len(binary):
        if pos + 4 > len(binary):
            raise InputError(400, f"{where}: BYTES element {len(out)} is cut short (no 4-byte length)")
        (length,) = struct.unpack_from("<I", binary, pos)
        if length > limits.max_encoded_image_bytes:
            raise InputError(
                413,
                f"{where}: element {len(out)} has {length} bytes, over the limit of "
                f"{limits.max_encoded_image_bytes} per encoded image",
            )
        if pos + 4 + length > len(binary):
            raise InputError(400, f"{where}: BYTES element {len(out)} declares {length} bytes, fewer follow")
        out.append(binary[pos + 4 : pos + 4 + length])
        pos += 4 + length
        if len(out) > n:
            break
    if len(out) != n:
        raise InputError(400, f"{where}: shape says {n} BYTES elements, the binary data holds {len(out)}")
    return out


def _encoded(t: _Tensor, image_shape: tuple, limits: Limits) -> np.ndarray:
    tensor, shape, binary, where = t.doc, t.shape, t.binary, t.where
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InputError(400, f"{where}: BYTES shape must be [N] (one encoded image each), got {list(shape)}")
    n = _batch(shape[0], limits, where)
    if binary is not None:
        files = _elements(binary, n, limits, where)
    else:
        data = tensor.get("data")
        if not isinstance(data, list) or len(data) != n or not all(isinstance(d, str) for d in data):
            raise InputError(400, f"{where}: JSON BYTES data must be {n} base64 strings of PNG/JPEG files")
        files = []
        for i, text in enumerate(data):
            if len(text) > limits.max_encoded_image_bytes * 4 // 3 + 4:
                raise InputError(413, f"{where}: element {i} is over {limits.max_encoded_image_bytes} bytes")
            try:
                files.append(memoryview(base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise InputError(400, f"{where}: element {i} is not valid base64: {exc}") from None
    return np.stack([decode_image(f, image_shape, f"{where} element {i}") for i, f in enumerate(files)])


def decode_image(data: memoryview, image_shape: tuple[int, int, int], where: str) -> np.ndarray:
    """PNG or JPEG, its declared size checked against the model's before a single pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = image_shape
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
            if img.size != (width, height):
                raise InputError(
                    422,
                    f"{where}: {img.format} declares {img.size[0]}x{img.size[1]} pixels, the model "
                    f"takes {width}x{height}",
                )
            if img.mode not in _MODES:
                raise InputError(422, f"{where}: {img.format} mode {img.mode} is not supported (8-bit only)")
            img = img.convert("RGB" if channels == 3 else "L")
            pixels = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # PIL's own check of the declared size, before decoding
        raise InputError(422, f"{where}: the model takes {width}x{height}; {exc}") from None
    except UnidentifiedImageError:
        raise InputError(415, f"{where}: not a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(422, f"{where}: cannot decode the image: {exc}") from None
    return pixels.reshape(image_shape)


class _Known(NamedTuple):
    """What a validated UINT8 binary request header says, without the pixels of the request that carried it."""

    shape: tuple[int, ...]
    nbytes: int
    request_id: str | None
    outputs: tuple[str, ...] | None
    binary_outputs: frozenset[str]


class RequestParser:
    """`parse_header` + `infer_request` for one model, remembering validated headers of UINT8 binary requests.

    A client sends the same JSON header with every request of one shape (the binary part's size is declared in
    it), so the JSON parse and its validation run once per distinct header; a later request with the same header
    bytes and a binary part of the declared size only gets its pixels viewed. Only headers up to
    `max_header_bytes` are kept, at most `max_entries` of them (then the memory starts over)."""

    max_header_bytes = 1024
    max_entries = 256

    def __init__(self, input_name: str, image_shape: tuple[int, int, int], limits: Limits) -> None:
        self.input_name, self.image_shape, self.limits = input_name, image_shape, limits
        self._known: dict[bytes, _Known] = {}

    def parse(self, body: bytes | bytearray, header_length: str | None) -> InferRequest:
        key = None
        if header_length is not None and header_length.isdigit() and int(header_length) <= self.max_header_bytes:
            length = int(header_length)
            key = bytes(memoryview(body)[:length])
            known = self._known.get(key)
            if known is not None and len(body) - length == known.nbytes:
                images = np.frombuffer(body, dtype=np.uint8, offset=length).reshape(known.shape)
                return InferRequest(images, known.request_id, known.outputs, known.binary_outputs)
        doc, binary = parse_header(body, header_length)
        request = infer_request(doc, binary, self.input_name, self.image_shape, self.limits)
        if key is not None and len(binary) and doc["inputs"][0].get("datatype") == "UINT8":
            if len(self._known) >= self.max_entries:
                self._known.clear()
            self._known[key] = _Known(
                request.images.shape, len(binary), request.request_id, request.outputs, request.binary_outputs
            )
        return request


def _requested_outputs(doc: dict) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    params = doc.get("parameters") or {}
    binary_all = isinstance(params, dict) and params.get("binary_data_output") is True
    outputs = doc.get("outputs")
    if outputs is None:
        return None, frozenset({"*"} if binary_all else ())
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InputError(400, "outputs must be a list of objects with a name")
    names = tuple(o["name"] for o in outputs)
    if not all(isinstance(o.get("parameters", {}), dict) for o in outputs):
        raise InputError(400, "outputs[].parameters must be an object")
    binary = {o["name"] for o in outputs if binary_all or o.get("parameters", {}).get("binary_data") is True}
    return names, frozenset(binary)
