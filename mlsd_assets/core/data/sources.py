"""Where raw batches come from: the official download, local copies in any accepted form, and data drops.

Accepted locations for the six official batches (`MLSD_CIFAR10_SOURCE`):
  - "download": the canonical tarball via torchvision (md5-verified), extracted under the downloads folder;
  - a `cifar-10-python.tar.gz` (members read directly, no extraction);
  - an extracted `cifar-10-batches-py/` folder (or a folder containing one);
  - an image-folder tree `train|test/<class>/*.png|jpg`, plain or `.tar.gz` (a tarball is decoded once into a
    cache keyed by its sha256). Train images are dealt round-robin per class, in file-name order, into
    data_batch_1..5; test images form test_batch.
Any other partition key is a data drop read from `<drops dir>/<key>` (a CIFAR pickle batch file, or a folder
`<class>/*.png|jpg`) or, when that does not exist, `<drops dir>/<key>.tar.gz` (such a folder, tarred).
"""

from __future__ import annotations

import gzip
import hashlib
import json
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
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

from mlsd_assets.core.data.batches import (
    CIFAR10_CLASSES,
    OFFICIAL_BATCHES,
    InvalidBatchError,
    RawBatch,
    image_hashes,
)
from mlsd_assets.core.data.cifar_pickle import OFFICIAL_MD5, parse_pickle_batch
from mlsd_assets.core.data.image_folder import (
    TREE_SPLITS,
    classify,
    decode_images,
    list_dir_files,
    read_tar_files,
    strip_wrapper,
    tree_batches,
)
from mlsd_assets.core.platform.atomic import file_lock
from mlsd_assets.core.platform.limits import (
    MAX_ARCHIVE_BYTES,
    MAX_IMAGE_FILE_BYTES,
    MAX_PICKLE_BYTES,
    open_regular,
    read_regular,
    shown,
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PICKLE_DIR = "cifar-10-batches-py"
SOURCE_ENV = "MLSD_CIFAR10_SOURCE"
LOCAL_FORMS = (
    "a cifar-10-python.tar.gz, an extracted cifar-10-batches-py/ folder, "
    "or an image-folder tree train|test/<class>/*.png|jpg (a folder or a .tar.gz of one)"
)
DROP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A key names files: `<key>.npz` and its temp `.<key>.npz.<pid>.<random>.tmp` must fit a 255-byte file name.
MAX_KEY_LENGTH = 200
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class SourceUnavailableError(RuntimeError):
    """The configured source cannot be reached or does not exist; the message says how to fix it."""


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path, max_bytes: int = 1 << 40) -> str:
    h = hashlib.sha256()
    fd, _ = open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _batch(partition: str, images: np.ndarray, labels: np.ndarray, source: str, files: dict[str, str]) -> RawBatch:
    return RawBatch(partition, images, labels, image_hashes(images), source, files)


def _pickle_batch(payload: bytes, name: str, partition: str, source: str, log: logging.Logger) -> RawBatch:
    """A batch from pickle bytes; an official name with another md5 still loads (re-encoded copy), warned."""
    images, labels = parse_pickle_batch(payload, name)
    official = OFFICIAL_MD5.get(partition)
    if official and hashlib.md5(payload).hexdigest() != official:
        log.warning(f"{name}: md5 differs from the official {partition} (re-encoded copy?); loading it anyway")
    return _batch(partition, images, labels, source, {name: _sha256(payload)})


# --- official batches ---


def read_official_batch(
    location: str,
    partition: str,
    downloads_dir: Path,
    log: logging.Logger,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> RawBatch:
    """One of the six official batches from the configured location (see module docstring)."""
    if partition not in OFFICIAL_BATCHES:
        raise ValueError(f"{partition!r} is not an official batch ({', '.join(OFFICIAL_BATCHES)})")
    if location == "download":
        root = download_official(url, md5, downloads_dir, log)
        return _read_pickle_file(root / partition, partition, f"download:{url}", log)
    path = Path(location).expanduser()
    if path.exists():
        path = path.resolve()  # the configured location may be a link; files inside it may not
    if not path.exists():
        raise SourceUnavailableError(f"{SOURCE_ENV}={location!r} does not exist; point it at {LOCAL_FORMS}")
    if path.is_dir():
        return _read_official_dir(path, partition, log)
    if not path.is_file():
        raise SourceUnavailableError(
            f"{SOURCE_ENV}={location!r} is not a regular file or folder (a device or FIFO?); use {LOCAL_FORMS}"
        )
    if path.name.endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(path):
        return _read_official_tar(path, partition, downloads_dir, log)
    raise SourceUnavailableError(f"{SOURCE_ENV}={location!r} is neither a folder nor a tarball; use {LOCAL_FORMS}")


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


def _read_pickle_file(path: Path, partition: str, source: str, log: logging.Logger) -> RawBatch:
    if not path.exists() and not path.is_symlink():
        raise InvalidBatchError(f"{shown(path)}: missing (partition {partition!r})")
    return _pickle_batch(read_regular(path, MAX_PICKLE_BYTES), shown(path), partition, source, log)


def _read_official_dir(root: Path, partition: str, log: logging.Logger) -> RawBatch:
    if (root / PICKLE_DIR).is_dir():
        root = root / PICKLE_DIR
    if any((root / name).exists() for name in (*OFFICIAL_BATCHES, "batches.meta")):
        return _read_pickle_file(root / partition, partition, f"pickle-dir:{root}", log)
    names = list_dir_files(root)
    wrapper, inner = strip_wrapper(names, TREE_SPLITS)
    base = root / wrapper
    entries = tree_batches(inner, str(base))[partition]
    images = decode_images(entries, lambda n: read_regular(base / n, MAX_IMAGE_FILE_BYTES), str(base))
    files = {f"{base.name}/{entries[0][0].split('/')[0]} ({len(entries)} files)": _entries_digest(entries, base)}
    return _folder_batch(partition, entries, images, f"image-folder:{base}", files)


def _read_official_tar(path: Path, partition: str, downloads_dir: Path, log: logging.Logger) -> RawBatch:
    fd, _ = open_regular(path, 1 << 40)  # a regular file; its members are bounded one by one
    try:
        with os.fdopen(fd, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if PurePath(member.name).name not in (*OFFICIAL_BATCHES, "batches.meta", "readme.html"):
                    break  # an image-folder tarball
                if PurePath(member.name).name == partition:
                    if member.size > MAX_PICKLE_BYTES:
                        raise InvalidBatchError(
                            f"{path}: member {member.name!r} declares {member.size} bytes, more than "
                            f"the {MAX_PICKLE_BYTES} bytes a batch may have"
                        )
                    fh = tar.extractfile(member)
                    payload = fh.read() if fh else b""
                    if len(payload) != member.size:
                        raise InvalidBatchError(f"{path}: member {member.name!r} is truncated")
                    return _pickle_batch(payload, f"{path}:{member.name}", partition, f"pickle-tar:{path}", log)
            else:
                raise InvalidBatchError(f"{path}: archive has no member named {partition!r}")
    except (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidBatchError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    return _read_tree_tar_cached(path, partition, downloads_dir, log)


def _read_tree_tar_cached(path: Path, partition: str, downloads_dir: Path, log: logging.Logger) -> RawBatch:
    """Decode the whole tarball once into per-batch arrays keyed by its sha256; later partitions just load."""
    archive_hash = _file_sha256(path)
    cache_root = downloads_dir / "unpacked"
    cache = cache_root / f"v1-{archive_hash.removeprefix('sha256:')}"  # v1: the .npy layout below
    with file_lock(cache_root / f"{cache.name}.lock"):
        # Holding the lock: any `.<cache>.*` folder is a partial unpack of a writer that died.
        for partial in cache_root.glob(f".{cache.name}.*"):
            log.warning(f"removing the partial unpack {partial} of a killed run")
            shutil.rmtree(partial, ignore_errors=True)
        if not cache.is_dir():
            log.info(f"{path}: decoding every image once into {cache}")
            _unpack_tree_tar(path, cache)
    images = np.load(cache / f"{partition}.images.npy", allow_pickle=False)
    labels = np.load(cache / f"{partition}.labels.npy", allow_pickle=False)
    return _batch(partition, images, labels, f"image-folder-tar:{path}", {path.name: archive_hash})


def _unpack_tree_tar(path: Path, cache: Path) -> None:
    files = read_tar_files(path)
    wrapper, inner = strip_wrapper(list(files), TREE_SPLITS)
    prefix = f"{wrapper}/" if wrapper else ""
    where = f"{path}:{wrapper}" if wrapper else str(path)
    batches = tree_batches(inner, where)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        for batch, entries in batches.items():
            images = decode_images(entries, lambda n: files[prefix + n], where)
            labels = np.array([label for _, label in entries], dtype=np.int64)
            np.save(tmp / f"{batch}.images.npy", images)  # .npy: no zip CRC over 180 MB
            np.save(tmp / f"{batch}.labels.npy", labels)
        (tmp / "manifest.json").write_text(json.dumps({"archive": str(path), "files": len(files)}))
        os.rename(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- data drops ---


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


def read_drop(path: Path, partition: str, log: logging.Logger | None = None) -> RawBatch:
    """A drop as a batch; InvalidBatchError names the file and the problem. Sensors call it to vet drops."""
    log = log or logging.getLogger(__name__)
    where = shown(path)
    source = f"drop:{where}"
    if path.is_symlink():
        raise InvalidBatchError(f"{where}: is a symbolic link; a drop must be a real file or folder")
    if path.is_dir():
        entries = classify(list_dir_files(path), where)
        images = decode_images(entries, lambda n: read_regular(path / n, MAX_IMAGE_FILE_BYTES), where)
        return _folder_batch(partition, entries, images, source, {path.name: _entries_digest(entries, path)})
    fd, _ = open_regular(path, max(MAX_PICKLE_BYTES, MAX_ARCHIVE_BYTES))  # refuses FIFOs, devices, links
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(512)
    if path.name.endswith(_TAR_SUFFIXES) or head[:2] == b"\x1f\x8b" or _is_tar(head):
        files = read_tar_files(path)
        wrapper, inner = strip_wrapper(list(files), CIFAR10_CLASSES)
        prefix = f"{wrapper}/" if wrapper else ""
        entries = classify(inner, f"{where}:{wrapper}" if wrapper else where)
        images = decode_images(entries, lambda n: files[prefix + n], where)
        return _folder_batch(partition, entries, images, source, {path.name: _file_sha256(path)})
    return _pickle_batch(read_regular(path, MAX_PICKLE_BYTES), where, partition, source, log)


def _is_tar(payload: bytes) -> bool:
    return len(payload) >= 512 and payload[257:262] == b"ustar"


def _entries_digest(entries: Sequence[tuple[str, int]], root: Path) -> str:
    """One hash over a folder's image names and bytes: identifies a folder source without per-file noise."""
    digest = hashlib.sha256()
    for name, _ in entries:
        digest.update(name.encode() + b"\0" + read_regular(root / name, MAX_IMAGE_FILE_BYTES))
    return "sha256:" + digest.hexdigest()


def _folder_batch(
    partition: str, entries: Sequence[tuple[str, int]], images: np.ndarray, source: str, files: dict[str, str]
) -> RawBatch:
    labels = np.array([label for _, label in entries], dtype=np.int64)
    return _batch(partition, images, labels, source, files)
