"""Image-folder layouts (`<class>/<file>` and `train|test/<class>/<file>`), from a directory or a tarball."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mlsd_assets.core.data.batches import (
    CIFAR10_CLASSES,
    IMAGE_SHAPE,
    OFFICIAL_TEST_BATCH,
    OFFICIAL_TRAIN_BATCHES,
    InvalidBatchError,
)
from mlsd_assets.core.platform.limits import (
    MAX_ARCHIVE_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_IMAGE_FILE_BYTES,
    read_maybe_gzip,
    regular_files,
    shown,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ZERO_BLOCK = bytes(512)
TREE_SPLITS = ("train", "test")
_LABELS = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
_CLASS_LIST = ", ".join(CIFAR10_CLASSES)

Entry = tuple[str, int]  # (path relative to the layout root, label)


def strip_wrapper(names: Sequence[str], top_level: Sequence[str]) -> tuple[str, list[str]]:
    """Accept one enclosing folder (as `tar czf x.tar.gz folder/` makes): returns it and the inner names."""
    firsts = {n.split("/", 1)[0] for n in names}
    if len(firsts) == 1 and not firsts & set(top_level) and all("/" in n for n in names):
        return firsts.pop(), [n.split("/", 1)[1] for n in names]
    return "", list(names)


def classify(names: Sequence[str], where: str) -> list[Entry]:
    """Labels from `<class>/<file>` names, sorted by name; anything else is an error naming the file."""
    entries = []
    for name in names:
        parts = name.split("/")
        if len(parts) != 2:
            raise InvalidBatchError(f"{where}/{name}: expected <class>/<image file> (one folder per class)")
        folder, file = parts
        if folder not in _LABELS:
            raise InvalidBatchError(f"{where}/{name}: unknown class folder {folder!r}; expected one of {_CLASS_LIST}")
        if not file.lower().endswith(IMAGE_SUFFIXES):
            raise InvalidBatchError(f"{where}/{name}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        entries.append((name, _LABELS[folder]))
    if not entries:
        raise InvalidBatchError(f"{where}: no images found (empty batch)")
    return sorted(entries)


def tree_batches(names: Sequence[str], where: str) -> dict[str, list[Entry]]:
    """Official batches of a `train|test/<class>/<file>` tree; names keep their `train/`/`test/` prefix.

    Train images go round-robin per class (in name order) into data_batch_1..5, so batches are balanced
    and the assignment depends only on the file names; test images form test_batch.
    """
    by_split: dict[str, list[str]] = {s: [] for s in TREE_SPLITS}
    for name in names:
        top, _, rest = name.partition("/")
        if top not in by_split or not rest:
            raise InvalidBatchError(f"{where}/{name}: expected train/<class>/<file> or test/<class>/<file>")
        by_split[top].append(rest)
    for split, inner in by_split.items():
        if not inner:
            raise InvalidBatchError(f"{where}: no images under {split}/ (an image-folder tree needs train/ and test/)")
    batches: dict[str, list[Entry]] = {b: [] for b in OFFICIAL_TRAIN_BATCHES}
    seen_per_class = dict.fromkeys(range(len(CIFAR10_CLASSES)), 0)
    for name, label in classify(by_split["train"], f"{where}/train"):
        batch = OFFICIAL_TRAIN_BATCHES[seen_per_class[label] % len(OFFICIAL_TRAIN_BATCHES)]
        seen_per_class[label] += 1
        batches[batch].append((f"train/{name}", label))
    batches[OFFICIAL_TEST_BATCH] = [(f"test/{n}", label) for n, label in classify(by_split["test"], f"{where}/test")]
    return batches


def list_dir_files(root: Path) -> list[str]:
    """Every file under `root` as a POSIX path relative to it (links, FIFOs, devices refused)."""
    return regular_files(root)


def read_tar_files(path: Path) -> dict[str, memoryview]:
    """All regular files of a (gzipped) tarball in one pass; errors name the archive and what is wrong.

    Sizes are checked before anything is held: the tarball and its inflated stream against
    MAX_ARCHIVE_BYTES, each member's declared size and the member count before its bytes are taken.
    """
    raw = read_maybe_gzip(path, MAX_ARCHIVE_BYTES)
    try:
        files = _plain_ustar_files(raw, path)
        if files is None:
            files = _tarfile_files(raw, path)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidBatchError(f"{shown(path)}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    files = {_clean(name, path): data for name, data in files.items()}
    if not files:
        raise InvalidBatchError(f"{shown(path)}: archive holds no files (empty batch)")
    return files


def _check_member(path: Path, name: str, size: int, count: int) -> None:
    if size > MAX_IMAGE_FILE_BYTES:
        raise InvalidBatchError(
            f"{shown(path)}: member {name!r} declares {size} bytes, more than the "
            f"{MAX_IMAGE_FILE_BYTES} bytes an image may have"
        )
    if count > MAX_ARCHIVE_MEMBERS:
        raise InvalidBatchError(f"{shown(path)}: more than {MAX_ARCHIVE_MEMBERS} members; refused")


def _clean(name: str, path: Path) -> str:
    """`./a//b` -> `a/b`; absolute or `..` names are refused (they would point outside the archive)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise InvalidBatchError(f"{shown(path)}: member {name!r} points outside the archive")
    return "/".join(parts)


def _plain_ustar_files(raw: bytearray, path: Path) -> dict[str, memoryview] | None:
    """Fast path for archives of plain files and folders (tarfile costs ~30 us a member: 2 s for CIFAR-10).

    Returns None at the first header it does not handle (long names, links, pax/GNU extensions, odd checksums
    or numbers), so those archives go through tarfile instead, which also names their problems.
    """
    files: dict[str, memoryview] = {}
    view = memoryview(raw)
    offset = 0
    while offset + 512 <= len(raw):
        header = raw[offset : offset + 512]
        if header == _ZERO_BLOCK:
            return files
        size, checksum = _octal(header[124:136]), _octal(header[148:156])
        plain = header[156:157] in (b"0", b"\0", b"5") and header[257:262] == b"ustar"
        if not plain or size is None or checksum != sum(header) - sum(header[148:156]) + 8 * 32:
            return None
        try:
            name = header[:100].rstrip(b"\0").decode()
            prefix = header[345:500].rstrip(b"\0").decode()
        except UnicodeDecodeError:
            return None
        start = offset + 512
        if header[156:157] != b"5":
            _check_member(path, name, size, len(files) + 1)
        if start + size > len(raw):
            raise InvalidBatchError(f"{shown(path)}: member {name!r} is truncated")
        if header[156:157] != b"5":
            files[f"{prefix}/{name}" if prefix else name] = view[start : start + size]
        offset = start + (size + 511) // 512 * 512
    raise InvalidBatchError(f"{shown(path)}: corrupt or truncated archive (no end-of-archive marker)")


def _octal(field: bytes) -> int | None:
    try:
        return int(field.rstrip(b"\0 ").lstrip(b" ") or b"0", 8)
    except ValueError:
        return None


def _tarfile_files(raw: bytearray, path: Path) -> dict[str, memoryview]:
    files = {}
    view = memoryview(raw)
    with tarfile.open(fileobj=io.BytesIO(view), mode="r:") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise InvalidBatchError(f"{shown(path)}: member {member.name!r} is not a regular file or folder")
            _check_member(path, member.name, member.size, len(files) + 1)
            data = view[member.offset_data : member.offset_data + member.size]
            if len(data) != member.size:
                raise InvalidBatchError(f"{shown(path)}: member {member.name!r} is truncated")
            files[member.name] = data
    return files


def decode_images(entries: Sequence[Entry], read: Callable[[str], bytes | memoryview], where: str) -> np.ndarray:
    """Decode 32x32 images to uint8 NHWC RGB; a file that is not such an image is an error naming it.

    The size a header declares is checked before any pixel is decoded (a 400-byte file can claim
    65000x65000). JPEGs go through libjpeg-turbo directly (simplejpeg: same pixels as Pillow, ~10x less
    overhead per tiny image); anything else through Pillow.
    """
    out = np.empty((len(entries), *IMAGE_SHAPE), dtype=np.uint8)
    for i, (name, _) in enumerate(entries):
        data = read(name)
        label = f"{where}/{name}"
        if len(data) > MAX_IMAGE_FILE_BYTES:
            raise InvalidBatchError(
                f"{label}: {len(data)} bytes, more than the {MAX_IMAGE_FILE_BYTES} bytes an image may have"
            )
        try:
            out[i] = _decode_jpeg(data, label) if data[:2] == b"\xff\xd8" else _decode_other(data, label)
        except InvalidBatchError:
            raise
        except Exception as exc:  # any decoder failure is this file's problem: say which file
            raise InvalidBatchError(f"{label}: not a decodable image ({type(exc).__name__}: {exc})") from exc
    return out


def _check_size(width: int, height: int, label: str) -> None:
    if (height, width) != IMAGE_SHAPE[:2]:
        raise InvalidBatchError(f"{label}: image is {width}x{height}, expected 32x32 (not decoded)")


def _decode_jpeg(data: bytes | memoryview, label: str) -> np.ndarray:
    import simplejpeg

    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        _check_size(width, height, label)
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except InvalidBatchError:
        raise
    except ValueError as exc:
        raise InvalidBatchError(f"{label}: not a decodable image ({exc})") from exc


def _decode_other(data: bytes | memoryview, label: str) -> np.ndarray:
    """Pillow reads only the header in `open`: the size is checked before `load` decodes the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            _check_size(*image.size, label)
            if image.mode in _SIXTEEN_BIT_GREY and image.format == "PNG":
                # Pillow's convert("RGB") clips 16-bit grey at 255 (40000 -> white): keep the high byte.
                grey = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidBatchError(f"{label}: not a decodable image ({exc})") from exc


# Modes Pillow opens 16-bit greyscale PNGs in (older Pillow: "I"); values 0..65535.
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I")
