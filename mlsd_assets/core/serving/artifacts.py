"""The built image as a light JSON artifact: downstream assets need its tag and identity, not its layers."""

from __future__ import annotations

from dataclasses import dataclass

from mlsd_assets.core.platform.atomic import JsonFile


@dataclass(frozen=True)
class ServerImage(JsonFile):
    """A Docker image serving one model version, as built by `inference_server_image` (never pushed there)."""

    tag: str
    image_id: str
    size_bytes: int
    base_image: str
    model_name: str
    model_version: str
    mlflow_run_id: str
    model_sha256: str
    build_seconds: float
    context_dir: str
    engine: str
    built_at: str
