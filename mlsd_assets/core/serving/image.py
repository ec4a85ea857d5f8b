"""Build context, wheelhouse, build and push of the server image. No dagster; docker imported lazily."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlsd_assets.core.platform.atomic import file_lock
from mlsd_assets.core.serving.artifacts import ServerImage
from mlsd_assets.core.serving.server import RUNTIME_REQUIREMENTS

if TYPE_CHECKING:
    import docker
    from mlsd_assets.core.training.artifacts import OnnxModel

DEFAULT_BASE_IMAGE = "mlsd/python-base:bookworm"  # built offline by docker/engine/prepare.sh

SERVER_PACKAGE = Path(__file__).parent / "server"
DOCKERFILE = Path(__file__).parent / "Dockerfile"
# Wheels the image's Python (Debian bookworm: CPython 3.11, glibc 2.36) can install.
WHEEL_PLATFORMS = (
    "manylinux_2_36_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
WHEEL_PYTHON = "3.11"


class ImageBuildError(RuntimeError):
    """The engine refused or failed the build; the message carries the build log's tail."""


def host_pins(requirements: Sequence[str] = RUNTIME_REQUIREMENTS) -> list[str]:
    """Pin the image to the versions installed here, so the server the tests exercise is the one shipped."""
    pins = []
    for name in requirements:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise ImageBuildError(
                f"{name} is not installed here: the image pins this environment's versions of {', '.join(requirements)}"
            ) from None
    return pins


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheelhouse_pins(wheelhouse: Path) -> list[str]:
    """`name==version` for every wheel in the wheelhouse (the full resolved set, dependencies included)."""
    pins = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        pins.append(f"{_normalise(name)}=={version}")
    return pins


def ensure_wheelhouse(cache_dir: Path, pins: Sequence[str], log: logging.Logger) -> Path:
    """Download the image's wheels once per pin set: the host reaches PyPI, the image build does not."""
    key = hashlib.sha256("\n".join([WHEEL_PYTHON, *WHEEL_PLATFORMS, *sorted(pins)]).encode()).hexdigest()[:16]
    dest = cache_dir / f"wheelhouse-{key}"
    with file_lock(cache_dir / f".wheelhouse-{key}.lock"):
        if (dest / ".complete").exists():
            log.info("wheelhouse cached at %s (%d wheels)", dest, len(list(dest.glob("*.whl"))))
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".wheelhouse-{key}.", dir=cache_dir))
        try:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                WHEEL_PYTHON,
                *(arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)),
                "--dest",
                str(tmp),
                *pins,
            ]
            log.info("downloading wheels for the image: %s", " ".join(pins))
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise ImageBuildError(
                    f"pip download of the image's wheels failed (exit {done.returncode}); the host needs "
                    "PyPI (or a mirror via PIP_INDEX_URL) once, the image build itself does not:\n"
                    + done.stderr[-3000:]
                )
            (tmp / ".complete").write_text("\n".join(pins) + "\n")
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wheelhouse ready at %s (%d wheels)", dest, len(list(dest.glob("*.whl"))))
    return dest


def write_build_context(dest: Path, model_bytes: bytes, wheelhouse: Path, labels: dict[str, str] | None = None) -> Path:
    """Everything the build needs in one folder: Dockerfile (ending in the image's labels), wheels + pinned
    requirements, server, model. `docker build` of the folder by hand gives the same image."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "wheelhouse").mkdir(parents=True)
    (dest / "Dockerfile").write_text(DOCKERFILE.read_text() + label_instruction(labels or {}))
    for wheel in wheelhouse.glob("*.whl"):
        _link_or_copy(wheel, dest / "wheelhouse" / wheel.name)
    (dest / "wheelhouse" / "requirements.txt").write_text("\n".join(wheelhouse_pins(wheelhouse)) + "\n")
    (dest / "app" / "mlsd_server").mkdir(parents=True)
    for source in SERVER_PACKAGE.glob("*.py"):
        shutil.copy2(source, dest / "app" / "mlsd_server" / source.name)
    (dest / "app" / "model.onnx").write_bytes(model_bytes)
    return dest


def label_instruction(labels: dict[str, str]) -> str:
    """`labels` as one Dockerfile LABEL instruction. The build API's `labels` adds a build step per label, and on
    the vfs storage driver every step copies the whole filesystem: nine labels took 86 s of a 166 s build."""
    if not labels:
        return ""

    def quoted(text: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise ValueError(f"image label {text!r}: a Dockerfile cannot carry control characters")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'

    pairs = " \\\n      ".join(f"{quoted(k)}={quoted(v)}" for k, v in sorted(labels.items()))
    return f"LABEL {pairs}\n"


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(source)
    except OSError:
        shutil.copy2(source, dest)


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    size_bytes: int
    seconds: float


def build_image(
    client: docker.DockerClient,
    context_dir: Path,
    tag: str,
    base_image: str,
    log: logging.Logger,
) -> BuiltImage:
    """Classic builder with the network off: proves the build is self-contained. Streams its log. Labels come
    with the context (`write_build_context`)."""
    import docker.errors

    try:
        client.images.get(base_image)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(
            f"base image {base_image!r} is not on the engine; build it offline with docker/engine/prepare.sh "
            "(MLSD_BASE_IMAGE names another) or pull it"
        ) from None
    start = time.perf_counter()
    tail: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context_dir),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            network_mode="none",
            buildargs={"BASE_IMAGE": base_image},
        )
    except docker.errors.APIError as exc:  # refused before the build log starts: the engine's reason, not its URL
        raise ImageBuildError(
            f"building {tag} failed: the engine refused it ({exc.status_code}): {exc.explanation}"
        ) from None
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(f"building {tag} failed: {chunk['error'].strip()}\n" + "".join(tail[-30:]))
        line = chunk.get("stream", "")
        if line:
            tail.append(line)
            if line.strip():
                log.info("build: %s", line.rstrip())
        image_id = chunk.get("aux", {}).get("ID", image_id)
    image = client.images.get(tag)
    if image_id and image.id != image_id:
        raise ImageBuildError(f"{tag} points at {image.id}, not the image just built ({image_id})")
    seconds = time.perf_counter() - start
    return BuiltImage(image_id=image.id, size_bytes=int(image.attrs["Size"]), seconds=seconds)


def push_image(
    client: docker.DockerClient, tag: str, target: str, auth: dict[str, str] | None, log: logging.Logger
) -> str:
    """Tag as `target` (registry/repository:tag), push, return the registry digest."""
    repository, _, target_tag = target.rpartition(":")
    client.images.get(tag).tag(repository, target_tag)
    digest = ""
    for chunk in client.images.push(repository, target_tag, auth_config=auth, stream=True, decode=True):
        if "error" in chunk:
            raise ImageBuildError(f"push of {target} failed: {chunk['error']}")
        digest = chunk.get("aux", {}).get("Digest", digest)
        if chunk.get("status") and not chunk.get("progressDetail"):
            log.info("push: %s", chunk["status"])
    if not digest:
        raise ImageBuildError(f"push of {target} finished without a digest from the registry")
    return digest


def image_labels(model: OnnxModel, model_sha256: str, base_image: str) -> dict[str, str]:
    """Labels that make the image say which model it serves; evaluation checks them against its input."""
    return {
        "org.opencontainers.image.title": "mlsd CIFAR-10 inference server",
        "org.opencontainers.image.version": model.registered_model_version,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.base.name": base_image,
        "mlsd.model_name": model.registered_model_name,
        "mlsd.model_version": model.registered_model_version,
        "mlsd.mlflow_run_id": model.mlflow_run_id,
        "mlsd.model_sha256": model_sha256,
        "mlsd.dataset_hash": model.metadata.get("mlsd.dataset_hash", ""),
    }


def build_server_image(
    client: docker.DockerClient,
    model: OnnxModel,
    tag: str,
    base_image: str,
    wheelhouse_dir: Path,
    builds_dir: Path,
    log: logging.Logger,
) -> ServerImage:
    """The server image for `model`, built from a self-contained context under `builds_dir/contexts`, with
    wheels from `wheelhouse_dir` (filled from PyPI once per pin set): the build itself needs no network."""
    model_sha256 = hashlib.sha256(model.model_bytes).hexdigest()
    wheelhouse = ensure_wheelhouse(wheelhouse_dir, host_pins(), log)
    build_dir = builds_dir / "contexts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
    write_build_context(build_dir, model.model_bytes, wheelhouse, image_labels(model, model_sha256, base_image))
    log.info(f"building {tag} from {build_dir} on {client.api.base_url} (base {base_image})")
    built = build_image(client, build_dir, tag, base_image, log)
    return ServerImage(
        tag=tag,
        image_id=built.image_id,
        size_bytes=built.size_bytes,
        base_image=base_image,
        model_name=model.registered_model_name,
        model_version=model.registered_model_version,
        mlflow_run_id=model.mlflow_run_id,
        model_sha256=model_sha256,
        build_seconds=round(built.seconds, 1),
        context_dir=str(build_dir),
        engine=str(client.api.base_url),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
