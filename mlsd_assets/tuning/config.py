"""The tuning run's config: the search space, the budgets and the pruner, as Dagster run config."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from mlsd_assets.core.tuning.space import SearchSpace
    from mlsd_assets.core.tuning.study import StudySettings


class TuningConfig(dg.Config):
    """Defaults: a 30-minute study of 3-minute trials on 10,000 train images, judged on validation, over the
    "fast" recipe's learning rates, label smoothing, weight decay, widths and batch size. Changing any field
    (or the data) starts a new study; leaving all unchanged returns the finished study's best without training.
    """

    recipe: str = Field(default="fast", description="the recipe whose values the trials change")
    total_budget_minutes: float = Field(default=30.0, description="the study starts no trial that would not fit")
    trial_budget_minutes: float | None = Field(
        default=3.0, description="each trial trains for this many minutes (the training time budget)"
    )
    trial_epochs: int | None = Field(default=None, description="fixed epochs per trial instead of a time budget")
    max_trials: int | None = Field(default=None, description="stop after this many finished trials")
    train_images: int = Field(default=10000, description="train subset per trial (0: all of train)")
    pruner: str = Field(default="successive_halving", description="successive_halving | none")
    first_rung: float = Field(default=0.25, description="fraction of a trial before it can first be pruned")
    reduction_factor: int = 2
    startup_trials: int = Field(default=4, description="random trials before TPE models the results")
    seed: int = 0
    precision: str = Field(default="auto", description="auto | bf16 | fp32")
    threads: int = Field(default=0, description="torch CPU threads; 0 = all cores")
    lr: list[float] = Field(default=[0.4, 6.0], description="[low, high], log scale")
    muon_lr: list[float] = Field(default=[0.06, 0.8], description="[low, high], log scale")
    label_smoothing: list[float] = [0.0, 0.3]
    weight_decay: list[float] = Field(default=[5e-4, 1e-2], description="[low, high], log scale")
    widths: list[list[int]] = [[16, 64, 64], [24, 96, 96], [32, 128, 128]]
    batch_sizes: list[int] = [500, 1000, 2000]
    heartbeat_interval_s: int = Field(default=10, description="a running trial records a heartbeat this often")
    grace_period_s: int = Field(default=30, description="a trial silent this long was killed: failed, re-queued")

    def space(self) -> SearchSpace:
        from mlsd_assets.core.tuning.space import SearchSpace

        def pair(name: str) -> tuple[float, float]:
            values = getattr(self, name)
            if len(values) != 2:
                raise ValueError(f"{name}: expected [low, high], got {values}")
            return float(values[0]), float(values[1])

        return SearchSpace(
            lr=pair("lr"),
            muon_lr=pair("muon_lr"),
            label_smoothing=pair("label_smoothing"),
            weight_decay=pair("weight_decay"),
            widths=tuple(tuple(w) for w in self.widths),  # type: ignore[misc]  # SearchSpace checks triples
            batch_sizes=tuple(self.batch_sizes),
        )

    def settings(self) -> StudySettings:
        from mlsd_assets.core.tuning.study import StudySettings

        trial_budget = None if self.trial_epochs is not None else (self.trial_budget_minutes or 0) * 60 or None
        return StudySettings(
            recipe=self.recipe,
            fixed=(("precision", self.precision), ("threads", self.threads), ("seed", self.seed)),
            trial_budget_s=trial_budget,
            trial_epochs=self.trial_epochs,
            total_budget_s=self.total_budget_minutes * 60,
            max_trials=self.max_trials,
            train_images=self.train_images,
            pruner=self.pruner,  # type: ignore[arg-type]
            first_rung=self.first_rung,
            reduction_factor=self.reduction_factor,
            startup_trials=self.startup_trials,
            seed=self.seed,
        )
