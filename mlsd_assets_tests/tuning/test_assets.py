"""cifar10_tuning in Dagster and MLflow (a parent run, a child per trial), its skip on an unchanged re-run, and
cifar10_model(use_tuned) training with the best trial's config, recorded in its MLflow run."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.tuning.result import TuningResult
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import DataPaths, MLflowTracking
from mlsd_assets.settings import load_settings
from mlsd_assets.training.assets import cifar10_model
from mlsd_assets.tuning.assets import cifar10_tuning
from mlsd_assets.tuning.resources import TuningStorage
from mlsd_assets.tuning.tracking import PARENT_TAG
from mlsd_assets_tests.synthetic import make_split

SPLIT = make_split(300, 100, 20)
TUNING = {
    "trial_epochs": 1,
    "max_trials": 2,
    "train_images": 0,
    "lr": [0.05, 0.5],
    "muon_lr": [0.05, 0.2],
    "widths": [[8, 16, 16], [12, 24, 24]],
    "batch_sizes": [50],
    "precision": "fp32",
    "threads": 2,
}
MODEL = {"use_tuned": True, "epochs": 1, "precision": "fp32", "threads": 2}


# the data domain's asset stood in for by the synthetic split (the IO manager types it from cifar10_tuning's input)
split_stub = dg.asset(name="cifar10_split")(lambda: SPLIT)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("home")
    unset = ("MLSD_DATA_DIR", "MLFLOW_TRACKING_URI", "MLSD_MLFLOW_ARTIFACT_ROOT", "MLSD_TUNING_STORAGE_URL")
    mp = pytest.MonkeyPatch()
    for var in unset:
        mp.delenv(var, raising=False)
    for var, value in {"MLSD_HOME": str(root), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}.items():
        mp.setenv(var, value)
    mp.chdir(root)
    settings = load_settings()
    resources = {
        "io_manager": ArtifactIOManager(root=str(settings.artifacts_dir)),
        "mlflow": MLflowTracking(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        ),
        "paths": DataPaths(root=str(settings.data_dir)),
        "tuning_storage": TuningStorage(url=f"sqlite:///{settings.data_dir / 'tuning' / 'optuna.db'}"),
    }
    instance = dg.DagsterInstance.ephemeral()
    first = _tune(resources, instance)
    yield {"resources": resources, "instance": instance, "first": first, "root": root}
    mp.undo()


def _tune(resources: dict[str, object], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [split_stub, cifar10_tuning],
        resources=resources,
        instance=instance,
        run_config={"ops": {"cifar10_tuning": {"config": TUNING}}},
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["cifar10_tuning"]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_trials_are_logged_in_dagster_and_nested_in_mlflow(home) -> None:  # type: ignore[no-untyped-def]
    result: dg.ExecuteInProcessResult = home["first"]
    assert result.success
    meta = _metadata(result)
    assert meta["skipped"] is False and meta["trials_complete"] + meta["trials_pruned"] == 2
    rows = meta["trials"].records
    assert [r.data["trial"] for r in rows] == [0, 1]
    logs = [e.user_message for e in home["instance"].all_logs(result.run_id)]
    assert any(m.startswith("trial 1 starts") for m in logs) and any(m.startswith("trial 0 COMPLETE") for m in logs)

    client = home["resources"]["mlflow"].client()
    experiment = home["resources"]["mlflow"].experiment_id()
    (parent,) = client.search_runs([experiment], "tags.`dagster.asset` = 'cifar10_tuning'")
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    best = next(r for r in children if r.data.tags["optuna.trial"] == str(meta["best_trial"]))
    assert best.data.metrics["value"] == pytest.approx(meta["best_val_accuracy"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(meta["best_val_accuracy"])


def test_an_unchanged_rerun_returns_the_stored_best(home) -> None:  # type: ignore[no-untyped-def]
    again = _tune(home["resources"], home["instance"])
    assert again.success
    first, second = _metadata(home["first"]), _metadata(again)
    assert second["skipped"] is True and second["study"] == first["study"]
    assert second["best_params"] == first["best_params"] and second["best_trial"] == first["best_trial"]
    client = home["resources"]["mlflow"].client()
    trials = client.search_runs([home["resources"]["mlflow"].experiment_id()], f"tags.`{PARENT_TAG}` != ''")
    assert len(trials) == 2  # no trial ran again


def test_the_model_trains_with_the_tuned_config(home) -> None:  # type: ignore[no-untyped-def]
    result = dg.materialize(
        [split_stub, cifar10_model],
        resources=home["resources"],
        instance=home["instance"],
        run_config={"ops": {"cifar10_model": {"config": MODEL}}},
    )
    assert result.success
    io: ArtifactIOManager = home["resources"]["io_manager"]
    tuned = TuningResult.load(io.path_for(dg.AssetKey("cifar10_tuning"), None, ".json"))
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["cifar10_model"]]
    run = home["resources"]["mlflow"].client().get_run(event.materialization.metadata["mlflow_run_id"].value)
    params, tags = run.data.params, run.data.tags
    assert float(params["lr"]) == pytest.approx(tuned.best_params["lr"])
    assert float(params["muon_lr"]) == pytest.approx(tuned.best_params["muon_lr"])
    assert params["widths"] == str([int(w) for w in tuned.best_params["widths"].split("-")])
    assert params["batch_size"] == "50"
    assert tags["tuning.study"] == tuned.study_name and tags["tuning.trial"] == str(tuned.best_trial)


def test_use_tuned_without_a_study_fails_naming_the_fix(tmp_path: Path, home) -> None:  # type: ignore[no-untyped-def]
    result = dg.materialize(
        [split_stub, cifar10_model],
        resources=home["resources"],
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"cifar10_model": {"config": MODEL}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "cifar10_tuning has never been materialized" in str(failure.event_specific_data.error)
