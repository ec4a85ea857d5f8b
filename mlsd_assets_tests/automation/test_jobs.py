"""Jobs select the intended assets, and the instance config lets only one training run/step go at a time."""

from pathlib import Path

import dagster as dg
import yaml

from mlsd_assets.automation.jobs import CONCURRENCY_TAG
from mlsd_assets.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def _assets(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.selected_asset_keys}


def test_job_selections() -> None:
    assert _assets("ingestion_job") == {"raw_cifar10"}
    assert _assets("split_job") == {"cifar10_split"}
    training = {"cifar10_model", "cifar10_onnx", "inference_server_image", "evaluation_report", "model_promotion"}
    assert _assets("training_job") == training  # tuning only on demand: tuning_job
    assert _assets("tuning_job") == {"cifar10_tuning"}
    rollback = defs.resolve_job_def("rollback_job")
    assert [node.name for node in rollback.nodes] == ["champion_rollback"]


def test_checks_run_with_their_assets() -> None:
    ingestion = defs.resolve_job_def("ingestion_job").asset_layer.asset_graph
    checks = {key.name for key in ingestion.asset_check_keys}
    assert "check_raw_cifar10_drift" in checks
    gate = defs.resolve_job_def("training_job").asset_layer.asset_graph.asset_check_keys
    assert any(key.asset_key == dg.AssetKey("model_promotion") for key in gate)


def test_one_training_at_a_time() -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())["concurrency"]
    tag_value = defs.resolve_job_def("training_job").tags[CONCURRENCY_TAG]
    limits = config["runs"]["tag_concurrency_limits"]
    assert {"key": CONCURRENCY_TAG, "value": tag_value, "limit": 1} in limits
    assert defs.resolve_assets_def("cifar10_model").op.pool == "training"
    assert config["pools"]["default_limit"] == 1
