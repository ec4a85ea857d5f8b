"""The split rules: duplicates, invalid images, stable stratified validation, train-only statistics."""

import logging

import numpy as np
import pytest

from mlsd_assets.core.data.batches import RawBatch, image_hashes
from mlsd_assets.core.data.cleaning import build_split, channel_stats
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
    assert build_split({"data_batch_1": _batch("data_batch_1", images, labels)}, 0.0, LOG).counts()["validation"] == 0


def test_statistics_come_from_train_rows_only() -> None:
    batches = _official(200)
    split = build_split(batches, 0.2, LOG)
    train, _ = split.arrays("train")
    expected = train.reshape(-1, 3).astype(np.float64) / 255.0
    assert np.allclose(split.mean, expected.mean(axis=0)) and np.allclose(split.std, expected.std(axis=0))
    brighter = dict(batches)
    t = batches["test_batch"]
    brighter["test_batch"] = _batch("test_batch", np.clip(t.images.astype(int) + 60, 0, 255).astype(np.uint8), t.labels)
    assert build_split(brighter, 0.2, LOG).mean == split.mean, "test pixels leaked into the statistics"


def test_empty_inputs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="materialize raw_cifar10"):
        build_split({}, 0.1, LOG)
    with pytest.raises(ValueError, match="train split is empty"):
        channel_stats(np.zeros((0, 32, 32, 3), dtype=np.uint8))


def test_relabelled_test_images_in_a_drop_never_shrink_the_test_split() -> None:
    """Issue 11: a drop relabelling 50 test images removed them from test (100 -> 50); test stays whole."""
    batches = _official(100, seed=5)
    test = batches["test_batch"]
    relabelled = (test.labels[:50] + 1) % 10
    labels = np.concatenate([relabelled, test.labels[50:60]])  # 50 relabelled copies, 10 faithful ones
    drop = _batch("drop_relabel", test.images[:60].copy(), labels)
    split = build_split({**batches, "drop_relabel": drop}, 0.2, LOG)
    assert split.counts()["test"] == 100
    test_rows = split.index[split.index["split"] == "test"]
    assert (test_rows["label"].to_numpy() == test.labels).all(), "test labels are the official ones"
    dropped = split.dropped.set_index("source_index")
    assert (dropped["partition"] == "drop_relabel").all() and len(dropped) == 60
    assert set(dropped.loc[range(50), "reason"]) == {"conflicts_with_test"}
    assert set(dropped.loc[range(50, 60), "reason"]) == {"duplicate_of_test"}
    assert list(dropped.loc[range(60), "matched_test_id"]) == [f"test_batch:{i}" for i in range(60)]


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_near_duplicates_of_test_images_leave_training() -> None:
    batches = _official(100, seed=6)
    test = batches["test_batch"].images
    one_pixel = test[2].copy()
    one_pixel[5, 7] = 255 - one_pixel[5, 7]
    brighter = np.clip(test[3].astype(np.int16) + 8, 0, 255).astype(np.uint8)
    near = np.stack([_jpeg(test[0], 95), _jpeg(test[1], 75), one_pixel, brighter])
    distinct, distinct_labels = make_images(20, seed=77)
    drop = _batch(
        "drop_near",
        np.concatenate([near, distinct]),
        np.concatenate([batches["test_batch"].labels[:4], distinct_labels]),
    )
    split = build_split({**batches, "drop_near": drop}, 0.2, LOG)
    dropped = split.dropped[split.dropped["partition"] == "drop_near"]
    assert list(dropped["source_index"]) == [0, 1, 2, 3]
    assert set(dropped["reason"]) == {"near_duplicate_of_test"}
    assert list(dropped["matched_test_id"]) == [f"test_batch:{i}" for i in range(4)]
    assert split.counts()["test"] == 100 and (split.index["partition"] == "drop_near").sum() == 20
    assert len(split.dropped) == 4, "no distinct image is taken for a near-duplicate"

    kept = build_split({**batches, "drop_near": drop}, 0.2, LOG, near_duplicate_distance=None)
    assert (kept.index["partition"] == "drop_near").sum() == 24
