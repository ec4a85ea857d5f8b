"""Where raw batches come from: each location is resolved once to a kind, and each kind has one reader.

Accepted locations for the six official batches (`MLSD_CIFAR10_SOURCE`), and their kinds:
  - "download": the canonical tarball via torchvision (md5-verified), extracted once under the downloads
    folder, then read as a `pickle-dir`;
  - a `cifar-10-python.tar.gz` (`pickle-tar`: its members read in place, no extraction);
  - an extracted `cifar-10-batches-py/` folder, or a folder containing one (`pickle-dir`);
  - an image-folder tree `train|test/<class>/*.png|jpg`, a folder (`image-tree`) or a `.tar.gz` of one
    (`image-tree-tar`: decoded once into a cache keyed by its sha256). Train images are dealt round-robin
    per class, in file-name order, into data_batch_1..5; test images form test_batch.
Any other partition key is a data drop read from `<drops dir>/<key>` or, when that does not exist,
`<drops dir>/<key>.tar.gz`: a CIFAR pickle batch file (`pickle-file`), a folder `<class>/*.png|jpg`
(`image-folder`) or such a folder tarred (`image-folder-tar`, recognised by name or content).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

import numpy as np

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, InvalidBatchError, RawBatch
from mlsd_assets.core.data.cifar_pickle import OFFICIAL_MD5, parse_pickle_batch
from mlsd_assets.core.data.image_folder import decode_images, folder_entries, labels_of, tree_batches
from mlsd_assets.core.platform.atomic import file_lock
from mlsd_assets.core.platform.limits import (
    MAX_ARCHIVE_BYTES,
    MAX_IMAGE_FILE_BYTES,
    MAX_PICKLE_BYTES,
    open_regular,
    read_regular,
    read_tar,
    read_tar_member,
    regular_files,
    shown,
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PICKLE_DIR = "cifar-10-batches-py"
PICKLE_FILES = (*OFFICIAL_BATCHES, "batches.meta", "readme.html")  # what cifar-10-batches-py holds
SOURCE_ENV = "MLSD_CIFAR10_SOURCE"
LOCAL_FORMS = (
    "a cifar-10-python.tar.gz, an extracted cifar-10-batches-py/ folder, "
    "or an image-folder tree train|test/<class>/*.png|jpg (a folder or a .tar.gz of one)"
)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DROP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A key names files: `<key>.npz` and its temp `.<key>.npz.<pid>.<random>.tmp` must fit a 255-byte file name.
MAX_KEY_LENGTH = 200

Kind = Literal[
    "pickle-dir", "pickle-tar", "image-tree", "image-tree-tar", "pickle-file", "image-folder", "image-folder-tar"
]


class SourceUnavailableError(RuntimeError):
    """The configured source cannot be reached or does not exist; the message says how to fix it."""


@dataclass(frozen=True)
class Source:
    """A location resolved to what it holds: `kind` picks the one reader, `label` is the provenance each
    batch records, `cache` is where an image-tree tarball is decoded to."""

    kind: Kind
    path: Path
    label: str
    cache: Path | None = None

    def read(self, partition: str, log: logging.Logger) -> RawBatch:
        return READERS[self.kind](self, partition, log)


# --- locations to kinds ---


def locate_official(
    location: str, downloads_dir: Path, log: logging.Logger, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5
) -> Source:
    """What `MLSD_CIFAR10_SOURCE` points at (see the module docstring); "download" fetches it first."""
    if location == "download":
        return Source("pickle-dir", download_official(url, md5, downloads_dir, log), f"download:{url}")
    path = Path(location).expanduser()
    if not path.exists():
        raise SourceUnavailableError(f"{SOURCE_ENV}={location!r} does not exist; point it at {LOCAL_FORMS}")
    path = path.resolve()  # the configured location may be a link; files inside it may not
    if path.is_dir():
        if (path / PICKLE_DIR).is_dir():
            path = path / PICKLE_DIR
        if any((path / name).exists() for name in PICKLE_FILES):
            return Source("pickle-dir", path, f"pickle-dir:{path}")
        return Source("image-tree", path, f"image-folder:{path}")
    if not path.is_file():
        raise SourceUnavailableError(
            f"{SOURCE_ENV}={location!r} is not a regular file or folder (a device or FIFO?); use {LOCAL_FORMS}"
        )
    if not _is_tarball(path, 1 << 40):
        raise SourceUnavailableError(f"{SOURCE_ENV}={location!r} is neither a folder nor a tarball; use {LOCAL_FORMS}")
    if _first_file_is_pickle(path):
        return Source("pickle-tar", path, f"pickle-tar:{path}")
    return Source("image-tree-tar", path, f"image-folder-tar:{path}", cache=downloads_dir / "unpacked")


def locate_drop(path: Path) -> Source:
    """A drop by what it is: a folder of images, a tarball of one (by name or content), else a pickle file."""
    where = shown(path)
    if path.is_symlink():
        raise InvalidBatchError(f"{where}: is a symbolic link; a drop must be a real file or folder")
    if path.is_dir():
        return Source("image-folder", path, f"drop:{where}")
    tarball = _is_tarball(path, max(MAX_PICKLE_BYTES, MAX_ARCHIVE_BYTES))
    return Source("image-folder-tar" if tarball else "pickle-file", path, f"drop:{where}")


def _is_tarball(path: Path, max_bytes: int) -> bool:
    """By name, or by content (drops are stored under bare keys): gzip magic or a ustar header.

    Opening refuses links, FIFOs, devices and files over `max_bytes` before a byte is read.
    """
    fd, _ = open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(512)
    return path.name.endswith(TAR_SUFFIXES) or head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"


def _first_file_is_pickle(path: Path, max_members: int = 100) -> bool:
    """The official archive starts with its batch files; an image tree with images. Only headers are read."""
    fd, _ = open_regular(path, 1 << 40)
    try:
        with os.fdopen(fd, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in itertools.islice(tar, max_members):
                if member.isfile():
                    return PurePath(member.name).name in PICKLE_FILES
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidBatchError(f"{shown(path)}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    return False


# --- the readers, one per kind ---


def _read_pickle_dir(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    path = source.path / partition
    if not path.exists() and not path.is_symlink():
        raise InvalidBatchError(f"{shown(path)}: missing (partition {partition!r})")
    return _pickle_batch(read_regular(path, MAX_PICKLE_BYTES), shown(path), partition, source.label, log)


def _read_pickle_file(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    where = shown(source.path)
    return _pickle_batch(read_regular(source.path, MAX_PICKLE_BYTES), where, partition, source.label, log)


def _read_pickle_tar(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    member, payload = read_tar_member(source.path, partition, MAX_PICKLE_BYTES)
    return _pickle_batch(payload, f"{shown(source.path)}:{member}", partition, source.label, log)


def _read_image_tree(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    where = shown(source.path)
    entries = tree_batches(regular_files(source.path), where)[partition]
    read, digest = _digesting_reader(source.path)
    images = decode_images(entries, read, where)
    files = {f"{source.path.name} ({partition}: {len(entries)} files)": digest()}
    return RawBatch.of(partition, images, labels_of(entries), source.label, files)


def _read_image_tree_tar(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    """Decode the whole tarball once into per-batch arrays keyed by its sha256; later partitions just load."""
    assert source.cache is not None
    archive_hash = _file_sha256(source.path)
    cache = source.cache / f"v1-{archive_hash.removeprefix('sha256:')}"  # v1: the .npy layout below
    with file_lock(source.cache / f"{cache.name}.lock"):
        # Holding the lock: any `.<cache>.*` folder is a partial unpack of a writer that died.
        for partial in source.cache.glob(f".{cache.name}.*"):
            log.warning(f"removing the partial unpack {partial} of a killed run")
            shutil.rmtree(partial, ignore_errors=True)
        if not cache.is_dir():
            log.info(f"{source.path}: decoding every image once into {cache}")
            _unpack_image_tree_tar(source.path, cache)
    images = np.load(cache / f"{partition}.images.npy", allow_pickle=False)
    labels = np.load(cache / f"{partition}.labels.npy", allow_pickle=False)
    return RawBatch.of(partition, images, labels, source.label, {source.path.name: archive_hash})


def _unpack_image_tree_tar(path: Path, cache: Path) -> None:
    files = read_tar(path, MAX_IMAGE_FILE_BYTES)
    batches = tree_batches(list(files), shown(path))
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        for batch, entries in batches.items():
            np.save(tmp / f"{batch}.images.npy", decode_images(entries, files.__getitem__, shown(path)))
            np.save(tmp / f"{batch}.labels.npy", labels_of(entries))  # .npy: no zip CRC over 180 MB
        os.rename(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_image_folder(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    where = shown(source.path)
    entries = folder_entries(regular_files(source.path), where)
    read, digest = _digesting_reader(source.path)
    images = decode_images(entries, read, where)
    return RawBatch.of(partition, images, labels_of(entries), source.label, {source.path.name: digest()})


def _read_image_folder_tar(source: Source, partition: str, log: logging.Logger) -> RawBatch:
    files = read_tar(source.path, MAX_IMAGE_FILE_BYTES)
    entries = folder_entries(list(files), shown(source.path))
    images = decode_images(entries, files.__getitem__, shown(source.path))
    files_hash = {source.path.name: _file_sha256(source.path)}
    return RawBatch.of(partition, images, labels_of(entries), source.label, files_hash)


READERS: dict[Kind, Callable[[Source, str, logging.Logger], RawBatch]] = {
    "pickle-dir": _read_pickle_dir,
    "pickle-tar": _read_pickle_tar,
    "image-tree": _read_image_tree,
    "image-tree-tar": _read_image_tree_tar,
    "pickle-file": _read_pickle_file,
    "image-folder": _read_image_folder,
    "image-folder-tar": _read_image_folder_tar,
}


# --- the two entry points ---


def read_official_batch(
    location: str,
    partition: str,
    downloads_dir: Path,
    log: logging.Logger,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> RawBatch:
    """One of the six official batches from the configured location (see the module docstring)."""
    if partition not in OFFICIAL_BATCHES:
        raise ValueError(f"{partition!r} is not an official batch ({', '.join(OFFICIAL_BATCHES)})")
    return locate_official(location, downloads_dir, log, url, md5).read(partition, log)


def read_drop(path: Path, partition: str, log: logging.Logger | None = None) -> RawBatch:
    """A drop as a batch; InvalidBatchError names the file and the problem. Sensors call it to vet drops."""
    return locate_drop(path).read(partition, log or logging.getLogger(__name__))


def find_drop(drops_dir: Path, partition: str) -> Path:
    """`<drops>/<key>` if it exists, else `<drops>/<key>.tar.gz`: the naming rule the drop sensor follows."""
    check_drop_key(partition)
    for candidate in (drops_dir / partition, drops_dir / f"{partition}.tar.gz"):
        if candidate.exists():
            return candidate
    raise InvalidBatchError(f"partition {partition!r}: no data drop at {drops_dir / partition} or its .tar.gz")


def check_drop_key(key: str) -> None:
    """A key becomes file names and a partition: the whole key must match, within MAX_KEY_LENGTH."""
    if not DROP_KEY.fullmatch(key):
        raise InvalidBatchError(
            f"partition {key!r}: a drop key is letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidBatchError(
            f"partition {key[:40]!r}...: {len(key)} characters, more than the {MAX_KEY_LENGTH} a key may have"
        )


# --- helpers ---


def _pickle_batch(payload: bytes | memoryview, where: str, partition: str, label: str, log: logging.Logger) -> RawBatch:
    """A batch from pickle bytes; an official name with another md5 still loads (re-encoded copy), warned."""
    images, labels = parse_pickle_batch(payload, where)
    official = OFFICIAL_MD5.get(partition)
    if official and hashlib.md5(payload).hexdigest() != official:
        log.warning(f"{where}: md5 differs from the official {partition} (re-encoded copy?); loading it anyway")
    return RawBatch.of(partition, images, labels, label, {where: "sha256:" + hashlib.sha256(payload).hexdigest()})


def _digesting_reader(root: Path) -> tuple[Callable[[str], bytes], Callable[[], str]]:
    """A reader of files under `root` that hashes what it reads (names and bytes, in read order), and the
    digest: identifies a folder source by the one read that decodes it."""
    digest = hashlib.sha256()

    def read(name: str) -> bytes:
        data = read_regular(root / name, MAX_IMAGE_FILE_BYTES)
        digest.update(name.encode() + b"\0" + data)
        return data

    return read, lambda: "sha256:" + digest.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd, _ = open_regular(path, 1 << 40)
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def download_official(url: str, md5: str, downloads_dir: Path, log: logging.Logger) -> Path:
    """Download, md5-check and extract once (torchvision utilities); returns cifar-10-batches-py/."""
    marker = downloads_dir / f".{CIFAR10_ARCHIVE}.{md5}.extracted"
    with file_lock(downloads_dir / ".download.lock"):
        if not marker.exists():
            archive = downloads_dir / CIFAR10_ARCHIVE
            if not archive.exists():
                _probe(url)  # before importing torch: offline should fail in seconds
            from torchvision.datasets.utils import check_integrity, download_and_extract_archive

            if archive.exists() and not check_integrity(str(archive), md5):
                _probe(url)
            log.info(f"fetching {url} into {downloads_dir} (skipped if the archive there has md5 {md5})")
            try:
                download_and_extract_archive(url, str(downloads_dir), filename=CIFAR10_ARCHIVE, md5=md5)
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror) as exc:
                raise SourceUnavailableError(_offline_hint(url, exc)) from exc
            except RuntimeError as exc:  # torchvision: "File not found or corrupted." after an md5 mismatch
                got = hashlib.md5(archive.read_bytes()).hexdigest() if archive.exists() else "no file"
                raise InvalidBatchError(f"{archive} downloaded from {url}: md5 {got}, expected {md5} ({exc})") from exc
            marker.touch()
    return downloads_dir / PICKLE_DIR


def _offline_hint(url: str, exc: BaseException) -> str:
    return (
        f"cannot download CIFAR-10 from {url} ({type(exc).__name__}: {exc}). If this machine is offline, "
        f"set {SOURCE_ENV} to a local copy: {LOCAL_FORMS}"
    )


def _probe(url: str, timeout_s: float = 10.0) -> None:
    """Fail fast (seconds, not a hung download) when the host cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout_s).close()
    except OSError as exc:
        raise SourceUnavailableError(_offline_hint(url, exc)) from exc
