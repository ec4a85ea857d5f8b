"""A training time budget: measure this CPU's speed on the real model and data, then size the run to fit."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.platform.env_info import cpu_info
from mlsd_assets.core.training.models import AirbenchNet, InferenceModel, forward_flops
from mlsd_assets.core.training.recipes import TrainConfig
from mlsd_assets.core.training.steps import (
    conv_weight_grad,
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
    from mlsd_assets.core.training.train import TrainData

BUDGET_RESERVE = 0.03  # of a time budget, left for what the estimates miss (copies, a noisy neighbour)
# A budget that fits this many epochs of a wider net (`size_to_budget(wider=...)`: the `long` recipe, airbench94's
# widths) trains it instead: the `long` recipe's own length, at which it reached 90.4-90.5% (bf16) and 90.36% (fp32,
# Ice Lake) where the quarter-width net stayed at 89.4-89.8% after 30 minutes (README, "First-run figures").
WIDER_MIN_EPOCHS = 8
# The wider net is timed only where its FLOPs say this fraction of those epochs may fit: wide convolutions run
# nearer the CPU's peak (an Ice Lake: 3.0x the narrow net's step time for 3.6x its FLOPs), so FLOPs guess low.
WIDER_PROBE_FRACTION = 0.75
PROBE_EPOCHS = 1_000_000  # the probe draws its batches from epochs this far on


@dataclass(frozen=True)
class Throughput:
    """What the probe measured: training and validation images/s on this CPU, in this precision."""

    train_images_per_second: float
    eval_images_per_second: float
    seconds: float  # the probe's own wall time, part of the budget
    precision: str
    threads: int
    conv_weight_grad: str  # "matmul" or "onednn" (steps.conv_weight_grad)
    cpu_model: str
    cpu_flags: str
    low_res_cost: float = 1.0  # a progressive-resizing step's time / a full-size one's (1.0: no such phase)
    whiten_bias_cost: float = 1.0  # a step training the whitening bias / one with it frozen (1.0: never trained)
    trained_steps: int = 0  # the probe's steps, which training continues from (WarmStart)

    def record(self) -> dict[str, Any]:
        return {f"probe.{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class StepCosts:
    """What a run's steps cost in full-size steps, and which epochs it validates: the one rule that both the
    training loop and the budget's estimates follow. With progressive resizing the first `low_res_fraction` of
    a run's steps are cheaper (`low_res_cost` each), so the steps that fit a budget depend on the run's length,
    and an epoch that ends at low resolution is not validated unless `validate_every_epoch`. Once training
    reaches full size, `low_res_until` freezes that step: a horizon re-sized later neither sends the run back
    to low resolution nor changes which epochs are validated. The first `bias_steps` (airbench's whitening
    bias trains for its first epochs) cost `bias_cost` times their size's price: that bias's gradient needs the
    next conv's input gradient at full size (~1.4x a step's time on an Ice Lake)."""

    low_res_fraction: float = 0.0
    low_res_cost: float = 1.0
    validate_every_epoch: bool = False
    low_res_until: int | None = None
    bias_steps: int = 0
    bias_cost: float = 1.0

    def low_res_steps(self, total: int) -> int:
        """How many of the first steps of a run `total` steps long are (or were) at low resolution: never the
        last one, the model is served at 32 px."""
        if self.low_res_until is not None:
            return self.low_res_until
        return min(math.ceil(self.low_res_fraction * total), max(total - 1, 0))

    def span(self, start: int, stop: int, total: int) -> float:
        """Steps `start`..`stop - 1` of a run `total` steps long, in full-size step equivalents."""

        def within(lo: int, hi: int) -> int:  # how many of steps start..stop-1 are in lo..hi-1
            return max(0, min(stop, hi) - max(start, lo))

        low_end = self.low_res_steps(total)
        bias_low, bias_full = within(0, min(low_end, self.bias_steps)), within(low_end, self.bias_steps)
        plain = within(0, low_end) * self.low_res_cost + within(low_end, stop)
        return plain + (self.bias_cost - 1) * (bias_low * self.low_res_cost + bias_full)

    def validates(self, epoch: int, total: int, steps_per_epoch: int) -> bool:
        """Whether `epoch` (0-based) of a run `total` steps long is validated: one that ends at full size."""
        low = 0 if self.validate_every_epoch else self.low_res_steps(total)
        return min((epoch + 1) * steps_per_epoch, total) > low

    def validation_passes(self, start: int, total: int, steps_per_epoch: int) -> int:
        """Validation passes still to come in a run `total` steps long, from the epoch of step `start` on (the
        last epoch's is the final figure: no pass after it)."""
        epochs = range(start // steps_per_epoch, math.ceil(total / steps_per_epoch))
        return sum(self.validates(e, total, steps_per_epoch) for e in epochs)


@dataclass(frozen=True)
class BudgetPlan:
    """How many steps (and epochs, the last one possibly partial) fit in `budget_seconds`."""

    budget_seconds: float
    steps: int
    steps_per_epoch: int
    epochs: int
    expected_seconds: float  # probe + training + validation passes, as estimated
    decision: str = ""  # with a wider net on offer: which one trains, and why

    def record(self) -> dict[str, Any]:
        return {f"budget.{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclass
class WarmStart:
    """The probe's model and optimizers after its real training steps, which the run continues from (its lr
    schedule then starts at step 0): the probe's steps train the model instead of being thrown away. On 2 cores
    they were 5 steps of 2,000 images in 5-26 s, 1-5.5% of an 8-minute budget (README, Benchmarks)."""

    model: InferenceModel
    optimizers: list[torch.optim.Optimizer]
    steps: int
    config: TrainConfig  # the recipe it was made with (its length aside)

    def fits(self, config: TrainConfig) -> bool:
        """Whether `config` trains this model: the same recipe, whatever its length."""
        length = {"epochs": 1, "max_steps": 0}
        return dataclasses.replace(self.config, **length) == dataclasses.replace(config, **length)


def probe_training(
    config: TrainConfig,
    data: TrainData,
    logger: logging.Logger,
    steps: int = 1,
    device: torch.device | None = None,
    max_seconds: float = 15.0,
) -> tuple[Throughput, WarmStart]:
    """Time `steps` real training steps at 32 px (fewer once `max_seconds` have passed; after one warm-up step)
    on the run's model, and one fewer (at least one) of each kind of step the run starts with: at its low
    resolution, and with the whitening bias trained, then frozen; and one validation batch. The loader,
    precision, threads and memory layout are the ones training will use, and so is the model: the steps are
    real ones at the schedule's first lr, handed to training as a `WarmStart`. One timed step per kind is the
    default: training re-sizes its horizon from its own speed at the first progress line, so a longer probe
    bought little (on an Ice Lake, probes one after another in one process: 20-23 s with three timed steps,
    11-12 s with one; 16 s for command 1's one, which also sets up oneDNN)."""
    start = time.perf_counter()
    device = device or pick_device()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = prepare_model(config, data.train_images, data.mean, data.std, device, precision)
    optimizers = make_optimizers(model.net, config)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    batches = train_batches(config, data.train_images, data.train_labels)
    set_lr(optimizers, lr_factor(config, 0, max(len(batches), 1) * config.epochs))
    model.train()
    trained = 0

    def images_per_second(size: int, steps: int, warm: bool = True) -> float:
        nonlocal trained
        images, timed_from = 0, time.perf_counter()
        for n in range(steps + warm):
            # the first batch of an epoch the run never reaches: random images, none of them the run's own first
            x, y = next(iter(on_device(batches.epoch(PROBE_EPOCHS + trained), device)))
            if warm and n == 1:  # the first step warms caches and oneDNN primitives (per size): not timed
                timed_from = time.perf_counter()
            train_step(model, optimizers, loss_fn, x, y, precision, size)
            trained += 1
            images += len(y) if n or not warm else 0
            if images and time.perf_counter() - timed_from >= max_seconds:
                break  # a slow machine: one timed step is enough, the budget is better spent training
        return images / (time.perf_counter() - timed_from)

    # The prices of the run's three kinds of step: its first (whitening bias trained, at low resolution when
    # the run starts there), the same size with the bias frozen, and a full-size one (bias frozen, as after
    # the first epochs). One fewer timed step where two sizes are timed.
    low_res = config.low_res_fraction > 0
    first_size = config.low_res_size if low_res else 32
    bias = isinstance(model.net, AirbenchNet) and config.whiten_bias_epochs > 0
    bias_ips = images_per_second(first_size, max(1, steps - 1)) if bias else 1.0
    if bias:
        model.net.whiten.bias.requires_grad_(False)
    frozen_ips = images_per_second(first_size, max(1, steps - 1) if low_res else steps, warm=not bias)
    train_ips = images_per_second(32, steps) if low_res else frozen_ips
    low_res_cost = train_ips / frozen_ips
    whiten_bias_cost = frozen_ips / bias_ips if bias else 1.0
    sample = data.val_images[: min(len(data.val_images), max(config.eval_batch_size, 1))]
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
        conv_weight_grad=conv_weight_grad(config.conv_weight_grad, precision, device),
        cpu_model=cpu["cpu.model"],
        cpu_flags=cpu["cpu.flags"],
        low_res_cost=low_res_cost,
        whiten_bias_cost=whiten_bias_cost,
        trained_steps=trained,
    )
    prices = [f"{low_res_cost:.2f}x the time at {config.low_res_size} px"] if low_res else []
    prices += [f"{whiten_bias_cost:.2f}x while the whitening bias trains"] if bias else []
    priced = f" ({', '.join(prices)})" if prices else ""
    logger.info(
        f"throughput probe: {train_ips:.0f} train img/s{priced}, {eval_ips:.0f} validation img/s ({precision},"
        f" {result.threads} threads, {result.conv_weight_grad} conv weight gradient, {result.cpu_model};"
        f" {cpu['cpu.flags']}) in {result.seconds:.1f}s; its {trained} steps are the run's first"
    )
    return result, WarmStart(model, optimizers, trained, config)


def plan_budget(
    budget_seconds: float,
    throughput: Throughput,
    train_count: int,
    val_count: int,
    batch_size: int,
    low_res_fraction: float = 0.0,
    validate_every_epoch: bool = False,
    whiten_bias_epochs: int = 0,
) -> BudgetPlan:
    """The most steps whose estimated time (probe already spent + steps, each at its kind's price + one
    validation pass per epoch that ends at full size) fits the budget, less a small reserve. At least one step.
    Training re-sizes this after every epoch from the speed it then measures (`train(budget=TimeBudget(...))`)."""
    if budget_seconds <= 0:
        raise ValueError(f"time budget: must be > 0 seconds, got {budget_seconds}")
    steps_per_epoch = max(1, train_count // batch_size)  # as TrainBatches(drop_last=True) counts them
    step_s = batch_size / throughput.train_images_per_second
    eval_s = val_count / throughput.eval_images_per_second
    available = budget_seconds * (1 - BUDGET_RESERVE) - throughput.seconds
    bias_steps = whiten_bias_epochs * steps_per_epoch
    costs = StepCosts(
        low_res_fraction,
        throughput.low_res_cost,
        validate_every_epoch,
        bias_steps=bias_steps,
        bias_cost=throughput.whiten_bias_cost,
    )
    steps = steps_that_fit(available, step_s, eval_s, steps_per_epoch, costs=costs)
    epochs = math.ceil(steps / steps_per_epoch)
    return BudgetPlan(
        budget_seconds=budget_seconds,
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        expected_seconds=throughput.seconds
        + costs.span(0, steps, steps) * step_s
        + costs.validation_passes(0, steps, steps_per_epoch) * eval_s,
    )


def budgeted(config: TrainConfig, plan: BudgetPlan) -> TrainConfig:
    """The config that trains exactly the planned steps (the lr schedule's horizon is `plan.steps`)."""
    return dataclasses.replace(config, epochs=plan.epochs, max_steps=plan.steps)


def size_to_budget(
    config: TrainConfig, data: TrainData, seconds: float, logger: logging.Logger, wider: TrainConfig | None = None
) -> tuple[TrainConfig, TimeBudget, Throughput, BudgetPlan]:
    """Probe, plan and the deadline, as `cifar10_model` trains: the config sized to `seconds`, and the budget
    (counting from this call, so the probe is part of it) for `train(budget=...)` to keep re-sizing to. With
    `wider` (a wider net's recipe) on offer, the budget trains that one where WIDER_MIN_EPOCHS of its epochs fit
    (timed by a second probe, run only where its FLOPs say it may fit)."""
    budget = TimeBudget(seconds)
    probe, warm = probe_training(config, data, logger)
    plan = _plan(config, data, seconds, probe)
    if wider is not None:
        config, probe, plan, decision, warm = _narrow_or_wider(config, wider, data, budget, (probe, warm), plan, logger)
        logger.info(f"time budget: {decision}")
        plan = dataclasses.replace(plan, decision=decision)
    budget.warm = warm
    budget.eval_seconds_hint = len(data.val_labels) / probe.eval_images_per_second
    budget.low_res_cost, budget.whiten_bias_cost = probe.low_res_cost, probe.whiten_bias_cost
    logger.info(
        f"time budget {seconds / 60:.1f} min: {plan.steps} steps ({plan.steps / plan.steps_per_epoch:.2f}"
        f" epochs), estimated {plan.expected_seconds:.0f}s"
    )
    return budgeted(config, plan), budget, probe, plan


def _plan(config: TrainConfig, data: TrainData, seconds: float, probe: Throughput) -> BudgetPlan:
    train_count, val_count = len(data.train_labels), len(data.val_labels)
    return plan_budget(
        seconds,
        probe,
        train_count,
        val_count,
        config.batch_size,
        config.low_res_fraction,
        whiten_bias_epochs=config.whiten_bias_epochs,
    )


def _narrow_or_wider(
    config: TrainConfig,
    wider: TrainConfig,
    data: TrainData,
    budget: TimeBudget,
    probed: tuple[Throughput, WarmStart],
    plan: BudgetPlan,
    logger: logging.Logger,
) -> tuple[TrainConfig, Throughput, BudgetPlan, str, WarmStart]:
    """`wider` with its probe, plan and probe's model where WIDER_MIN_EPOCHS of its epochs fit, else `config`'s
    (re-planned for the time the wider probe took, if it ran); and the decision in words: which one trains, and
    why."""
    probe, warm = probed
    ratio = forward_flops(wider.architecture, wider.widths) / forward_flops(config.architecture, config.widths)
    guess_ips = probe.train_images_per_second / ratio  # at full size, as the wider recipe trains
    guess = dataclasses.replace(
        probe,
        train_images_per_second=guess_ips,
        eval_images_per_second=probe.eval_images_per_second / ratio,
        seconds=probe.seconds + 3 * wider.batch_size / guess_ips,  # its probe: about three of its steps
        low_res_cost=1.0,
    )
    guessed = _plan(wider, data, budget.seconds, guess)
    need = WIDER_MIN_EPOCHS * guessed.steps_per_epoch
    if guessed.steps < WIDER_PROBE_FRACTION * need:
        epochs = guessed.steps / guessed.steps_per_epoch
        decision = (
            f"narrow net: about {epochs:.1f} epochs of the {ratio:.1f}x wider one would fit by its FLOPs (it trains"
            f" from {WIDER_MIN_EPOCHS}; not timed)"
        )
        return config, probe, plan, decision, warm
    wide, wide_warm = probe_training(wider, data, logger)
    spent = time.perf_counter() - budget.started
    wide = dataclasses.replace(wide, seconds=spent)  # both probes came out of the budget
    wide_plan = _plan(wider, data, budget.seconds, wide)
    epochs = wide_plan.steps / wide_plan.steps_per_epoch
    figures = f"{wide.train_images_per_second:.0f} img/s against {probe.train_images_per_second:.0f}"
    if wide_plan.steps >= need:
        decision = f"wider net {wider.widths}: {epochs:.1f} epochs fit (>= {WIDER_MIN_EPOCHS}; {figures})"
        return wider, wide, wide_plan, decision, wide_warm
    decision = f"narrow net: {epochs:.1f} epochs of the wider {wider.widths} fit (< {WIDER_MIN_EPOCHS}; {figures})"
    probe = dataclasses.replace(probe, seconds=spent)
    return config, probe, _plan(config, data, budget.seconds, probe), decision, warm


def steps_that_fit(
    seconds: float,
    step_seconds: float,
    eval_seconds: float,
    steps_per_epoch: int,
    minimum: int = 1,
    *,
    done: int = 0,
    costs: StepCosts = StepCosts(),
) -> int:
    """The most steps (at least `minimum`) after the `done` ones whose training (`step_seconds` per full-size
    step) and one validation pass per epoch that ends at full size take at most `seconds`."""

    def cost(steps: int) -> float:
        total = done + steps
        train_s = costs.span(done, total, total) * step_seconds
        return train_s + costs.validation_passes(done, total, steps_per_epoch) * eval_seconds

    steps = max(minimum, int((seconds - eval_seconds) / (step_seconds + eval_seconds / steps_per_epoch)))
    while steps > minimum and cost(steps) > seconds:
        steps -= 1
    while cost(steps + 1) <= seconds:
        steps += 1
    return steps


@dataclass
class TimeBudget:
    """A deadline for a running training: `seconds` from `started` (by default, when this is made), less the
    reserve; and the prices the probe measured, which training starts from: `eval_seconds_hint` stands for a
    validation pass until training has timed one, `low_res_cost` is a low-resolution step's price,
    `whiten_bias_cost` the factor on a step that trains the whitening bias, and `warm` the probe's model."""

    seconds: float
    eval_seconds_hint: float = 0.0
    low_res_cost: float = 1.0
    whiten_bias_cost: float = 1.0
    started: float = field(default_factory=time.perf_counter)
    warm: WarmStart | None = None  # the probe's trained model, which training continues from

    def left(self) -> float:
        return self.seconds * (1 - BUDGET_RESERVE) - (time.perf_counter() - self.started)

    def total_steps(
        self, done: int, step_seconds: float, eval_seconds: float, steps_per_epoch: int, costs: StepCosts
    ) -> int:
        """`done` steps plus as many as still fit, at the speeds just measured (`step_seconds` per full-size
        step, the rest priced by the run's `costs`): none once the budget is spent (a floor of one more step
        would extend a run forever when every step outlasts a progress window)."""
        eval_s = eval_seconds or self.eval_seconds_hint
        left = self.left()
        return done + steps_that_fit(left, step_seconds, eval_s, steps_per_epoch, 0, done=done, costs=costs)
