"""run_failure_alert_sensor: a failed raw_cifar10 run is posted as short JSON to a real local webhook."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from pytest_httpserver import HTTPServer

from mlsd_assets.automation.sensors import run_failure_alert_sensor
from mlsd_assets.data.assets import raw_cifar10
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import AlertWebhook, Cifar10Source, DataPaths, alert_webhook
from mlsd_assets.settings import load_settings


@pytest.fixture
def webhook(httpserver: HTTPServer) -> HTTPServer:
    """A real HTTP endpoint on 127.0.0.1 (pytest-httpserver) that accepts POST /alerts and logs each request."""
    httpserver.expect_request("/alerts", method="POST").respond_with_data("")
    return httpserver


def received(webhook: HTTPServer) -> list[dict]:
    return [json.loads(request.data) for request, _ in webhook.log]


@pytest.fixture(scope="module")
def failed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dg.DagsterInstance, dg.ExecuteInProcessResult]]:
    """A real failure (once per module): raw_cifar10 asked for a drop partition whose files never arrived."""
    tmp_path = tmp_path_factory.mktemp("failed-run")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("cifar10_batches", ["never_arrived"])
        result = dg.materialize(
            [raw_cifar10],
            partition_key="never_arrived",
            instance=instance,
            raise_on_error=False,
            resources={
                "paths": DataPaths(root=str(tmp_path / "data")),
                "cifar10_source": Cifar10Source(location=str(tmp_path / "nowhere")),
                "io_manager": ArtifactIOManager(root=str(tmp_path / "artifacts")),
            },
        )
        assert not result.success
        yield instance, result


def _alert(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, alerts: AlertWebhook) -> None:
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"alerts": alerts},
    ).for_run_failure()
    run_failure_alert_sensor(context)


def test_failure_is_posted_to_webhook(failed_run, webhook: HTTPServer) -> None:
    instance, result = failed_run
    _alert(instance, result, AlertWebhook(url=webhook.url_for("/alerts")))
    [payload] = received(webhook)
    assert payload["run_id"] == result.run_id
    assert payload["job"] == result.dagster_run.job_name
    assert payload["assets"] == ["raw_cifar10"]
    assert payload["partition"] == "never_arrived"
    assert payload["error"].startswith("raw_cifar10: ") and "never_arrived" in payload["error"]


def test_webhook_url_comes_from_the_secret_env_var(
    failed_run, webhook: HTTPServer, mlsd_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSD_ALERT_WEBHOOK_URL", webhook.url_for("/alerts"))
    instance, result = failed_run
    _alert(instance, result, alert_webhook(load_settings()))
    assert [p["run_id"] for p in received(webhook)] == [result.run_id]


def test_no_webhook_only_logs(failed_run, webhook: HTTPServer, mlsd_home: Path) -> None:
    instance, result = failed_run
    alerts = alert_webhook(load_settings())
    assert alerts.url == ""
    _alert(instance, result, alerts)
    assert webhook.log == []


def test_rejected_alert_fails_the_tick(failed_run, httpserver: HTTPServer) -> None:
    instance, result = failed_run
