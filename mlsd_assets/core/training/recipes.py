"""Training hyperparameters and the named recipes: `TrainConfig()` is the default recipe, `fast`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mlsd_assets.core.training.models import ARCHITECTURES

Precision = Literal["auto", "bf16", "fp32"]
WeightGrad = Literal["auto", "matmul", "onednn"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters in plain PyTorch terms (mean-reduced loss, optimizer lr as given).

    The defaults are the `fast` recipe: conv filters trained with Muon (`muon_lr`, `muon_momentum`), after
    Keller Jordan's airbench94_muon, everything else with SGD as configured by `lr`, `momentum`,
    `weight_decay`, `bias_lr_scale`. `bias_lr_scale` multiplies the lr of 1-d parameters (norm/whitening
    biases) and divides their weight decay, airbench's trick for fast-moving biases. `schedule="triangle"`
    ramps lr from `lr_start` to 1 at `warmup_fraction` of all steps, then down to `lr_end` (fractions of
    `lr`); `"linear"` decays from 1 to 0.
    """

    architecture: str = "airbench"
    # A quarter of airbench94's (64, 256, 256) FLOPs: on 2 CPU cores the full widths cost ~3x the time per
    # image, and trained for the same minutes they were no more accurate (benchmarks/, README).
    widths: tuple[int, int, int] = (32, 128, 128)
    epochs: int = 10
    # Stop after this many optimizer steps in all (0: every epoch in full); the lr schedule ends here. A time
    # budget (mlsd_assets.core.training.budget) sets it, so the last epoch may be partial.
    max_steps: int = 0
    batch_size: int = 2000
    optimizer: Literal["sgd", "muon", "adam", "adamw"] = "muon"
    # SGD part (head, biases) in mean-loss units: airbench94_muon's 0.67 (head, logits / 256) and 0.053
    # (biases) on a summed loss of 2000 images, with 4e-3 decay per step, as lr * scale and decay / lr
    lr: float = 1.65
    momentum: float = 0.85
    nesterov: bool = True
    weight_decay: float = 2.42e-3
    bias_lr_scale: float = 64.0
    label_smoothing: float = 0.2
    schedule: Literal["triangle", "linear", "constant"] = "linear"
    lr_start: float = 0.2
    lr_end: float = 0.07
    warmup_fraction: float = 0.23
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    whiten_bias_epochs: int = 3
    # Progressive resizing: the first `low_res_fraction` of all steps see the batch scaled down to `low_res_size`
    # px (~0.75x a step's time at 26 px; 26 is the least the airbench head takes). Side by side on real
    # CIFAR-10: ~0.3-0.5 pt more accuracy in the same minutes in ~200-step runs, within noise of none by ~400
    # (README, Benchmarks). 0: off.
    low_res_fraction: float = 0.7
    low_res_size: int = 26
    lookahead: bool = False
    crop_pad: int = 2
    flip: bool = True
    flip_tta: bool = True
    precision: Precision = "auto"
    channels_last: bool = True
    # Small conv maps' weight gradient: batched matmuls or oneDNN's kernel ("auto": matmuls with bf16 on AMX,
    # where oneDNN's was slow; oneDNN elsewhere). Speed only: both compute the same gradient.
    conv_weight_grad: WeightGrad = "auto"
    seed: int = 0
    threads: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        choices = {
            "architecture": ARCHITECTURES,
            "optimizer": ("sgd", "muon", "adam", "adamw"),
            "precision": ("auto", "bf16", "fp32"),
            "conv_weight_grad": ("auto", "matmul", "onednn"),
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
        if not 0 <= self.low_res_fraction < 1:
            raise ValueError(f"low_res_fraction: must be in [0, 1), got {self.low_res_fraction}")
        if self.low_res_fraction and not (self.architecture == "airbench" and 26 <= self.low_res_size <= 32):
            raise ValueError(
                f"low_res_size: {self.low_res_size} px with {self.architecture}; progressive resizing needs the"
                " airbench net and 26-32 px (its head pools a 3x3 map), or low_res_fraction 0"
            )

    def hyperparameters(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_hyperparameters(cls, values: dict[str, Any]) -> TrainConfig:
        """The config `hyperparameters()` gave (as a checkpoint keeps it)."""
        return cls(**{**values, "widths": tuple(values["widths"])})


# Named recipes: the TrainConfig fields that differ from its defaults (= "fast"). "long" is "fast" on
# airbench94's full widths, at full resolution throughout (as measured); "sgd" is airbench94's own SGD recipe
# (the reference the benchmarks compare against); "vgg11" is the reference recipe (Adam 1e-3, batch 32, one
# epoch) on VGG-11 with batch norm so that it learns. Figures for each: README, Benchmarks.
RECIPES: dict[str, dict[str, Any]] = {
    "fast": {},
    "long": {"widths": (64, 256, 256), "epochs": 8, "low_res_fraction": 0.0},
    "sgd": {
        "batch_size": 1024,
        "optimizer": "sgd",
        "lr": 1.5,
        "weight_decay": 1.33e-3,
        "schedule": "triangle",
        "lookahead": True,
        "low_res_fraction": 0.0,
    },
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
        "flip_tta": False,
        "crop_pad": 4,
        "whiten_bias_epochs": 0,
        "low_res_fraction": 0.0,
    },
}
# The recipe an architecture gets when none is named.
DEFAULT_RECIPE = {"airbench": "fast", "vgg11": "vgg11"}


def recipe_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """A named recipe (None: the default one of `overrides["architecture"]`, else `fast`) with `overrides`
    applied; unknown field names raise TypeError."""
    if recipe is None:
        recipe = DEFAULT_RECIPE.get(overrides.get("architecture", TrainConfig.architecture), "fast")
    if recipe not in RECIPES:
        raise ValueError(f"recipe: unknown {recipe!r}; choose one of {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[recipe], **overrides})
