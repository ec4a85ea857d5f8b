"""inference_server_image: a real Docker image with the ONNX model inside, from a self-contained context."""

from pathlib import Path

import dagster as dg

from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.serving.image import DEFAULT_BASE_IMAGE
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.resources import TRANSIENT_RETRY, DataPaths, DockerEngine


class ServerImageConfig(dg.Config):
    """Where the image comes from and what it is called. Built only: `model_promotion` pushes it if promoted."""

    base_image: str = DEFAULT_BASE_IMAGE
    repository: str = "mlsd/cifar10-server"
    tag: str = ""  # empty: v<registered model version>
    wheelhouse_dir: str = ""  # empty: <data>/builds/wheelhouses, filled from PyPI once per pin set


@dg.asset(group_name="serving", kinds={"docker"}, retry_policy=TRANSIENT_RETRY)
def inference_server_image(
    context: dg.AssetExecutionContext,
    config: ServerImageConfig,
    cifar10_onnx: OnnxModel,
    docker: DockerEngine,
    paths: DataPaths,
) -> ServerImage:
    """Users deploy images, not model files: this is the thing evaluation measures and the gate promotes.
    The build needs no network (wheels come from the context), so it runs on air-gapped engines too."""
    from mlsd_assets.core.serving.image import build_server_image

    tag = f"{config.repository}:{config.tag or f'v{cifar10_onnx.registered_model_version}'}"
    wheelhouse = Path(config.wheelhouse_dir) if config.wheelhouse_dir else paths.builds_dir / "wheelhouses"
    image = build_server_image(
        docker.client(), cifar10_onnx, tag, config.base_image, wheelhouse, paths.builds_dir, context.log
    )
    context.add_output_metadata(
        {
            "image_id": image.image_id,
            "tag": image.tag,
            "size_mb": round(image.size_bytes / 1e6, 1),
            "base_image": image.base_image,
            "build_seconds": image.build_seconds,
            "model_version": image.model_version,
            "model_sha256": image.model_sha256,
            "build_context": dg.MetadataValue.path(image.context_dir),
            "engine": image.engine,
        }
    )
    return image
