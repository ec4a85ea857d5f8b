"""Hostile drops and source files, small on disk and cheap to make: bombs, lies in headers, links, FIFOs."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mlsd_assets_tests.cifar_files import write_image_folder, write_pickle_batch
from mlsd_assets_tests.synthetic import make_images


def png_bytes(image: np.ndarray | None = None) -> bytes:
    image = make_images(1, seed=1)[0][0] if image is None else image
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(make_images(1, seed=1)[0][0]).save(out, format="JPEG")
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A valid PNG header declaring width x height, with one small IDAT of zeros (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(bytes(1 << 16), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 32x32 JPEG whose frame header (SOF) is patched to claim width x height: a few hundred bytes."""
    data = bytearray(jpeg_bytes())
    at = data.index(b"\xff\xc0") + 5  # SOF0: marker, length(2), precision(1), height(2), width(2)
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def png16_grey(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32), value, dtype=np.uint16)).save(out, format="PNG")
    return out.getvalue()


def folder_with(root: Path, name: str, data: bytes | None = None, make: Callable[[Path], None] | None = None) -> Path:
    """A valid image-folder drop plus one extra entry `name` (bytes written, or made by `make`)."""
    images, labels = make_images(10, seed=7)
    write_image_folder(root, images, labels)
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if make is not None:
        make(target)
    else:
        target.write_bytes(data or b"")
    return root


def tar_gz_of(dest: Path, members: dict[str, bytes], level: int = 6) -> Path:
    """A .tar.gz holding the given members (name -> bytes)."""
    with tarfile.open(dest, "w:gz", compresslevel=level) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def gzip_bomb(dest: Path, inflated_bytes: int) -> Path:
    """A gzip of zeros that inflates to `inflated_bytes` (1 GiB -> about 1 MB on disk), written in chunks."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 22)
    with open(dest, "wb") as fh:
        for _ in range(inflated_bytes // len(chunk)):
            fh.write(compressor.compress(chunk))
        fh.write(compressor.flush())
    return dest


def tar_declaring(dest: Path, name: str, declared: int) -> Path:
    """A plain tar whose one member's header declares `declared` bytes but holds a single block."""
    info = tarfile.TarInfo(name)
    info.size = declared
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    dest.write_bytes(header + bytes(512) + bytes(1024))
    return dest


def pickle_drop(path: Path, n: int = 10, **fields: object) -> Path:
    """An official-layout pickle batch with some fields replaced (labels, data, ...)."""
    images, labels = make_images(n, seed=5)
    write_pickle_batch(path, images, labels, "drop")
    with open(path, "rb") as fh:
        payload = pickle.load(fh)
    payload.update({k.encode(): v for k, v in fields.items()})
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path


def shared_nested_labels(depth: int = 40) -> list:
    """A list whose elements share sub-lists 2**depth deep: tiny pickled, exponential to walk."""
    node: list = [0]
    for _ in range(depth):
        node = [node, node]
    return node


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def symlink(path: Path, target: str | Path) -> Path:
    path.symlink_to(target)
    return path
