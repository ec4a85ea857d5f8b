"""The split rules: duplicates, invalid images, stable stratified validation, train-only statistics."""

import logging

import numpy as np
import pytest

from mlsd_assets.ml.batches import RawBatch, image_hashes
from mlsd_assets.ml.cleaning import build_split, channel_stats
from mlsd_assets_tests.synthetic import make_images

LOG = logging.getLogger("test")


def _batch(partition: str, images: np.ndarray, labels: np.ndarray) -> RawBatch:
    return RawBatch(partition, images, labels, image_hashes(images), "test", {})


def _official(n: int = 100, seed: int = 0) -> dict[str, RawBatch]:
    images, labels = make_images(n * 2, seed=seed)
    return {
        "data_batch_1": _batch("data_batch_1", images[:n], labels[:n]),
        "test_batch": _batch("test_batch", images[n:], labels[n:]),
    }


def test_duplicates_invalid_and_conflicts_are_dropped_with_reasons() -> None:
    images, labels = make_images(60, seed=1)
    train, train_labels = images[:40].copy(), labels[:40].copy()
    test, test_labels = images[40:].copy(), labels[40:].copy()
    train[1], train_labels[1] = train[0], train_labels[0]  # duplicate inside train
    train[2], train_labels[2] = test[0], test_labels[0]  # a test image copied into train
    train[3] = 0  # blank frame
    drop_images, drop_labels = images[:2].copy(), labels[:2].copy()
    drop_images[1], drop_labels[1] = train[5], (train_labels[5] + 1) % 10  # same pixels, other label
    split = build_split(
        {
            "data_batch_1": _batch("data_batch_1", train, train_labels),
            "test_batch": _batch("test_batch", test, test_labels),
            "drop_a": _batch("drop_a", drop_images, drop_labels),
        },
        0.1,
        LOG,
    )
    reasons = {(r.partition, r.source_index): r.reason for r in split.dropped.itertuples()}
    assert reasons == {
        ("data_batch_1", 1): "duplicate",
        ("drop_a", 0): "duplicate",
        ("data_batch_1", 2): "duplicate_of_test",
        ("data_batch_1", 3): "invalid_constant_image",
        ("data_batch_1", 5): "conflicting_labels",
        ("drop_a", 1): "conflicting_labels",
    }
    assert "test_batch:0" in set(split.index["image_id"])  # the test copy stays
    assert split.index["hash"].is_unique and len(split.index) == 40 + 20 + 2 - len(reasons)
    assert (image_hashes(split.images) == split.index["hash"].to_numpy()).all()


def test_split_is_deterministic_and_order_free() -> None:
    batches = _official()
    a = build_split(batches, 0.2, LOG)
    b = build_split(dict(reversed(list(batches.items()))), 0.2, LOG)
    assert a.content_hash == b.content_hash and (a.images == b.images).all()
    assert set(a.index.loc[a.index["partition"] == "test_batch", "split"]) == {"test"}


def test_validation_is_stable_when_a_drop_arrives() -> None:
    batches = _official(200)
    before = build_split(batches, 0.2, LOG)
    images, labels = make_images(100, seed=9)
    after = build_split({**batches, "drop_1": _batch("drop_1", images, labels)}, 0.2, LOG)
    old = before.index.set_index("hash")["split"]
    new = after.index.set_index("hash")["split"]
    assert (new.loc[old.index] == old).all(), "an image changed split when a drop arrived"
    assert set(after.index.loc[after.index["partition"] == "drop_1", "split"]) <= {"train", "validation"}


def test_validation_fraction_is_honoured_per_class() -> None:
    images, labels = make_images(4000, seed=2)
    split = build_split({"data_batch_1": _batch("data_batch_1", images, labels)}, 0.25, LOG)
    share = split.index.groupby("label")["split"].apply(lambda s: (s == "validation").mean())
    assert share.between(0.17, 0.33).all(), share.to_dict()
    assert (
        build_split({"data_batch_1": _batch("data_batch_1", images, labels)}, 0.0, LOG).counts()["validation"]
        == 0
    )


def test_statistics_come_from_train_rows_only() -> None:
    batches = _official(200)
    split = build_split(batches, 0.2, LOG)
    train, _ = split.arrays("train")
    expected = train.reshape(-1, 3).astype(np.float64) / 255.0
    assert np.allclose(split.mean, expected.mean(axis=0)) and np.allclose(split.std, expected.std(axis=0))
    brighter = dict(batches)
    t = batches["test_batch"]
    brighter["test_batch"] = _batch(
        "test_batch", np.clip(t.images.astype(int) + 60, 0, 255).astype(np.uint8), t.labels
    )
    assert build_split(brighter, 0.2, LOG).mean == split.mean, "test pixels leaked into the statistics"


def test_empty_inputs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="materialize raw_cifar10"):
        build_split({}, 0.1, LOG)
    with pytest.raises(ValueError, match="train split is empty"):
        channel_stats(np.zeros((0, 32, 32, 3), dtype=np.uint8))
