"""What a study hands on: its best config (chosen on validation) and every trial, stored as one JSON file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mlsd_assets.core.platform.atomic import atomic_path
from mlsd_assets.core.tuning.space import overrides

if TYPE_CHECKING:
    import optuna

    from mlsd_assets.core.training.recipes import TrainConfig


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # validation accuracy of its best epoch (COMPLETE only)
    last_step: int | None  # percent of its budget (or epoch) at its last report
    last_report: float | None  # validation accuracy at that report
    seconds: float | None
    params: dict[str, Any]

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        seconds = None
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        step = trial.last_step
        return cls(
            number=trial.number,
            state=trial.state.name,
            value=float(trial.value) if trial.value is not None and trial.state.name == "COMPLETE" else None,
            last_step=step,
            last_report=float(trial.intermediate_values[step]) if step is not None else None,
            seconds=seconds,
            params=dict(trial.params),
        )


@dataclass(frozen=True)
class TuningResult:
    """The study's best trial as TrainConfig overrides of `recipe` (plus `fixed`), and the trials behind it."""

    study_name: str
    recipe: str
    fixed: dict[str, Any]
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    baseline_value: float | None  # the recipe itself, run as trial 0
    dataset_hash: str
    spent_seconds: float
    skipped: bool  # the study had finished before: nothing ran
    trials: tuple[TrialRecord, ...]

    suffix: ClassVar[str] = ".json"

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def train_overrides(self) -> dict[str, Any]:
        """TrainConfig fields the best trial chose (widths as a tuple)."""
        return overrides(self.best_params)

    def config(self) -> TrainConfig:
        """The recipe with the best trial's params: what `cifar10_model` trains with `use_tuned`."""
        from mlsd_assets.core.training.recipes import recipe_config

        return recipe_config(self.recipe, **self.fixed, **self.train_overrides())

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "trials": [dataclasses.asdict(t) for t in self.trials]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TuningResult:
        trials = tuple(TrialRecord(**t) for t in data.get("trials", ()))
        return cls(**{**data, "trials": trials})

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> TuningResult:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a TuningResult file ({exc})") from exc
