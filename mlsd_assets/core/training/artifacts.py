"""What training hands downstream: the trained model and its ONNX export, stored as single files.

Light on purpose (numpy and json only): Dagster imports these classes for annotations when loading the code
location, so torch and onnx are imported only inside the methods that need them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsd_assets.core.platform.atomic import atomic_path

if TYPE_CHECKING:
    from mlsd_assets.core.training.models import InferenceModel

META_PREFIX = "mlsd."
SERVING_PREFIX = f"{META_PREFIX}serving."
REFERENCE_SHA_KEY = f"{SERVING_PREFIX}reference_sha256"


@dataclass(frozen=True)
class TrainedModel:
    """Weights of the served model (`InferenceModel` state dict, torch.save bytes) plus how it was made."""

    architecture: str
    hyperparameters: dict[str, Any]
    state_dict_bytes: bytes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    validation_metrics: dict[str, float]
    dataset_hash: str
    partitions: tuple[str, ...]
    mlflow_run_id: str
    registered_model_name: str
    registered_model_version: str
    best_epoch: int
    extra: dict[str, Any] = field(default_factory=dict)

    suffix: ClassVar[str] = ".npz"

    def _meta(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
            "validation_metrics": self.validation_metrics,
            "dataset_hash": self.dataset_hash,
            "partitions": list(self.partitions),
            "mlflow_run_id": self.mlflow_run_id,
            "registered_model_name": self.registered_model_name,
            "registered_model_version": self.registered_model_version,
            "best_epoch": self.best_epoch,
            "extra": self.extra,
        }

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(self._meta())),
                state_dict=np.frombuffer(self.state_dict_bytes, dtype=np.uint8),
            )

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            state = z["state_dict"].tobytes()
        missing = {f.name for f in fields(cls) if f.name != "state_dict_bytes"} - set(meta)
        if missing:
            raise ValueError(f"{path}: not a TrainedModel file, missing fields {sorted(missing)}")
        meta["mean"], meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
        meta["classes"], meta["partitions"] = tuple(meta["classes"]), tuple(meta["partitions"])
        return cls(state_dict_bytes=state, **meta)

    def inference_model(self) -> InferenceModel:
        """The fp32 eval-mode module: uint8 NHWC pixels in, logits out (imports torch)."""
        import io

        import torch

        from mlsd_assets.core.training.models import InferenceModel, build_model

        widths = self.hyperparameters.get("widths")
        model = InferenceModel(
            build_model(self.architecture, tuple(widths) if widths else None),
            self.mean,
            self.std,
            flip_tta=bool(self.hyperparameters.get("flip_tta", False)),
        )
        model.load_state_dict(torch.load(io.BytesIO(self.state_dict_bytes), map_location="cpu", weights_only=True))
        return model.eval()


@dataclass(frozen=True)
class OnnxModel:
    """The served ONNX file (`model_bytes`, what the image carries) and the fp32 export it was derived from.

    `metadata` is the served file's metadata_props (the `mlsd.*` serving contract). `reference_bytes` is the
    fp32 graph the torch parity check runs on; it is stored beside the served file as
    `<stem>.reference-<sha256[:16]>.onnx`, named by the hash the served file records, so a failed write never
    pairs a served file with the wrong reference. Files written before variants existed have no reference:
    the served file is then the fp32 graph itself.
    """

    model_bytes: bytes
    metadata: dict[str, str]
    reference_bytes: bytes | None = None

    suffix: ClassVar[str] = ".onnx"

    @property
    def mlflow_run_id(self) -> str:
        return self.metadata[f"{META_PREFIX}mlflow_run_id"]

    @property
    def registered_model_name(self) -> str:
        return self.metadata[f"{META_PREFIX}registered_model_name"]

    @property
    def registered_model_version(self) -> str:
        return self.metadata[f"{META_PREFIX}registered_model_version"]

    @property
    def classes(self) -> list[str]:
        return json.loads(self.metadata[f"{META_PREFIX}classes"])

    @property
    def fp32_bytes(self) -> bytes:
        """The fp32 export (torch parity applies to it): the reference, or the served file when it has none."""
        return self.reference_bytes if self.reference_bytes is not None else self.model_bytes

    @property
    def served_variant(self) -> str:
        """Which variant `model_bytes` is (`fp32_tta`, `int8`, ...); `unrecorded` for files from before variants."""
        return self.metadata.get(f"{SERVING_PREFIX}variant", "unrecorded")

    @staticmethod
    def reference_path(path: Path, sha256: str) -> Path:
        return path.with_name(f"{path.stem}.reference-{sha256[:16]}{path.suffix}")

    def save(self, path: Path) -> None:
        keep = None
        if self.reference_bytes is not None:
            sha = self.metadata.get(REFERENCE_SHA_KEY)
            if sha != hashlib.sha256(self.reference_bytes).hexdigest():
                raise ValueError(f"{path}: metadata {REFERENCE_SHA_KEY} does not match the reference graph")
            keep = self.reference_path(path, sha)
            with atomic_path(keep) as tmp:
                tmp.write_bytes(self.reference_bytes)
        with atomic_path(path) as tmp:
            tmp.write_bytes(self.model_bytes)
        for old in path.parent.glob(f"{path.stem}.reference-*{path.suffix}"):
            if old != keep:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> OnnxModel:
        data = path.read_bytes()
        metadata = read_onnx_metadata(data)
        sha = metadata.get(REFERENCE_SHA_KEY)
        if sha is None:
            return cls(model_bytes=data, metadata=metadata)
        ref_path = cls.reference_path(path, sha)
        if not ref_path.exists():
            raise FileNotFoundError(f"{path}: its fp32 reference graph {ref_path.name} is missing")
        reference = ref_path.read_bytes()
        if hashlib.sha256(reference).hexdigest() != sha:
            raise ValueError(f"{ref_path}: sha256 differs from {REFERENCE_SHA_KEY} recorded in {path.name}")
        return cls(model_bytes=data, metadata=metadata, reference_bytes=reference)


def read_onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load_model_from_string(model_bytes).metadata_props}
