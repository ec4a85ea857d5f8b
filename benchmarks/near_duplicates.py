"""Evidence for the near-duplicate threshold: detection of synthetic near-duplicates, matches between distinct
images, near-duplicates of real test images in train, and the split's counts with and without the rule.

Usage: python benchmarks/near_duplicates.py [path/to/cifar10-jpeg.tar.gz] [--sample 2000] [--pairs-png out.png]
Reads the images through the pipeline's own reader and builds the split with the pipeline's own rules.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mlsd_assets.core.data.batches import (
    OFFICIAL_TEST_BATCH,
    OFFICIAL_TRAIN_BATCHES,
    SIGNATURE_BITS,
    image_signatures,
    nearest,
    within,
)
from mlsd_assets.core.data.cleaning import NEAR_DUPLICATE_DISTANCE, build_split
from mlsd_assets.core.data.sources import read_official_batch

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
THRESHOLDS = (2, 4, 6, 8, 10, 12, 14, 16)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def variants(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Edits that leave the same picture (the kinds seen in drops); a mirror image is reported, not a target."""
    rows = np.arange(len(images))
    one_pixel = images.copy()
    y, x = rng.integers(0, 32, len(images)), rng.integers(0, 32, len(images))
    one_pixel[rows, y, x] = 255 - one_pixel[rows, y, x]
    shifted = np.concatenate([images[:, :, 1:], images[:, :, -1:]], axis=2)  # 1 px left, edge repeated
    as_int = images.astype(np.int16)
    return {
        "jpeg_q95": _jpeg(images, 95),
        "jpeg_q75": _jpeg(images, 75),
        "one_pixel": one_pixel,
        "brightness_+8": np.clip(as_int + 8, 0, 255).astype(np.uint8),
        "colour_5pct": np.clip(images * np.array([1.05, 1.0, 0.95]), 0, 255).astype(np.uint8),
        "shift_1px": shifted,
        "flip_h (not a target)": images[:, :, ::-1].copy(),
    }


def pair_histogram(queries: np.ndarray, references: np.ndarray, same: bool, chunk: int = 1024) -> np.ndarray:
    """Number of (query, reference) pairs at each distance 0..SIGNATURE_BITS; `same` skips self-pairs."""
    histogram = np.zeros(SIGNATURE_BITS + 1, dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        d = np.bitwise_count(q[:, None, 0] ^ references[None, :, 0])
        d += np.bitwise_count(q[:, None, 1] ^ references[None, :, 1])
        if same:
            d[np.arange(len(q)), np.arange(start, start + len(q))] = SIGNATURE_BITS
        histogram += np.bincount(d.ravel(), minlength=SIGNATURE_BITS + 1)
    if same:
        histogram[SIGNATURE_BITS] -= len(queries)
        histogram //= 2  # each unordered pair was counted twice
    return histogram


def save_pairs(path: Path, train: np.ndarray, test: np.ndarray, distance: np.ndarray, threshold: int) -> None:
    """A strip per flagged pair (train | test), the 48 farthest from each other first (the borderline cases
    that decide the threshold), at 3x: to look at what the rule removes."""
    order = [i for i in np.argsort(-distance, kind="stable") if distance[i] <= threshold][:48]
    if not order:
        return
    tiles = [np.concatenate([train[i], np.zeros((32, 4, 3), np.uint8), test[i]], axis=1) for i in order]
    columns = 6
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    width = 68 * columns + 8 * (columns - 1)
    sheet = np.full((len(rows) * 40, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet[r * 40 : r * 40 + 32, c * 76 : c * 76 + 68] = tile
    Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT.resolve())
    parser.add_argument("--sample", type=int, default=2000, help="test images edited per kind")
    parser.add_argument("--threshold", type=int, default=NEAR_DUPLICATE_DISTANCE)
    parser.add_argument("--pairs-png", type=Path, default=None, help="write the flagged real pairs here")
    args = parser.parse_args()
    if not args.source.exists():
        print(f"benchmark data not found: {args.source} (pass the path to cifar10-jpeg.tar.gz)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("near_duplicates")
    print(f"CPU {cpu_name()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; source {args.source}")
    with tempfile.TemporaryDirectory(prefix="mlsd-neardup-") as tmp:
        batches = {
            p: read_official_batch(str(args.source), p, Path(tmp), log)
            for p in (*OFFICIAL_TRAIN_BATCHES, OFFICIAL_TEST_BATCH)
        }
    test = batches[OFFICIAL_TEST_BATCH]
    train_images = np.concatenate([batches[p].images for p in OFFICIAL_TRAIN_BATCHES])
    train_signatures = np.concatenate([batches[p].signatures for p in OFFICIAL_TRAIN_BATCHES])
    t, cpu = time.perf_counter(), time.process_time()
    image_signatures(train_images)
    took, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"signatures of {len(train_images)} images: {took:.2f} s wall, {cpu:.2f} s CPU")

    rng = np.random.default_rng(0)
    picked = rng.choice(len(test), size=min(args.sample, len(test)), replace=False)
    print(f"\n(a) detection of edited test images (n={len(picked)} per kind): share within T bits of the original")
    print(f"  {'kind':<22}" + "".join(f"T={t:<5}" for t in THRESHOLDS) + "  median bits")
    for kind, edited in variants(test.images[picked], rng).items():
        sig = image_signatures(edited)
        bits = np.bitwise_count(sig ^ test.signatures[picked]).sum(axis=1)
        rates = "".join(f"{(bits <= t).mean():<7.3f}" for t in THRESHOLDS)
        print(f"  {kind:<22}{rates}  {int(np.median(bits))}")

    print("\n(b) pairs of distinct images within T bits (real data; includes genuine near-duplicates)")
    t = time.perf_counter()
    cross = pair_histogram(train_signatures, test.signatures, same=False)
    search = time.perf_counter() - t
    among_test = pair_histogram(test.signatures, test.signatures, same=True)
    cumulative = {name: np.cumsum(h) for name, h in (("train x test", cross), ("test x test", among_test))}
    totals = {"train x test": len(train_signatures) * len(test), "test x test": len(test) * (len(test) - 1) // 2}
    print(f"  {'pairs':<22}" + "".join(f"T={t:<9}" for t in THRESHOLDS) + "  of")
    for name, c in cumulative.items():
        print(f"  {name:<22}" + "".join(f"{int(c[t]):<11}" for t in THRESHOLDS) + f"  {totals[name]:,}")
    rate = totals["train x test"] / search / 1e6
    print(f"  train x test histogram: {search:.1f} s ({rate:.0f} M pairs/s)")

    t, cpu = time.perf_counter(), time.process_time()
    distance, row = nearest(train_signatures, test.signatures)
    scan, scan_cpu = time.perf_counter() - t, time.process_time() - cpu
    t, cpu = time.perf_counter(), time.process_time()
    banded, _ = within(train_signatures, test.signatures, args.threshold)
    band, band_cpu = time.perf_counter() - t, time.process_time() - cpu
    assert ((banded <= args.threshold) == (distance <= args.threshold)).all(), "banded search differs from scan"
    print(f"\n(c) nearest test image of every train image: full scan {scan:.1f} s wall / {scan_cpu:.1f} s CPU;")
    print(
        f"    banded search within T={args.threshold} (what the split uses): {band:.2f} s wall / {band_cpu:.2f} s CPU"
    )
    print(f"  {'':<22}" + "".join(f"T={t:<7}" for t in THRESHOLDS))
    print(f"  {'train images flagged':<22}" + "".join(f"{int((distance <= t).sum()):<9}" for t in THRESHOLDS))
    tests = [len(np.unique(row[distance <= t])) for t in THRESHOLDS]
    print(f"  {'test images matched':<22}" + "".join(f"{n:<9}" for n in tests))
    if args.pairs_png:
        save_pairs(args.pairs_png, train_images, test.images[row], distance, args.threshold)
        print(f"  flagged pairs at T={args.threshold} (train | test): {args.pairs_png}")

    print(f"\n(d) cifar10_split with the pipeline's rules (validation_fraction 0.1), T={args.threshold}")
    for label, threshold in (("without near-duplicate rule", None), (f"T={args.threshold}", args.threshold)):
        t = time.process_time()
        split = build_split(batches, 0.1, log, near_duplicate_distance=threshold)
        took = time.process_time() - t
        reasons = split.dropped["reason"].value_counts().to_dict()
        print(f"  {label:<28} {split.counts()}  dropped {reasons}  ({took:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
