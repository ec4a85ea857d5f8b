"""The Docker engine (docker/engine/prepare.sh) and the light user-code image, built once per content hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_REPOSITORY = "mlsd/user-code"


def engine_unavailable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "docker CLI absent (apt-get install docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        return None
    if shutil.which("dockerd") is None:
        return "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine answers and starting dockerd needs root"
    return None


def prepare_engine() -> None:
    """Start the engine if needed and make sure the offline base image exists (idempotent)."""
    result = subprocess.run([str(REPO / "docker" / "engine" / "prepare.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"docker/engine/prepare.sh failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def light_image_tag() -> str:
    """Changes whenever anything that goes into the image changes, so a stale image is never reused."""
    digest = hashlib.sha256()
    inputs = [
        REPO / "pyproject.toml",
        REPO / "docker" / "Dockerfile_user_code",
        REPO / "docker" / "dagster.yaml",
        REPO / "docker" / "build_images.sh",
        REPO / "docker" / "requirements" / "user-code-light.txt",
        *sorted((REPO / "mlsd_assets").rglob("*.py")),
    ]
    for path in inputs:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return f"light-{digest.hexdigest()[:12]}"


def ensure_light_image(build_dir: Path) -> str:
    """`mlsd/user-code:light-<hash>`, built offline by docker/build_images.sh unless already on the engine."""
    image = f"{IMAGE_REPOSITORY}:{light_image_tag()}"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return image
    result = subprocess.run(
        [
            str(REPO / "docker" / "build_images.sh"),
            "--extras",
            "light",
            "--tag",
            image.split(":")[1],
            "user-code",
        ],
        env={**os.environ, "MLSD_BUILD_DIR": str(build_dir)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker/build_images.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    _remove_stale_light_images(keep=image)
    return image


def _remove_stale_light_images(keep: str) -> None:
    """Earlier test builds (other trees): with the vfs storage driver each costs its full size on disk."""
    listed = subprocess.run(
        ["docker", "image", "ls", IMAGE_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stale = [tag for tag in listed if tag != keep and tag.split(":")[1].startswith("light-")]
    if stale:
        # an image still used by a running test session stays; the next build removes it
        subprocess.run(["docker", "image", "rm", *stale], capture_output=True, check=False)
