"""Each cifar10_split check passes on a clean split and fails on purpose; blocking checks stop downstream."""

import dataclasses
import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlsd_assets.core.data.batches import RawBatch, image_hashes
from mlsd_assets.core.data.cleaning import build_split
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.data import checks
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets_tests.data.materialize import SPLIT_CHECKS
from mlsd_assets_tests.synthetic import make_images


@pytest.fixture(scope="module")
def clean() -> Cifar10Split:
    images, labels = make_images(1200, seed=21)
    batches = {
        "data_batch_1": RawBatch("data_batch_1", images[:1000], labels[:1000], image_hashes(images[:1000]), "t"),
        "test_batch": RawBatch("test_batch", images[1000:], labels[1000:], image_hashes(images[1000:]), "t"),
    }
    return build_split(batches, 0.5, logging.getLogger("test"))


def _failures(result: dg.AssetCheckResult) -> list[dict[str, str]]:
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    return [r.data for r in result.metadata["failure_cases"].value.records]


def _with_index(base: Cifar10Split, **columns: object) -> Cifar10Split:
    return dataclasses.replace(base, index=base.index.assign(**columns))


def test_clean_split_passes_every_check(clean: Cifar10Split) -> None:
    assert checks.check_cifar10_split_schema(cifar10_split=clean).passed
    assert checks.check_cifar10_split_leakage(cifar10_split=clean).passed
    assert checks.check_cifar10_split_label_range(cifar10_split=clean).passed
    assert checks.check_cifar10_split_image_shape(cifar10_split=clean).passed
    balance = checks.ClassBalanceConfig(tolerance=0.5)
    assert checks.check_cifar10_split_class_balance(config=balance, cifar10_split=clean).passed
    assert checks.check_cifar10_split_min_counts(config=checks.MinCountsConfig(), cifar10_split=clean).passed


def test_schema_fails_on_unknown_split_and_wrong_dtype(clean: Cifar10Split) -> None:
    bad = _with_index(clean, split=np.where(clean.index["split"] == "test", "holdout", clean.index["split"]))
    assert {f["check"] for f in _failures(checks.check_cifar10_split_schema(cifar10_split=bad))} == {
        "isin(('train', 'validation', 'test'))"
    }
    bad = _with_index(clean, source_index=clean.index["source_index"].astype("float64"))
    [failure] = _failures(checks.check_cifar10_split_schema(cifar10_split=bad))
    assert failure["column"] == "source_index" and failure["failure_case"] == "float64"


def test_leakage_fails_when_a_hash_is_in_two_splits(clean: Cifar10Split) -> None:
    first_test = int(np.flatnonzero(clean.index["split"] == "test")[0])
    index = pd.concat([clean.index, clean.index.iloc[[first_test]].assign(split="train", image_id="drop_x:0")])
    images = np.concatenate([clean.images, clean.images[[first_test]]])
    leaky = dataclasses.replace(clean, index=index.reset_index(drop=True), images=images)
    [failure] = _failures(checks.check_cifar10_split_leakage(cifar10_split=leaky))
    assert failure["index"] == clean.index["hash"].iloc[first_test] and failure["failure_case"] == "2"


def test_leakage_fails_when_hashes_do_not_match_pixels(clean: Cifar10Split) -> None:
    images = clean.images.copy()
    images[7] = 255 - images[7]
    [failure] = _failures(checks.check_cifar10_split_leakage(cifar10_split=dataclasses.replace(clean, images=images)))
    assert failure["index"] == clean.index["image_id"].iloc[7]


def test_label_range_fails_on_label_10(clean: Cifar10Split) -> None:
    labels = clean.index["label"].to_numpy().copy()
    labels[3] = 10
    [failure] = _failures(checks.check_cifar10_split_label_range(cifar10_split=_with_index(clean, label=labels)))
    assert failure["failure_case"] == "10" and failure["index"] == "3"


def test_image_shape_fails_on_wrong_dtype_and_size(clean: Cifar10Split) -> None:
    wrong = dataclasses.replace(clean, images=clean.images[:, :28, :28, :].astype(np.float32))
    failures = _failures(checks.check_cifar10_split_image_shape(cifar10_split=wrong))
    assert {f["column"] for f in failures} == {"dtype", "height", "width"}


def test_class_balance_fails_when_a_class_is_scarce(clean: Cifar10Split) -> None:
    keep = ~((clean.index["label"] == 0) & (clean.index["split"] == "train")).to_numpy()
    keep[np.flatnonzero(~keep)[:5]] = True  # five cat... airplanes left in train
    scarce = dataclasses.replace(clean, index=clean.index[keep].reset_index(drop=True), images=clean.images[keep])
    config = checks.ClassBalanceConfig(tolerance=0.5)
    failures = _failures(checks.check_cifar10_split_class_balance(config=config, cifar10_split=scarce))
    assert "train/airplane" in {f["index"] for f in failures}


def test_min_counts_fails_above_what_exists(clean: Cifar10Split) -> None:
    smallest_test_class = int(clean.index[clean.index["split"] == "test"].groupby("label").size().min())
    config = checks.MinCountsConfig(min_per_class=smallest_test_class + 1)
    result = checks.check_cifar10_split_min_counts(config=config, cifar10_split=clean)
    assert {f["index"].split("/")[0] for f in _failures(result)} == {"test"}  # train/validation have ~50 each
    assert result.metadata["smallest"].value < config.min_per_class


def test_blocking_check_stops_downstream(tmp_path: Path, clean: Cifar10Split) -> None:
    leaky = dataclasses.replace(clean, images=np.ascontiguousarray(clean.images[::-1]))  # hashes no longer match

    @dg.asset(name="cifar10_split")
    def fake_split() -> Cifar10Split:
        return leaky

    @dg.asset
    def consumer(cifar10_split: Cifar10Split) -> None:
        raise AssertionError("must not run after a blocking check failed")

    result = dg.materialize(
        [fake_split, consumer, *SPLIT_CHECKS],
        resources={"io_manager": ArtifactIOManager(root=str(tmp_path))},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["check_cifar10_split_leakage"] is False
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert dg.AssetKey("cifar10_split") in materialized and dg.AssetKey("consumer") not in materialized


def test_near_duplicates_check_reports_pairs_across_splits(clean: Cifar10Split) -> None:
    config = checks.NearDuplicatesConfig()
    assert checks.check_cifar10_split_near_duplicates(config=config, cifar10_split=clean).passed
    images = clean.images.copy()
    train_row = int(np.flatnonzero(clean.index["split"] == "train")[0])
    test_row = int(np.flatnonzero(clean.index["split"] == "test")[0])
    images[train_row] = np.clip(images[test_row].astype(np.int16) + 6, 0, 255).astype(np.uint8)
    leaky = dataclasses.replace(clean, images=images)
    result = checks.check_cifar10_split_near_duplicates(config=config, cifar10_split=leaky)
    assert not result.passed and result.metadata["pairs"].value == 1
    [pair] = [r.data for r in result.metadata["near_duplicate_pairs"].value.records]
    assert pair["image_id"] == clean.index["image_id"].iloc[train_row]
    assert pair["test_image_id"] == clean.index["image_id"].iloc[test_row]
    assert checks.check_cifar10_split_near_duplicates(
        config=checks.NearDuplicatesConfig(max_distance=0), cifar10_split=leaky
    ).passed == (pair["distance"] > 0)
