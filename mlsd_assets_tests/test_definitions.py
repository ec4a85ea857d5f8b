"""The code location loads, and the test helpers' data round-trips through the artifact files."""

from pathlib import Path

import dagster as dg

from mlsd_assets.definitions import defs
from mlsd_assets.ml.splits import Cifar10Split
from mlsd_assets_tests.synthetic import make_split


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert "io_manager" in defs.resources


def test_split_round_trip(tmp_path: Path) -> None:
    split = make_split(40, 10, 10)
    path = tmp_path / "split.npz"
    split.save(path)
    loaded = Cifar10Split.load(path)
    assert loaded.counts() == {"train": 40, "validation": 10, "test": 10}
    assert loaded.content_hash == split.content_hash
    assert (loaded.images == split.images).all()
