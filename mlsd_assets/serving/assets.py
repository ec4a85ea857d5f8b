"""inference_server_image: a real Docker image with the ONNX model inside, from a self-contained context."""

import hashlib
import re
from datetime import UTC, datetime

import dagster as dg

from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.resources import DataPaths
from mlsd_assets.serving.resources import DockerEngine

DEFAULT_BASE_IMAGE = "mlsd/python-base:bookworm"
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


class ServerImageConfig(dg.Config):
    """Where the image comes from and what it is called. Built only: `model_promotion` pushes it if promoted."""

    base_image: str = DEFAULT_BASE_IMAGE
    repository: str = "mlsd/cifar10-server"
    tag: str = ""  # empty: v<registered model version>
    wheelhouse_dir: str = ""  # empty: <data>/builds/wheelhouses, filled from PyPI once per pin set


def image_labels(model: OnnxModel, model_sha256: str, base_image: str) -> dict[str, str]:
    """Labels that make the image say which model it serves; evaluation checks them against its input."""
    meta = model.metadata
    return {
        "org.opencontainers.image.title": "mlsd CIFAR-10 inference server",
        "org.opencontainers.image.version": model.registered_model_version,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.base.name": base_image,
        "mlsd.model_name": model.registered_model_name,
        "mlsd.model_version": model.registered_model_version,
        "mlsd.mlflow_run_id": model.mlflow_run_id,
        "mlsd.model_sha256": model_sha256,
        "mlsd.dataset_hash": meta.get("mlsd.dataset_hash", ""),
    }


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
    from pathlib import Path

    from mlsd_assets.core.serving.image import (
        build_image,
        ensure_wheelhouse,
        host_pins,
        write_build_context,
    )

    client = docker.client()
    version = cifar10_onnx.registered_model_version
    tag = f"{config.repository}:{config.tag or f'v{version}'}"
    model_sha256 = hashlib.sha256(cifar10_onnx.model_bytes).hexdigest()
    wheelhouse = ensure_wheelhouse(
        Path(config.wheelhouse_dir) if config.wheelhouse_dir else paths.builds_dir / "wheelhouses",
        host_pins(),
        context.log,
    )
    build_dir = paths.builds_dir / "contexts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
    write_build_context(build_dir, cifar10_onnx.model_bytes, wheelhouse)
    context.log.info(f"building {tag} from {build_dir} on {client.api.base_url} (base {config.base_image})")
    labels = image_labels(cifar10_onnx, model_sha256, config.base_image)
    built = build_image(client, build_dir, tag, config.base_image, labels, context.log)
    image = ServerImage(
        tag=tag,
        image_id=built.image_id,
        size_bytes=built.size_bytes,
        base_image=config.base_image,
        model_name=cifar10_onnx.registered_model_name,
        model_version=version,
        mlflow_run_id=cifar10_onnx.mlflow_run_id,
        model_sha256=model_sha256,
        build_seconds=round(built.seconds, 1),
        context_dir=str(build_dir),
        engine=str(client.api.base_url),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    context.add_output_metadata(
        {
            "image_id": image.image_id,
            "tag": image.tag,
            "size_mb": round(image.size_bytes / 1e6, 1),
            "base_image": image.base_image,
            "build_seconds": image.build_seconds,
            "model_version": version,
            "model_sha256": model_sha256,
            "build_context": dg.MetadataValue.path(str(build_dir)),
            "engine": image.engine,
        }
    )
    return image
