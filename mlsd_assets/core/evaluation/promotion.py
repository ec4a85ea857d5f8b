"""Who is champion, where its image is, and what promoting or rolling back does. No Dagster.

The MLflow registry alias `champion` names the version; its image is found on the engine (by the id and
tag evaluation recorded on the version) or pulled from the registry. Pushing happens only here: an image
reaches the registry as `<registry>/<repository>:v<N>` and `:champion` once its version is promoted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsd_assets.core.platform.atomic import JsonFile

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    import docker
    from mlsd_assets.core.evaluation.report import EvaluationReport

CHAMPION_ALIAS = "champion"
CHAMPION_IMAGE_TAG = "champion"
# Model-version tags: what evaluation saw (image, figures) and what promotion/rollback did.
IMAGE_ID_TAG = "mlsd.image.id"
IMAGE_TAG_TAG = "mlsd.image.tag"
IMAGE_PUSHED_TAG = "mlsd.image.pushed"
DECISION_TAG = "mlsd.promotion.decision"


class PromotionError(RuntimeError):
    """Promotion or rollback cannot be done as asked; the message says what is missing and where."""


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def registry_refs(registry: str, local_tag: str, version: str) -> tuple[str, str]:
    """(`<registry>/<repository>:v<N>`, `<registry>/<repository>:champion`) for a locally tagged image."""
    repository = local_tag.rpartition(":")[0] or local_tag
    base = f"{registry.rstrip('/')}/{repository}"
    return f"{base}:v{version}", f"{base}:{CHAMPION_IMAGE_TAG}"


def resolve_image(
    client: docker.DockerClient,
    name: str,
    version: str,
    tags: dict[str, str],
    registry: str,
    auth: dict[str, str] | None,
    log: logging.Logger,
    override: str = "",
) -> str:
    """The image id serving `name` v`version`: `override`, else the id/tag evaluation recorded on the engine,
    else pulled from the registry. Its labels must say it serves that version, or nothing is run."""
    import docker.errors

    local_tag = tags.get(IMAGE_TAG_TAG, "")
    candidates = [override] if override else [tags.get(IMAGE_ID_TAG, ""), local_tag]
    tried = []
    for ref in filter(None, candidates):
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            tried.append(f"{ref} (not on the engine)")
            continue
        return _serving(image, name, version)
    pushed = tags.get(IMAGE_PUSHED_TAG, "") or (
        registry_refs(registry, local_tag, version)[0] if registry and local_tag else ""
    )
    if pushed and not override:
        ref = pushed.split("@")[0]
        try:
            log.info("pulling %s from the registry", ref)
            repository, _, tag = ref.rpartition(":")
            return _serving(client.images.pull(repository, tag=tag, auth_config=auth), name, version)
        except docker.errors.APIError as exc:
            tried.append(f"{ref} (pull failed: {exc.explanation or exc})")
    raise PromotionError(
        f"no image for {name} v{version}: tried {', '.join(tried) or 'nothing (no image recorded on the version)'}"
        "; rematerialize its inference_server_image, or name one with config `champion_image`"
    )


def _serving(image: Any, name: str, version: str) -> str:
    labels = image.labels or {}
    if labels.get("mlsd.model_name") != name or labels.get("mlsd.model_version") != version:
        raise PromotionError(
            f"image {image.tags or image.id} serves {labels.get('mlsd.model_name')} "
            f"v{labels.get('mlsd.model_version')}, not {name} v{version}"
        )
    return image.id


def champion_onnx(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """The champion's ONNX file from its training run (logged under `onnx/`), for a server without Docker."""
    files = [a.path for a in client.list_artifacts(version.run_id, "onnx") if a.path.endswith(".onnx")]
    if not files:
        raise PromotionError(f"run {version.run_id} of v{version.version} has no onnx/*.onnx artifact")
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(version.run_id, files[0], str(dest)))


@dataclass(frozen=True)
class Published:
    version_ref: str
    champion_ref: str
    digest: str


def publish(
    client: docker.DockerClient,
    image_id: str,
    local_tag: str,
    version: str,
    registry: str,
    auth: dict[str, str] | None,
    log: logging.Logger,
) -> Published:
    """Push the image as `:v<N>` and re-point `:champion` at it; both must carry the same digest."""
    from mlsd_assets.core.serving.image import push_image

    version_ref, champion_ref = registry_refs(registry, local_tag, version)
    digest = push_image(client, image_id, version_ref, auth, log)
    champion_digest = push_image(client, image_id, champion_ref, auth, log)
    if champion_digest != digest:
        raise PromotionError(f"{champion_ref} got digest {champion_digest}, {version_ref} got {digest}")
    return Published(version_ref, champion_ref, digest)


@dataclass(frozen=True)
class Promotion(JsonFile):
    """One gate decision or rollback, as recorded: who holds `champion` afterwards and why."""

    action: str  # "promotion" | "rollback"
    decision: str  # "promoted" | "rejected" | "already champion" | "rolled back"
    model_name: str
    candidate_version: str
    previous_champion: str  # "" when there was none
    champion_after: str
    reason: str
    image_id: str = ""
    pushed: list[str] = field(default_factory=list)
    digest: str = ""
    figures: dict[str, Any] | None = None
    by: str = ""
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def promoted(self) -> bool:
        return self.champion_after == self.candidate_version


def record(client: MlflowClient, promotion: Promotion) -> None:
    """Tags on the candidate version, and the alias moved when it now holds `champion`."""
    name, version = promotion.model_name, promotion.candidate_version
    prefix = "mlsd.rollback" if promotion.action == "rollback" else "mlsd.promotion"
    tags = {
        f"{prefix}.decision": promotion.decision,
        f"{prefix}.reason": promotion.reason[:4000],
        f"{prefix}.at": promotion.at,
        f"{prefix}.by": promotion.by,
        f"{prefix}.previous_champion": promotion.previous_champion,
    }
    if promotion.digest:
        tags[IMAGE_PUSHED_TAG] = f"{promotion.pushed[0]}@{promotion.digest}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promotion.promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)


def decide_promotion(
    mlflow_client: MlflowClient,
    docker_client: docker.DockerClient | None,
    report: EvaluationReport,
    alpha: float,
    max_latency_ratio: float,
    registry: str,
    auth: dict[str, str] | None,
    by: str,
    log: logging.Logger,
) -> Promotion:
    """The gate on the side-by-side figures of `report`; when promoted, push first, then move the alias."""
    from mlsd_assets.core.evaluation.gate import Comparison, decide

    name, version = report.model_name, report.model_version
    mlflow_client.get_model_version(name, version)  # the challenger must be a registered version
    champion = current_champion(mlflow_client, name)
    previous = str(champion.version) if champion is not None else ""
    comparison = Comparison.from_dict(report.comparison) if report.comparison else None
    if previous == version:
        decision, promote, reason = "already champion", True, f"v{version} already holds `{CHAMPION_ALIAS}`"
    else:
        if champion is not None and (comparison is None or comparison.champion_version != previous):
            compared = f"v{comparison.champion_version}" if comparison else "no champion"
            raise PromotionError(
                f"champion is v{previous} but evaluation_report of v{version} compared with {compared}: "
                "rematerialize evaluation_report (compare_with_champion: true) so the gate sees both side by side"
            )
        verdict = decide(comparison, alpha, max_latency_ratio, f"v{version}")
        decision, promote, reason = ("promoted" if verdict.promote else "rejected"), verdict.promote, verdict.text
    pushed, digest = [], ""
    if promote and registry:
        if docker_client is None:
            raise PromotionError("a registry is configured but no Docker engine was given to push the image")
        if report.runtime != "container":
            raise PromotionError(
                f"v{version} was evaluated as a {report.runtime}, not its image: not pushing "
                f"{report.image_tag} unmeasured; evaluate with runtime container"
            )
        published = publish(docker_client, report.image_id, report.image_tag, version, registry, auth, log)
        pushed, digest = [published.version_ref, published.champion_ref], published.digest
    promotion = Promotion(
        action="promotion",
        decision=decision,
        model_name=name,
        candidate_version=version,
        previous_champion=previous,
        champion_after=version if promote else previous,
        reason=reason,
        image_id=report.image_id,
        pushed=pushed,
        digest=digest,
        figures=report.comparison,
        by=by,
    )
    record(mlflow_client, promotion)
    (log.info if promote else log.warning)(reason)
    return promotion


def rollback(
    mlflow_client: MlflowClient,
    docker_client: docker.DockerClient | None,
    name: str,
    to_version: str,
    reason: str,
    by: str,
    registry: str,
    auth: dict[str, str] | None,
    log: logging.Logger,
) -> Promotion:
    """Move `champion` back to `to_version`, re-pushing its image as `:champion` first when a registry is set."""
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise PromotionError("a rollback needs a reason (it is recorded on the model version)")
    try:
        target = mlflow_client.get_model_version(name, to_version)
    except MlflowException as exc:
        raise PromotionError(f"{name} has no version {to_version!r}: {exc.message}") from exc
    current = current_champion(mlflow_client, name)
    if current is not None and str(current.version) == str(target.version):
        raise PromotionError(f"{name} v{to_version} already holds `{CHAMPION_ALIAS}`: nothing to roll back")
    tags = target.tags or {}
    image_id, pushed, digest = "", [], ""
    if registry:
        if docker_client is None:
            raise PromotionError("a registry is configured but no Docker engine was given to re-push the image")
        image_id = resolve_image(docker_client, name, to_version, tags, registry, auth, log)
        local_tag = tags.get(IMAGE_TAG_TAG) or (docker_client.images.get(image_id).tags or [""])[0]
        published = publish(docker_client, image_id, local_tag, to_version, registry, auth, log)
        pushed, digest = [published.version_ref, published.champion_ref], published.digest
    promotion = Promotion(
        action="rollback",
        decision="rolled back",
        model_name=name,
        candidate_version=str(target.version),
        previous_champion=str(current.version) if current is not None else "",
        champion_after=str(target.version),
        reason=reason,
        image_id=image_id,
        pushed=pushed,
        digest=digest,
        by=by,
    )
    record(mlflow_client, promotion)
    log.info("champion of %s: v%s -> v%s (%s)", name, promotion.previous_champion, to_version, reason)
    return promotion
