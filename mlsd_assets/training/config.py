"""Training hyperparameters as Dagster run config; unset fields take the architecture's tuned defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from mlsd_assets.core.training.recipes import TrainConfig


# Training minutes by default: with ingestion, export, image build and evaluation, `make pipeline` takes about
# 15 minutes on a 2-core machine whatever its CPU (a throughput probe sizes the run; README, "Time budget").
DEFAULT_BUDGET_MINUTES = 8.0


class ModelConfig(dg.Config):
    """`recipe`: "fast" (default), "long" (more accurate, about 3x the time), "sgd" (airbench94's SGD recipe)
    or "vgg11" (seed-parity recipe: Adam 1e-3, batch 32, 1 epoch). Without a recipe, `architecture` picks its
    default one. Leave a field unset (null) to keep the recipe's value (`core.training.recipes`)."""

    recipe: str | None = Field(default=None, description="fast | long | sgd | vgg11")
    architecture: str = Field(default="airbench", description="airbench | vgg11")
    widths: list[int] | None = Field(default=None, description="airbench conv group channels, e.g. [64, 256, 256]")
    epochs: int | None = Field(
        default=None, description="full passes over the train split; when set, the time budget is ignored"
    )
    time_budget_minutes: float | None = Field(
        default=DEFAULT_BUDGET_MINUTES,
        description="train as many steps as fit in this many minutes on this CPU (measured by a short probe);"
        " null or 0: the recipe's epochs",
    )
    batch_size: int | None = None
    optimizer: str | None = Field(default=None, description="sgd | muon | adam | adamw")
    lr: float | None = Field(default=None, description="peak learning rate (mean-reduced loss)")
    schedule: str | None = Field(default=None, description="triangle | linear | constant")
    momentum: float | None = None
    muon_lr: float | None = Field(default=None, description="Muon lr for conv filters (optimizer=muon)")
    muon_momentum: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    lookahead: bool | None = None
    low_res_fraction: float | None = Field(
        default=None, description="progressive resizing: this fraction of the steps first, at low_res_size px; 0 = off"
    )
    low_res_size: int | None = Field(default=None, description="side of the low-resolution steps, 26-32 px (airbench)")
    flip_tta: bool | None = Field(default=None, description="average logits with the mirrored image (in the ONNX too)")
    precision: str = Field(default="auto", description="auto | bf16 | fp32; auto = bf16 where the hardware has it")
    seed: int = 0
    threads: int = Field(default=0, description="torch CPU threads; 0 = all cores")
    use_tuned: bool = Field(
        default=False,
        description="train with the best trial of the last cifar10_tuning: its values replace these for the"
        " fields it searched (lr, muon_lr, label smoothing, weight decay, widths, batch size)",
    )

    def budget_seconds(self) -> float | None:
        """The time budget in seconds, or None when `epochs` fixes the length (or no budget is set)."""
        if self.epochs is not None or not self.time_budget_minutes or self.time_budget_minutes <= 0:
            return None
        return self.time_budget_minutes * 60.0

    def train_config(self) -> TrainConfig:
        from mlsd_assets.core.training.recipes import recipe_config

        return recipe_config(self.recipe, **self._overrides())

    def wider_config(self) -> TrainConfig | None:
        """The `long` recipe (airbench94's widths) with the same fields set, for a time budget to train where
        enough of its epochs fit; None where a recipe, the widths or tuned values were asked for."""
        from mlsd_assets.core.training.recipes import recipe_config

        if self.recipe is not None or self.widths is not None or self.use_tuned or self.architecture != "airbench":
            return None
        return recipe_config("long", **self._overrides())

    def _overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {
            k: v
            for k, v in self.model_dump().items()
            if v is not None and k not in ("architecture", "recipe", "time_budget_minutes", "use_tuned")
        }
        if "widths" in overrides:
            overrides["widths"] = tuple(overrides["widths"])
        if self.recipe is None or "architecture" in self.model_fields_set:
            overrides["architecture"] = self.architecture  # no recipe: the architecture's default one
        return overrides
