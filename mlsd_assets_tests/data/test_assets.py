"""raw_cifar10 partitions and cifar10_split through real Dagster runs: sources, drops, metadata, bad input."""

import time
from pathlib import Path

import dagster as dg
import pytest

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, RawBatch
from mlsd_assets.core.data.sources import SOURCE_ENV, SourceUnavailableError
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.data.assets import raw_cifar10
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import Cifar10Source, DataPaths
from mlsd_assets.settings import load_settings
from mlsd_assets_tests.cifar_files import (
    tar_gz,
    write_cifar_python_dir,
    write_image_folder,
    write_image_folder_tree,
)
from mlsd_assets_tests.data.materialize import data_resources, materialize_partitions, materialize_split
from mlsd_assets_tests.synthetic import make_images

# tiny data: a larger validation share so every class is present, and a loose balance bound for ~10 per class
TINY_DATA_CONFIG = {
    "ops": {
        "cifar10_split": {"config": {"validation_fraction": 0.3}},
        "cifar10_split_check_cifar10_split_class_balance": {"config": {"tolerance": 1.0}},
    }
}


def _artifact(home: Path, asset: str, partition: str) -> Path:
    return home / "artifacts" / asset / f"{partition}.npz"


def test_official_partitions_drop_and_split(mlsd_home: Path) -> None:
    source = write_cifar_python_dir(mlsd_home / "src", per_batch=60)
    resources = data_resources(mlsd_home, str(source))
    images, labels = make_images(40, seed=11)
    write_image_folder(mlsd_home / "data" / "drops" / "drop_0001", images, labels)
    instance = dg.DagsterInstance.ephemeral()

    results = materialize_partitions(instance, resources, [*OFFICIAL_BATCHES, "drop_0001"])
    assert all(r.success for r in results)
    [event] = results[-1].get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["count"].value == 40 and meta["kind"].value == "drop"
    assert sum(meta["class_histogram_json"].value.values()) == 40
    assert RawBatch.load(_artifact(mlsd_home, "raw_cifar10", "data_batch_2")).source.startswith("pickle-dir:")

    result = materialize_split(instance, resources, TINY_DATA_CONFIG)
    assert result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 7 and all(evaluations.values()), evaluations
    split = Cifar10Split.load(_artifact(mlsd_home, "cifar10_split", "latest"))
    assert split.partitions == sorted([*OFFICIAL_BATCHES, "drop_0001"])
    assert split.counts()["test"] == 60 and sum(split.counts().values()) == 6 * 60 + 40
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["content_hash"].value == split.content_hash
    assert meta["train_count"].value == split.counts()["train"] and meta["dropped_count"].value == 0
    assert len(meta["preview"].value.records) == 20


def test_bad_drop_fails_and_keeps_previous_partition(mlsd_home: Path) -> None:
    resources = data_resources(mlsd_home, "download")
    drop = mlsd_home / "data" / "drops" / "drop_0002"
    images, labels = make_images(20, seed=12)
    write_image_folder(drop, images, labels)
    instance = dg.DagsterInstance.ephemeral()
    [good] = materialize_partitions(instance, resources, ["drop_0002"])
    assert good.success
    stored = _artifact(mlsd_home, "raw_cifar10", "drop_0002")
    before = stored.read_bytes()

    (drop / "cat" / "readme.txt").write_text("not an image")
    [bad] = materialize_partitions(instance, resources, ["drop_0002"])
    assert not bad.success
    [failure] = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "drop_0002/cat/readme.txt: not an image file" in str(failure.step_failure_data.error)
    assert stored.read_bytes() == before
    assert [p.name for p in stored.parent.iterdir()] == ["drop_0002.npz"], "no temporary file left behind"


def test_image_folder_tarball_source_and_tarred_drop(tmp_path: Path) -> None:
    tree = write_image_folder_tree(tmp_path / "tree", n_train=50, n_test=10, fmt="jpg")
    paths = DataPaths(root=str(tmp_path / "data"))
    images, labels = make_images(10, seed=4)
    tar_gz(write_image_folder(tmp_path / "drop_x", images, labels), paths.drops_dir / "drop_x.tar.gz")
    resources = {
        "cifar10_source": Cifar10Source(location=str(tar_gz(tree, tmp_path / "t.tar.gz"))),
        "paths": paths,
    }
    for key, expected in (("data_batch_4", 10), ("test_batch", 10), ("drop_x", 10)):
        batch = raw_cifar10(dg.build_asset_context(partition_key=key, resources=resources))
        assert isinstance(batch, RawBatch) and len(batch) == expected and batch.partition == key


def test_default_source_is_the_download_and_fails_fast_offline(mlsd_home: Path) -> None:
    assert load_settings().cifar10_source == "download" == Cifar10Source().location
    resources = {
        "cifar10_source": Cifar10Source(url="https://cifar10-mirror.invalid/cifar-10-python.tar.gz"),
        "paths": DataPaths(root=str(mlsd_home / "data")),
    }
    start = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=SOURCE_ENV):
        raw_cifar10(dg.build_asset_context(partition_key="test_batch", resources=resources))
    assert time.monotonic() - start < 15


def test_split_reads_only_materialized_partitions(mlsd_home: Path) -> None:
    source = write_cifar_python_dir(mlsd_home / "src", per_batch=30)
    resources = data_resources(mlsd_home, str(source))
    instance = dg.DagsterInstance.ephemeral()
    assert all(r.success for r in materialize_partitions(instance, resources, ["data_batch_1", "test_batch"]))
    result = materialize_split(instance, resources, TINY_DATA_CONFIG)
    assert result.success
    split = ArtifactIOManager(root=str(mlsd_home / "artifacts")).path_for(dg.AssetKey("cifar10_split"), None, ".npz")
    assert Cifar10Split.load(split).partitions == ["data_batch_1", "test_batch"]
