"""training_schedule: fires once a day, skips an unchanged split, trains a changed or forced one."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from mlsd_assets.automation.schedules import DEFAULT_TRAINING_CRON, build_training_schedule
from mlsd_assets.definitions import defs
from mlsd_assets_tests.automation.helpers import report_model, report_split


def _ticks(cron: str, timezone: str, days: int) -> list[datetime]:
    start = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).timestamp()
    end = start + days * 86400
    out = []
    for tick in cron_string_iterator(start, cron, timezone):
        if tick.timestamp() > end:
            return out
        out.append(tick)
    raise AssertionError("cron iterator ended")


def test_default_cron_fires_once_a_day_at_midnight() -> None:
    schedule = build_training_schedule()
    assert schedule.cron_schedule == DEFAULT_TRAINING_CRON
    ticks = _ticks(schedule.cron_schedule, schedule.execution_timezone, days=5)
    assert len(ticks) == 5
    assert {(t.hour, t.minute) for t in ticks} == {(0, 0)}
    assert all(b - a == timedelta(days=1) for a, b in zip(ticks, ticks[1:], strict=False))


def test_seed_cron_would_fire_sixty_times() -> None:
    """The bug we fixed: a wildcard minute fires every minute of hour 0."""
    assert len(_ticks("* 0 * * *", "UTC", days=1)) == 60


def test_cron_and_timezone_are_configurable() -> None:
    schedule = build_training_schedule("30 2 * * *", "Europe/Paris")
    ticks = _ticks(schedule.cron_schedule, schedule.execution_timezone, days=3)
    assert len(ticks) == 3
    assert {(t.hour, t.minute, t.utcoffset()) for t in ticks} == {(2, 30, timedelta(hours=1))}


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def _evaluate(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance):
    when = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


def test_skips_without_a_split(instance: dg.DagsterInstance) -> None:
    data = _evaluate(build_training_schedule(), instance)
    assert not data.run_requests
    assert "never materialized" in data.skip_message


def test_trains_when_no_model_yet(instance: dg.DagsterInstance) -> None:
    report_split(instance, "a" * 64)
    data = _evaluate(build_training_schedule(), instance)
    [request] = data.run_requests
    assert request.tags["mlsd/concurrency"] == "training"
    assert request.tags["mlsd/dataset_hash"] == "a" * 64


def test_skips_when_nothing_changed_then_trains_on_change(instance: dg.DagsterInstance) -> None:
    report_split(instance, "a" * 64)
    report_model(instance, "a" * 64)
    data = _evaluate(build_training_schedule(), instance)
    assert not data.run_requests
    assert "nothing changed" in data.skip_message

    report_split(instance, "b" * 64)
    [request] = _evaluate(build_training_schedule(), instance).run_requests
    assert request.tags["mlsd/dataset_hash"] == "b" * 64


def test_force_trains_an_unchanged_split(instance: dg.DagsterInstance) -> None:
    report_split(instance, "a" * 64)
    report_model(instance, "a" * 64)
    [request] = _evaluate(build_training_schedule(force=True), instance).run_requests
    assert request.tags["mlsd/forced"] == "True"


def test_model_without_dataset_hash_fails_loudly(instance: dg.DagsterInstance) -> None:
    report_split(instance, "a" * 64)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="cifar10_model"))
    with pytest.raises(Exception, match="dataset_hash"):
        _evaluate(build_training_schedule(), instance)


@pytest.mark.parametrize(("checks_pass", "status"), [(False, "failed"), (None, "not evaluated")])
def test_skips_a_split_its_blocking_checks_did_not_pass(
    instance: dg.DagsterInstance, checks_pass: bool | None, status: str
) -> None:
    report_split(instance, "a" * 64, checks_pass=checks_pass)
    data = _evaluate(build_training_schedule(force=True), instance)
    assert not data.run_requests
    assert f"check_cifar10_split_leakage {status}" in data.skip_message
    assert f"check_cifar10_split_schema {status}" in data.skip_message
