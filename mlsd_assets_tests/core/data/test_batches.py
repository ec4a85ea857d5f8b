"""Perceptual signatures of raw batches: stored with the partition, and an exact fast search within T bits."""

import numpy as np
import pytest

from mlsd_assets.core.data.batches import RawBatch, image_hashes, image_signatures, nearest, within
from mlsd_assets_tests.synthetic import make_images


@pytest.mark.parametrize("max_distance", [0, 1, 2, 8, 12])
def test_banded_search_finds_exactly_what_a_full_scan_finds(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    references = rng.integers(0, 2**63, size=(3000, 2), dtype=np.uint64)
    queries = rng.integers(0, 2**63, size=(6000, 2), dtype=np.uint64)
    for i in range(0, len(queries), 20):  # plant copies with 0..15 flipped bits
        queries[i] = references[rng.integers(len(references))]
        for bit in rng.choice(128, size=rng.integers(0, 16), replace=False):
            queries[i, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    distance, row = within(queries, references, max_distance)
    full, full_row = nearest(queries, references)
    near = full <= max_distance
    assert near.sum() > 0
    assert (distance[near] == full[near]).all() and (row[near] == full_row[near]).all()
    assert (row[~near] == -1).all() and (distance[~near] > max_distance).all()


def test_partitions_stored_without_signatures_still_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images, labels = make_images(30, seed=8)
    path = tmp_path / "old.npz"
    np.savez(
        path,
        images=images,
        labels=labels,
        hashes=image_hashes(images),
        partition=np.array("drop_old"),
        source=np.array("test"),
        source_file_names=np.array([], dtype=str),
        source_file_hashes=np.array([], dtype=str),
    )
    batch = RawBatch.load(path)
    assert batch.signatures.dtype == np.uint64 and (batch.signatures == image_signatures(images)).all()
    batch.save(tmp_path / "new.npz")
    assert (RawBatch.load(tmp_path / "new.npz").signatures == batch.signatures).all()
