"""The Docker engine (docker/engine/prepare.sh) and the deployment images, each built once per content hash."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
IMAGE_REPOSITORY = "mlsd/user-code"

# What goes into each image besides build_images.sh; a change to any of them gives the image a new tag.
_INPUTS: dict[str, list[str]] = {
    "user-code": ["pyproject.toml", "docker/Dockerfile_user_code", "docker/dagster.yaml"],
    "dagster": [
        "pyproject.toml",
        "docker/Dockerfile_dagster",
        "docker/requirements/dagster.txt",
        "docker/dagster.yaml",
        "docker/workspace.yaml",
    ],
    "mlflow": ["pyproject.toml", "docker/Dockerfile_mlflow", "docker/requirements/mlflow.txt"],
    "postgres": ["docker/Dockerfile_postgres", "docker/postgres/entrypoint.sh"],
    "registry": ["docker/Dockerfile_registry", "docker/registry/config.yml"],
    "prometheus": ["docker/Dockerfile_prometheus"],
}


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
    result = subprocess.run([str(DOCKER_DIR / "engine" / "prepare.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"docker/engine/prepare.sh failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def cpu_torch_wheel() -> Path | None:
    """A CPU-only torch wheel (MLSD_TORCH_WHEEL, or one in pip's find-links): the training image stays ~1 GB."""
    explicit = os.environ.get("MLSD_TORCH_WHEEL")
    if explicit:
        return Path(explicit)
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        found = sorted(glob.glob(os.path.join(folder, "torch-*+cpu-cp311-*.whl")))
        if found:
            return Path(found[-1])
    return None


def image_tag(name: str, extras: str | None = None) -> str:
    """Changes whenever anything that goes into the image changes, so a stale image is never reused."""
    digest = hashlib.sha256()
    paths = [REPO / p for p in [*_INPUTS[name], "docker/build_images.sh"]]
    if name in ("user-code", "dagster"):  # both install the project wheel (dagster: for the run launcher)
        paths += sorted((REPO / "mlsd_assets").rglob("*.py"))
    if name == "user-code":
        paths.append(DOCKER_DIR / "requirements" / f"user-code-{extras}.txt")
    for path in paths:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    torch = cpu_torch_wheel() if extras == "train" else None
    digest.update(str(torch).encode())
    return f"{extras + '-' if extras else 'test-'}{digest.hexdigest()[:12]}"


def ensure_image(name: str, build_dir: Path, extras: str | None = None) -> str:
    """`mlsd/<name>:<tag>`, built offline by docker/build_images.sh unless already on the engine."""
    tag = image_tag(name, extras)
    image = f"mlsd/{name}:{tag}"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return image
    env = {**os.environ, "MLSD_BUILD_DIR": str(build_dir / name)}
    torch = cpu_torch_wheel() if extras == "train" else None
    if torch is not None:
        env["MLSD_TORCH_WHEEL"] = str(torch)
    result = subprocess.run(
        [str(DOCKER_DIR / "build_images.sh"), *(["--extras", extras] if extras else []), "--tag", tag, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker/build_images.sh {name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    _remove_stale_images(f"mlsd/{name}", keep=image, prefix=tag.split("-")[0] + "-")
    return image


def ensure_light_image(build_dir: Path) -> str:
    """`mlsd/user-code:light-<hash>`: loads the location and runs the ingestion job, no ML stack."""
    return ensure_image("user-code", build_dir, extras="light")


def _remove_stale_images(repository: str, keep: str, prefix: str) -> None:
    """Earlier test builds (other trees): with the vfs storage driver each costs its full size on disk."""
    listed = subprocess.run(
        ["docker", "image", "ls", repository, "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stale = [tag for tag in listed if tag != keep and tag.split(":")[1].startswith(prefix)]
    if stale:
        # an image still used by a running test session stays; the next build removes it
        subprocess.run(["docker", "image", "rm", *stale], capture_output=True, check=False)
