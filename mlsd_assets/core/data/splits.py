"""The cleaned train/validation/test split that every model is trained and judged on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from mlsd_assets.core.platform.atomic import atomic_path

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
INDEX_COLUMNS = ("image_id", "partition", "source_index", "label", "split", "hash")
DROPPED_COLUMNS = ("partition", "source_index", "hash", "reason", "matched_test_id")


@dataclass(frozen=True)
class Cifar10Split:
    """Images aligned row by row with `index`; `mean`/`std` are per-channel on a 0..1 scale, from train rows only."""

    images: np.ndarray
    index: pd.DataFrame
    dropped: pd.DataFrame
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    suffix: ClassVar[str] = ".npz"

    def arrays(self, split: SplitName) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NHWC images and int64 labels of one split."""
        mask = (self.index["split"] == split).to_numpy()
        return self.images[mask], self.index["label"].to_numpy(dtype=np.int64)[mask]

    def counts(self) -> dict[str, int]:
        return {s: int((self.index["split"] == s).sum()) for s in SPLITS}

    @property
    def partitions(self) -> list[str]:
        return sorted(set(self.index["partition"]))

    @property
    def content_hash(self) -> str:
        """Fingerprint of what a model would learn from: every image hash with its label and split."""
        h = hashlib.sha256()
        for col in ("hash", "label", "split"):
            h.update("\n".join(map(str, self.index[col].tolist())).encode())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        columns = {f"index__{c}": self.index[c].to_numpy() for c in INDEX_COLUMNS}
        columns |= {f"dropped__{c}": self.dropped[c].to_numpy() for c in DROPPED_COLUMNS}
        arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in columns.items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=self.images, mean=np.array(self.mean), std=np.array(self.std), **arrays)

    @classmethod
    def load(cls, path: Path) -> Cifar10Split:
        with np.load(path, allow_pickle=False) as z:
            index = pd.DataFrame({c: z[f"index__{c}"] for c in INDEX_COLUMNS})
            # splits stored before `matched_test_id` existed name no test image
            dropped = pd.DataFrame(
                {
                    c: z[f"dropped__{c}"] if f"dropped__{c}" in z.files else np.full(len(z["dropped__hash"]), "")
                    for c in DROPPED_COLUMNS
                }
            )
            return cls(
                images=z["images"],
                index=index,
                dropped=dropped,
                mean=tuple(float(x) for x in z["mean"]),
                std=tuple(float(x) for x in z["std"]),
            )
