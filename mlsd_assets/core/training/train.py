"""Train and evaluate on CPU (GPU when present), checkpointing every epoch so an interrupted run resumes."""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.platform.allocator import active_allocator
from mlsd_assets.core.platform.atomic import atomic_path
from mlsd_assets.core.training.loader import Augmentation, TrainBatches, eval_batches
from mlsd_assets.core.training.models import ARCHITECTURES, AirbenchNet, InferenceModel, build_model
from mlsd_assets.core.training.muon import Muon

Precision = Literal["auto", "bf16", "fp32"]
CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters in plain PyTorch terms (mean-reduced loss, optimizer lr as given).

    `bias_lr_scale` multiplies the lr of 1-d parameters (norm/whitening biases) and divides their weight
    decay, airbench's trick for fast-moving biases. `schedule="triangle"` ramps lr from `lr_start` to 1 at
    `warmup_fraction` of all steps, then down to `lr_end` (fractions of `lr`); `"linear"` decays from 1 to 0.
    `optimizer="muon"` trains the conv filters with Muon (`muon_lr`, `muon_momentum`) and everything else
    with SGD as configured by `lr`, `momentum`, `weight_decay`, `bias_lr_scale`.
    """

    architecture: str = "airbench"
    # A quarter of airbench94's (64, 256, 256) FLOPs: on 2 CPU cores the full widths cost ~3x the time per
    # image, and trained for the same minutes they were no more accurate (benchmarks/, README).
    widths: tuple[int, int, int] = (32, 128, 128)
    epochs: int = 10
    # Stop after this many optimizer steps in all (0: every epoch in full); the lr schedule ends here. A time
    # budget (mlsd_assets.core.training.budget) sets it, so the last epoch may be partial.
    max_steps: int = 0
    batch_size: int = 1024
    optimizer: Literal["sgd", "muon", "adam", "adamw"] = "sgd"
    lr: float = 1.5
    momentum: float = 0.85
    nesterov: bool = True
    weight_decay: float = 1.33e-3
    bias_lr_scale: float = 64.0
    label_smoothing: float = 0.2
    schedule: Literal["triangle", "linear", "constant"] = "triangle"
    lr_start: float = 0.2
    lr_end: float = 0.07
    warmup_fraction: float = 0.23
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    whiten_bias_epochs: int = 3
    lookahead: bool = True
    crop_pad: int = 2
    flip: bool = True
    flip_tta: bool = True
    precision: Precision = "auto"
    channels_last: bool = True
    seed: int = 0
    threads: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        choices = {
            "architecture": ARCHITECTURES,
            "optimizer": ("sgd", "muon", "adam", "adamw"),
            "precision": ("auto", "bf16", "fp32"),
            "schedule": ("triangle", "linear", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps: must be >= 0 (0 = all epochs in full), got {self.max_steps}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths: expected three positive channel counts, got {self.widths}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")

    def hyperparameters(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


# Named recipes: TrainConfig fields that differ from its defaults (airbench94's SGD recipe, kept as "sgd").
# "fast" (the default) and "long" train the conv filters with Muon, after Keller Jordan's airbench94_muon;
# "long" on airbench94's full widths. "vgg11" is the reference recipe (Adam 1e-3, batch 32, one epoch) on
# VGG-11 with batch norm so that it learns. Figures for each: README, Benchmarks.
_MUON: dict[str, Any] = {
    "batch_size": 2000,
    "optimizer": "muon",
    # SGD part (head, biases) in mean-loss units: airbench94_muon's 0.67 (head, logits / 256) and 0.053
    # (biases) on a summed loss of 2000 images, with 4e-3 decay per step, as lr * scale and decay / lr
    "lr": 1.65,
    "weight_decay": 2.42e-3,
    "schedule": "linear",
    "lookahead": False,
}
RECIPES: dict[str, dict[str, Any]] = {
    "fast": dict(_MUON),
    "long": {**_MUON, "widths": (64, 256, 256), "epochs": 8},
    "sgd": {},
    "vgg11": {
        "architecture": "vgg11",
        "epochs": 1,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "bias_lr_scale": 1.0,
        "label_smoothing": 0.0,
        "schedule": "constant",
        "lookahead": False,
        "flip_tta": False,
        "crop_pad": 4,
        "whiten_bias_epochs": 0,
    },
}


def recipe_config(recipe: str, **overrides: Any) -> TrainConfig:
    """A named recipe with `overrides` applied (unknown field names raise TypeError)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe: unknown {recipe!r}; choose one of {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[recipe], **overrides})


def default_config(architecture: str, **overrides: Any) -> TrainConfig:
    """The tuned default recipe of an architecture, with `overrides` applied."""
    if architecture not in ARCHITECTURES:
        build_model(architecture)  # raises the clear "unknown architecture" error
    return recipe_config("vgg11" if architecture == "vgg11" else "fast", **overrides)


@dataclass
class EpochStats:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
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
        return {n: float(getattr(self, n)) for n in names}


@dataclass
class TrainResult:
    model: InferenceModel  # fp32, eval mode, on CPU: the selected (best-validation) epoch's weights
    history: list[EpochStats]
    best_epoch: int
    validation: dict[str, float]
    resumed_from_epoch: int
    train_seconds: float
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)
    steps: int = 0  # optimizer steps in all (a time budget may re-size them while training)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """bf16 autocast only where it is fast: CUDA with bf16, or CPUs with AMX/AVX512-BF16; fp32 else."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


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


def _optimizers(net: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad or n == "whiten.bias"]
    to_muon = config.optimizer == "muon"  # conv filters (4-d) go to Muon, everything else to SGD
    biases = [p for _, p in trainable if p.ndim <= 1]
    filters = [p for _, p in trainable if to_muon and p.ndim == 4]
    weights = [p for _, p in trainable if p.ndim > 1 and not (to_muon and p.ndim == 4)]
    scale = config.bias_lr_scale
    groups = [
        {"params": weights, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": biases, "lr": config.lr * scale, "weight_decay": config.weight_decay / scale},
    ]
    optimizers: list[torch.optim.Optimizer] = []
    kwargs: dict[str, Any] = {"foreach": True}
    if config.optimizer in ("sgd", "muon"):
        optimizers.append(torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.nesterov, **kwargs))
    elif config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        # fused kernels exist on CPU and CUDA for Adam/AdamW: one pass over all parameters per step
        optimizers.append(cls(groups, fused=True))
    else:
        raise ValueError(f"optimizer: unknown {config.optimizer!r}; choose sgd, muon, adam or adamw")
    if filters:
        optimizers.append(Muon(filters, lr=config.muon_lr, momentum=config.muon_momentum, nesterov=config.nesterov))
    for opt in optimizers:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return optimizers


def prepare_model(
    config: TrainConfig,
    train_images: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
) -> InferenceModel:
    """A fresh model as training starts it: whitening fitted on the first train images, memory layout set."""
    model = InferenceModel(build_model(config.architecture, config.widths), mean, std, flip_tta=config.flip_tta).to(
        device
    )
    if isinstance(model.net, AirbenchNet):
        sample = torch.from_numpy(train_images[: min(len(train_images), 5000)]).to(device)
        model.net.init_whitening(model.preprocess(sample))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_batches(config: TrainConfig, images: np.ndarray, labels: np.ndarray) -> TrainBatches:
    augmentation = Augmentation(pad=config.crop_pad, flip=config.flip)
    return TrainBatches(images, labels, config.batch_size, augmentation, seed=config.seed, drop_last=True)


def train_step(
    model: InferenceModel,
    optimizers: list[torch.optim.Optimizer],
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns the (detached) loss and logits."""
    with _autocast(precision, x.device):
        logits = model.net(model.preprocess(x))
        loss = loss_fn(logits.float(), y)
    model.net.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss.detach(), logits.detach()


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    full = steps_per_epoch * config.epochs
    return min(config.max_steps, full) if config.max_steps else full


BUDGET_RESERVE = 0.03  # of a time budget, left for what the estimates miss (copies, a noisy neighbour)


def steps_that_fit(seconds: float, step_seconds: float, eval_seconds: float, steps_per_epoch: int) -> int:
    """The most steps (at least one) whose training, one validation pass per started epoch and the final
    evaluation take at most `seconds`."""

    def cost(steps: int) -> float:
        return steps * step_seconds + (math.ceil(steps / steps_per_epoch) + 1) * eval_seconds

    steps = max(1, int((seconds - eval_seconds) / (step_seconds + eval_seconds / steps_per_epoch)))
    while steps > 1 and cost(steps) > seconds:
        steps -= 1
    while cost(steps + 1) <= seconds:
        steps += 1
    return steps


class _Progress:
    """A log line at least every `every` seconds: step, images/s over the window, ETA of the epoch and run."""

    def __init__(self, logger: logging.Logger, every: float, total: int, epochs: int) -> None:
        self.logger, self.every, self.total, self.epochs = logger, every, total, epochs
        self.last_time, self.last_step, self.eval_seconds = time.perf_counter(), 0, 0.0

    def step(self, epoch: int, i: int, step: int, steps_per_epoch: int, batch: int, loss: float) -> float | None:
        """Logs when `every` seconds have passed; returns the steps/s of that window (None when it did not)."""
        now = time.perf_counter()
        if now - self.last_time < self.every:
            return None
        rate = (step + 1 - self.last_step) / (now - self.last_time)  # steps/s over this window
        epoch_end = min((epoch + 1) * steps_per_epoch, self.total)
        evals_left = self.epochs - epoch  # this epoch's validation pass and the later ones
        epoch_eta = (epoch_end - step - 1) / rate + self.eval_seconds
        run_eta = (self.total - step - 1) / rate + evals_left * self.eval_seconds
        self.logger.info(
            f"epoch {epoch + 1}/{self.epochs} step {i + 1}/{epoch_end - epoch * steps_per_epoch}"
            f" (run {step + 1}/{self.total}): loss {loss:.4f}, {rate * batch:.0f} img/s,"
            f" epoch ETA {epoch_eta:.0f}s, run ETA {run_eta:.0f}s"
        )
        self.last_time, self.last_step = now, step + 1
        return rate


def _lr_factor(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "linear":
        return 1.0 - step / total
    peak = config.warmup_fraction * total
    return float(np.interp(step, [0, peak, total], [config.lr_start, 1.0, config.lr_end]))


class _Lookahead:
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


def _lookahead_decay(step: int, total: int) -> float:
    return 0.95**5 * (step / total) ** 3


def evaluate(
    model: InferenceModel,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
    precision: str = "fp32",
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Accuracy and loss of the served model (raw pixels in) on one split."""
    device = next(model.parameters()).device
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=label_smoothing)
    target = torch.from_numpy(labels.astype(np.int64))
    correct, loss, start = 0, 0.0, 0
    with torch.no_grad(), _autocast(precision, device):
        for batch in eval_batches(images, batch_size):
            logits = model(batch.to(device)).float().cpu()
            y = target[start : start + len(batch)]
            correct += int((logits.argmax(1) == y).sum())
            loss += float(loss_fn(logits, y))
            start += len(batch)
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss / n, "count": float(len(labels))}


def predict_logits(model: InferenceModel, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """fp32 logits of the served model, the reference that the ONNX export is checked against."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(b).float().numpy() for b in eval_batches(images, batch_size)])


def train(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    config: TrainConfig,
    logger: logging.Logger,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    device: torch.device | None = None,
    select: Literal["best", "last"] = "best",
    progress_every: float = 15.0,
    time_budget_s: float | None = None,
    eval_seconds_hint: float = 0.0,
) -> TrainResult:
    """Train `config.epochs` epochs (continuing from `checkpoint_dir` if it holds a matching run); the epoch
    with the best validation accuracy is returned (`select="last"`: the final one, for benchmarks that pass
    the test set as validation). The asset never passes the test split in here. A progress line is logged at
    least every `progress_every` seconds (while steps finish). With `time_budget_s`, after every epoch the
    remaining steps (and the lr schedule's horizon) are re-sized from the speed just measured (also at every
    progress line, with `eval_seconds_hint` for a validation pass until one has been timed), so that
    training ends within that many seconds of this call even when the machine gets slower or faster."""
    started = time.perf_counter()
    device = device or pick_device()
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
    if len(val_labels) == 0:
        raise ValueError("validation split is empty: model selection needs validation images")

    model = prepare_model(config, train_images, mean, std, device)
    batches = train_batches(config, train_images, train_labels)
    optimizers = _optimizers(model.net, config)
    steps_per_epoch = len(batches)
    total = total_steps(config, steps_per_epoch)
    epochs = math.ceil(total / steps_per_epoch)
    lookahead = _Lookahead(model.net) if config.lookahead else None

    state = read_checkpoint(checkpoint_dir)
    history: list[EpochStats] = []
    best = {"epoch": 0, "accuracy": -1.0, "state": None}
    start_epoch = 0
    extra = dict(checkpoint_extra or {})
    if state is not None:
        if state["config"] != config.hyperparameters():
            raise ValueError(f"checkpoint {checkpoint_dir}: made with a different config; refusing to resume")
        model.load_state_dict(state["model"])
        for opt, opt_state in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        if lookahead is not None:
            lookahead.ema = {k: v.to(device) for k, v in state["lookahead"].items()}
        history = [EpochStats(**h) for h in state["history"]]
        best = state["best"]
        start_epoch = state["epoch"]
        total = state.get("total_steps", total)
        epochs = math.ceil(total / steps_per_epoch)
        extra = {**state.get("extra", {}), **extra}
        logger.info(f"resuming from checkpoint {checkpoint_dir} after epoch {start_epoch}/{epochs}")

    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    seconds = sum(h.epoch_seconds for h in history)
    progress = _Progress(logger, progress_every, total, epochs)
    epoch = start_epoch - 1
    while (epoch := epoch + 1) < epochs:  # a time budget may change `epochs` as training goes
        t0 = time.perf_counter()
        if isinstance(model.net, AirbenchNet):
            model.net.whiten.bias.requires_grad_(epoch < config.whiten_bias_epochs)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(_on(batches.epoch(epoch), device)):
            step = epoch * steps_per_epoch + i
            if step >= total:
                break
            factor = _lr_factor(config, step, total)
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
            loss, logits = train_step(model, optimizers, loss_fn, x, y, precision)
            if lookahead is not None and (step + 1) % _Lookahead.every == 0:
                lookahead.step(model.net, _lookahead_decay(step + 1, total))
            loss_sum += float(loss) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"epoch {epoch + 1} step {i}: loss is not finite (lr {config.lr})")
            rate = progress.step(epoch, i, step, steps_per_epoch, len(y), float(loss))
            if time_budget_s is not None and rate:  # re-size within the epoch too, from the last window's speed
                left = time_budget_s * (1 - BUDGET_RESERVE) - (time.perf_counter() - started)
                eval_s = progress.eval_seconds or eval_seconds_hint
                total = step + 1 + steps_that_fit(left, 1 / rate, eval_s, steps_per_epoch)
                epochs = math.ceil(total / steps_per_epoch)
                progress.total, progress.epochs = total, epochs
        if lookahead is not None and epoch + 1 == epochs:
            lookahead.step(model.net, 1.0)  # finish on the slow (averaged) weights
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, val_images, val_labels, config.eval_batch_size, precision, config.label_smoothing)
        epoch_seconds = time.perf_counter() - t0
        progress.eval_seconds = epoch_seconds - train_seconds
        seconds += epoch_seconds
        stats = EpochStats(
            epoch=epoch + 1,
            epochs=epochs,
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            val_loss=val["loss"],
            val_accuracy=val["accuracy"],
            lr=config.lr * _lr_factor(config, min((epoch + 1) * steps_per_epoch, total), total),
            images_per_second=seen / max(train_seconds, 1e-9),
            train_seconds=train_seconds,
            epoch_seconds=epoch_seconds,
            eta_seconds=epoch_seconds * (epochs - epoch - 1),
        )
        history.append(stats)
        if time_budget_s is not None and (epoch + 1) * steps_per_epoch < total:
            done = (epoch + 1) * steps_per_epoch
            left = time_budget_s * (1 - BUDGET_RESERVE) - (time.perf_counter() - started)
            step_s = train_seconds / max(seen / config.batch_size, 1)
            total = done + steps_that_fit(left, step_s, epoch_seconds - train_seconds, steps_per_epoch)
            epochs = math.ceil(total / steps_per_epoch)
            progress.total, progress.epochs = total, epochs
            logger.info(f"time budget: {left:.0f}s left, re-sized to {total} steps ({epochs} epochs)")
        if stats.val_accuracy > best["accuracy"]:
            best = {"epoch": epoch + 1, "accuracy": stats.val_accuracy, "state": _cpu_state(model)}
        if checkpoint_dir is not None:
            _write_checkpoint(
                checkpoint_dir,
                {
                    "config": config.hyperparameters(),
                    "epoch": epoch + 1,
                    "total_steps": total,
                    "model": model.state_dict(),
                    "optimizers": [opt.state_dict() for opt in optimizers],
                    "lookahead": lookahead.ema if lookahead else None,
                    "history": [dataclasses.asdict(h) for h in history],
                    "best": best,
                    "extra": extra,
                },
            )
        if on_epoch is not None:
            on_epoch(stats)

    final = InferenceModel(build_model(config.architecture, config.widths), mean, std, flip_tta=config.flip_tta)
    use_best = select == "best" and best["state"] is not None
    final.load_state_dict(best["state"] if use_best else _cpu_state(model))
    final.eval()
    validation = evaluate(final, val_images, val_labels, config.eval_batch_size, "fp32")
    return TrainResult(
        model=final,
        history=history,
        best_epoch=int(best["epoch"]) if use_best else epochs,
        validation=validation,
        resumed_from_epoch=start_epoch,
        train_seconds=seconds,
        precision=precision,
        extra=extra,
        steps=total,
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _on(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
