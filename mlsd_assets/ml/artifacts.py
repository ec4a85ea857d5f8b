"""What training hands downstream: the trained model and its ONNX export, stored as single files.

Light on purpose (numpy and json only): Dagster imports these classes for annotations when loading the code
location, so torch and onnx are imported only inside the methods that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsd_assets.ml.atomic import atomic_path

if TYPE_CHECKING:
    from mlsd_assets.ml.models import InferenceModel

META_PREFIX = "mlsd."


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

        from mlsd_assets.ml.models import InferenceModel, build_model

        widths = self.hyperparameters.get("widths")
        model = InferenceModel(
            build_model(self.architecture, tuple(widths) if widths else None),
            self.mean,
            self.std,
            flip_tta=bool(self.hyperparameters.get("flip_tta", False)),
        )
        model.load_state_dict(
            torch.load(io.BytesIO(self.state_dict_bytes), map_location="cpu", weights_only=True)
        )
        return model.eval()


@dataclass(frozen=True)
class OnnxModel:
    """The ONNX file itself; `metadata` is its metadata_props (the `mlsd.*` serving contract)."""

    model_bytes: bytes
    metadata: dict[str, str]

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

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(self.model_bytes)

    @classmethod
    def load(cls, path: Path) -> OnnxModel:
        data = path.read_bytes()
        return cls(model_bytes=data, metadata=read_onnx_metadata(data))


def read_onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load_model_from_string(model_bytes).metadata_props}
