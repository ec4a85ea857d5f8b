"""Drift of a raw batch against the training data: label distribution and per-channel pixel statistics.

Reference: the train rows of a split, or (before any split exists) raw training batches. Labels: total
variation distance, flagged only when also significant (chi-square p-value), so a 50-image drop is not
flagged for sampling noise. Pixels: per-channel mean and std on a 0..1 scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlsd_assets.core.data.batches import CIFAR10_CLASSES, RawBatch
from mlsd_assets.core.data.cleaning import channel_stats
from mlsd_assets.core.data.splits import Cifar10Split

CHANNELS = ("red", "green", "blue")


@dataclass(frozen=True)
class DriftLimits:
    """Thresholds above which drift is reported."""

    max_label_tv: float = 0.1
    label_p_value: float = 0.01
    max_mean_shift: float = 0.05
    max_std_ratio: float = 1.25


@dataclass(frozen=True)
class Reference:
    label_counts: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    source: str


@dataclass(frozen=True)
class Drift:
    label_tv: float
    label_p_value: float
    mean_shift: np.ndarray
    std_ratio: np.ndarray

    def reasons(self, limits: DriftLimits) -> list[str]:
        out = []
        if self.label_tv > limits.max_label_tv and self.label_p_value < limits.label_p_value:
            out.append(
                f"label distribution TV {self.label_tv:.3f} > {limits.max_label_tv} (p={self.label_p_value:.2g})"
            )
        for name, shift, ratio in zip(CHANNELS, self.mean_shift, self.std_ratio, strict=True):
            if abs(shift) > limits.max_mean_shift:
                out.append(f"{name} mean shifted by {shift:+.3f} (> {limits.max_mean_shift})")
            if max(ratio, 1 / ratio) > limits.max_std_ratio:
                out.append(f"{name} std ratio {ratio:.2f} (outside 1/{limits.max_std_ratio}..{limits.max_std_ratio})")
        return out


def _label_counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=len(CIFAR10_CLASSES))


def split_reference(split: Cifar10Split, name: str) -> Reference:
    """The train rows of a split; its mean/std are already the train rows' (cleaning.channel_stats)."""
    _, labels = split.arrays("train")
    return Reference(_label_counts(labels), np.array(split.mean), np.array(split.std), name)


def batches_reference(batches: Sequence[RawBatch]) -> Reference:
    images = np.concatenate([b.images for b in batches])
    mean, std = channel_stats(images)
    names = ", ".join(b.partition for b in batches)
    labels = np.concatenate([b.labels for b in batches])
    return Reference(_label_counts(labels), np.array(mean), np.array(std), f"raw_cifar10 {names}")


def compare(images: np.ndarray, labels: np.ndarray, ref: Reference) -> Drift:
    from scipy.stats import chisquare

    counts = _label_counts(labels).astype(np.float64)
    p = counts / counts.sum()
    q = ref.label_counts / ref.label_counts.sum()
    expected = q * counts.sum()
    present = expected > 0
    if (counts[~present] > 0).any():
        p_value = 0.0  # a class the training data never had: as significant as it gets
    else:
        p_value = float(chisquare(counts[present], expected[present]).pvalue) if present.sum() > 1 else 1.0
    mean, std = channel_stats(images)
    return Drift(
        label_tv=float(0.5 * np.abs(p - q).sum()),
        label_p_value=p_value,
        mean_shift=np.array(mean) - ref.mean,
        std_ratio=np.array(std) / np.maximum(ref.std, 1e-9),
    )
