"""Drift of each new raw partition against the training data: seen before it reaches a model, not blocking.

Reference: the train rows of the current cifar10_split; before any split exists, the other materialized
official training batches. Labels: total variation distance, flagged only when also significant
(chi-square p-value), so a 50-image drop is not flagged for sampling noise. Pixels: per-channel mean and
std on a 0..1 scale.
"""

from dataclasses import dataclass

import dagster as dg
import numpy as np

from mlsd_assets.core.data.batches import CIFAR10_CLASSES, RawBatch
from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.data.partitions import OFFICIAL_TRAIN_BATCHES, raw_batches
from mlsd_assets.io_manager import ArtifactIOManager

CHANNELS = ("red", "green", "blue")


class DriftConfig(dg.Config):
    """Thresholds above which the check warns (run config of the check, e.g. per deployment)."""

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

    def reasons(self, config: DriftConfig) -> list[str]:
        out = []
        if self.label_tv > config.max_label_tv and self.label_p_value < config.label_p_value:
            out.append(
                f"label distribution TV {self.label_tv:.3f} > {config.max_label_tv} (p={self.label_p_value:.2g})"
            )
        for name, shift, ratio in zip(CHANNELS, self.mean_shift, self.std_ratio, strict=True):
            if abs(shift) > config.max_mean_shift:
                out.append(f"{name} mean shifted by {shift:+.3f} (> {config.max_mean_shift})")
            if max(ratio, 1 / ratio) > config.max_std_ratio:
                out.append(f"{name} std ratio {ratio:.2f} (outside 1/{config.max_std_ratio}..{config.max_std_ratio})")
        return out


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 NHWC images on a 0..1 scale (float64 sums: exact on 50k images)."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return pixels.mean(axis=0), pixels.std(axis=0)


def compare(images: np.ndarray, labels: np.ndarray, ref: Reference) -> Drift:
    from scipy.stats import chisquare

    counts = np.bincount(labels, minlength=len(CIFAR10_CLASSES)).astype(np.float64)
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
        mean_shift=mean - ref.mean,
        std_ratio=std / np.maximum(ref.std, 1e-9),
    )


def _reference(io_manager: ArtifactIOManager, partition: str) -> Reference | None:
    split_path = io_manager.path_for(dg.AssetKey("cifar10_split"), None, Cifar10Split.suffix)
    if split_path.exists():
        split = Cifar10Split.load(split_path)
        _, labels = split.arrays("train")
        counts = np.bincount(labels, minlength=len(CIFAR10_CLASSES))
        return Reference(counts, np.array(split.mean), np.array(split.std), f"cifar10_split train rows ({split_path})")
    paths = {
        key: io_manager.path_for(dg.AssetKey("raw_cifar10"), key, RawBatch.suffix)
        for key in OFFICIAL_TRAIN_BATCHES
        if key != partition
    }
    batches = [RawBatch.load(path) for path in paths.values() if path.exists()]
    if not batches:
        return None
    images = np.concatenate([b.images for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    mean, std = channel_stats(images)
    names = ", ".join(b.partition for b in batches)
    return Reference(np.bincount(labels, minlength=len(CIFAR10_CLASSES)), mean, std, f"raw_cifar10 {names}")


@dg.asset_check(
    asset="raw_cifar10",
    partitions_def=raw_batches,
    blocking=False,
    description="Warns when a raw partition's labels or per-channel pixel statistics leave the training's.",
)
def check_raw_cifar10_drift(
    context: dg.AssetCheckExecutionContext,
    config: DriftConfig,
    raw_cifar10: RawBatch,
    io_manager: dg.ResourceParam[ArtifactIOManager],
) -> dg.AssetCheckResult:
    partition = raw_cifar10.partition
    ref = _reference(io_manager, partition)
    if ref is None:
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{partition}: no training data materialized yet to compare with",
            metadata={"reference": "none"},
        )
    drift = compare(raw_cifar10.images, raw_cifar10.labels, ref)
    reasons = drift.reasons(config)
    metadata: dict[str, dg.RawMetadataValue] = {
        "reference": ref.source,
        "images": len(raw_cifar10),
        "label_tv": round(drift.label_tv, 4),
        "label_p_value": float(f"{drift.label_p_value:.4g}"),
        "label_histogram": dg.MetadataValue.json(raw_cifar10.class_histogram()),
    }
    for i, name in enumerate(CHANNELS):
        metadata[f"{name}_mean_shift"] = round(float(drift.mean_shift[i]), 4)
        metadata[f"{name}_std_ratio"] = round(float(drift.std_ratio[i]), 4)
    if reasons:
        context.log.warning(f"raw_cifar10 {partition}: drift: {'; '.join(reasons)}")
    return dg.AssetCheckResult(
        passed=not reasons,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{partition}: " + ("; ".join(reasons) if reasons else f"in line with {ref.source}"),
        metadata=metadata,
    )
