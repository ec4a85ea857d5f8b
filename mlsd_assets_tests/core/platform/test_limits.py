"""Readers check declared sizes before decoding, refuse links/FIFOs/devices, and name the file in every error."""

import os
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mlsd_assets.core.data.batches import InvalidBatchError
from mlsd_assets.core.data.sources import check_drop_key, find_drop, read_drop
from mlsd_assets.core.platform import limits
from mlsd_assets_tests import hostile_files as hf

# A reader that blocks (FIFO) or walks a bomb fails the test (SIGALRM) instead of hanging the suite.
pytestmark = pytest.mark.timeout(30)


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidBatchError) as err:
        read_drop(path, "drop")
    text = str(err.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_jpeg_header_size_is_checked_before_decoding(tmp_path: Path) -> None:
    drop = hf.folder_with(tmp_path / "drop", "cat/huge.jpg", hf.jpeg_claiming(8000, 8000))
    tracemalloc.start()
    try:
        _refused(drop, "cat/huge.jpg", "8000x8000", "not decoded")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * limits.MIB, f"{peak} bytes allocated for a 32x32 check (decoding 8000x8000 takes 192 MB)"


def test_png_header_size_is_checked_before_decoding(tmp_path: Path) -> None:
    drop = hf.folder_with(tmp_path / "drop", "dog/big.png", hf.png_claiming(12000, 12000))
    _refused(drop, "dog/big.png", "12000x12000", "not decoded")


def test_png_bomb_names_the_file(tmp_path: Path) -> None:
    """Pillow raises DecompressionBombError on open beyond its pixel limit: wrapped with the file name."""
    drop = hf.folder_with(tmp_path / "drop", "dog/bomb.png", hf.png_claiming(65000, 65000))
    _refused(drop, "dog/bomb.png")


def test_sixteen_bit_grey_png_keeps_its_value(tmp_path: Path) -> None:
    """40000 of 65535 is 156 of 255 (high byte), not white: Pillow's own convert clips at 255."""
    drop = tmp_path / "drop"
    (drop / "cat").mkdir(parents=True)
    (drop / "cat" / "grey16.png").write_bytes(hf.png16_grey(40000))
    batch = read_drop(drop, "drop")
    assert np.unique(batch.images).tolist() == [40000 >> 8]


def test_gzip_bomb_stops_at_the_byte_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_ARCHIVE_BYTES", 64 * limits.MIB)
    bomb = hf.gzip_bomb(tmp_path / "bomb.tar.gz", 256 * limits.MIB)
    _refused(bomb, "bomb.tar.gz", "trailer declares")  # the gzip trailer states the inflated size
    liar = tmp_path / "liar.tar.gz"
    liar.write_bytes(bomb.read_bytes()[:-4] + (1000).to_bytes(4, "little"))
    tracemalloc.start()
    try:
        _refused(liar, "liar.tar.gz", "inflates to more than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80 * limits.MIB, f"peak {peak} bytes for a 64 MiB bound"


def test_tar_member_size_is_checked_before_reading(tmp_path: Path) -> None:
    archive = hf.tar_declaring(tmp_path / "liar.tar", "cat/x.png", 3 << 30)
    _refused(archive, "liar.tar", "cat/x.png", "declares")


def test_read_tar_takes_files_as_views_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    png = hf.png_bytes()
    archive = hf.tar_gz_of(tmp_path / "ok.tar.gz", {"./cat//0.png": png, "dog/1.png": png})
    files = limits.read_tar(archive, limits.MAX_IMAGE_FILE_BYTES)
    assert sorted(files) == ["cat/0.png", "dog/1.png"] and bytes(files["cat/0.png"]) == png
    assert isinstance(files["dog/1.png"], memoryview)
    for name in ("../cat/x.png", "/cat/x.png"):
        bad = hf.tar_gz_of(tmp_path / "bad.tar.gz", {name: png})
        with pytest.raises(InvalidBatchError, match="bad.tar.gz: member .* points outside the archive"):
            limits.read_tar(bad, limits.MAX_IMAGE_FILE_BYTES)
    with tarfile.open(tmp_path / "link.tar", "w") as tar:
        link = tarfile.TarInfo("cat/l.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/dev/zero"
        tar.addfile(link)
    with pytest.raises(InvalidBatchError, match="link.tar: member 'cat/l.png' is not a regular file or folder"):
        limits.read_tar(tmp_path / "link.tar", limits.MAX_IMAGE_FILE_BYTES)
    with pytest.raises(
        InvalidBatchError, match=r"ok\.tar\.gz: member '\./cat//0\.png' declares \d+ bytes, more than the 10 bytes"
    ):
        limits.read_tar(archive, 10)


def test_huge_label_names_the_file(tmp_path: Path) -> None:
    path = hf.pickle_drop(tmp_path / "big_label", labels=[2**70] * 10)
    _refused(path, "big_label", "index 0", "71 bits")


def test_shared_nested_labels_are_refused_cheaply(tmp_path: Path) -> None:
    """numpy would walk 2**40 shared sub-lists; the element check stops at the first non-integer."""
    path = hf.pickle_drop(tmp_path / "nested", labels=[hf.shared_nested_labels(40)] * 10)
    _refused(path, "nested", "not a list of integers", "index 0")


def test_oversized_pickle_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlsd_assets.core.data.sources.MAX_PICKLE_BYTES", 1000)
    path = hf.pickle_drop(tmp_path / "large", n=10)
    _refused(path, "large", "more than the 1000 bytes")


def test_links_fifos_and_devices_are_refused(tmp_path: Path) -> None:
    _refused(hf.symlink(tmp_path / "zero_link", "/dev/zero"), "zero_link", "symbolic link")
    _refused(Path("/dev/zero"), "/dev/zero", "character device")
    _refused(hf.fifo(tmp_path / "pipe"), "pipe", "FIFO")
    inner_link = hf.folder_with(tmp_path / "a", "cat/zero.png", make=lambda p: p.symlink_to("/dev/zero"))
    _refused(inner_link, "cat/zero.png", "symbolic link")
    inner_fifo = hf.folder_with(tmp_path / "b", "cat/pipe.png", make=os.mkfifo)
    _refused(inner_fifo, "cat/pipe.png", "FIFO")


def test_dangling_symlink_names_the_file(tmp_path: Path) -> None:
    drop = hf.folder_with(tmp_path / "drop", "cat/gone.png", make=lambda p: p.symlink_to(tmp_path / "nothing"))
    _refused(drop, "cat/gone.png", "symbolic link")


def test_non_utf8_file_name_names_the_file(tmp_path: Path) -> None:
    drop = hf.folder_with(tmp_path / "drop", "cat/keep.png", hf.png_bytes())
    os.rename(drop / "cat" / "keep.png", os.fsencode(drop / "cat") + b"/caf\xe9.png")
    text = _refused(drop, "caf\\xe9.png", "not valid UTF-8")
    text.encode()  # printable, storable: no lone surrogates


def test_drop_keys_are_matched_whole() -> None:
    check_drop_key("batch_9")
    for bad in ("batch\n", "a/b", "x" * 201, "-lead"):
        with pytest.raises(InvalidBatchError, match="partition"):
            check_drop_key(bad)


def test_trailing_newline_key_finds_no_drop(tmp_path: Path) -> None:
    (tmp_path / "batch").write_bytes(b"x")
    with pytest.raises(InvalidBatchError, match="drop key"):
        find_drop(tmp_path, "batch\n")
