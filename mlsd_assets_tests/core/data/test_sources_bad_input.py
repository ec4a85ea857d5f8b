"""Bad input: every malformed source or drop fails with an error naming the file and what is wrong."""

import hashlib
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlsd_assets.core.data.batches import InvalidBatchError
from mlsd_assets.core.data.sources import SOURCE_ENV, SourceUnavailableError, read_drop, read_official_batch
from mlsd_assets_tests import hostile_files as hf
from mlsd_assets_tests.cifar_files import (
    serve_dir,
    tar_gz,
    truncate,
    write_cifar_python_tarball,
    write_image_folder,
    write_image_folder_tree,
)
from mlsd_assets_tests.synthetic import make_images

LOG = logging.getLogger("test")


@pytest.fixture
def good_drop(tmp_path: Path) -> Path:
    images, labels = make_images(20, seed=3)
    return write_image_folder(tmp_path / "drop", images, labels, fmt="png")


def test_truncated_official_tarball(tmp_path: Path) -> None:
    archive = truncate(write_cifar_python_tarball(tmp_path, per_batch=20), 0.5)
    with pytest.raises(InvalidBatchError, match=r"cifar-10-python\.tar\.gz: corrupt or truncated archive"):
        read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)


def test_corrupt_image_folder_tarball_leaves_no_cache(tmp_path: Path) -> None:
    archive = tar_gz(write_image_folder_tree(tmp_path / "tree", 20, 10), tmp_path / "tree.tar.gz")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # corrupt the deflate stream mid-way
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidBatchError, match=r"tree\.tar\.gz: corrupt or truncated archive"):
        read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)
    assert not [p for p in (tmp_path / "dl" / "unpacked").iterdir() if p.is_dir()]


def test_md5_mismatch_on_download(tmp_path: Path) -> None:
    archive = write_cifar_python_tarball(tmp_path / "mirror", per_batch=5)
    wrong = hashlib.md5(b"not the archive").hexdigest()
    with serve_dir(archive.parent) as url, pytest.raises(InvalidBatchError, match=f"md5 .* expected {wrong}"):
        read_official_batch("download", "data_batch_1", tmp_path / "dl", LOG, url=f"{url}/{archive.name}", md5=wrong)


def test_offline_download_fails_fast_with_a_hint(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(SourceUnavailableError) as err:  # .invalid never resolves (RFC 2606)
        read_official_batch("download", "test_batch", tmp_path / "dl", LOG, url="https://cifar.invalid/c.tar.gz")
    assert time.monotonic() - start < 15
    assert SOURCE_ENV in str(err.value) and "cifar-10-batches-py" in str(err.value)


def test_missing_local_source_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailableError, match=f"{SOURCE_ENV}=.*does not exist"):
        read_official_batch(str(tmp_path / "nowhere"), "test_batch", tmp_path / "dl", LOG)


def test_truncated_pickle(tmp_path: Path) -> None:
    path = truncate(hf.pickle_drop(tmp_path / "drop_batch"), 0.5)
    with pytest.raises(InvalidBatchError, match=r"drop_batch: not a readable CIFAR pickle batch \(truncated"):
        read_drop(path, "drop_batch")


def test_wrong_array_shape(tmp_path: Path) -> None:
    path = hf.pickle_drop(tmp_path / "drop_batch", data=np.zeros((10, 3000), dtype=np.uint8))
    with pytest.raises(InvalidBatchError, match=r"drop_batch: field 'data' has shape \(10, 3000\)"):
        read_drop(path, "drop_batch")


def test_label_out_of_range(tmp_path: Path) -> None:
    path = hf.pickle_drop(tmp_path / "drop_batch", labels=[0] * 9 + [10])
    with pytest.raises(
        InvalidBatchError, match=r"drop_batch.*: field 'labels' out of range 0\.\.9 at index 9 \(value 10\)"
    ):
        read_drop(path, "drop_batch")


def test_empty_pickle_batch(tmp_path: Path) -> None:
    path = hf.pickle_drop(tmp_path / "drop_batch", data=np.zeros((0, 3072), dtype=np.uint8), labels=[])
    with pytest.raises(InvalidBatchError, match=r"drop_batch.*: batch is empty"):
        read_drop(path, "drop_batch")


def test_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": time.sleep}))
    with pytest.raises(InvalidBatchError, match="evil: .*refusing global time.sleep"):
        read_drop(path, "evil")


def test_unknown_class_folder(good_drop: Path) -> None:
    (good_drop / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(good_drop / "unicorn" / "0.png")
    with pytest.raises(InvalidBatchError, match=r"drop/unicorn/0\.png: unknown class folder 'unicorn'"):
        read_drop(good_drop, "drop")


def test_non_image_file_in_folder(good_drop: Path) -> None:
    (good_drop / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidBatchError, match=r"drop/cat/notes\.txt: not an image file"):
        read_drop(good_drop, "drop")


def test_undecodable_and_wrong_size_images(good_drop: Path) -> None:
    (good_drop / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidBatchError, match=r"drop/dog/broken\.png: not a decodable image"):
        read_drop(good_drop, "drop")
    (good_drop / "dog" / "broken.png").unlink()
    Image.new("RGB", (28, 28)).save(good_drop / "dog" / "small.png")
    with pytest.raises(InvalidBatchError, match=r"drop/dog/small\.png: image is 28x28, expected 32x32"):
        read_drop(good_drop, "drop")


def test_empty_drop_folder_and_tarball(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidBatchError, match=r"drop:.*empty\): batch is empty"):
        read_drop(tmp_path / "empty", "empty")
    with pytest.raises(InvalidBatchError, match=r"empty\.tar\.gz\): batch is empty"):
        read_drop(tar_gz(tmp_path / "empty", tmp_path / "empty.tar.gz"), "empty")


def test_garbage_jpeg(good_drop: Path) -> None:
    (good_drop / "ship" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(InvalidBatchError, match=r"drop/ship/bad\.jpg: not a decodable image"):
        read_drop(good_drop, "drop")


def test_partial_unpack_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    """Unpackers hold the cache lock: a `.v1-<sha>.*` folder seen under it belongs to one that died."""
    archive = tar_gz(write_image_folder_tree(tmp_path / "tree", 20, 10), tmp_path / "tree.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    partial = tmp_path / "dl" / "unpacked" / f".v1-{digest}.k1ll3d"
    partial.mkdir(parents=True)
    (partial / "data_batch_1.images.npy").write_bytes(bytes(4096))
    batch = read_official_batch(str(archive), "test_batch", tmp_path / "dl", LOG)
    assert len(batch) == 10
    assert not partial.exists()
