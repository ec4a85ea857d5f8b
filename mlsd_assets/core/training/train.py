"""Train and evaluate on CPU (GPU when present), checkpointing every epoch so an interrupted run resumes."""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.platform.allocator import active_allocator
from mlsd_assets.core.platform.atomic import atomic_path
from mlsd_assets.core.training.budget import StepCosts, TimeBudget
from mlsd_assets.core.training.models import AirbenchNet, InferenceModel, build_model
from mlsd_assets.core.training.recipes import TrainConfig
from mlsd_assets.core.training.steps import (
    evaluate,
    lr_factor,
    make_optimizers,
    on_device,
    pick_device,
    prepare_model,
    resolve_precision,
    set_lr,
    train_batches,
    train_step,
)

if TYPE_CHECKING:
    from mlsd_assets.core.data.splits import Cifar10Split

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class TrainData:
    """What training reads: train and validation images (uint8 NHWC) and labels, and the train split's
    per-channel mean and std (0-1 scale) that the model normalises by."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_split(cls, split: Cifar10Split) -> TrainData:
        """The train and validation parts of `split` (the test part is never read for training)."""
        (x, y), (xv, yv) = split.arrays("train"), split.arrays("validation")
        for name, labels in (("train", y), ("validation", yv)):
            if len(labels) == 0:
                raise ValueError(f"cifar10_split: the {name} split is empty; cannot train")
        return cls(x, y, xv, yv, split.mean, split.std)


@dataclass
class EpochStats:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None  # None: not validated (an epoch that ended at low resolution)
    val_accuracy: float | None
    lr: float
    images_per_second: float
    train_seconds: float  # optimisation only
    epoch_seconds: float  # with the validation pass
    eta_seconds: float

    def metrics(self) -> dict[str, float]:
        names = (
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "lr",
            "images_per_second",
            "train_seconds",
            "epoch_seconds",
        )
        return {n: float(getattr(self, n)) for n in names if getattr(self, n) is not None}


@dataclass
class TrainResult:
    model: InferenceModel  # fp32, eval mode, on CPU: the selected (best-validation) epoch's weights
    history: list[EpochStats]
    best_epoch: int
    validation: dict[str, float]  # the selected epoch's validation pass, in the training precision
    resumed_from_epoch: int
    train_seconds: float
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)
    steps: int = 0  # optimizer steps in all (a time budget may re-size them while training)


def train(
    data: TrainData,
    config: TrainConfig,
    logger: logging.Logger,
    *,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    select: Literal["best", "last"] = "best",
    budget: TimeBudget | None = None,
    progress_every: float = 15.0,
    validate_every_epoch: bool = False,
) -> TrainResult:
    """Train `config.epochs` epochs (continuing from `checkpoint_dir` if it holds a matching run); the epoch
    with the best validation accuracy is returned (`select="last"`: the final one, for benchmarks that pass
    the test set as validation). The asset never passes the test split in here. A progress line is logged at
    least every `progress_every` seconds (while steps finish). An epoch that ends at low resolution
    (progressive resizing) is not validated unless `validate_every_epoch` (a tuning pruner compares trials by
    every epoch): a net not yet trained at 32 px reads low there, is never the best, and the passes would
    cost ~8% of a short run. With a `budget`, the remaining steps (and the lr schedule's horizon) are re-sized
    after every epoch and at every progress line from the speed just measured, so that training ends on time
    even when the machine gets slower or faster; a budget from `size_to_budget` also hands over the probe's
    model (`budget.warm`), whose steps training continues from. An exception from `on_epoch` propagates
    unchanged; the checkpoint then holds that epoch."""
    device = pick_device()
    precision = _setup(config, device, logger)
    if len(data.val_labels) == 0:
        raise ValueError("validation split is empty: model selection needs validation images")
    warm = budget.warm if budget is not None else None
    if warm is not None:  # the probe's model, after its steps (they counted against the budget too)
        if not warm.fits(config):
            raise ValueError("time budget: its probe trained another recipe than this run's; size it again")
        model, optimizers, budget.warm = warm.model, warm.optimizers, None
        logger.info(f"training continues from the throughput probe's {warm.steps} steps")
    else:
        model = prepare_model(config, data.train_images, data.mean, data.std, device, precision)
        optimizers = make_optimizers(model.net, config)
    batches = train_batches(config, data.train_images, data.train_labels)
    lookahead = Lookahead(model.net) if config.lookahead else None
    # the run's steps and validation passes, priced as the budget's probe measured them
    bias_steps = config.whiten_bias_epochs * len(batches) if isinstance(model.net, AirbenchNet) else 0
    costs = StepCosts(
        config.low_res_fraction,
        budget.low_res_cost if budget else 1.0,
        validate_every_epoch,
        bias_steps=bias_steps,
        bias_cost=budget.whiten_bias_cost if budget else 1.0,
    )
    run = RunState(config, model, optimizers, lookahead, len(batches), costs, checkpoint_dir, checkpoint_extra or {})
    run.resume(logger)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    progress = _Progress(logger, progress_every, run)
    while run.epoch < run.epochs:  # a time budget may change `epochs` as training goes
        started = time.perf_counter()
        if isinstance(model.net, AirbenchNet):
            model.net.whiten.bias.requires_grad_(run.epoch < config.whiten_bias_epochs)
        model.train()
        meter = _Meter(run.epoch, config.lr)
        for i, (x, y) in enumerate(on_device(batches.epoch(run.epoch), device)):
            step = run.epoch * run.steps_per_epoch + i
            if step >= run.total_steps:
                break
            set_lr(optimizers, lr_factor(config, step, run.total_steps))
            loss, logits = train_step(model, optimizers, loss_fn, x, y, precision, run.input_size(step))
            if lookahead is not None and (step + 1) % Lookahead.every == 0:
                lookahead.step(model.net, lookahead_decay(step + 1, run.total_steps))
            meter.add(i, loss, logits, y)
            rate = progress.step(i, step, len(y), float(loss))
            if budget is not None and rate:  # re-size within the epoch too, from the last window's speed
                run.total_steps = budget.total_steps(
                    step + 1, 1 / rate, progress.eval_seconds, run.steps_per_epoch, run.costs
                )
        if lookahead is not None and run.epoch + 1 == run.epochs:
            lookahead.step(model.net, 1.0)  # finish on the slow (averaged) weights
        train_seconds = time.perf_counter() - started
        val = None
        if run.costs.validates(run.epoch, run.total_steps, run.steps_per_epoch):
            val = evaluate(
                model, data.val_images, data.val_labels, config.eval_batch_size, precision, config.label_smoothing
            )
            progress.eval_seconds = time.perf_counter() - started - train_seconds
        stats = run.stats(meter, val, train_seconds, time.perf_counter() - started)
        run.end_epoch(stats, meter, budget, progress.eval_seconds, logger)  # history, budget, best, checkpoint
        if on_epoch is not None:
            on_epoch(stats)
        progress.leave_out(time.perf_counter() - started - train_seconds)  # validation, checkpoint, callbacks
    return run.result(data, precision, select)


def _setup(config: TrainConfig, device: torch.device, logger: logging.Logger) -> str:
    """Threads, precision and the seed, as every run starts; a warning when the allocator will be slow."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    precision = resolve_precision(config.precision, device)
    if device.type == "cpu" and active_allocator() == "system":
        logger.warning(
            "training on the system malloc: CPU steps spend much of their time page-faulting; install"
            " jemalloc (apt-get install libjemalloc2) and start through `python -m mlsd_assets` or"
            " `python -m mlsd_assets.core.platform.allocator CMD`"
        )
    torch.manual_seed(config.seed)
    return precision


class _Meter:
    """Training loss and accuracy over one epoch; stops the run at the first non-finite loss."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, i: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += float(loss) * len(y)
        self.correct += int((logits.argmax(1) == y).sum())
        self.seen += len(y)
        if not math.isfinite(self.loss_sum):
            raise FloatingPointError(f"epoch {self.epoch + 1} step {i}: loss is not finite (lr {self.lr})")


class Lookahead:
    """Every few steps pull the weights towards a slow EMA of themselves; the EMA is the final model."""

    every = 5

    def __init__(self, net: nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, net: nn.Module, decay: float) -> None:
        for k, v in net.state_dict().items():
            if k in self.ema:
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])


def lookahead_decay(step: int, total: int) -> float:
    return 0.95**5 * (step / total) ** 3


class RunState:
    """A run's bookkeeping beside the loop: where it stands (epochs done, the step horizon, its `costs`: the
    low-resolution phase and which epochs are validated), its history and best epoch; saved to `checkpoint_dir`
    after every epoch and restored from it on resume."""

    def __init__(
        self,
        config: TrainConfig,
        model: InferenceModel,
        optimizers: list[torch.optim.Optimizer],
        lookahead: Lookahead | None,
        steps_per_epoch: int,
        costs: StepCosts,
        checkpoint_dir: Path | None,
        extra: dict[str, Any],
    ) -> None:
        self.config, self.model, self.optimizers, self.lookahead = config, model, optimizers, lookahead
        self.steps_per_epoch, self.costs = steps_per_epoch, costs
        self.checkpoint_dir, self.extra = checkpoint_dir, dict(extra)
        self.total_steps = total_steps(config, steps_per_epoch)
        self.epoch = 0  # epochs finished
        self.resumed_from_epoch = 0
        self.history: list[EpochStats] = []
        self.best: dict[str, Any] = {"epoch": 0, "accuracy": -1.0, "state": None}

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def input_size(self, step: int) -> int:
        """The side in px that `step` trains at; the first step at full size freezes the low-resolution phase
        (`costs.low_res_until`), so that a horizon re-sized later does not send the run back."""
        if step < self.costs.low_res_steps(self.total_steps):
            return self.config.low_res_size
        if self.costs.low_res_until is None:
            self.costs = dataclasses.replace(self.costs, low_res_until=step)
        return 32

    def resume(self, logger: logging.Logger) -> None:
        """Continue after the checkpoint's epoch, if `checkpoint_dir` holds one of this config."""
        state = read_checkpoint(self.checkpoint_dir)
        if state is None:
            return
        if state["config"] != self.config.hyperparameters():
            raise ValueError(f"checkpoint {self.checkpoint_dir}: made with a different config; refusing to resume")
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        if self.lookahead is not None:
            device = next(self.model.parameters()).device
            self.lookahead.ema = {k: v.to(device) for k, v in state["lookahead"].items()}
        self.history = [EpochStats(**h) for h in state["history"]]
        self.best = state["best"]
        self.epoch = self.resumed_from_epoch = state["epoch"]
        self.total_steps = state.get("total_steps", self.total_steps)
        self.costs = dataclasses.replace(self.costs, low_res_until=state.get("low_res_until"))
        self.extra = {**state.get("extra", {}), **self.extra}
        logger.info(f"resuming from checkpoint {self.checkpoint_dir} after epoch {self.epoch}/{self.epochs}")

    def stats(
        self, meter: _Meter, val: dict[str, float] | None, train_seconds: float, epoch_seconds: float
    ) -> EpochStats:
        """The epoch just trained, in figures."""
        end = min((self.epoch + 1) * self.steps_per_epoch, self.total_steps)
        return EpochStats(
            epoch=self.epoch + 1,
            epochs=self.epochs,
            train_loss=meter.loss_sum / max(meter.seen, 1),
            train_accuracy=meter.correct / max(meter.seen, 1),
            val_loss=val["loss"] if val else None,
            val_accuracy=val["accuracy"] if val else None,
            lr=self.config.lr * lr_factor(self.config, end, self.total_steps),
            images_per_second=meter.seen / max(train_seconds, 1e-9),
            train_seconds=train_seconds,
            epoch_seconds=epoch_seconds,
            eta_seconds=epoch_seconds * (self.epochs - self.epoch - 1),
        )

    def end_epoch(
        self,
        stats: EpochStats,
        meter: _Meter,
        budget: TimeBudget | None,
        eval_s: float,
        logger: logging.Logger,
    ) -> None:
        """Record the epoch, re-size to the budget (`eval_s`: the last validation pass's time, 0 before the
        first), keep the best weights, write the checkpoint."""
        val = "not validated (low resolution)"
        if stats.val_accuracy is not None:
            val = f"val loss {stats.val_loss:.4f} acc {stats.val_accuracy:.4f}"
        logger.info(
            f"epoch {stats.epoch}/{stats.epochs}: train loss {stats.train_loss:.4f} acc {stats.train_accuracy:.4f}"
            f" | {val} | {stats.images_per_second:.0f} img/s | {stats.epoch_seconds:.1f}s, ETA {stats.eta_seconds:.0f}s"
        )
        self.history.append(stats)
        done = (self.epoch + 1) * self.steps_per_epoch
        if budget is not None and done < self.total_steps:
            first = self.epoch * self.steps_per_epoch
            ran = self.costs.span(first, first + meter.seen // self.config.batch_size, self.total_steps)
            step_s = stats.train_seconds / max(ran, 1)  # per full-size step
            self.total_steps = budget.total_steps(done, step_s, eval_s, self.steps_per_epoch, self.costs)
            logger.info(
                f"time budget: {budget.left():.0f}s left, re-sized to {self.total_steps} steps ({self.epochs} epochs)"
            )
        if stats.val_accuracy is not None and stats.val_accuracy > self.best["accuracy"]:
            state = _cpu_state(self.model)
            self.best = {"epoch": stats.epoch, "accuracy": stats.val_accuracy, "loss": stats.val_loss, "state": state}
        self.epoch += 1
        if self.checkpoint_dir is not None:
            _write_checkpoint(
                self.checkpoint_dir,
                {
                    "config": self.config.hyperparameters(),
                    "epoch": self.epoch,
                    "total_steps": self.total_steps,
                    "low_res_until": self.costs.low_res_until,
                    "model": self.model.state_dict(),
                    "optimizers": [opt.state_dict() for opt in self.optimizers],
                    "lookahead": self.lookahead.ema if self.lookahead else None,
                    "history": [dataclasses.asdict(h) for h in self.history],
                    "best": self.best,
                    "extra": self.extra,
                },
            )

    def result(self, data: TrainData, precision: str, select: Literal["best", "last"]) -> TrainResult:
        """The selected epoch's weights in a fresh fp32 CPU model, with the figures of that epoch's validation pass
        (a second pass, in fp32, took ~3% of a short budget to tell the same)."""
        config = self.config
        net = build_model(config.architecture, config.widths)
        final = InferenceModel(net, data.mean, data.std, flip_tta=config.flip_tta)
        use_best = select == "best" and self.best["state"] is not None
        final.load_state_dict(self.best["state"] if use_best else _cpu_state(self.model))
        final.eval()
        if use_best:
            accuracy, loss = self.best["accuracy"], self.best.get("loss")
        else:
            accuracy, loss = self.history[-1].val_accuracy, self.history[-1].val_loss
        if accuracy is None or loss is None:  # the checkpoint of an older version kept no loss
            validation = evaluate(final, data.val_images, data.val_labels, config.eval_batch_size, "fp32")
        else:
            validation = {"accuracy": accuracy, "loss": loss, "count": float(len(data.val_labels))}
        return TrainResult(
            model=final,
            history=self.history,
            best_epoch=int(self.best["epoch"]) if use_best else self.epochs,
            validation=validation,
            resumed_from_epoch=self.resumed_from_epoch,
            train_seconds=sum(h.epoch_seconds for h in self.history),
            precision=precision,
            extra=self.extra,
            steps=self.total_steps,
        )


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    full = steps_per_epoch * config.epochs
    return min(config.max_steps, full) if config.max_steps else full


class _Progress:
    """A log line at least every `every` seconds: step, images/s over the window, ETA of the epoch and run."""

    def __init__(self, logger: logging.Logger, every: float, run: RunState) -> None:
        self.logger, self.every, self.run = logger, every, run
        self.last_time, self.last_step, self.eval_seconds = time.perf_counter(), 0, 0.0

    def step(self, i: int, step: int, batch: int, loss: float) -> float | None:
        """Logs when `every` seconds have passed; returns that window's speed in full-size steps/s (low-resolution
        ones priced by the run's costs), None when it did not log."""
        now = time.perf_counter()
        if now - self.last_time < self.every:
            return None
        run, seconds, total, costs = self.run, now - self.last_time, self.run.total_steps, self.run.costs
        rate = costs.span(self.last_step, step + 1, total) / seconds
        epoch_end = min((run.epoch + 1) * run.steps_per_epoch, total)
        evals_left = costs.validation_passes(step, total, run.steps_per_epoch)  # from this epoch's on
        epoch_eta = costs.span(step + 1, epoch_end, total) / rate
        epoch_eta += self.eval_seconds if costs.validates(run.epoch, total, run.steps_per_epoch) else 0.0
        run_eta = costs.span(step + 1, total, total) / rate + evals_left * self.eval_seconds
        self.logger.info(
            f"epoch {run.epoch + 1}/{run.epochs} step {i + 1}/{epoch_end - run.epoch * run.steps_per_epoch}"
            f" (run {step + 1}/{total}): loss {loss:.4f}, {(step + 1 - self.last_step) * batch / seconds:.0f}"
            f" img/s, epoch ETA {epoch_eta:.0f}s, run ETA {run_eta:.0f}s"
        )
        self.last_time, self.last_step = now, step + 1
        return rate

    def leave_out(self, seconds: float) -> None:
        """Time spent outside training steps (the epoch's validation pass): not part of the next window's
        speed, which the budget re-sizes by (counted in, it planned too few steps and the run ended early)."""
        self.last_time += seconds


def read_checkpoint(checkpoint_dir: Path | None) -> dict[str, Any] | None:
    """The last epoch's state, or None when this configuration never finished an epoch."""
    if checkpoint_dir is None or not (checkpoint_dir / CHECKPOINT_NAME).exists():
        return None
    return torch.load(checkpoint_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=False)


def _write_checkpoint(checkpoint_dir: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(checkpoint_dir / CHECKPOINT_NAME) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
