"""Training on tiny synthetic data: learns in seconds, resumes at the right epoch, rejects bad config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mlsd_assets.core.training import train as train_module
from mlsd_assets.core.training.budget import StepCosts
from mlsd_assets.core.training.recipes import RECIPES, TrainConfig, recipe_config
from mlsd_assets.core.training.steps import evaluate, make_optimizers, prepare_model, train_step
from mlsd_assets.core.training.train import TrainData, read_checkpoint, train
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

LOG = logging.getLogger("test")


@pytest.fixture(scope="module")
def split():  # type: ignore[no-untyped-def]
    return make_split(400, 100, 20)


def _train(split, config: TrainConfig, **kwargs):  # type: ignore[no-untyped-def]
    return train(TrainData.from_split(split), config, LOG, **kwargs)


@pytest.mark.parametrize("recipe", ["fast", "sgd"])
def test_one_epoch_learns(split, recipe: str) -> None:  # type: ignore[no-untyped-def]
    config = recipe_config(recipe, **{**TINY, "epochs": 1})
    x, y = split.arrays("train")
    untrained = _train(split, recipe_config("sgd", **{**TINY, "epochs": 1, "lr": 1e-9}))
    result = _train(split, config)
    before = evaluate(untrained.model, x, y)
    after = evaluate(result.model, x, y)
    assert after["loss"] < before["loss"] - 0.05
    assert after["accuracy"] > 0.4
    assert result.validation["accuracy"] > 0.3  # chance is 0.1
    assert [h.epoch for h in result.history] == [1]
    assert result.history[0].images_per_second > 0 and result.history[0].eta_seconds == 0


@pytest.mark.parametrize("recipe", ["fast", "sgd"])
def test_interrupted_run_resumes_at_next_epoch_with_same_result(split, tmp_path: Path, recipe: str) -> None:  # type: ignore[no-untyped-def]
    config = recipe_config(recipe, **TINY)

    def stop_after_first(stats) -> None:  # type: ignore[no-untyped-def]
        if stats.epoch == 1:
            raise KeyboardInterrupt("simulated crash after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        _train(
            split,
            config,
            checkpoint_dir=tmp_path / "ckpt",
            on_epoch=stop_after_first,
            checkpoint_extra={"mlflow_run_id": "abc"},
        )
    saved = read_checkpoint(tmp_path / "ckpt")
    assert saved is not None and saved["epoch"] == 1 and saved["extra"] == {"mlflow_run_id": "abc"}

    seen: list[int] = []
    resumed = _train(split, config, checkpoint_dir=tmp_path / "ckpt", on_epoch=lambda s: seen.append(s.epoch))
    assert resumed.resumed_from_epoch == 1
    assert seen == [2]
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert resumed.extra == {"mlflow_run_id": "abc"}

    straight = _train(split, config)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[key].float(), atol=1e-5), key


def test_checkpoint_of_another_config_is_not_resumed(split, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _train(split, recipe_config(**{**TINY, "epochs": 1}), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different config"):
        _train(split, recipe_config(**{**TINY, "epochs": 1, "seed": 7}), checkpoint_dir=tmp_path)


def test_vgg11_parity_recipe_defaults() -> None:
    config = recipe_config(architecture="vgg11")
    assert (config.optimizer, config.lr, config.batch_size, config.epochs) == ("adam", 1e-3, 32, 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer: 'rmsprop'"),
        ({"precision": "fp8"}, "precision: 'fp8'"),
        ({"epochs": 0}, "epochs: must be >= 1"),
        ({"lr": -1.0}, "lr: must be > 0"),
        ({"widths": (8, 16)}, "widths: expected three"),
        ({"low_res_fraction": 1.0}, r"low_res_fraction: must be in \[0, 1\)"),
        ({"low_res_size": 24}, "low_res_size: 24 px with airbench"),
        ({"architecture": "vgg11", "low_res_fraction": 0.5}, "low_res_size: 26 px with vgg11"),
    ],
)
def test_bad_config_is_a_clear_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe_config(**overrides)


def test_the_default_config_is_the_fast_recipe_and_each_recipe_differs_from_it() -> None:
    assert TrainConfig() == recipe_config() == recipe_config("fast") == recipe_config(architecture="airbench")
    assert (TrainConfig().optimizer, TrainConfig().batch_size) == ("muon", 2000)
    for name, fields in RECIPES.items():
        config = recipe_config(name)
        assert all(getattr(TrainConfig(), k) != v for k, v in fields.items()), name
        assert {k: getattr(config, k) for k in fields} == fields
    with pytest.raises(ValueError, match="recipe: unknown 'huge'"):
        recipe_config("huge")


class _Pruned(Exception):
    """Stands for optuna.TrialPruned, which a tuning trial raises from `on_epoch`."""


def test_an_exception_from_on_epoch_propagates_unchanged_after_the_checkpoint(split, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raised = _Pruned("trial pruned at epoch 1")

    def prune(stats) -> None:  # type: ignore[no-untyped-def]
        raise raised

    with pytest.raises(_Pruned) as caught:
        _train(split, recipe_config(**TINY), checkpoint_dir=tmp_path, on_epoch=prune)
    assert caught.value is raised
    saved = read_checkpoint(tmp_path)
    assert saved is not None and saved["epoch"] == 1 and len(saved["history"]) == 1


def test_progressive_resizing_trains_the_first_steps_small_then_the_rest_at_full_size(
    split,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = recipe_config(**{**TINY, "low_res_fraction": 0.5, "low_res_size": 28})
    sizes: list[int] = []

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(args[6])
        return train_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", recording)
    result = _train(split, config)
    assert result.steps == 16 and sizes == [28] * 8 + [32] * 8  # 400 images, batch 50: 8 steps an epoch
    assert result.validation["accuracy"] > 0.3  # still learns; the served model takes 32 px
    assert recipe_config("sgd").low_res_fraction == 0 and recipe_config("long").low_res_fraction == 0

    class Growing:
        """A budget that, ten steps in, finds time for 40: the low-resolution phase's end moves to step 20."""

        low_res_cost = 0.8
        whiten_bias_cost = 1.3
        warm = None  # no probe: training builds its model
        costs: list[StepCosts] = []  # what training priced its steps by at each re-size

        def total_steps(self, done: int, *args: object) -> int:
            self.costs.append(args[-1])  # type: ignore[arg-type]
            return 40 if done >= 10 else 16

        def left(self) -> float:
            return 0.0

    sizes.clear()
    grown = train(TrainData.from_split(split), config, LOG, budget=Growing(), progress_every=0.0)  # type: ignore[arg-type]
    assert grown.steps == 40 and sizes == [28] * 8 + [32] * 32  # once at full size, never back to 28
    # the loop and the budget follow one rule: epochs 2-5 end at full size, so they are validated and priced
    validated = [h.val_accuracy is not None for h in grown.history]
    assert validated == [False, True, True, True, True]
    assert Growing.costs[-1].low_res_until == 8 and Growing.costs[-1].validation_passes(0, 40, 8) == 4
    # and price the whitening bias's epochs (the recipe's first 3) at the budget's factor
    assert (Growing.costs[-1].bias_steps, Growing.costs[-1].bias_cost) == (3 * 8, 1.3)


def test_epochs_that_end_at_low_resolution_are_not_validated_unless_asked(split) -> None:  # type: ignore[no-untyped-def]
    # 8 steps an epoch, 24 in all, the first 12 at 28 px: epoch 1 ends small, epoch 2 at full size
    config = recipe_config(**{**TINY, "epochs": 3, "low_res_fraction": 0.5, "low_res_size": 28})
    result = _train(split, config)
    assert [h.val_accuracy is not None for h in result.history] == [False, True, True]
    assert result.best_epoch in (2, 3) and result.history[0].train_loss > 0
    assert "val_accuracy" not in result.history[0].metrics() and "train_loss" in result.history[0].metrics()
    best = result.history[result.best_epoch - 1]
    assert result.validation == {"accuracy": best.val_accuracy, "loss": best.val_loss, "count": 100.0}  # no 2nd pass
    every = _train(split, config, validate_every_epoch=True)
    assert all(h.val_accuracy is not None for h in every.history)
    same = [h.val_accuracy for h in result.history[1:]]
    assert [h.val_accuracy for h in every.history[1:]] == pytest.approx(same, abs=0.011)  # training unchanged


def test_a_low_resolution_step_is_the_whole_image_smaller(split) -> None:  # type: ignore[no-untyped-def]
    config = recipe_config(**TINY)
    data = TrainData.from_split(split)
    model = prepare_model(config, data.train_images, data.mean, data.std, torch.device("cpu"), "fp32")
    seen: list[torch.Tensor] = []
    model.net.whiten.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.from_numpy(data.train_images[:4])
    y = torch.from_numpy(data.train_labels[:4].astype("int64"))
    loss_fn = torch.nn.CrossEntropyLoss()
    train_step(model, make_optimizers(model.net, config), loss_fn, x, y, "fp32", 26)
    small = seen[-1]
    assert small.shape == (4, 3, 26, 26)
    expected = torch.nn.functional.interpolate(model.preprocess(x), size=(26, 26), mode="bilinear", antialias=True)
    assert torch.allclose(small, expected, atol=1e-5)  # the whole image scaled, not a crop of it
