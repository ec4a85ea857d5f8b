"""Blocking checks hold across runs: a rotted raw artifact fails the split's check, and then no schedule,
sensor or hand-started training_job consumes that split; the operator override trains and is recorded."""

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np

from mlsd_assets.automation.jobs import MODEL_ASSET
from mlsd_assets.automation.schedules import build_training_schedule
from mlsd_assets.automation.sensors import build_retraining_sensor
from mlsd_assets.automation.trust import OVERRIDE_TAG
from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, RawBatch
from mlsd_assets.data.assets import cifar10_split, raw_cifar10
from mlsd_assets.definitions import defs
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import Cifar10Source, DataPaths, MLflowTracking
from mlsd_assets.settings import load_settings
from mlsd_assets.training.assets import cifar10_model
from mlsd_assets_tests.cifar_files import write_image_folder_tree
from mlsd_assets_tests.data.materialize import SPLIT_CHECKS, materialize_partitions, materialize_split
from mlsd_assets_tests.training.tiny import TINY

REPO = Path(__file__).resolve().parents[2]
DATA_CONFIG = {
    "ops": {
        "cifar10_split": {"config": {"validation_fraction": 0.3}},
        "cifar10_split_check_cifar10_split_class_balance": {"config": {"tolerance": 1.0}},
    }
}
MODEL_CONFIG = {k: v for k, v in TINY.items() if k != "eval_batch_size"} | {"widths": list(TINY["widths"])}


def _schedule_tick(instance: dg.DagsterInstance) -> dg.SkipReason | dg.RunRequest:
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 3, 2, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    data = build_training_schedule().evaluate_tick(context)
    return data.run_requests[0] if data.run_requests else dg.SkipReason(data.skip_message)


def _sensor_tick(instance: dg.DagsterInstance) -> dg.SkipReason | dg.RunRequest:
    # no repository in the context: the sensor reads the code location's own asset graph
    return build_retraining_sensor()(dg.build_sensor_context(instance=instance))


def test_rotted_raw_artifact_blocks_training_everywhere_until_overridden(mlsd_home: Path) -> None:
    shutil.copy(REPO / "dagster.yaml", mlsd_home / "dagster" / "dagster.yaml")
    settings = load_settings()
    source = write_image_folder_tree(mlsd_home / "src", n_train=100, n_test=30, fmt="png")
    resources = {
        "io_manager": ArtifactIOManager(root=str(settings.artifacts_dir)),
        "paths": DataPaths(root=str(settings.data_dir)),
        "cifar10_source": Cifar10Source(location=str(source)),
    }
    instance = dg.DagsterInstance.get()
    assert all(r.success for r in materialize_partitions(instance, resources, list(OFFICIAL_BATCHES)))
    assert materialize_split(instance, resources, DATA_CONFIG).success
    assert isinstance(_schedule_tick(instance), dg.RunRequest), "a checked split is trained on"
    assert _sensor_tick(instance).job_name == "training_job"

    # rot: pixels of one stored raw artifact change, its stored hashes do not
    stored = settings.artifacts_dir / "raw_cifar10" / "data_batch_1.npz"
    batch = RawBatch.load(stored)
    rotted = batch.images.copy()
    rotted[0] = 255 - rotted[0]
    RawBatch(**{**batch.__dict__, "images": rotted}).save(stored)
    split_run = materialize_split(instance, resources, DATA_CONFIG)
    assert not split_run.success
    failed = [e for e in split_run.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["check_cifar10_split_leakage"]
    [materialization] = instance.fetch_materializations(cifar10_split.key, limit=1).records
    assert materialization.run_id == split_run.run_id, "the rotted split was stored: only the check stops it"

    for tick in (_schedule_tick(instance), _sensor_tick(instance)):
        assert isinstance(tick, dg.SkipReason), tick
        assert "check_cifar10_split_leakage failed" in tick.skip_message
        assert split_run.run_id in tick.skip_message and str(materialization.storage_id) in tick.skip_message

    cli = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "mlsd_assets.definitions", "-j", "training_job"],
        env={**os.environ, "MLSD_CIFAR10_SOURCE": str(source)},
        cwd=mlsd_home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode != 0
    assert "check_cifar10_split_leakage failed" in cli.stdout + cli.stderr
    assert split_run.run_id in cli.stdout + cli.stderr
    assert "epoch 1/" not in cli.stdout + cli.stderr, "refused before any training"
    assert not instance.fetch_materializations(MODEL_ASSET, limit=1).records

    # the operator override: explicit, with a reason, recorded on the run and in the MLflow run
    tracking = MLflowTracking(tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root)
    reason = "rot is in one image of data_batch_1, accepted for a test"
    result = dg.materialize(
        [raw_cifar10, cifar10_split, *SPLIT_CHECKS, cifar10_model],
        selection=[MODEL_ASSET],
        resources={**resources, "mlflow": tracking},
        instance=instance,
        run_config={"ops": {"cifar10_model": {"config": MODEL_CONFIG}}},
        tags={OVERRIDE_TAG: reason},
    )
    assert result.success
    assert instance.get_run_by_id(result.run_id).tags[OVERRIDE_TAG] == reason
    [model] = instance.fetch_materializations(MODEL_ASSET, limit=1).records
    run_id = model.asset_materialization.metadata["mlflow_run_id"].value
    tags = tracking.client().get_run(run_id).data.tags
    assert tags["mlsd.override_blocking_checks"] == reason
    assert "check_cifar10_split_leakage failed" in tags["mlsd.overridden"]
    assert np.array_equal(RawBatch.load(stored).images[0], rotted[0])
