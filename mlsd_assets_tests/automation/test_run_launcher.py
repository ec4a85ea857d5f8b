"""DockerEngineRunLauncher pulls a missing run image itself and fails the launch with the registry's own error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

import docker
from mlsd_assets.automation.run_launcher import DockerEngineRunLauncher

IMAGE = "127.0.0.1:5001/mlsd/user-code:train-abc"


class _Engine:
    """The parts of a docker-py client the launcher uses before creating a container; `pulls` answer in turn."""

    def __init__(self, pulls: list[list[dict[str, Any]]], has_image: bool = False) -> None:
        self.pulls, self.has_image, self.pulled = pulls, has_image, []
        self.images, self.api = self, self

    def get(self, name: str) -> object:
        if not self.has_image:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return object()

    def info(self) -> dict[str, str]:
        return {"Name": "host-b"}

    def pull(self, repository: str, tag: str, stream: bool, decode: bool) -> Iterator[dict[str, Any]]:
        assert stream and decode
        self.pulled.append(f"{repository}:{tag}")
        return iter(self.pulls.pop(0))


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DockerEngineRunLauncher, dg.DagsterInstance]]:
    with dg.instance_for_test() as instance:
        launcher = DockerEngineRunLauncher(image=IMAGE)
        launcher.register_instance(instance)
        monkeypatch.setattr(launcher, "get_container_context", lambda run: None)
        yield launcher, instance


def _run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    return instance.add_run(dg.DagsterRun(job_name="ingestion_job"))


def test_a_pull_error_fails_the_launch_naming_image_engine_and_cause(launcher, monkeypatch) -> None:
    launcher, instance = launcher
    denied = [{"status": "Pulling from mlsd/user-code"}, {"error": "manifest unknown: manifest unknown"}]
    engine = _Engine([denied, denied])
    monkeypatch.setattr(launcher, "_get_client", lambda context: engine)
    with pytest.raises(RuntimeError, match=r"pulling .*train-abc onto Docker engine host-b failed.*manifest unknown"):
        launcher._ensure_image(_run(instance), IMAGE)
    assert engine.pulled == [IMAGE, IMAGE]  # tried twice


def test_a_failed_pull_is_tried_again_and_the_pull_is_an_engine_event(launcher, monkeypatch) -> None:
    launcher, instance = launcher
    engine = _Engine([[{"error": "unexpected EOF"}], [{"status": "Downloaded newer image"}]])
    monkeypatch.setattr(launcher, "_get_client", lambda context: engine)
    run = _run(instance)
    launcher._ensure_image(run, IMAGE)
    assert engine.pulled == [IMAGE, IMAGE]  # the first try failed, the second pulled it
    events = [e.message for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any(f"] Pulled {IMAGE} onto Docker engine host-b in " in m for m in events), events


def test_an_image_already_there_is_not_pulled(launcher, monkeypatch) -> None:
    launcher, instance = launcher
    engine = _Engine([], has_image=True)
    monkeypatch.setattr(launcher, "_get_client", lambda context: engine)
    launcher._ensure_image(_run(instance), IMAGE)
    assert engine.pulled == []
