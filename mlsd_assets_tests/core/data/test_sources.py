"""Every source kind of raw batches (download, tarballs, folders, drops), without Dagster."""

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, OFFICIAL_TRAIN_BATCHES, InvalidBatchError, image_hashes
from mlsd_assets.core.data.sources import (
    CIFAR10_ARCHIVE,
    find_drop,
    locate_drop,
    locate_official,
    read_drop,
    read_official_batch,
)
from mlsd_assets_tests.cifar_files import (
    serve_dir,
    tar_gz,
    write_cifar_python_dir,
    write_cifar_python_tarball,
    write_image_folder,
    write_image_folder_tree,
    write_pickle_batch,
)
from mlsd_assets_tests.synthetic import make_images

LOG = logging.getLogger("test")


def _pickled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    return raw[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(raw[b"labels"])


def test_pickle_dir_round_trips_every_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    batches_dir = write_cifar_python_dir(tmp_path, per_batch=20)
    for name in OFFICIAL_BATCHES:
        batch = read_official_batch(str(batches_dir), name, tmp_path / "dl", LOG)
        images, labels = _pickled(batches_dir / name)
        assert batch.partition == name
        assert (batch.images == images).all() and (batch.labels == labels).all()
        assert (batch.hashes == image_hashes(images)).all()
        [(file, digest)] = batch.source_files.items()
        assert file.endswith(name) and digest.startswith("sha256:")
    # synthetic copies are not the official bytes: they load, with a warning each
    assert sum("md5 differs" in r.message for r in caplog.records) == len(OFFICIAL_BATCHES)


def test_parent_of_pickle_dir_and_tarball_read_the_same(tmp_path: Path) -> None:
    archive = write_cifar_python_tarball(tmp_path / "src", per_batch=20)
    from_tar = read_official_batch(str(archive), "data_batch_3", tmp_path / "dl", LOG)
    from_parent = read_official_batch(str(tmp_path / "src" / "unpacked"), "data_batch_3", tmp_path / "dl", LOG)
    assert (from_tar.images == from_parent.images).all()
    assert from_tar.source.startswith("pickle-tar:") and from_parent.source.startswith("pickle-dir:")
    assert not (tmp_path / "dl").exists(), "a pickle tarball is read in place, never extracted"


def test_image_folder_tree_deals_train_round_robin(tmp_path: Path) -> None:
    root = write_image_folder_tree(tmp_path / "tree", n_train=100, n_test=20, fmt="png")
    batches = {b: read_official_batch(str(root), b, tmp_path / "dl", LOG) for b in OFFICIAL_BATCHES}
    assert [len(batches[b]) for b in OFFICIAL_TRAIN_BATCHES] == [20] * 5
    assert len(batches["test_batch"]) == 20
    for b in OFFICIAL_TRAIN_BATCHES:  # 10 per class in train -> 2 per class per batch
        assert set(batches[b].class_histogram().values()) == {2}
    train_images, train_labels = make_images(100, seed=0)
    got = {
        h: int(lbl) for b in OFFICIAL_TRAIN_BATCHES for h, lbl in zip(batches[b].hashes, batches[b].labels, strict=True)
    }
    assert got == dict(zip(image_hashes(train_images), train_labels.tolist(), strict=True))  # PNG is lossless


def test_image_folder_tarball_is_decoded_once_into_a_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = write_image_folder_tree(tmp_path / "cifar10-jpeg", n_train=50, n_test=10, fmt="jpg")
    archive = tar_gz(tree, tmp_path / "cifar10-jpeg.tar.gz")  # one wrapper folder, as users often pack
    first = read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)
    caches = list((tmp_path / "dl" / "unpacked").iterdir())
    assert [c.name for c in caches if c.is_dir()] and first.source_files[archive.name].startswith("sha256:")

    def fail(*_: object) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr("mlsd_assets.core.data.sources._unpack_image_tree_tar", fail)
    again = read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)
    assert (again.images == first.images).all() and len(first) == 10
    assert sum(len(read_official_batch(str(archive), b, tmp_path / "dl", LOG)) for b in OFFICIAL_TRAIN_BATCHES) == 50


def test_download_verifies_md5_and_extracts_once(tmp_path: Path) -> None:
    archive = write_cifar_python_tarball(tmp_path / "mirror", per_batch=10)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dl = tmp_path / "dl"
    with serve_dir(archive.parent) as base_url:
        url = f"{base_url}/{archive.name}"
        batch = read_official_batch("download", "data_batch_1", dl, LOG, url=url, md5=md5)
    assert len(batch) == 10 and batch.source == f"download:{url}"
    assert (dl / CIFAR10_ARCHIVE).is_file() and (dl / "cifar-10-batches-py" / "test_batch").is_file()
    # the server is gone: a second partition must come from the verified, extracted copy
    assert len(read_official_batch("download", "test_batch", dl, LOG, url=url, md5=md5)) == 10


def test_drop_forms_and_naming_rule(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    images, labels = make_images(30, seed=7)
    write_pickle_batch(drops / "drop_pickle", images, labels, "drop")
    write_image_folder(drops / "drop_dir", images, labels, fmt="png")
    tar_gz(
        write_image_folder(tmp_path / "staging" / "drop_tar", images, labels, fmt="png"),
        drops / "drop_tar.tar.gz",
    )
    # the drop sensor stores an accepted archive under the bare key: recognised by content, not by suffix
    tar_gz(write_image_folder(tmp_path / "staging" / "x", images, labels), tmp_path / "x.tar.gz").rename(
        drops / "drop_bare_tar"
    )
    for key in ("drop_pickle", "drop_dir", "drop_tar", "drop_bare_tar"):
        path = find_drop(drops, key)
        batch = read_drop(path, key)
        assert batch.partition == key and batch.source == f"drop:{path}"
        assert sorted(batch.hashes) == sorted(image_hashes(images))
        assert dict(zip(batch.hashes, batch.labels.tolist(), strict=True)) == dict(
            zip(image_hashes(images), labels.tolist(), strict=True)
        )
    assert find_drop(drops, "drop_tar") == drops / "drop_tar.tar.gz"
    with pytest.raises(InvalidBatchError, match="no data drop"):
        find_drop(drops, "missing")
    with pytest.raises(InvalidBatchError, match="drop key"):
        find_drop(drops, "../escape")


def test_checksums_match_torchvision() -> None:
    from torchvision.datasets import CIFAR10

    from mlsd_assets.core.data.cifar_pickle import OFFICIAL_MD5
    from mlsd_assets.core.data.sources import CIFAR10_MD5, CIFAR10_URL

    assert (CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5) == (CIFAR10_URL, CIFAR10_ARCHIVE, CIFAR10_MD5)
    assert {n: m for n, m in CIFAR10.train_list + CIFAR10.test_list} == {n: OFFICIAL_MD5[n] for n in OFFICIAL_BATCHES}


def test_tarballs_with_long_names_or_dot_prefix_read_the_same(tmp_path: Path) -> None:
    """pax long names and `tar -C dir .` prefixes (`./cat/x.png`) name the same files as plain ustar."""
    import tarfile

    images, labels = make_images(12, seed=8)
    folder = write_image_folder(tmp_path / "d", images, labels)
    long_tar = tmp_path / "long.tar.gz"
    with tarfile.open(long_tar, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(folder.rglob("*.png")):
            tar.add(f, arcname=f"./{f.parent.name}/{'x' * 120}{f.name}")
    batch = read_drop(long_tar, "long")
    assert sorted(batch.hashes) == sorted(image_hashes(images))


def test_each_location_resolves_to_one_kind(tmp_path: Path) -> None:
    """The dispatcher decides once, from the location; the kind names the reader."""
    images, labels = make_images(10, seed=9)
    pickles = write_cifar_python_dir(tmp_path / "official", per_batch=5)
    tree = write_image_folder_tree(tmp_path / "tree", n_train=20, n_test=10)
    dl = tmp_path / "dl"
    official = {
        str(pickles): "pickle-dir",
        str(pickles.parent): "pickle-dir",
        str(tar_gz(pickles, tmp_path / "cifar-10-python.tar.gz")): "pickle-tar",
        str(tree): "image-tree",
        str(tar_gz(tree, tmp_path / "tree.tar.gz")): "image-tree-tar",
    }
    assert {loc: locate_official(loc, dl, LOG).kind for loc in official} == official
    drops = {
        write_pickle_batch(tmp_path / "d" / "pickle", images, labels, "x"): "pickle-file",
        write_image_folder(tmp_path / "d" / "folder", images, labels): "image-folder",
        tar_gz(tmp_path / "d" / "folder", tmp_path / "d" / "folder.tar.gz"): "image-folder-tar",
    }
    assert {path: locate_drop(path).kind for path in drops} == drops
    assert not dl.exists(), "locating reads nothing into the downloads folder"


def test_one_wrapper_folder_is_accepted_in_folders_and_tarballs(tmp_path: Path) -> None:
    """`tar czf x.tar.gz folder/` wraps the layout in one folder: the same images, whether packed or not."""
    images, labels = make_images(20, seed=10)
    folder = write_image_folder(tmp_path / "drop" / "wrapper", images, labels)
    packed = tar_gz(folder, tmp_path / "packed.tar.gz")
    for path in (tmp_path / "drop", packed):
        batch = read_drop(path, "drop")
        assert dict(zip(batch.hashes, batch.labels.tolist(), strict=True)) == dict(
            zip(image_hashes(images), labels.tolist(), strict=True)
        )
    tree = write_image_folder_tree(tmp_path / "outer" / "tree", n_train=20, n_test=10)
    wrapped = read_official_batch(str(tree.parent), "test_batch", tmp_path / "dl", LOG)
    plain = read_official_batch(str(tree), "test_batch", tmp_path / "dl", LOG)
    assert (wrapped.images == plain.images).all() and (wrapped.labels == plain.labels).all()


def test_official_tarball_is_streamed_member_by_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle archive is not held whole: its inflated size is not bounded by MAX_ARCHIVE_BYTES (a re-encoded
    copy of the official one inflates to 300 MB), each member is, by MAX_PICKLE_BYTES."""
    archive = write_cifar_python_tarball(tmp_path / "src", per_batch=20)
    monkeypatch.setattr("mlsd_assets.core.platform.limits.MAX_ARCHIVE_BYTES", 4096)
    assert len(read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)) == 20
    monkeypatch.setattr("mlsd_assets.core.data.sources.MAX_PICKLE_BYTES", 4096)
    with pytest.raises(InvalidBatchError, match=r"cifar-10-python\.tar\.gz: member .*data_batch_1' declares"):
        read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)
