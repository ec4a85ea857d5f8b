"""retraining_sensor: new raw partitions -> one split run; a split no model has seen -> one training run."""

import dagster as dg
import pytest

from mlsd_assets.automation.sensors import build_retraining_sensor
from mlsd_assets_tests.automation.helpers import report_model, report_raw, report_split

SENSOR = build_retraining_sensor()


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def _tick(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    return SENSOR(dg.build_sensor_context(instance=instance))


def test_nothing_to_do_without_data(instance: dg.DagsterInstance) -> None:
    assert isinstance(_tick(instance), dg.SkipReason)


def test_new_partition_then_split_then_training(instance: dg.DagsterInstance) -> None:
    report_raw(instance, "data_batch_1")
    split_request = _tick(instance)
    assert split_request.job_name == "split_job" and split_request.run_key.startswith("split-after-")
    assert _tick(instance).run_key == split_request.run_key, "same raw state, same run key: requested once"

    report_split(instance, "c" * 64)
    train_request = _tick(instance)
    assert train_request.job_name == "training_job"
    assert train_request.run_key == "train-" + "c" * 64
    assert train_request.tags["mlsd/concurrency"] == "training"

    report_model(instance, "c" * 64)
    skip = _tick(instance)
    assert isinstance(skip, dg.SkipReason) and "up to date" in skip.skip_message

    report_raw(instance, "drop_1")
    assert _tick(instance).job_name == "split_job"


def test_waits_for_ingestion_runs(instance: dg.DagsterInstance) -> None:
    report_raw(instance, "data_batch_1")
    instance.add_run(dg.DagsterRun(job_name="ingestion_job", run_id="r1", status=dg.DagsterRunStatus.STARTED))
    skip = _tick(instance)
    assert isinstance(skip, dg.SkipReason) and "ingestion_job" in skip.skip_message


def test_never_trains_on_a_split_whose_blocking_check_failed(instance: dg.DagsterInstance) -> None:
    report_split(instance, "c" * 64, checks_pass=False)
    skip = _tick(instance)
    assert isinstance(skip, dg.SkipReason) and "check_cifar10_split_leakage failed" in skip.skip_message
    report_split(instance, "d" * 64)  # re-materialized and checked: trained on
    assert _tick(instance).run_key == "train-" + "d" * 64
