"""The real 60,000 CIFAR-10 JPEGs (../shared/data) ingest into the official batch layout and split cleanly."""

import logging
from pathlib import Path

import pytest

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, OFFICIAL_TRAIN_BATCHES
from mlsd_assets.core.data.cleaning import build_split
from mlsd_assets.core.data.sources import read_official_batch

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not REAL.exists(), reason=f"real CIFAR-10 JPEG archive not present at {REAL}")
def test_real_archive_gives_official_batches(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    batches = {b: read_official_batch(str(REAL.resolve()), b, tmp_path, log) for b in OFFICIAL_BATCHES}
    for b in OFFICIAL_TRAIN_BATCHES:
        assert len(batches[b]) == 10_000 and set(batches[b].class_histogram().values()) == {1_000}
    assert set(batches["test_batch"].class_histogram().values()) == {1_000}
    split = build_split(batches, 0.1, log)
    counts = split.counts()
    assert counts["test"] + len(split.dropped[split.dropped["partition"] == "test_batch"]) == 10_000
    assert 4_500 < counts["validation"] < 5_500 and sum(counts.values()) + len(split.dropped) == 60_000
    assert all(0.4 < m < 0.55 for m in split.mean) and all(0.2 < s < 0.3 for s in split.std)
