"""Image-folder layouts (`<class>/<file>` and `train|test/<class>/<file>`) and their decoding.

Where the files come from (a folder or a tarball) is the caller's: these functions see names and a reader.
Entries keep each file's whole name (any wrapper folder included), so reading one is a plain lookup, and
errors name it as `<where>/<name>`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np

from mlsd_assets.core.data.batches import (
    CIFAR10_CLASSES,
    IMAGE_SHAPE,
    OFFICIAL_TEST_BATCH,
    OFFICIAL_TRAIN_BATCHES,
    InvalidBatchError,
)
from mlsd_assets.core.platform.limits import MAX_IMAGE_FILE_BYTES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TREE_SPLITS = ("train", "test")
_LABELS = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
_CLASS_LIST = ", ".join(CIFAR10_CLASSES)

Entry = tuple[str, int]  # (the file's whole name, label)


def _wrapper(names: Sequence[str], top_level: Sequence[str]) -> str:
    """One enclosing folder (as `tar czf x.tar.gz folder/` makes) as a `folder/` prefix, else ''.

    Only a folder around the layout counts: everything inside it must start with a `top_level` name.
    """
    firsts = {n.split("/", 1)[0] for n in names}
    if len(firsts) != 1 or firsts & set(top_level) or not all("/" in n for n in names):
        return ""
    prefix = f"{firsts.pop()}/"
    return prefix if {n[len(prefix) :].split("/", 1)[0] for n in names} <= set(top_level) else ""


def classify(names: Sequence[str], where: str, prefix: str = "") -> list[Entry]:
    """Labels from `<prefix><class>/<file>` names, sorted by name; anything else is an error naming the file."""
    entries = []
    for name in names:
        parts = name[len(prefix) :].split("/")
        if len(parts) != 2:
            raise InvalidBatchError(f"{where}/{name}: expected <class>/<image file> (one folder per class)")
        folder, file = parts
        if folder not in _LABELS:
            raise InvalidBatchError(f"{where}/{name}: unknown class folder {folder!r}; expected one of {_CLASS_LIST}")
        if not file.lower().endswith(IMAGE_SUFFIXES):
            raise InvalidBatchError(f"{where}/{name}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        entries.append((name, _LABELS[folder]))
    return sorted(entries)


def folder_entries(names: Sequence[str], where: str) -> list[Entry]:
    """The images of a `<class>/<file>` folder (a drop), inside at most one wrapper folder."""
    return classify(names, where, _wrapper(names, CIFAR10_CLASSES))


def tree_batches(names: Sequence[str], where: str) -> dict[str, list[Entry]]:
    """The official batches of a `train|test/<class>/<file>` tree, inside at most one wrapper folder.

    Train images go round-robin per class (in name order) into data_batch_1..5, so batches are balanced
    and the assignment depends only on the file names; test images form test_batch.
    """
    prefix = _wrapper(names, TREE_SPLITS)
    by_split: dict[str, list[str]] = {s: [] for s in TREE_SPLITS}
    for name in names:
        top, _, rest = name[len(prefix) :].partition("/")
        if top not in by_split or not rest:
            raise InvalidBatchError(f"{where}/{name}: expected train/<class>/<file> or test/<class>/<file>")
        by_split[top].append(name)
    for split, inner in by_split.items():
        if not inner:
            raise InvalidBatchError(
                f"{where}: no images under {prefix}{split}/ (an image-folder tree needs train/ and test/)"
            )
    batches: dict[str, list[Entry]] = {b: [] for b in OFFICIAL_TRAIN_BATCHES}
    seen_per_class = dict.fromkeys(range(len(CIFAR10_CLASSES)), 0)
    for name, label in classify(by_split["train"], where, f"{prefix}train/"):
        batch = OFFICIAL_TRAIN_BATCHES[seen_per_class[label] % len(OFFICIAL_TRAIN_BATCHES)]
        seen_per_class[label] += 1
        batches[batch].append((name, label))
    batches[OFFICIAL_TEST_BATCH] = classify(by_split["test"], where, f"{prefix}test/")
    return batches


def labels_of(entries: Sequence[Entry]) -> np.ndarray:
    return np.array([label for _, label in entries], dtype=np.int64)


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
