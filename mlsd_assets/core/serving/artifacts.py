"""The built image as a light JSON artifact: downstream assets need its tag and identity, not its layers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from mlsd_assets.core.platform.atomic import atomic_path


@dataclass(frozen=True)
class ServerImage:
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

    suffix: ClassVar[str] = ".json"

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ServerImage:
        return cls(**json.loads(path.read_text()))
