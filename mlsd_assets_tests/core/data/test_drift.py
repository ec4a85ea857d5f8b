"""Drift figures and their thresholds, without Dagster."""

import numpy as np

from mlsd_assets.core.data.batches import RawBatch
from mlsd_assets.core.data.cleaning import channel_stats
from mlsd_assets.core.data.drift import DriftLimits, Reference, batches_reference, compare
from mlsd_assets_tests.synthetic import make_images


def test_thresholds_decide_what_is_reported() -> None:
    """Loosened limits accept what the defaults flag."""
    images, labels = make_images(200, seed=1)
    ref = Reference(np.full(10, 20), np.array([0.3, 0.3, 0.3]), np.array([0.2, 0.2, 0.2]), "test")
    drift = compare(images, labels, ref)
    assert drift.reasons(DriftLimits())
    assert not drift.reasons(DriftLimits(max_mean_shift=1.0, max_std_ratio=10.0))


def test_a_batch_matches_a_reference_built_from_itself() -> None:
    images, labels = make_images(300, seed=2)
    batch = RawBatch.of("data_batch_1", images, labels, "test", {})
    ref = batches_reference([batch])
    drift = compare(images, labels, ref)
    assert drift.label_tv == 0.0 and drift.label_p_value == 1.0
    assert np.allclose(drift.mean_shift, 0.0) and np.allclose(drift.std_ratio, 1.0)
    assert not drift.reasons(DriftLimits())
    # the statistics are the split's own normalisation statistics (one channel_stats), on a 0..1 scale
    pixels = images.reshape(-1, 3) / 255.0
    assert np.allclose(ref.mean, pixels.mean(axis=0)) and np.allclose(ref.std, pixels.std(axis=0))
    assert np.allclose(channel_stats(images)[0], ref.mean)
