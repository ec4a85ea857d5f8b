"""A budgeted Optuna study on the real images, then the default recipe and the tuned config trained for the same
wall time on all of train, both measured on test.

    .venv/bin/python benchmarks/tuning_study.py                      # 30-minute study, 3-minute trials
    .venv/bin/python benchmarks/tuning_study.py --study-minutes 5 --trial-minutes 1 --final-minutes 2   # smoke

Trials train on a fixed random subset of train (`--train-images`) and are judged on the whole validation
split; the study never reads test. Killed, the same command resumes the study (same data, space and settings
-> same study in `--workdir`/optuna.db) without repeating its finished trials. Prints the CPU and load
averages sampled every 30 s, since this is meant for a 2-core machine that may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


class LoadSampler(threading.Thread):
    """1-minute load average every `every` seconds, for the report."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        s = self.samples
        spread = f"min {min(s):.1f}, median {statistics.median(s):.1f}, max {max(s):.1f}"
        return f"load avg (1 min) over {len(s)} samples: {spread}"


def load_split(data: Path, work: Path, log: logging.Logger):  # noqa: ANN201
    """The pipeline's own split of the real images (decoded once, kept in `work`)."""
    from mlsd_assets.core.data.batches import OFFICIAL_BATCHES
    from mlsd_assets.core.data.cleaning import build_split
    from mlsd_assets.core.data.sources import read_official_batch
    from mlsd_assets.core.data.splits import Cifar10Split

    path = work / "cifar10_split.npz"
    if not path.exists() and not data.exists():
        raise SystemExit(f"data not found: {data} (pass --data PATH to cifar10-jpeg.tar.gz)")
    if not path.exists():
        batches = {p: read_official_batch(str(data), p, work / "downloads", log) for p in OFFICIAL_BATCHES}
        build_split(batches, 0.1, log).save(path)
    return Cifar10Split.load(path)


def train_budgeted(config, split, minutes: float, log: logging.Logger) -> tuple[float, float, float, int]:  # noqa: ANN001
    """As `cifar10_model` trains: probe, plan, train with re-sizing; returns val acc, test acc, seconds, steps."""
    from mlsd_assets.core.training.budget import size_to_budget
    from mlsd_assets.core.training.steps import evaluate
    from mlsd_assets.core.training.train import TrainData, train

    data = TrainData.from_split(split)
    sized, budget, _, _ = size_to_budget(config, data, minutes * 60, log)
    result = train(data, sized, log, budget=budget)
    seconds = time.perf_counter() - budget.started
    x_test, y_test = split.arrays("test")  # measured once, after selection on validation
    test = evaluate(result.model, x_test, y_test)
    return result.validation["accuracy"], test["accuracy"], seconds, result.steps


class PrintTrials:
    """Each trial on one line as it ends."""

    def started(self, number: int, params: dict) -> None:
        print(f"trial {number} starts: {params}", flush=True)

    def epoch(self, number: int, step: int, stats) -> None:  # noqa: ANN001
        print(f"  trial {number} at {step}%: val acc {stats.val_accuracy:.4f}", flush=True)

    def finished(self, trial) -> None:  # noqa: ANN001
        value = f"val acc {trial.value:.4f}" if trial.state.name == "COMPLETE" else f"last step {trial.last_step}"
        print(f"trial {trial.number} {trial.state.name}: {value}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlsd-tuning-bench"))
    parser.add_argument("--study-minutes", type=float, default=30.0)
    parser.add_argument("--trial-minutes", type=float, default=3.0)
    parser.add_argument("--final-minutes", type=float, default=5.0, help="training budget of each final model")
    parser.add_argument("--train-images", type=int, default=5000, help="train subset of each trial (0: all)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="sampler, subset and training seed")
    args = parser.parse_args()
    from mlsd_assets.core.platform.allocator import active_allocator, reexec_with_jemalloc
    from mlsd_assets.settings import environment

    reexec_with_jemalloc(environment())  # before torch allocates anything
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log, load = logging.getLogger("tuning_study"), LoadSampler()
    load.start()
    wall = time.perf_counter()

    from mlsd_assets.core.platform.env_info import cpu_info
    from mlsd_assets.core.training.recipes import recipe_config
    from mlsd_assets.core.tuning.space import SearchSpace
    from mlsd_assets.core.tuning.study import StudySettings, open_study, run_study, study_name, tuning_data

    args.workdir.mkdir(parents=True, exist_ok=True)
    split = load_split(args.data, args.workdir, log)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu.model']} ({cpu['cpu.flags']}), {os.cpu_count()} cores; allocator {active_allocator()}")
    print(f"split {split.content_hash[:12]}: {split.counts()}", flush=True)
    fixed = (("precision", args.precision), ("threads", args.threads), ("seed", args.seed))
    settings = StudySettings(
        fixed=fixed,
        trial_budget_s=args.trial_minutes * 60,
        total_budget_s=args.study_minutes * 60,
        train_images=args.train_images,
        seed=args.seed,
    )
    space = SearchSpace()
    name = study_name(space, settings, split.content_hash)
    study = open_study(f"sqlite:///{args.workdir / 'optuna.db'}", name, settings)
    t = time.perf_counter()
    result = run_study(
        study, tuning_data(split, settings.train_images, settings.seed), space, settings, log, PrintTrials()
    )
    study_s = time.perf_counter() - t
    print(
        f"study {name}: {len(result.trials)} trials ({result.count('COMPLETE')} complete, {result.count('PRUNED')}"
        f" pruned, {result.count('FAIL')} failed) in {study_s:.0f}s wall this attempt, {result.spent_seconds:.0f}s"
        f" of trials in all; best trial {result.best_trial}: val acc {result.best_value:.4f}"
        f" (baseline recipe as trial 0: {result.baseline_value}) params {result.best_params}",
        flush=True,
    )
    print(load.summary(), flush=True)

    default = recipe_config(settings.recipe, **dict(fixed))
    tuned = result.config()
    rows = []
    for label, config in (("default recipe", default), ("tuned", tuned)):
        val, test, seconds, steps = train_budgeted(config, split, args.final_minutes, log)
        changed = {k: v for k, v in dataclasses.asdict(config).items() if getattr(default, k) != v}
        rows.append((label, val, test, seconds, steps, changed))
        print(f"{label}: val {val:.4f}, test {test:.4f}, {seconds:.0f}s, {steps} steps; {changed}", flush=True)
    print(f"\n| model ({args.final_minutes:g} min budget each) | val acc | test acc | seconds | steps |")
    print("|---|---|---|---|---|")
    for label, val, test, seconds, steps, _ in rows:
        print(f"| {label} | {val:.4f} | {test:.4f} | {seconds:.0f} | {steps} |")
    print(f"total wall {time.perf_counter() - wall:.0f}s; {load.summary()}; CPU {cpu['cpu.model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
