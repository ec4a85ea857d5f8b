"""Run launchers: one for the one-machine deployment that lets run monitoring see dead run workers, and one for
the scale-out deployment whose events say which Docker engine (execution host) ran each run.

Dagster's `DefaultRunLauncher` has no `check_run_worker_health` (`supports_check_run_worker_health` is
False), so run monitoring never looks at a STARTED run's process. The gRPC code server notices when a
worker it spawned dies, but a run executed in-process (`python -m mlsd_assets pipeline`, `dagster asset
materialize`) or one whose code server went down with it stays STARTED forever, and every sensor and
schedule that waits for runs in progress waits forever. This launcher launches exactly like
`DefaultRunLauncher` and answers the health check from the pid of the process that wrote the run's
RUN_START event (else the one named by "Executing steps in process (pid: N)"): a pid that is gone, a
zombie, or a newer process reusing the number means the worker died, and the monitoring daemon marks the
run FAILED.

`DockerEngineRunLauncher` is Dagster's `DockerRunLauncher` plus one engine event and one run tag naming the
engine the run container was created on (host name, engine ID, data root), so with several execution hosts a
run's event log says where it ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    ResumeRunContext,
    WorkerStatus,
)
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG

import docker

DOCKER_ENGINE_TAG = "mlsd/docker_engine"
# docker-py's default is 60 s; creating a container of the 1.7 GB training image on an engine with the vfs storage
# driver copies the whole image, and took longer than that with two runs launched at once on a busy host
DOCKER_API_TIMEOUT_S = 600
_SLACK_S = 5.0  # clock granularity between the process start time and its first event


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, timestamp) of the process executing the run: the one that wrote RUN_START (every Dagster event
    carries its writer's pid), else the first engine event that names it ("Executing steps in process")."""
    for of_type in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.ENGINE_EVENT):
        for record in instance.get_records_for_run(run_id, of_type=of_type, limit=50).records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            pid = event.pid if of_type == dg.DagsterEventType.RUN_START else None
            if pid is None and event.engine_event_data and "pid" in event.engine_event_data.metadata:
                pid = event.engine_event_data.metadata["pid"].value
            if pid is not None:
                return int(pid), record.event_log_entry.timestamp
    return None


def process_state(pid: int, seen_at: float) -> str | None:
    """Why process `pid` (seen alive at `seen_at`) is not running any more, or None if it still runs."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.parent.parent.is_dir():  # no procfs: signal 0 says whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} is gone"
        except PermissionError:
            pass
        return None
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return f"process {pid} is gone"
    if fields[0] in ("Z", "X"):
        return f"process {pid} has exited"
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    started = time.time() - uptime + int(fields[19]) / ticks
    if started > seen_at + _SLACK_S:
        return f"process {pid} has exited (the number now belongs to a process started later)"
    return None


class WorkerCheckingRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` plus a worker health check for run monitoring (one machine only)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        found = _worker_pid(self._instance, run.run_id)
        if found is None:  # the worker has not started the run yet: the start timeout covers that phase
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker pid logged yet")
        pid, seen_at = found
        gone = process_state(pid, seen_at)
        if gone:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the run worker {gone} (killed or out of memory?)")
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"process {pid} is running")


class DockerEngineRunLauncher(DockerRunLauncher):
    """`DockerRunLauncher` whose launch is followed by an engine event naming the Docker engine that got the
    run container (tag `mlsd/docker_engine`): with more than one execution host, the run says where it ran.
    Engine calls wait up to DOCKER_API_TIMEOUT_S (a timed-out create fails the run at launch)."""

    def _get_client(self, container_context: DockerContainerContext) -> docker.DockerClient:
        client = super()._get_client(container_context)
        client.api.timeout = DOCKER_API_TIMEOUT_S
        return client

    def launch_run(self, context: LaunchRunContext) -> None:
        super().launch_run(context)
        self._report_engine(context.dagster_run.run_id)

    def _launch_container_with_command(self, run: dg.DagsterRun, docker_image: str, command: list[str]) -> None:
        self._ensure_image(run, docker_image)
        super()._launch_container_with_command(run, docker_image, command)

    def _ensure_image(self, run: dg.DagsterRun, image: str, attempts: int = 2) -> None:
        """Pull the run image onto the run's engine when it lacks it, failing the launch with the registry's
        own error: docker-py's `images.pull` drops errors from the pull stream and then says only "no such
        image" (how a second host's first launch failed in test_stack.py)."""
        client = self._get_client(self.get_container_context(run))
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        repository, tag = docker.utils.parse_repository_tag(image)
        engine = client.info()["Name"]
        started, errors = time.monotonic(), []
        for _ in range(attempts):  # one more try: a registry restarting or a dropped connection
            stream = client.api.pull(repository, tag=tag or "latest", stream=True, decode=True)
            errors = [event["error"] for event in stream if "error" in event]
            if not errors:
                break
        if errors:
            raise RuntimeError(f"pulling {image} onto Docker engine {engine} failed ({attempts} tries): {errors[-1]}")
        self._instance.report_engine_event(
            f"Pulled {image} onto Docker engine {engine} in {time.monotonic() - started:.0f} s",
            dagster_run=run,
            cls=self.__class__,
        )

    def resume_run(self, context: ResumeRunContext) -> None:
        super().resume_run(context)
        self._report_engine(context.dagster_run.run_id)

    def _report_engine(self, run_id: str) -> None:
        run = self._instance.get_run_by_id(run_id)  # with the container-id tag the launch just added
        if run is None:
            return
        info = self._get_client(self.get_container_context(run)).info()
        engine = f"{info['Name']}/{info['ID']}"
        self._instance.add_run_tags(run_id, {DOCKER_ENGINE_TAG: engine})
        self._instance.report_engine_event(
            f"Run container {run.tags.get(DOCKER_CONTAINER_ID_TAG, '?')[:12]} is on Docker engine {info['Name']} "
            f"(ID {info['ID']}, data root {info['DockerRootDir']}, Docker {info['ServerVersion']})",
            dagster_run=run,
            cls=self.__class__,
        )
