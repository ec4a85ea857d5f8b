"""`python -m mlsd_assets`: the pipeline command makes real Dagster runs and names what failed."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES
from mlsd_assets_tests.cifar_files import write_cifar_python_tarball

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, source: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSD_CIFAR10_SOURCE": str(source)}
    return subprocess.run(
        [sys.executable, "-m", "mlsd_assets", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def cifar_tarball(tmp_path: Path) -> Path:
    return write_cifar_python_tarball(tmp_path / "src", per_batch=30)


def test_pipeline_through_split(mlsd_home: Path, cifar_tarball: Path) -> None:
    shutil.copy(REPO / "dagster.yaml", mlsd_home / "dagster" / "dagster.yaml")
    out = _cli("pipeline", "--through", "cifar10_split", source=cifar_tarball)
    assert out.returncode == 0, out.stderr[-3000:]
    split_file = mlsd_home / "data" / "artifacts" / "cifar10_split" / "latest.npz"
    assert f"cifar10_split: {split_file}" in out.stdout and split_file.exists()
    assert "cifar10_model" not in out.stdout

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert sorted(r.job_name for r in runs) == ["ingestion_job"] * 6 + ["split_job"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert sorted(r.tags.get("dagster/partition") for r in runs if r.job_name == "ingestion_job") == sorted(
        OFFICIAL_BATCHES
    )

    again = _cli("register-batches", source=cifar_tarball)
    assert again.returncode == 0 and "registered 0 new partition(s)" in again.stdout


def test_pipeline_failure_names_the_step(mlsd_home: Path, tmp_path: Path) -> None:
    out = _cli("pipeline", "--through", "raw_cifar10", source=tmp_path / "missing.tar.gz")
    assert out.returncode == 1
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("pipeline failed: ingestion_job [data_batch_1]")
    assert "step raw_cifar10:" in message and "missing.tar.gz" in message


def test_pipeline_with_a_time_budget_ends_with_a_summary(mlsd_home: Path, cifar_tarball: Path) -> None:
    shutil.copy(REPO / "dagster.yaml", mlsd_home / "dagster" / "dagster.yaml")
    out = _cli("pipeline", "--through", "cifar10_onnx", "--budget-minutes", "0.25", source=cifar_tarball)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "throughput probe:" in out.stderr and "time budget 0.2 min" in out.stderr
    assert "time budget: narrow net" in out.stderr  # 15 s fit no epoch of the wider net: not even timed
    summary = out.stdout.split("==== summary ====", 1)[1]
    assert "model: validation accuracy" in summary and "budget 0.25 min" in summary
    assert re.search(r"\d+ epochs of airbench 32-128-128, \w+, budget", summary), summary  # the net it trained
    assert "make dev" in summary and f"mlflow ui --backend-store-uri sqlite:///{mlsd_home}" in summary
