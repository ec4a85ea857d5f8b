"""Time budget: the plan from a (fake) throughput, the probe on real steps, and a tiny budget actually met."""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace

import pytest
import torch

from mlsd_assets.core.training import budget as budget_module
from mlsd_assets.core.training.budget import (
    BUDGET_RESERVE,
    WIDER_MIN_EPOCHS,
    StepCosts,
    Throughput,
    TimeBudget,
    budgeted,
    plan_budget,
    probe_training,
    size_to_budget,
)
from mlsd_assets.core.training.recipes import recipe_config
from mlsd_assets.core.training.steps import prepare_model
from mlsd_assets.core.training.train import TrainData, _Progress, total_steps, train
from mlsd_assets_tests.synthetic import make_split
from mlsd_assets_tests.training.tiny import TINY

LOG = logging.getLogger("test")


def _throughput(
    train_ips: float,
    eval_ips: float = 10_000.0,
    seconds: float = 5.0,
    low_res_cost: float = 1.0,
    whiten_bias_cost: float = 1.0,
) -> Throughput:
    cpu = ("test CPU", "avx2")
    return Throughput(train_ips, eval_ips, seconds, "fp32", 2, "onednn", *cpu, low_res_cost, whiten_bias_cost)


def test_plan_fills_the_budget_and_no_more() -> None:
    # 50,000 images, batch 2000 (25 steps/epoch), 1000 img/s -> 2 s/step; 5000 val at 10k img/s -> 0.5 s
    plan = plan_budget(600.0, _throughput(1000.0), 50_000, 5_000, 2000)
    available = 600.0 * (1 - BUDGET_RESERVE) - 5.0
    cost = plan.steps * 2.0 + plan.epochs * 0.5
    assert cost <= available < cost + 2.0 + 0.5  # one more step would not fit
    assert plan.steps_per_epoch == 25 and plan.epochs == -(-plan.steps // 25)
    assert plan.expected_seconds == pytest.approx(5.0 + cost)
    assert plan.expected_seconds <= 600.0


def test_a_slower_cpu_gets_proportionally_fewer_steps() -> None:
    fast = plan_budget(900.0, _throughput(1200.0), 50_000, 5_000, 2000)
    slow = plan_budget(900.0, _throughput(300.0), 50_000, 5_000, 2000)
    assert slow.steps < fast.steps
    assert slow.steps / fast.steps == pytest.approx(0.25, rel=0.1)


def test_budget_too_small_still_trains_one_step_and_bad_budget_is_an_error() -> None:
    assert plan_budget(1.0, _throughput(10.0), 50_000, 5_000, 2000).steps == 1
    with pytest.raises(ValueError, match="time budget"):
        plan_budget(0.0, _throughput(1000.0), 50_000, 5_000, 2000)


def test_budgeted_config_sets_the_schedule_horizon() -> None:
    plan = plan_budget(600.0, _throughput(1000.0), 50_000, 5_000, 2000)
    config = budgeted(recipe_config("fast"), plan)
    assert config.max_steps == plan.steps and config.epochs == plan.epochs
    assert total_steps(config, plan.steps_per_epoch) == plan.steps


def test_tiny_budget_is_met_within_ten_percent(caplog: pytest.LogCaptureFixture) -> None:
    split = make_split(600, 100, 20)  # short epochs: training re-sizes itself several times
    data = TrainData.from_split(split)
    config = recipe_config("fast", **{**TINY, "threads": 1})  # one thread: least hurt by busy neighbours
    budget = 30.0
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="test"):
        sized, time_budget, probe, plan = size_to_budget(config, data, budget, LOG)
        assert probe.train_images_per_second > 0 and probe.eval_images_per_second > 0
        assert probe.precision == "fp32" and probe.cpu_model
        assert 0 < probe.low_res_cost < 2 and probe.record()["probe.low_res_cost"] == probe.low_res_cost
        assert time_budget.low_res_cost == probe.low_res_cost
        # the tiny net's first epochs train the whitening bias: a step then costs more, never less
        assert 0.5 < probe.whiten_bias_cost < 5 and time_budget.whiten_bias_cost == probe.whiten_bias_cost
        assert plan.steps >= 5  # enough work that the check means something
        assert time_budget.eval_seconds_hint == pytest.approx(len(data.val_labels) / probe.eval_images_per_second)
        assert (sized.max_steps, sized.epochs) == (plan.steps, plan.epochs)
        warm = time_budget.warm  # the probe's steps (bias trained, frozen, full size) were real ones
        assert warm is not None and warm.steps == probe.trained_steps == 5 and warm.fits(sized)
        probed = _weights(warm.model)
        torch.manual_seed(config.seed)
        fresh = prepare_model(config, data.train_images, data.mean, data.std, torch.device("cpu"), "fp32")
        assert not _same(probed, _weights(fresh))
        result = train(data, sized, LOG, progress_every=1.0, budget=time_budget)
    elapsed = time.perf_counter() - start
    assert time_budget.warm is None and not _same(probed, _weights(warm.model))  # training went on with it
    assert any("continues from the throughput probe's 5 steps" in r.getMessage() for r in caplog.records)
    assert result.steps >= 5 and len(result.history) == -(-result.steps // plan.steps_per_epoch)
    assert abs(elapsed - budget) <= 0.1 * budget, (elapsed, plan)
    progress = [r.getMessage() for r in caplog.records if "run ETA" in r.getMessage()]
    assert len(progress) >= 5, progress  # one a second, as asked (the asset logs one every 20 s)
    assert all("img/s" in line and "epoch ETA" in line for line in progress)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_probe_of_another_recipe_is_refused_by_training() -> None:
    data = TrainData.from_split(make_split(200, 50, 20))
    config = recipe_config("fast", **TINY)
    _, warm = probe_training(config, data, LOG)
    with pytest.raises(ValueError, match="probe trained another recipe"):
        train(data, dataclasses.replace(config, lr=config.lr / 2), LOG, budget=TimeBudget(30.0, warm=warm))
    assert warm.fits(dataclasses.replace(config, epochs=7, max_steps=40))  # its length is the budget's to set


def test_a_spent_budget_adds_no_more_steps() -> None:
    spent = TimeBudget(10.0, started=time.perf_counter() - 60.0)
    assert spent.total_steps(done=7, step_seconds=30.0, eval_seconds=1.0, steps_per_epoch=25, costs=StepCosts()) == 7
    fresh = TimeBudget(100.0)
    assert fresh.total_steps(done=7, step_seconds=1.0, eval_seconds=1.0, steps_per_epoch=25, costs=StepCosts()) > 7


@pytest.mark.timeout(120)
def test_training_stops_once_the_budget_is_spent_even_when_every_step_outlasts_a_progress_window() -> None:
    # A machine so loaded that each step takes longer than the progress interval: every step re-sizes the run.
    # Before the fix each re-size added one more step, so a spent budget never ended the training.
    split = make_split(600, 100, 20)
    data = TrainData.from_split(split)
    config = recipe_config("fast", **{**TINY, "threads": 1, "epochs": 50})
    spent = TimeBudget(1.0, started=time.perf_counter() - 10.0)
    result = train(data, config, LOG, progress_every=0.0, budget=spent)
    assert result.steps == 1 and len(result.history) == 1


def test_the_speed_the_budget_re_sizes_by_leaves_out_the_validation_pass() -> None:
    # 10 steps in 1 s of training, then 1 s of validation: 10 steps/s, not 5 (which planned too few steps).
    run = SimpleNamespace(epoch=0, epochs=2, steps_per_epoch=10, total_steps=20, costs=StepCosts())
    progress = _Progress(LOG, every=0.0, run=run)  # type: ignore[arg-type]
    progress.last_time = time.perf_counter() - 2.0
    progress.leave_out(1.0)
    rate = progress.step(i=9, step=9, batch=100, loss=1.0)
    assert rate == pytest.approx(10.0, rel=0.05)


def test_the_budget_buys_more_steps_when_the_first_ones_are_cheaper() -> None:
    # 2 s a full step, 1 s a low-resolution one for the first half of the run; 0.5 s a validation pass
    plain = plan_budget(600.0, _throughput(1000.0), 50_000, 5_000, 2000)
    mixed = plan_budget(600.0, _throughput(1000.0, low_res_cost=0.5), 50_000, 5_000, 2000, low_res_fraction=0.5)
    low = -(-mixed.steps // 2)
    passes = sum(min(25 * (e + 1), mixed.steps) > low for e in range(mixed.epochs))  # epochs ending at full size
    cost = low * 1.0 + (mixed.steps - low) * 2.0 + passes * 0.5
    available = 600.0 * (1 - BUDGET_RESERVE) - 5.0
    assert cost <= available < cost + 2.0 + 0.5  # one more step would not fit
    assert mixed.steps / plain.steps == pytest.approx(4 / 3, rel=0.03)  # 1.5 s a step on average instead of 2
    assert mixed.expected_seconds == pytest.approx(5.0 + cost)


def test_step_costs_count_the_low_resolution_steps_of_the_run_length_asked() -> None:
    costs = StepCosts(low_res_fraction=0.7, low_res_cost=0.5)
    assert costs.span(0, 10, 10) == pytest.approx(7 * 0.5 + 3)  # steps 0-6 low
    assert costs.span(5, 9, 10) == pytest.approx(2 * 0.5 + 2)
    assert costs.span(8, 10, 10) == 2 and costs.span(3, 3, 10) == 0
    assert costs.span(0, 10, 20) == pytest.approx(5.0)  # a longer run: all ten low
    assert StepCosts().span(0, 10, 10) == 10
    # mid-run, the remaining steps are priced by the phase they fall in, so more fit when cheap ones are left
    early = TimeBudget(100.0).total_steps(0, step_seconds=1.0, eval_seconds=0.0, steps_per_epoch=25, costs=costs)
    flat = TimeBudget(100.0).total_steps(0, step_seconds=1.0, eval_seconds=0.0, steps_per_epoch=25, costs=StepCosts())
    assert early > flat


def test_only_the_epochs_that_end_at_full_size_are_priced_a_validation_pass() -> None:
    # 100 steps, 25 an epoch, the first 50 at low resolution: epochs 3 and 4 are validated (4's is the final figure)
    costs = StepCosts(low_res_fraction=0.5, low_res_cost=0.5)
    assert costs.validation_passes(0, 100, 25) == 2
    assert costs.validation_passes(60, 100, 25) == 2  # epoch 3's pass is still to come
    assert costs.validation_passes(80, 100, 25) == 1
    assert costs.validation_passes(0, 90, 25) == 3  # 45 low: epoch 2 ends past them; a partial last one counts
    assert StepCosts().validation_passes(0, 100, 25) == 4
    assert StepCosts(0.5, validate_every_epoch=True).validation_passes(0, 100, 25) == 4
    assert costs.validation_passes(0, 2, 25) == 1  # the one (last) step of a tiny run is at full size


def test_the_steps_that_train_the_whitening_bias_cost_its_factor_at_their_size() -> None:
    # 10 steps, the first 5 at half price (low resolution); the first 3 train the bias at twice their price
    costs = StepCosts(low_res_fraction=0.5, low_res_cost=0.5, bias_steps=3, bias_cost=2.0)
    assert costs.span(0, 10, 10) == pytest.approx(5 * 0.5 + 5 + 3 * 0.5)
    assert costs.span(2, 4, 10) == pytest.approx(0.5 * 2 + 0.5)  # one bias step among them
    # a run without low resolution, and a bias phase that outlasts it
    assert StepCosts(bias_steps=4, bias_cost=1.5).span(2, 6, 10) == pytest.approx(4 + 2 * 0.5)
    assert StepCosts(0.2, 0.5, bias_steps=4, bias_cost=2.0).span(0, 10, 10) == pytest.approx(9 + 2 * 0.5 + 2)
    assert StepCosts(bias_steps=4).span(0, 10, 10) == 10  # no price measured: no change


def test_the_plan_pays_for_the_whitening_bias_epochs() -> None:
    # 25 steps an epoch at 2 s; the first epoch's steps at 4 s cost 25 steps' time more: ~25 fewer steps fit
    plain = plan_budget(600.0, _throughput(1000.0), 50_000, 5_000, 2000, whiten_bias_epochs=1)
    priced = plan_budget(600.0, _throughput(1000.0, whiten_bias_cost=2.0), 50_000, 5_000, 2000, whiten_bias_epochs=1)
    assert plain.steps - priced.steps == pytest.approx(25, abs=1)
    assert priced.expected_seconds <= 600.0 * (1 - BUDGET_RESERVE)


def _fake_probes(monkeypatch: pytest.MonkeyPatch, ips: dict[tuple[int, int, int], float]) -> list[tuple[int, ...]]:
    """probe_training as a CPU where each net trains at `ips[widths]` img/s (0.2 s a probe); returns the
    widths probed, in order."""
    probed: list[tuple[int, ...]] = []

    def measure(config, data, logger):  # type: ignore[no-untyped-def]
        probed.append(config.widths)
        time.sleep(0.2)
        warm = SimpleNamespace(config=config)  # what training would continue from
        return _throughput(ips[config.widths], eval_ips=ips[config.widths] * 1.5, seconds=0.2), warm

    monkeypatch.setattr(budget_module, "probe_training", measure)
    return probed


NARROW, WIDE = (32, 128, 128), (64, 256, 256)
DATA_45K = SimpleNamespace(train_labels=range(45_000), val_labels=range(5_000))  # 22 steps an epoch


def test_a_budget_that_fits_enough_epochs_of_the_wider_net_trains_it(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _fake_probes(monkeypatch, {NARROW: 800.0, WIDE: 300.0})  # 3.6x the FLOPs, 2.7x the time
    sized, budget, probe, plan = size_to_budget(recipe_config("fast"), DATA_45K, 1800.0, LOG, recipe_config("long"))
    assert probed == [NARROW, WIDE] and budget.warm.config.widths == WIDE  # training goes on from the wide probe
    assert sized.widths == WIDE and sized.low_res_fraction == 0.0 and sized.max_steps == plan.steps
    assert plan.steps >= WIDER_MIN_EPOCHS * plan.steps_per_epoch and "wider net" in plan.decision
    assert plan.record()["budget.decision"] == plan.decision
    assert probe.seconds >= 0.4  # both probes came out of the budget
    assert plan.expected_seconds <= 1800.0 * (1 - BUDGET_RESERVE)


def test_a_short_budget_keeps_the_narrow_net_without_timing_the_wider_one(monkeypatch: pytest.MonkeyPatch) -> None:
    probed = _fake_probes(monkeypatch, {NARROW: 800.0, WIDE: 300.0})
    sized, _, _, plan = size_to_budget(recipe_config("fast"), DATA_45K, 480.0, LOG, recipe_config("long"))
    assert probed == [NARROW] and sized == budgeted(recipe_config("fast"), plan)
    assert "not timed" in plan.decision
    alone = size_to_budget(recipe_config("fast"), DATA_45K, 480.0, LOG)[3]  # no wider net on offer
    assert alone.steps == pytest.approx(plan.steps, abs=1) and alone.decision == ""


def test_the_narrow_net_trains_in_the_time_left_after_timing_a_wider_one_that_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the FLOPs say ~8.5 of the wider net's epochs may fit, so it is timed; it runs slower than they say: ~5 fit
    probed = _fake_probes(monkeypatch, {NARROW: 1000.0, WIDE: 160.0})
    sized, budget, probe, plan = size_to_budget(recipe_config("fast"), DATA_45K, 1500.0, LOG, recipe_config("long"))
    assert probed == [NARROW, WIDE] and sized.widths == NARROW and "narrow net" in plan.decision
    assert budget.warm.config.widths == NARROW
    assert probe.train_images_per_second == 1000.0 and probe.seconds >= 0.4  # the narrow figures, both probes' time
    replanned = plan_budget(1500.0, probe, 45_000, 5_000, 2000, 0.7, whiten_bias_epochs=3)
    assert plan == dataclasses.replace(replanned, decision=plan.decision)
