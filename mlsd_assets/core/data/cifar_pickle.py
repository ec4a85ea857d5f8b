"""Official CIFAR-10 python batches, parsed without trusting the pickle: drops come from outside."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from mlsd_assets.core.data.batches import InvalidBatchError
from mlsd_assets.core.platform.limits import MAX_PICKLE_BYTES

# md5 of each file of the official cifar-10-batches-py (the same values torchvision's CIFAR10 checks).
OFFICIAL_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
ROW_BYTES = 32 * 32 * 3

# The only globals an official (numpy) batch needs; anything else could run code on load.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("__builtin__", "bytes"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (not part of a CIFAR batch)")
        return super().find_class(module, name)


def _unpickle(payload: bytes | memoryview, where: str) -> dict[str, Any]:
    if len(payload) > MAX_PICKLE_BYTES:
        raise InvalidBatchError(f"{where}: {len(payload)} bytes, more than the {MAX_PICKLE_BYTES} a batch may have")
    try:
        obj = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as exc:  # pickle signals truncation/corruption with many exception types
        raise InvalidBatchError(
            f"{where}: not a readable CIFAR pickle batch (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise InvalidBatchError(f"{where}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def parse_pickle_batch(payload: bytes | memoryview, where: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels from the bytes of one batch file; `where` names it in errors."""
    obj = _unpickle(payload, where)
    missing = [k for k in ("data", "labels") if k not in obj]
    if missing:
        raise InvalidBatchError(f"{where}: missing field(s) {missing} (has {sorted(obj)})")
    data = obj["data"]
    if not isinstance(data, np.ndarray):
        raise InvalidBatchError(f"{where}: field 'data' must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise InvalidBatchError(f"{where}: field 'data' has dtype {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise InvalidBatchError(f"{where}: field 'data' has shape {data.shape}, expected (N, {ROW_BYTES})")
    labels = _labels(obj["labels"], len(data), where)
    images = np.ascontiguousarray(data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _labels(raw: object, count: int, where: str) -> np.ndarray:
    """int64 labels, every element checked to be an integer first: numpy would walk nested or shared lists
    (a 46 KB pickle can make it burn minutes and all memory). Their range 0..9 is RawBatch's to check."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise InvalidBatchError(
                f"{where}: field 'labels' must be a 1-D integer array, got {raw.dtype} of shape {raw.shape}"
            )
    elif isinstance(raw, (list, tuple)):
        for i, value in enumerate(raw):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidBatchError(
                    f"{where}: field 'labels' is not a list of integers: index {i} is a {type(value).__name__}"
                )
    else:
        raise InvalidBatchError(f"{where}: field 'labels' must be a list of integers, got {type(raw).__name__}")
    if len(raw) != count:
        raise InvalidBatchError(f"{where}: field 'labels' has shape ({len(raw)},), expected ({count},)")
    try:
        return np.asarray(raw, dtype=np.int64)
    except OverflowError:
        i, value = next((i, int(v)) for i, v in enumerate(raw) if not -(2**63) <= v < 2**63)
        raise InvalidBatchError(
            f"{where}: field 'labels' at index {i} is an integer of {value.bit_length()} bits, not a class id"
        ) from None
