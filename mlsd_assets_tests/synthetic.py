"""Tiny learnable CIFAR-shaped data, so tests never need the real dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsd_assets.core.data.batches import CIFAR10_CLASSES, image_hashes
from mlsd_assets.core.data.splits import DROPPED_COLUMNS, Cifar10Split

# One colour and one stripe direction per class: a small net separates them within an epoch.
_PALETTE = np.random.default_rng(1234).integers(40, 216, size=(len(CIFAR10_CLASSES), 3))


def make_images(n: int, seed: int = 0, shading: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 NHWC images with balanced int64 labels; every image is distinct, also perceptually: random
    coarse `shading` (4-pixel blocks) keeps two images of a class from being near-duplicates (ml/cleaning)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(CIFAR10_CLASSES)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        stripes = ((xx if label % 2 else yy) // (2 + label // 2)) % 2
        blocks = np.kron(rng.normal(0, 1, size=(8, 8)), np.ones((4, 4))) if shading else np.zeros((32, 32))
        base = _PALETTE[label] + 30 * stripes[..., None] + shading * blocks[..., None]
        noise = rng.normal(0, 12, size=(32, 32, 3))
        images[i] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return images, labels


def make_split(n_train: int = 400, n_validation: int = 100, n_test: int = 100, seed: int = 0) -> Cifar10Split:
    """A ready `Cifar10Split` over synthetic images, for tests of everything downstream of the data assets."""
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    # no shading: downstream tests never meet the near-duplicate rule, and learn faster on plain classes
    images, labels = make_images(sum(sizes.values()), seed, shading=0.0)
    split = np.repeat(list(sizes), list(sizes.values()))
    partition = np.where(split == "test", "test_batch", "data_batch_1")
    index = pd.DataFrame(
        {
            "image_id": [f"{p}:{i}" for i, p in enumerate(partition)],
            "partition": partition,
            "source_index": np.arange(len(images), dtype=np.int64),
            "label": labels,
            "split": split,
            "hash": image_hashes(images),
        }
    )
    train = images[split == "train"].astype(np.float64) / 255.0
    return Cifar10Split(
        images=images,
        index=index,
        dropped=pd.DataFrame(
            {c: pd.Series([], dtype="int64" if c == "source_index" else str) for c in DROPPED_COLUMNS}
        ),
        mean=tuple(float(x) for x in train.mean(axis=(0, 1, 2))),
        std=tuple(float(x) for x in train.std(axis=(0, 1, 2))),
    )
