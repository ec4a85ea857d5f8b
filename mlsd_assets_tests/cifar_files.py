"""Writers for CIFAR-10 on-disk formats (official pickle batches, tarballs, image folders) from arrays."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mlsd_assets.data.partitions import OFFICIAL_BATCHES
from mlsd_assets.ml.batches import CIFAR10_CLASSES
from mlsd_assets_tests.synthetic import make_images


def write_pickle_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> Path:
    """One batch in the official layout: bytes keys, rows of 3072 uint8 (1024 R, 1024 G, 1024 B)."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    payload = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path


def write_cifar_python_dir(root: Path, per_batch: int = 50, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with the five training batches, the test batch and batches.meta."""
    out = root / "cifar-10-batches-py"
    for i, name in enumerate(OFFICIAL_BATCHES):
        images, labels = make_images(per_batch, seed=seed * 100 + i)
        write_pickle_batch(out / name, images, labels, f"{name} of 6")
    with open(out / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch}, fh)
    return out


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, fmt: str = "png") -> Path:
    """`root/<class>/<n>.<fmt>`: the layout of one split of an image-folder tree, and of a data drop."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CIFAR10_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.{fmt}")
    return root


def write_image_folder_tree(root: Path, n_train: int = 100, n_test: int = 20, fmt: str = "png", seed: int = 0) -> Path:
    """`root/train/<class>/…` and `root/test/<class>/…`, the layout of `../shared/data/cifar10-jpeg.tar.gz`."""
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = make_images(n, seed=s)
        write_image_folder(root / split, images, labels, fmt)
    return root


def tar_gz(source: Path, dest: Path) -> Path:
    """Pack `source` (its own name as the top folder) into `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return dest
