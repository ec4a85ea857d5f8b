"""A run whose worker is SIGKILLed is marked FAILED by the daemon's run monitoring, and automation goes on."""

import logging
import os
import signal
import sys
import time
from pathlib import Path

import dagster as dg

from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.automation.test_daemon_e2e import BIN, REPO, Processes
from mlsd_assets_tests.cifar_files import write_cifar_python_dir
from mlsd_assets_tests.deployment.instance import code_server_args, write_grpc_workspace

LOG = logging.getLogger("test")
DEADLINE_S = 240
SPLIT_IN_PROCESS = (
    "import dagster as dg; from mlsd_assets.definitions import defs; "
    "defs.resolve_job_def('split_job').execute_in_process(instance=dg.DagsterInstance.get())"
)


def _wait(what: str, probe, procs: Processes, deadline_s: float = DEADLINE_S, step_s: float = 0.5):
    deadline = time.monotonic() + deadline_s
    while not (value := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s} s\n{procs.tails()}"
        time.sleep(step_s)
    return value


def _runs(instance: dg.DagsterInstance, job: str, **filters: object) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job, **filters)))


def test_killed_run_is_failed_and_automation_goes_on(mlsd_home: Path) -> None:
    home = mlsd_home / "dagster"
    config = (REPO / "dagster.yaml").read_text()
    assert "poll_interval_seconds: 30" in config
    (home / "dagster.yaml").write_text(config.replace("poll_interval_seconds: 30", "poll_interval_seconds: 2"))
    env = {
        **os.environ,
        "MLSD_SENSOR_INTERVAL_S": "2",
        "MLSD_CIFAR10_SOURCE": str(write_cifar_python_dir(mlsd_home / "official", per_batch=2000)),
        "MLSD_ALLOCATOR": "system",
    }
    procs = Processes(mlsd_home, env)
    try:
        migrated = procs.run(str(BIN / "dagster"), "instance", "migrate")  # storage created once, up front
        assert migrated.returncode == 0, migrated.stderr
        port = free_port()
        workspace = write_grpc_workspace(mlsd_home / "workspace.yaml", port)
        dagster = str(BIN / "dagster")
        procs.start("code-server", dagster, *code_server_args(port))
        ingest = procs.run(sys.executable, "-m", "mlsd_assets", "pipeline", "--through", "raw_cifar10")
        assert ingest.returncode == 0, ingest.stdout[-2000:] + ingest.stderr[-2000:]
        # Nothing automatic until the killed run is in place: only retraining_sensor is started later.
        stop = lambda: procs.run(dagster, "sensor", "stop", "retraining_sensor", "-w", str(workspace))  # noqa: E731
        _wait("code server serving", lambda: stop().returncode == 0, procs, step_s=2)
        for kind, name in (
            ("sensor", "new_data_sensor"),
            ("sensor", "run_failure_alert_sensor"),
            ("schedule", "training_schedule"),
        ):
            assert procs.run(dagster, kind, "stop", name, "-w", str(workspace)).returncode == 0
        procs.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", str(workspace))

        # `make pipeline` runs split_job in its own process: kill -9 it while the run is STARTED.
        worker = procs.start("split", sys.executable, "-c", SPLIT_IN_PROCESS)
        instance = dg.DagsterInstance.get()
        started = _wait(
            "split_job STARTED",
            lambda: _runs(instance, "split_job", statuses=[dg.DagsterRunStatus.STARTED]),
            procs,
            step_s=0.05,
        )
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        [killed] = started
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED, "killed mid-run"

        failed = _wait(
            "killed run marked FAILED by run monitoring",
            lambda: instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE,
            procs,
            deadline_s=90,
        )
        assert failed
        assert procs.run(dagster, "sensor", "start", "retraining_sensor", "-w", str(workspace)).returncode == 0
        [again] = _wait(
            "retraining_sensor requests a new split",
            lambda: _runs(instance, "split_job", tags={"dagster/sensor_name": "retraining_sensor"}),
            procs,
            deadline_s=90,
        )
        print(f"killed run {killed.run_id} FAILED; retraining_sensor then launched split run {again.run_id}")
    finally:
        procs.stop()
    messages = [e.message for e in instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)] + [
        e.message for e in instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    ]
    assert any("run worker process" in m and "exited" in m or "gone" in m for m in messages), messages


def test_the_pool_slot_of_a_killed_run_is_freed(tmp_path: Path) -> None:
    """A killed run never releases the slot its step claimed; with the `training` pool's one slot, every later
    training run (or the retry) would stay queued for ever. The instance's run monitoring frees it."""
    import datetime
    import shutil
    from types import SimpleNamespace

    from dagster._core.test_utils import freeze_time
    from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration
    from dagster._time import get_current_datetime

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    wait_s = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
    assert 0 < wait_s <= instance.run_monitoring_settings["poll_interval_seconds"] * 2
    run = instance.add_run(dg.DagsterRun(job_name="training_job", status=dg.DagsterRunStatus.STARTED))
    instance.event_log_storage.initialize_concurrency_limit_to_default("training")
    assert instance.event_log_storage.claim_concurrency_slot("training", run.run_id, "cifar10_model").is_claimed
    instance.report_run_failed(run)  # what run monitoring does once the worker is found dead
    context = SimpleNamespace(instance=instance)
    list(execute_concurrency_slots_iteration(context, LOG))
    assert instance.event_log_storage.get_concurrency_info("training").claimed_slots, "freed before the wait"
    with freeze_time(get_current_datetime() + datetime.timedelta(seconds=wait_s + 5)):
        list(execute_concurrency_slots_iteration(context, LOG))
    assert not instance.event_log_storage.get_concurrency_info("training").claimed_slots
    instance.dispose()
