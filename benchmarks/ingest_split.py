"""Time raw ingestion (all six partitions) + the cleaned split of the real 60,000 CIFAR-10 images.

Usage: python benchmarks/ingest_split.py [path/to/cifar10-jpeg.tar.gz] [--workdir DIR]
Target: <= 10 s and <= 2 GB peak RSS on 2 cores. Same code as the assets (mlsd_assets.core.data), cold cache.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from mlsd_assets.core.data.batches import OFFICIAL_BATCHES, RawBatch
from mlsd_assets.core.data.cleaning import build_split
from mlsd_assets.core.data.sources import read_official_batch

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cpu_seconds() -> float:
    """User + system CPU of this process and its children: the work done, whatever else loads the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT.resolve())
    parser.add_argument("--workdir", type=Path, default=None, help="where cache and artifacts go (default: a temp dir)")
    args = parser.parse_args()
    if not args.source.exists():
        print(f"benchmark data not found: {args.source} (pass the path to cifar10-jpeg.tar.gz)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("ingest_split")
    with tempfile.TemporaryDirectory(prefix="mlsd-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        load = os.getloadavg()[0]
        print(
            f"source {args.source} ({args.source.stat().st_size / 1e6:.1f} MB), cpus {os.cpu_count()}, load {load:.1f}"
        )
        cpu = cpu_seconds()
        total = time.perf_counter()
        t = time.perf_counter()
        for i, partition in enumerate(OFFICIAL_BATCHES):
            batch = read_official_batch(str(args.source), partition, work / "downloads", log)
            batch.save(work / "artifacts" / "raw_cifar10" / f"{partition}.npz")
            label = "first partition (decodes the archive into the cache)" if i == 0 else partition
            print(f"  raw_cifar10[{partition}]: {len(batch)} images, {time.perf_counter() - t:.2f} s  ({label})")
            t = time.perf_counter()
            del batch
        ingest = time.perf_counter() - total
        t = time.perf_counter()
        batches = {p: RawBatch.load(work / "artifacts" / "raw_cifar10" / f"{p}.npz") for p in OFFICIAL_BATCHES}
        loading = time.perf_counter() - t
        t = time.perf_counter()
        split = build_split(batches, 0.1, log)
        build = time.perf_counter() - t
        t = time.perf_counter()
        split.save(work / "artifacts" / "cifar10_split" / "latest.npz")
        save = time.perf_counter() - t
        elapsed = time.perf_counter() - total
        cpu = cpu_seconds() - cpu
        raw_mb = sum(f.stat().st_size for f in (work / "artifacts" / "raw_cifar10").iterdir()) / 1e6
    print(f"ingest (6 partitions, incl. decode + save): {ingest:.2f} s, raw artifacts {raw_mb:.0f} MB")
    print(f"split: load {loading:.2f} s, build {build:.2f} s, save {save:.2f} s; counts {split.counts()}")
    print(f"dropped: {split.dropped['reason'].value_counts().to_dict()}")
    print(
        f"TOTAL {elapsed:.2f} s wall, {cpu:.2f} s CPU (user+sys), peak RSS {peak_rss_mb():.0f} MB "
        "(target <= 10 s, <= 2048 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
