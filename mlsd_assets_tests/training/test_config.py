"""ModelConfig -> TrainConfig: recipes, per-field overrides, and clear errors for unknown names."""

from __future__ import annotations

import dataclasses

import pytest

from mlsd_assets.core.training.recipes import RECIPES, recipe_config
from mlsd_assets.training.config import ModelConfig


def test_no_recipe_takes_the_architecture_default() -> None:
    assert ModelConfig().train_config() == recipe_config("fast")
    assert ModelConfig().train_config().optimizer == "muon"
    assert ModelConfig(architecture="vgg11").train_config().optimizer == "adam"


def test_recipe_with_overrides() -> None:
    config = ModelConfig(recipe="long", epochs=2, seed=3).train_config()
    expected = {**RECIPES["long"], "epochs": 2, "seed": 3}
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.optimizer == "muon" and config.widths == (64, 256, 256)


def test_explicit_architecture_overrides_the_recipe() -> None:
    assert ModelConfig(recipe="vgg11").train_config().architecture == "vgg11"
    assert ModelConfig(recipe="vgg11", architecture="airbench").train_config().architecture == "airbench"


def test_unknown_recipe_is_named() -> None:
    with pytest.raises(ValueError, match="recipe: unknown 'huge'"):
        ModelConfig(recipe="huge").train_config()


def test_progressive_resizing_is_on_by_default_and_can_be_set_or_turned_off() -> None:
    assert ModelConfig().train_config().low_res_fraction == 0.7
    config = ModelConfig(low_res_fraction=0.5, low_res_size=28).train_config()
    assert (config.low_res_fraction, config.low_res_size) == (0.5, 28)
    assert ModelConfig(low_res_fraction=0).train_config().low_res_fraction == 0
    with pytest.raises(ValueError, match="low_res_size: 20 px"):
        ModelConfig(low_res_size=20).train_config()


def test_a_time_budget_is_offered_the_long_recipe_with_the_same_fields_set() -> None:
    wider = ModelConfig(lr=1.2, seed=3).wider_config()
    assert wider == recipe_config("long", lr=1.2, seed=3)
    assert wider is not None and wider.widths == (64, 256, 256) and wider.low_res_fraction == 0.0


@pytest.mark.parametrize(
    "asked", [{"recipe": "fast"}, {"widths": [32, 128, 128]}, {"use_tuned": True}, {"architecture": "vgg11"}]
)
def test_no_wider_net_is_offered_where_the_net_or_recipe_was_chosen(asked: dict[str, object]) -> None:
    assert ModelConfig(**asked).wider_config() is None


def test_a_resumed_budgeted_run_keeps_the_net_its_checkpoint_planned() -> None:
    from mlsd_assets.training.tracking import sized_config

    planned = dataclasses.replace(recipe_config("long"), epochs=10, max_steps=215)
    previous = {"config": planned.hyperparameters()}
    sized, budget = sized_config(None, "run", recipe_config("fast"), None, 1800.0, previous, None)  # type: ignore[arg-type]
    assert sized == planned and budget is None
