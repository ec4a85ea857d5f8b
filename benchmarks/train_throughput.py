"""Training throughput of config variants, A/B interleaved on the same machine (ratios survive a busy machine).

    .venv/bin/python benchmarks/train_throughput.py                      # default variants, 3 rounds
    .venv/bin/python benchmarks/train_throughput.py --variant 'fp32-nchw:precision=fp32,channels_last=0'

Each round measures every variant once with the time-budget probe (one warm-up and three timed real training
steps of the default recipe on real images, plus a validation batch), starting one variant further on each round:
on an Ice Lake the first variant of a round sometimes read 10-15% low, so the order must not favour one.
The table gives the median images/s per variant and its ratio to the first variant, with the CPU model and flags.
Rounds that are a multiple of the variant count put every variant first equally often.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_VARIANTS = (
    "auto:",
    "fp32:precision=fp32",
    "fp32-nchw:precision=fp32,channels_last=0",
    "fp32-1thread:precision=fp32,threads=1",
    "fp32-batch1000:precision=fp32,batch_size=1000",
)


def parse_variant(text: str, defaults: object) -> tuple[str, dict[str, object]]:
    """`name:field=value,...` -> (name, overrides typed like the TrainConfig defaults)."""
    name, _, spec = text.partition(":")
    overrides: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        default = getattr(defaults, key)
        overrides[key] = value.lower() in ("1", "true") if isinstance(default, bool) else type(default)(value)
    return name, overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mlsd-bench"))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", help="name:field=value,... (repeatable)")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data PATH to cifar10-jpeg.tar.gz)", file=sys.stderr)
        return 2
    from mlsd_assets.core.platform.allocator import reexec_with_jemalloc
    from mlsd_assets.settings import environment

    reexec_with_jemalloc(environment())
    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("bench")

    from train_time_to_accuracy import load_official  # this folder is on sys.path when run as a script

    from mlsd_assets.core.platform.env_info import cpu_info
    from mlsd_assets.core.training.budget import probe_training
    from mlsd_assets.core.training.recipes import recipe_config
    from mlsd_assets.core.training.train import TrainData

    data = load_official(args.data, args.cache, log)
    x, y = data["train"]
    xv, yv = data["test"][0][:1000], data["test"][1][:1000]
    mean = tuple(float(v) for v in (x[:5000] / 255.0).mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in (x[:5000] / 255.0).std(axis=(0, 1, 2)))
    arrays = TrainData(x, y, xv, yv, mean, std)  # type: ignore[arg-type]
    base = recipe_config(args.preset, threads=os.cpu_count() or 1)
    variants = [parse_variant(v, base) for v in args.variant or DEFAULT_VARIANTS]
    speeds: dict[str, list[float]] = {name: [] for name, _ in variants}
    precisions: dict[str, str] = {}
    for r in range(args.rounds):
        for name, overrides in variants[r % len(variants) :] + variants[: r % len(variants)]:
            config = dataclasses.replace(base, **overrides)
            probe = probe_training(config, arrays, log, steps=3)[0]  # the budget times one step; this, three
            speeds[name].append(probe.train_images_per_second)
            precisions[name] = probe.precision
            print(f"round {r + 1} {name:<16} {probe.train_images_per_second:7.0f} img/s", flush=True)
    cpu = cpu_info()
    print(
        f"cpu={cpu['cpu.model']!r} flags={cpu['cpu.flags']!r} nproc={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f}"
    )
    first = statistics.median(speeds[variants[0][0]])
    for name, _ in variants:
        median = statistics.median(speeds[name])
        print(f"{name:<16} {precisions[name]:<5} median {median:7.0f} img/s  ratio {median / first:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
