"""An Optuna study over the training recipe: budgeted trials on train, pruned on validation, resumable.

Storage is an Optuna RDB (SQLite by default, PostgreSQL for scale-out, where several runs or hosts may work
on one study at once). A trial records a heartbeat; a trial whose process was killed goes stale after the
grace period, is failed and re-queued with the same params by the next `optimize`, so a resumed study
continues its count and never repeats a finished trial. Selection reads the validation split only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlsd_assets.core.tuning.result import TrialRecord, TuningResult
from mlsd_assets.core.tuning.space import SearchSpace, apply

if TYPE_CHECKING:
    import optuna

    from mlsd_assets.core.data.splits import Cifar10Split
    from mlsd_assets.core.training.budget import Throughput
    from mlsd_assets.core.training.recipes import TrainConfig
    from mlsd_assets.core.training.train import EpochStats, TrainData

FINISHED_ATTR = "finished"  # study user attr: the budget (or trial count) is spent; a re-run returns its best


@dataclass(frozen=True)
class StudySettings:
    """How the study runs. Every field is part of the study's name (`study_name`), so changing one starts a new
    study and leaving all unchanged, on the same data, finds the old one.

    `trial_budget_s`: each trial trains as many steps as fit in this many seconds (the training time budget:
    a throughput probe, then re-sizing after every epoch); `trial_epochs` fixes the length instead. The study
    stops starting trials once the next one no longer fits in `total_budget_s` (time of finished trials,
    summed over every attempt), or after `max_trials` finished ones. `train_images` (0: all) trains trials on a
    fixed random subset of train, so that each trial sees several epochs (reports) even on a slow CPU; the
    tuned model itself trains on all of train. Pruning: asynchronous successive halving over the fraction of
    the trial done (percent of its budget, or epochs), first rung at `first_rung` of a trial."""

    recipe: str = "fast"
    fixed: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields held constant: precision, threads, seed
    trial_budget_s: float | None = 180.0
    trial_epochs: int | None = None
    total_budget_s: float = 1800.0
    max_trials: int | None = None
    train_images: int = 0
    pruner: Literal["successive_halving", "none"] = "successive_halving"
    first_rung: float = 0.25
    reduction_factor: int = 2
    startup_trials: int = 4  # random trials before TPE models the results
    seed: int = 0
    enqueue_baseline: bool = True  # trial 0 is the recipe itself (when inside the space): the bar to beat

    def __post_init__(self) -> None:
        if (self.trial_budget_s is None) == (self.trial_epochs is None):
            raise ValueError("study settings: set exactly one of trial_budget_s and trial_epochs")
        if self.trial_budget_s is not None and self.trial_budget_s <= 0:
            raise ValueError(f"trial_budget_s: must be > 0, got {self.trial_budget_s}")
        if self.trial_epochs is not None and self.trial_epochs < 1:
            raise ValueError(f"trial_epochs: must be >= 1, got {self.trial_epochs}")
        if self.total_budget_s <= 0:
            raise ValueError(f"total_budget_s: must be > 0, got {self.total_budget_s}")
        if not 0 < self.first_rung <= 1 or self.reduction_factor < 2:
            raise ValueError("pruner: first_rung must be in (0, 1] and reduction_factor >= 2")
        if self.pruner not in ("successive_halving", "none"):
            raise ValueError(f"pruner: {self.pruner!r} is not one of successive_halving, none")

    def base_config(self) -> TrainConfig:
        from mlsd_assets.core.training.recipes import recipe_config

        return recipe_config(self.recipe, **dict(self.fixed))

    def identity(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fixed": {k: v for k, v in self.fixed}}


def study_name(space: SearchSpace, settings: StudySettings, dataset_hash: str) -> str:
    """Same data, space and settings -> same name: a re-run finds (and resumes or returns) the same study."""
    payload = json.dumps(
        {"space": space.identity(), "settings": settings.identity(), "dataset": dataset_hash}, sort_keys=True
    )
    return f"cifar10-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def open_study(
    storage_url: str,
    name: str,
    settings: StudySettings,
    heartbeat_interval_s: int = 10,
    grace_period_s: int = 30,
) -> optuna.Study:
    """Create the study or load it (`load_if_exists`); TPE sampler, the configured pruner, heartbeats with
    stale trials re-queued. The sampler's seed moves on with the trial count, so a resumed study draws new
    points rather than replaying the first attempt's."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict[str, Any] = {}
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several runs may write one file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            storage_url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", pruner=_pruner(settings), load_if_exists=True
    )
    study.sampler = optuna.samplers.TPESampler(
        seed=settings.seed + len(study.get_trials(deepcopy=False)), n_startup_trials=settings.startup_trials
    )
    return study


def _pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, round(settings.first_rung * _full_steps(settings))),
        reduction_factor=settings.reduction_factor,
    )


def _full_steps(settings: StudySettings) -> int:
    """A trial's length in report steps: percent of its budget, or epochs."""
    return settings.trial_epochs if settings.trial_epochs is not None else 100


@dataclass(frozen=True)
class TuningData:
    """What trials see: (a subset of) train to learn from, validation to be judged on (never test), and whose
    data it is (the split's content hash names the study)."""

    arrays: TrainData
    dataset_hash: str


def tuning_data(split: Cifar10Split, train_images: int = 0, seed: int = 0) -> TuningData:
    """The split's train (a fixed random subset of `train_images` when > 0) and validation arrays."""
    from mlsd_assets.core.training.train import TrainData

    arrays = TrainData.from_split(split)
    if 0 < train_images < len(arrays.train_labels):
        keep = np.sort(np.random.default_rng(seed).permutation(len(arrays.train_labels))[:train_images])
        arrays = dataclasses.replace(
            arrays, train_images=arrays.train_images[keep], train_labels=arrays.train_labels[keep]
        )
    return TuningData(arrays, split.content_hash)


class TrialHooks:
    """Where a study reports its trials (Dagster logs, MLflow child runs); the defaults do nothing."""

    def started(self, number: int, params: dict[str, Any]) -> None:
        """A trial begins with these params."""

    def epoch(self, number: int, step: int, stats: EpochStats) -> None:
        """A trial reported validation accuracy at `step` (percent of its budget, or its epoch)."""

    def finished(self, trial: optuna.trial.FrozenTrial) -> None:
        """A trial ended: COMPLETE, PRUNED or FAIL (a diverged loss)."""


def spent_seconds(study: optuna.Study, settings: StudySettings) -> float:
    """Time of the study's ended trials over every attempt (each at most its budget: a trial failed as stale
    carries the time until someone noticed)."""
    from optuna.trial import TrialState

    total = 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
            total += min(seconds, settings.trial_budget_s) if settings.trial_budget_s else seconds
    return total


def run_study(
    study: optuna.Study,
    data: TuningData,
    space: SearchSpace,
    settings: StudySettings,
    logger: logging.Logger,
    hooks: TrialHooks | None = None,
) -> TuningResult:
    """Run trials until the total budget (or trial count) is spent, then mark the study finished. A finished
    study runs nothing and returns its stored best (`skipped`); an unfinished one continues where it stopped."""
    import optuna
    from optuna.trial import TrialState

    if study.user_attrs.get(FINISHED_ATTR):
        logger.info(f"study {study.study_name} is finished: its best trial is returned, no trial runs")
        return result_of(study, data.dataset_hash, settings, skipped=True)
    hooks = hooks or TrialHooks()
    base = settings.base_config()
    if settings.enqueue_baseline and not study.get_trials(deepcopy=False):
        baseline = space.params_of(base)
        if baseline is not None:
            study.enqueue_trial(baseline, user_attrs={"baseline": settings.recipe})
    spent = spent_seconds(study, settings)
    needed = settings.trial_budget_s or 0.0
    left = settings.total_budget_s - spent
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    logger.info(
        f"study {study.study_name}: {done} trials ended earlier ({spent:.0f}s of {settings.total_budget_s:.0f}s"
        f" spent), {left:.0f}s left"
    )
    deadline = time.monotonic() + left
    objective = _Objective(data, space, settings, base, logger, hooks, deadline)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        hooks.finished(trial)
        if deadline - time.monotonic() < needed:
            logger.info(f"study {study.study_name}: the next trial would not fit in the total budget: stopping")
            study.stop()

    callbacks = [after_trial]
    if settings.max_trials is not None:
        callbacks.append(
            optuna.study.MaxTrialsCallback(settings.max_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        )
    more = settings.max_trials is None or done < settings.max_trials
    if left >= needed and left > 0 and more:
        study.optimize(objective, timeout=left, callbacks=callbacks, catch=(FloatingPointError,))
    study.set_user_attr(FINISHED_ATTR, True)
    return result_of(study, data.dataset_hash, settings, skipped=False)


class _Objective:
    """One trial: suggest, size to the trial budget, train on train, report validation accuracy per epoch."""

    def __init__(
        self,
        data: TuningData,
        space: SearchSpace,
        settings: StudySettings,
        base: TrainConfig,
        logger: logging.Logger,
        hooks: TrialHooks,
        deadline: float,
    ) -> None:
        self.data, self.space, self.settings, self.base = data, space, settings, base
        self.logger, self.hooks, self.deadline = logger, hooks, deadline
        self.probes: dict[tuple[Any, ...], Throughput] = {}  # per net shape: one probe serves later trials

    def __call__(self, trial: optuna.trial.Trial) -> float:
        import optuna

        from mlsd_assets.core.training.budget import TimeBudget
        from mlsd_assets.core.training.train import train

        params = self.space.suggest(trial)
        self.hooks.started(trial.number, params)
        started = time.monotonic()
        config, budget_s, eval_hint, prices = self._sized(apply(self.base, params), started)
        last_step = 0

        def report(stats: EpochStats) -> None:
            nonlocal last_step
            if budget_s is None:
                step = stats.epoch
            else:
                step = max(last_step + 1, round(100 * (time.monotonic() - started) / self.settings.trial_budget_s))
            last_step = step
            trial.report(stats.val_accuracy, step)
            self.hooks.epoch(trial.number, step, stats)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {stats.val_accuracy:.4f} at step {step}")

        budget = TimeBudget(budget_s - (time.monotonic() - started), eval_hint, *prices) if budget_s else None
        result = train(
            self.data.arrays,
            config,
            self.logger,
            on_epoch=report,
            progress_every=15.0,  # also how often the budget re-sizes the trial from its measured speed
            budget=budget,
            validate_every_epoch=True,  # the pruner compares trials from their first epoch
        )
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("train_seconds", round(result.train_seconds, 1))
        return float(result.validation["accuracy"])

    def _sized(
        self, config: TrainConfig, started: float
    ) -> tuple[TrainConfig, float | None, float, tuple[float, float]]:
        """The trial's config sized to its budget (a probe per net shape, reused), the budget, the probe's
        estimate of one validation pass and its prices of a low-resolution step and of training the whitening
        bias; with `trial_epochs`, that many epochs and no budget."""
        from mlsd_assets.core.training.budget import budgeted, plan_budget, probe_training

        if self.settings.trial_budget_s is None:
            return dataclasses.replace(config, epochs=int(self.settings.trial_epochs or 1)), None, 0.0, (1.0, 1.0)
        d = self.data.arrays
        shape = (config.architecture, config.widths, config.batch_size, config.precision, config.threads)
        shape += (config.low_res_fraction > 0, config.low_res_size, config.whiten_bias_epochs > 0)
        if shape not in self.probes:
            self.probes[shape] = probe_training(config, d, self.logger, steps=2, max_seconds=10.0)[0]
        probe = dataclasses.replace(self.probes[shape], seconds=time.monotonic() - started)
        budget_s = self.settings.trial_budget_s
        fraction = config.low_res_fraction
        train_count, val_count = len(d.train_labels), len(d.val_labels)
        plan = plan_budget(
            budget_s,
            probe,
            train_count,
            val_count,
            config.batch_size,
            fraction,
            validate_every_epoch=True,
            whiten_bias_epochs=config.whiten_bias_epochs,
        )
        eval_s = val_count / probe.eval_images_per_second
        return budgeted(config, plan), budget_s, eval_s, (probe.low_res_cost, probe.whiten_bias_cost)


def result_of(study: optuna.Study, dataset_hash: str, settings: StudySettings, skipped: bool) -> TuningResult:
    """The study as stored: its best trial (by validation accuracy) and every trial's record."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study.study_name}: no trial completed ({len(trials)} trials); nothing to select")
    best = max(complete, key=lambda t: (t.value, -t.number))
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    return TuningResult(
        study_name=study.study_name,
        recipe=settings.recipe,
        fixed=dict(settings.fixed),
        best_trial=best.number,
        best_value=float(best.value or 0.0),
        best_params=dict(best.params),
        baseline_value=float(baseline.value) if baseline is not None and baseline.value is not None else None,
        dataset_hash=dataset_hash,
        spent_seconds=round(spent_seconds(study, settings), 1),
        skipped=skipped,
        trials=tuple(TrialRecord.of(t) for t in trials),
    )
