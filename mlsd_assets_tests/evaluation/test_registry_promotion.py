"""Real images, real containers side by side, a real registry: only promoted images are pushed; rollback re-points."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mlsd_assets.core.evaluation.promotion import CHAMPION_ALIAS
from mlsd_assets.core.training.artifacts import OnnxModel
from mlsd_assets.evaluation.assets import evaluation_report, model_promotion
from mlsd_assets.evaluation.checks import check_model_promotion_accepted
from mlsd_assets.resources import DockerEngine, MLflowTracking
from mlsd_assets.serving.assets import inference_server_image
from mlsd_assets_tests.evaluation.registry import Registry
from mlsd_assets_tests.evaluation.stubs import (
    GOOD,
    SPLIT,
    bad_weights,
    evaluation_resources,
    registered_onnx,
    upstream_assets,
)
from mlsd_assets_tests.services import REGISTRY_BINARY, docker_registry

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not REGISTRY_BINARY.exists(), reason=f"needs {REGISTRY_BINARY} (apt-get install docker-registry)"
    ),
]
REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "mlsd-cifar10-classifier"  # the code location's default name, so the CLI rollback finds it


class World:
    """One MLflow store, one registry, one image repository name for this module."""

    def __init__(self, home: Path, registry: Registry, engine: DockerEngine, wheelhouse: Path) -> None:
        self.home, self.registry, self.wheelhouse = home, registry, wheelhouse
        self.repository = f"mlsd-test/promo-{uuid.uuid4().hex[:8]}"
        self.engine = DockerEngine(base_url=engine.base_url, registry=registry.address)
        self.mlflow = MLflowTracking(
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=(home / "mlartifacts").as_uri()
        )

    def register(self, weights) -> OnnxModel:
        return registered_onnx(self.mlflow, self.home, weights, name=MODEL)

    def evaluate(self, model: OnnxModel, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [
                *upstream_assets(SPLIT, model),
                inference_server_image,
                evaluation_report,
                model_promotion,
                check_model_promotion_accepted,
            ],
            resources=evaluation_resources(self.home, self.mlflow, self.engine),
            run_config={
                "ops": {
                    "inference_server_image": {
                        "config": {"wheelhouse_dir": str(self.wheelhouse), "repository": self.repository}
                    },
                    "evaluation_report": {"config": {"batch_size": 50}},
                }
            },
            raise_on_error=raise_on_error,
        )

    def champion(self) -> str:
        return str(self.mlflow.client().get_model_version_by_alias(MODEL, CHAMPION_ALIAS).version)

    def leftover_containers(self, run_id: str) -> list:
        return self.engine.client().containers.list(all=True, filters={"name": run_id[:8]})


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_engine, wheelhouse_cache):
    home = tmp_path_factory.mktemp("promo")
    with docker_registry(home / "registry") as address:
        w = World(home, Registry(address), docker_engine, wheelhouse_cache)
        yield w
        client = w.engine.client()
        for image in client.images.list():
            for tag in image.tags:
                if w.repository in tag:
                    client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def first(world):
    """v1: the first model, promoted as today, pushed as :v1 and :champion."""
    model = world.register(GOOD)
    return model, world.evaluate(model)


@pytest.mark.timeout(2400)
def test_promoted_pushed_rejected_never_pushed_rollback_repoints(world, first):
    registry, repo = world.registry, world.repository
    model1, result = first
    p1 = result.output_for_node("model_promotion")
    assert p1.decision == "promoted" and world.champion() == "1"
    assert registry.catalog() == [repo] and registry.tags(repo) == ["champion", "v1"]
    v1_digest = registry.digest(repo, "v1")
    assert v1_digest == p1.digest and registry.digest(repo, "champion") == v1_digest
    assert p1.pushed == [f"{registry.address}/{repo}:v1", f"{registry.address}/{repo}:champion"]
    tags = world.mlflow.client().get_model_version(MODEL, "1").tags
    assert tags["mlsd.image.pushed"] == f"{registry.address}/{repo}:v1@{v1_digest}"

    # v2 is much less accurate: evaluated beside v1's container, rejected, never in the registry.
    model2 = world.register(bad_weights())
    result = world.evaluate(model2)
    report2, p2 = result.output_for_node("evaluation_report"), result.output_for_node("model_promotion")
    assert report2.comparison["champion_version"] == "1" and report2.comparison["p_worse"] < 1e-4
    assert p2.decision == "rejected" and p2.pushed == [] and p2.digest == ""
    assert f"b={report2.comparison['b']}" in p2.reason and "McNemar one-sided p=" in p2.reason
    assert registry.tags(repo) == ["champion", "v1"] and registry.digest(repo, "v2") is None
    assert registry.digest(repo, "champion") == v1_digest and world.champion() == "1"
    assert world.leftover_containers(result.run_id) == [], "evaluation containers left behind"

    # v3 is as good as v1 (same weights, its own image): promoted, pushed, :champion moves to it.
    model3 = world.register(GOOD)
    result = world.evaluate(model3)
    p3 = result.output_for_node("model_promotion")
    assert p3.decision == "promoted", p3.reason
    assert registry.tags(repo) == ["champion", "v1", "v3"]
    v3_digest = registry.digest(repo, "v3")
    assert v3_digest == p3.digest != v1_digest and registry.digest(repo, "champion") == v3_digest
    assert world.champion() == "3"

    # Rollback with the documented command: :champion points at v1's digest again, alias and record follow.
    env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT),
        "MLSD_HOME": str(world.home / "cli-home"),
        "DAGSTER_HOME": str(world.home / "cli-dagster"),
        "MLFLOW_TRACKING_URI": world.mlflow.tracking_uri,
        "MLSD_MLFLOW_ARTIFACT_ROOT": world.mlflow.artifact_root,
        "MLSD_IMAGE_REGISTRY": registry.address,
    }
    (world.home / "cli-dagster").mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "mlsd_assets", "rollback", "--to-version", "1", "--reason", "v3 misbehaves in prod"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "champion is now v1 (was v3)" in done.stdout
    assert registry.digest(repo, "champion") == v1_digest and registry.digest(repo, "v3") == v3_digest
    assert world.champion() == "1"
    tags = world.mlflow.client().get_model_version(MODEL, "1").tags
    assert tags["mlsd.rollback.reason"] == "v3 misbehaves in prod" and tags["mlsd.rollback.previous_champion"] == "3"
    instance = dg.DagsterInstance.from_config(str(world.home / "cli-dagster"))
    event = instance.get_latest_materialization_event(dg.AssetKey("model_promotion"))
    assert event is not None and event.asset_materialization.metadata["decision"].value == "rolled back"
    assert event.asset_materialization.metadata["by"].value.startswith(tags["mlsd.rollback.by"].split(" ")[0])


def test_both_containers_removed_when_side_by_side_fails(world, first, monkeypatch):
    seen: dict[str, str] = {}

    def induced(base_url, images, expected, batch_size, single, log, champion_url=None, seed=0):
        for who, url in (("challenger", base_url), ("champion", champion_url)):
            assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
            seen[who] = url
        raise dg.Failure("induced failure while both containers run", allow_retries=False)

    monkeypatch.setattr("mlsd_assets.core.evaluation.measure.measure_server", induced)
    champion_before = world.champion()
    result = world.evaluate(world.register(GOOD), raise_on_error=False)
    assert not result.success and set(seen) == {"challenger", "champion"}
    assert world.leftover_containers(result.run_id) == []
    assert world.champion() == champion_before
