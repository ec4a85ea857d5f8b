"""What a study searches: ranges over the training config, and how a trial's choices become a TrainConfig."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from mlsd_assets.core.training.recipes import TrainConfig


def widths_key(widths: tuple[int, int, int] | list[int]) -> str:
    """Optuna's categorical choices must be scalars: widths travel as "32-128-128"."""
    return "-".join(str(int(w)) for w in widths)


def parse_widths(key: str) -> tuple[int, int, int]:
    first, second, third = (int(w) for w in key.split("-"))
    return first, second, third


@dataclass(frozen=True)
class SearchSpace:
    """Ranges (low, high) sampled on a log scale for rates, linearly for label smoothing; choices for the net
    widths and the batch size. Defaults bracket the "fast" recipe (lr 1.65, muon_lr 0.24, label smoothing 0.2,
    weight decay 2.42e-3, widths 32-128-128, batch 2000), and reach narrower nets and smaller batches, which
    buy more optimizer steps in a short budget on a CPU."""

    lr: tuple[float, float] = (0.4, 6.0)
    muon_lr: tuple[float, float] = (0.06, 0.8)
    label_smoothing: tuple[float, float] = (0.0, 0.3)
    weight_decay: tuple[float, float] = (5e-4, 1e-2)
    widths: tuple[tuple[int, int, int], ...] = ((16, 64, 64), (24, 96, 96), (32, 128, 128))
    batch_sizes: tuple[int, ...] = (500, 1000, 2000)

    def __post_init__(self) -> None:
        for name in ("lr", "muon_lr", "label_smoothing", "weight_decay"):
            low, high = getattr(self, name)
            if not 0 <= low <= high or (name != "label_smoothing" and low <= 0):
                raise ValueError(f"search space {name}: expected 0 < low <= high, got ({low}, {high})")
        if not self.widths or any(len(w) != 3 or min(w) < 1 for w in self.widths):
            raise ValueError(f"search space widths: expected triples of positive channel counts, got {self.widths}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"search space batch_sizes: expected positive sizes, got {self.batch_sizes}")

    def identity(self) -> dict[str, Any]:
        """JSON-ready, the part of a study's name that says what it searches."""
        return {
            **dataclasses.asdict(self),
            "widths": [list(w) for w in self.widths],
            "batch_sizes": list(self.batch_sizes),
        }

    def suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """One point of the space, as Optuna params (widths as a string key)."""
        return {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "muon_lr": trial.suggest_float("muon_lr", *self.muon_lr, log=True),
            "label_smoothing": trial.suggest_float("label_smoothing", *self.label_smoothing),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True),
            "widths": trial.suggest_categorical("widths", [widths_key(w) for w in self.widths]),
            "batch_size": trial.suggest_categorical("batch_size", list(self.batch_sizes)),
        }

    def params_of(self, config: TrainConfig) -> dict[str, Any] | None:
        """`config` as a point of this space (to enqueue the baseline recipe as the first trial), or None when
        it lies outside."""
        params = {
            "lr": config.lr,
            "muon_lr": config.muon_lr,
            "label_smoothing": config.label_smoothing,
            "weight_decay": config.weight_decay,
            "widths": widths_key(config.widths),
            "batch_size": config.batch_size,
        }
        ranged = ("lr", "muon_lr", "label_smoothing", "weight_decay")
        inside = all(getattr(self, n)[0] <= params[n] <= getattr(self, n)[1] for n in ranged)
        inside = inside and tuple(config.widths) in self.widths and config.batch_size in self.batch_sizes
        return params if inside else None


def overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna params as TrainConfig field values."""
    fields = dict(params)
    if "widths" in fields:
        fields["widths"] = parse_widths(str(fields["widths"]))
    return fields


def apply(config: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """`config` with a trial's params in place of its own values."""
    return dataclasses.replace(config, **overrides(params))
