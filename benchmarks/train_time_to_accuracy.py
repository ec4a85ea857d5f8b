"""Time to accuracy on real CIFAR-10: train on the 50k train images, report test accuracy after every epoch.

    .venv/bin/python benchmarks/train_time_to_accuracy.py --preset fast        # default, beside the reference
    .venv/bin/python benchmarks/train_time_to_accuracy.py --preset long
    .venv/bin/python benchmarks/train_time_to_accuracy.py --preset vgg11 --reference none   # 1 epoch, alone

With `--reference sgd` (the default: airbench94's recipe) the reference trains first, then the preset, each in a
fresh child process, on the same data, precision, threads and machine; then a `RATIO` line gives the ratio of
training times (time for the preset to first reach the reference's final test accuracy, at epoch granularity /
the reference's time): below 1 is faster than the reference. An epoch of a fixed-length run is not a finished
training (its lr has not decayed), so `--budget-fractions 0.7` then also trains the preset as the pipeline
does, under a time budget of that fraction of the reference's wall time (its training and its per-epoch test
passes; the budgeted run counts its throughput probe, training and test passes, none in an epoch that ends at
low resolution): the lines `BUDGET ...` say whether it reached the reference's accuracy in that time, and its
optimisation time beside the reference's.

Training time counts optimisation only (the per-epoch test pass is timed apart); the test set is used for
reporting only, and the final epoch's model is the one measured (no selection on test), also at airbench94's
test-time augmentation levels (`tta0` none, `tta1` mirror, `tta2` mirror + one-pixel translations). Accuracy at a
fixed `--epochs` does not depend on how busy the machine is: A/B a field by two runs with the same seed and epochs,
e.g. `--reference none --epochs 4 --set lookahead=1` beside `--reference none --epochs 4`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_official(path: Path, cache: Path, log: logging.Logger) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/test arrays through the pipeline's own reader, which decodes the archive once into `cache`."""
    from mlsd_assets.core.data.batches import OFFICIAL_BATCHES
    from mlsd_assets.core.data.sources import read_official_batch

    batches = [read_official_batch(str(path), p, cache, log) for p in OFFICIAL_BATCHES]
    train = batches[:-1]
    return {
        "train": (np.concatenate([b.images for b in train]), np.concatenate([b.labels for b in train])),
        "test": (batches[-1].images, batches[-1].labels),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mlsd-bench"))
    parser.add_argument("--preset", default="fast", help="a recipe of mlsd_assets.core.training.recipes.RECIPES")
    parser.add_argument(
        "--reference", default="sgd", help="recipe to compare against in the same run ('none': only --preset)"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit-train", type=int, default=0, help="use only the first N train images (smoke)")
    parser.add_argument(
        "--budget-fractions",
        type=float,
        nargs="*",
        default=[],
        metavar="F",
        help="then train the preset under a time budget of each fraction of the reference's wall time",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any TrainConfig field")
    args = parser.parse_args()

    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data PATH to cifar10-jpeg.tar.gz)", file=sys.stderr)
        return 2
    from mlsd_assets.core.platform.allocator import active_allocator, reexec_with_jemalloc
    from mlsd_assets.settings import environment

    reexec_with_jemalloc(environment())  # the children inherit its LD_PRELOAD
    from mlsd_assets.core.training.recipes import TrainConfig

    overrides: dict[str, object] = {}
    for name in ("epochs", "batch_size", "lr", "precision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            parser.error(f"--set {item}: unknown TrainConfig field {key!r}")
        default = getattr(TrainConfig(), key)
        if isinstance(default, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            overrides[key] = tuple(type(default[0])(v) for v in value.split(","))
        else:
            overrides[key] = type(default)(value)
    from mlsd_assets.core.platform.env_info import cpu_info

    cpu = cpu_info()
    load = os.getloadavg()
    print(
        f"cpu={cpu['cpu.model']!r} flags={cpu['cpu.flags']!r} torch_capability={cpu['cpu.capability']}"
        f" nproc={os.cpu_count()} threads={args.threads} allocator={active_allocator()}"
        f" loadavg={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}",
        flush=True,
    )
    # Each training in a fresh process, as the pipeline runs it, so that no run inherits an earlier one's heap,
    # threads or caches (hygiene: on an Ice Lake guest the preset's last 32-px epochs read 822-1,055 img/s
    # second in one process and 902-1,187 in fresh ones, which is that guest's noise).
    spawn = multiprocessing.get_context("spawn")

    def run(preset: str, budget_s: float | None = None) -> tuple[list[tuple[float, float | None]], float, str, float]:
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            return child.submit(train_preset, args, overrides, preset, budget_s).result()

    if args.reference == "none":
        run(args.preset)
        return 0
    ref_curve, ref_accuracy, precision, ref_wall = run(args.reference)
    curve, accuracy, _, _ = run(args.preset)
    ref_seconds = ref_curve[-1][0]
    reached = next((seconds for seconds, acc in curve if acc is not None and acc >= ref_accuracy), None)
    ratio = f"{reached / ref_seconds:.2f}" if reached is not None else "not reached"
    reference = (
        f"reference={args.reference} precision={precision} reference_final_test_acc={ref_accuracy:.4f}"
        f" reference_train_s={ref_seconds:.1f} reference_wall_s={ref_wall:.1f}"
    )
    where = f"cpu={cpu['cpu.model']!r} flags={cpu['cpu.flags']!r}"
    time_to_it = reached if reached is None else round(reached, 1)
    print(
        f"RATIO preset={args.preset} {reference} preset_time_to_it_s={time_to_it}"
        f" preset_final_test_acc={accuracy:.4f} ratio={ratio} {where}"
    )
    for fraction in args.budget_fractions:
        budget_curve, budget_accuracy, _, wall = run(args.preset, fraction * ref_wall)
        print(
            f"BUDGET preset={args.preset} fraction={fraction:.2f} budget_s={fraction * ref_wall:.1f}"
            f" wall_s={wall:.1f} wall_ratio={wall / ref_wall:.2f} train_s={budget_curve[-1][0]:.1f}"
            f" train_ratio={budget_curve[-1][0] / ref_seconds:.2f} final_test_acc={budget_accuracy:.4f}"
            f" reached_reference={'yes' if budget_accuracy >= ref_accuracy else 'no'} {reference} {where}",
            flush=True,
        )
    return 0


def train_preset(
    args: argparse.Namespace, overrides: dict[str, object], preset: str, budget_s: float | None
) -> tuple[list[tuple[float, float | None]], float, str, float]:
    """One training (in a child process): (cumulative training seconds, test accuracy) after each epoch; final
    accuracy; precision; wall seconds. With `budget_s`, sized to that many seconds of wall time (probe
    included) as the pipeline sizes it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench")

    import torch

    from mlsd_assets.core.training.budget import size_to_budget
    from mlsd_assets.core.training.loader import eval_batches
    from mlsd_assets.core.training.recipes import recipe_config
    from mlsd_assets.core.training.steps import tta_logits
    from mlsd_assets.core.training.train import TrainData, train

    t0 = time.perf_counter()
    data = load_official(args.data, args.cache, log)
    x_train, y_train = data["train"]
    if args.limit_train:
        x_train, y_train = x_train[: args.limit_train], y_train[: args.limit_train]
    x_test, y_test = data["test"]
    mean = tuple(float(v) for v in (x_train / 255.0).mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in (x_train / 255.0).std(axis=(0, 1, 2)))
    print(
        f"{preset}: torch={torch.__version__} data: {len(x_train)} train / {len(x_test)} test, loaded in"
        f" {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    config = recipe_config(preset, threads=args.threads, **overrides)
    arrays = TrainData(x_train, y_train, x_test, y_test, mean, std)  # type: ignore[arg-type]
    budget, probe_steps = None, 0
    wall = time.perf_counter()
    if budget_s is not None:
        config, budget, probe, _ = size_to_budget(config, arrays, budget_s, log)
        probe_steps = probe.trained_steps  # trained before `steps`, inside the budget's wall time
    print(f"config {preset}: {config.hyperparameters()}")
    curve: list[tuple[float, float | None]] = []  # None: an epoch at low resolution, not tested

    def on_epoch(stats) -> None:  # type: ignore[no-untyped-def]
        curve.append(((curve[-1][0] if curve else 0.0) + stats.train_seconds, stats.val_accuracy))
        tested = "  -   " if stats.val_accuracy is None else f"{stats.val_accuracy:.4f}"
        print(
            f"{preset} epoch {stats.epoch:>2}/{stats.epochs}  test_acc {tested}"
            f"  train_loss {stats.train_loss:.4f}  train_s {stats.train_seconds:6.1f}"
            f"  cum_train_s {curve[-1][0]:7.1f}  images/s {stats.images_per_second:6.0f}"
            f"  eval_s {stats.epoch_seconds - stats.train_seconds:5.1f}",
            flush=True,
        )

    result = train(arrays, config, log, on_epoch=on_epoch, select="last", budget=budget)
    wall = time.perf_counter() - wall
    images = result.steps * config.batch_size
    accuracy = result.validation["accuracy"]
    tta = []
    for level in (0, 1, 2):
        with torch.no_grad():
            batches = eval_batches(x_test, config.eval_batch_size)
            logits = np.concatenate([tta_logits(result.model, b, level).numpy() for b in batches])
        tta.append(f"tta{level}={float((logits.argmax(1) == y_test).mean()):.4f}")
    print(
        f"RESULT preset={preset} arch={config.architecture} epochs={len(result.history)} steps={result.steps}"
        f" probe_steps={probe_steps}"
        f" precision={result.precision}"
        f" final_test_acc(fp32{', flip-TTA' if config.flip_tta else ''})={accuracy:.4f}"
        f" train_s={curve[-1][0]:.1f} wall_s={wall:.1f} images/s={images / curve[-1][0]:.0f}"
        f" loadavg_end={os.getloadavg()[0]:.2f} test_acc_by_tta_level: {' '.join(tta)}",
        flush=True,
    )
    return curve, accuracy, result.precision, wall


if __name__ == "__main__":
    sys.exit(main())
