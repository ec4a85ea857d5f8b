"""A training time budget: measure this CPU's speed on the real model and data, then size the run to fit."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.platform.env_info import cpu_info
from mlsd_assets.core.training.train import (
    BUDGET_RESERVE,
    TrainConfig,
    _on,
    _optimizers,
    evaluate,
    pick_device,
    prepare_model,
    resolve_precision,
    steps_that_fit,
    train_batches,
    train_step,
)


@dataclass(frozen=True)
class Throughput:
    """What the probe measured: training and validation images/s on this CPU, in this precision."""

    train_images_per_second: float
    eval_images_per_second: float
    seconds: float  # the probe's own wall time, part of the budget
    precision: str
    threads: int
    cpu_model: str
    cpu_flags: str

    def record(self) -> dict[str, Any]:
        return {f"probe.{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class BudgetPlan:
    """How many steps (and epochs, the last one possibly partial) fit in `budget_seconds`."""

    budget_seconds: float
    steps: int
    steps_per_epoch: int
    epochs: int
    expected_seconds: float  # probe + training + validation passes, as estimated

    def record(self) -> dict[str, Any]:
        return {f"budget.{k}": v for k, v in dataclasses.asdict(self).items()}


def measure_throughput(
    config: TrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    logger: logging.Logger,
    steps: int = 3,
    device: torch.device | None = None,
    max_seconds: float = 15.0,
) -> Throughput:
    """Time `steps` real training steps (fewer once `max_seconds` have passed; after one warm-up step) on a
    throwaway copy of the model, and one validation batch; the loader, precision, threads and memory layout
    are the ones training will use."""
    start = time.perf_counter()
    device = device or pick_device()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = prepare_model(config, train_images, mean, std, device)
    optimizers = _optimizers(model.net, config)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    batches = train_batches(config, train_images, train_labels)
    model.train()
    images, timed_from = 0, 0.0
    for n in range(steps + 1):
        x, y = next(iter(_on(batches.epoch(n), device)))
        if n == 1:  # the first step warms caches and oneDNN primitives: not timed
            timed_from = time.perf_counter()
        train_step(model, optimizers, loss_fn, x, y, precision)
        images += len(y) if n else 0
        if n and time.perf_counter() - timed_from >= max_seconds:
            break  # a slow machine: one timed step is enough, the budget is better spent training
    train_ips = images / (time.perf_counter() - timed_from)
    sample = val_images[: min(len(val_images), max(config.eval_batch_size, 1))]
    t_eval = time.perf_counter()
    evaluate(model, sample, np.zeros(len(sample), dtype=np.int64), config.eval_batch_size, precision)
    eval_ips = len(sample) / max(time.perf_counter() - t_eval, 1e-9)
    cpu = cpu_info()
    result = Throughput(
        train_images_per_second=train_ips,
        eval_images_per_second=eval_ips,
        seconds=time.perf_counter() - start,
        precision=precision,
        threads=torch.get_num_threads(),
        cpu_model=cpu["cpu.model"],
        cpu_flags=cpu["cpu.flags"],
    )
    logger.info(
        f"throughput probe: {train_ips:.0f} train img/s, {eval_ips:.0f} validation img/s ({precision},"
        f" {result.threads} threads, {result.cpu_model}; {cpu['cpu.flags']}) in {result.seconds:.1f}s"
    )
    return result


def plan_budget(
    budget_seconds: float,
    throughput: Throughput,
    train_count: int,
    val_count: int,
    batch_size: int,
) -> BudgetPlan:
    """The most steps whose estimated time (probe already spent + steps + one validation pass per epoch +
    the final one) fits the budget, less a small reserve. At least one step. Training re-sizes this after
    every epoch from the speed it then measures (`train(time_budget_s=...)`)."""
    if budget_seconds <= 0:
        raise ValueError(f"time budget: must be > 0 seconds, got {budget_seconds}")
    steps_per_epoch = max(1, train_count // batch_size)  # as TrainBatches(drop_last=True) counts them
    step_s = batch_size / throughput.train_images_per_second
    eval_s = val_count / throughput.eval_images_per_second
    available = budget_seconds * (1 - BUDGET_RESERVE) - throughput.seconds
    steps = steps_that_fit(available, step_s, eval_s, steps_per_epoch)
    epochs = math.ceil(steps / steps_per_epoch)
    return BudgetPlan(
        budget_seconds=budget_seconds,
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        expected_seconds=throughput.seconds + steps * step_s + (epochs + 1) * eval_s,
    )


def budgeted(config: TrainConfig, plan: BudgetPlan) -> TrainConfig:
    """The config that trains exactly the planned steps (the lr schedule's horizon is `plan.steps`)."""
    return dataclasses.replace(config, epochs=plan.epochs, max_steps=plan.steps)
