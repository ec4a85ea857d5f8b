"""Stand-ins for what evaluation reads: registered MLflow versions with their ONNX file, and fixed upstream assets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import DataPaths, DockerEngine, MLflowTracking
from mlsd_assets_tests.core.serving.onnx_models import nearest_mean_weights, write_tiny_model
from mlsd_assets_tests.synthetic import make_split

MODEL_NAME = "cifar10-classifier"
NO_ENGINE = DockerEngine(base_url="unix:///nonexistent.sock")  # local_process evaluation must never touch it
# the split and the good weights both promotion test modules evaluate
SPLIT = make_split(n_train=300, n_validation=20, n_test=150, seed=21)
GOOD = nearest_mean_weights(*SPLIT.arrays("train"))


def bad_weights() -> tuple[np.ndarray, np.ndarray]:
    """Good on two classes only: the challenger a gate must turn away."""
    w, b = (x.copy() for x in GOOD)
    w[:, 2:] = 0.0
    b[2:] = -1e6
    return w, b


def register_version(tracking: MLflowTracking, name: str = MODEL_NAME) -> tuple[str, str]:
    """A finished run and a registry version pointing at it: what training leaves behind."""
    client = tracking.client()
    with tracking.run("test-training", {"source": "mlsd-tests"}) as run_id:
        pass  # a FINISHED run, as training leaves it
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return run_id, str(version.version)


def registered_onnx(
    tracking: MLflowTracking, folder: Path, weights: tuple[np.ndarray, np.ndarray], name: str = MODEL_NAME
) -> OnnxModel:
    """A registered version whose run holds its ONNX file under onnx/, as cifar10_onnx leaves it."""
    run_id, version = register_version(tracking, name)
    path = write_tiny_model(
        folder / f"v{version}" / "cifar10.onnx",
        weights,
        version=version,
        run_id=run_id,
        metadata={"mlsd.registered_model_name": name},
    )
    tracking.client().log_artifact(run_id, str(path), artifact_path="onnx")
    return OnnxModel.load(path)


def upstream_assets(split: Cifar10Split, model: OnnxModel) -> list[dg.AssetsDefinition]:
    """cifar10_split and cifar10_onnx as fixed values."""

    @dg.asset(name="cifar10_split")
    def split_asset() -> Cifar10Split:
        return split

    @dg.asset(name="cifar10_onnx")
    def onnx_asset() -> OnnxModel:
        return model

    return [split_asset, onnx_asset]


def unbuilt_image(model: OnnxModel) -> dg.AssetsDefinition:
    """inference_server_image for local_process evaluation, which runs the model without building an image."""

    @dg.asset(name="inference_server_image")
    def image_asset() -> ServerImage:
        version = model.registered_model_version
        return ServerImage(
            f"not-built:v{version}",
            "sha256:none",
            0,
            "none",
            model.registered_model_name,
            version,
            model.mlflow_run_id,
            "none",
            0.0,
            "",
            "",
            "",
        )

    return image_asset


def evaluation_resources(root: Path, mlflow: MLflowTracking, docker: DockerEngine = NO_ENGINE) -> dict[str, object]:
    """Artifacts and data under `root`, the given MLflow store and Docker engine."""
    return {
        "io_manager": ArtifactIOManager(root=str(root / "artifacts")),
        "paths": DataPaths(root=str(root / "data")),
        "mlflow": mlflow,
        "docker": docker,
    }
