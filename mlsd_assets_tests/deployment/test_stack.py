"""docker compose up of the whole stack: runs queued through the webserver, launched by the daemon as containers,
a run container killed mid-training and retried from its checkpoint, and runs on a second Docker engine."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from mlsd_assets.core.serving.runtime import free_port
from mlsd_assets_tests.cifar_files import write_cifar_python_tarball
from mlsd_assets_tests.deployment.browser import Browser, chromium_unavailable_reason
from mlsd_assets_tests.deployment.engine import SecondEngine
from mlsd_assets_tests.deployment.images import ensure_image
from mlsd_assets_tests.deployment.instance import deployment_instance_config
from mlsd_assets_tests.deployment.stack import SERVICES, STACK_LABEL, Stack, container_logs, docker

# The first test also builds the images when their inputs changed (about 15-35 min on a busy 2-core machine), so the
# module is `slow` (`make test-all`): CI's 90 minutes cannot afford a cold build of six images under vfs.
pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(3600)]

IMAGES = ("postgres", "mlflow", "user-code", "dagster", "registry", "prometheus")
MODEL = "mlsd-cifar10-classifier"
EXPERIMENT = "mlsd-cifar10"
SPLIT_CONFIG = {
    "ops": {
        "cifar10_split": {"config": {"validation_fraction": 0.3}},
        "cifar10_split_check_cifar10_split_class_balance": {"config": {"tolerance": 1.0}},
    }
}
TINY_MODEL = {"widths": [8, 16, 16], "epochs": 2, "batch_size": 50, "lr": 0.2, "muon_lr": 0.1}
# slow enough (a few seconds an epoch on 2 busy cores) that the kill lands in the middle of training
SLOW_MODEL = {**TINY_MODEL, "widths": [48, 96, 96], "epochs": 8, "threads": 1}
EPOCH = re.compile(r"epoch \d+/\d+:")  # the per-epoch summary cifar10_model logs
# what a run's timeline shows: its lifecycle, the launcher's and daemon's engine events, epochs and resumption
TIMELINE_KINDS = {"RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "RUN_FAILURE", "RUN_SUCCESS", "ENGINE_EVENT"}
QUEUE_PATH = [
    e.value
    for e in (
        dg.DagsterEventType.RUN_ENQUEUED,  # the daemon dequeues and launches: STARTING, from the launcher
        dg.DagsterEventType.RUN_STARTING,
        dg.DagsterEventType.RUN_START,
        dg.DagsterEventType.RUN_SUCCESS,
    )
]


MIN_FREE_GB = 25


def _model_config(config: dict[str, Any]) -> dict[str, Any]:
    return {"ops": {"cifar10_model": {"config": {"precision": "fp32", "threads": 2, **config}}}}


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose project, up and healthy; the user-code image carries its registry name (pushed later)."""
    root = json.loads(docker("info", "--format", "{{json .DockerRootDir}}"))
    free_gb = shutil.disk_usage(root).free / 1e9
    # under vfs every run container is a full copy of the 1.7 GB image (six of them here), and the second engine
    # unpacks the image's layers once more: a full disk shows up as "no space left on device" at container create
    assert free_gb >= MIN_FREE_GB, f"{root}: {free_gb:.0f} GB free, the stack tests need {MIN_FREE_GB} GB"
    build_dir = tmp_path_factory.mktemp("image-builds")
    started = time.monotonic()
    images = {name: ensure_image(name, build_dir, "train" if name == "user-code" else None) for name in IMAGES}
    built = time.monotonic() - started
    project = f"mlsdtest{secrets.token_hex(4)}"
    registry_port = free_port()
    run_image = f"127.0.0.1:{registry_port}/{images['user-code']}"
    docker("tag", images["user-code"], run_image)
    stack = Stack(
        project=project,
        workdir=tmp_path_factory.mktemp("stack"),
        images={**images, "user-code": run_image},
        password=secrets.token_hex(12),
        ports={"registry": registry_port},
    )
    write_cifar_python_tarball(stack.data_dir / "sources", per_batch=300)
    try:
        started = time.monotonic()
        stack.up()
        stack.stop_automation()  # e.g. retraining_sensor would train again after every split
        # the official batches as partitions, so that each test can also run alone (`-k second_engine`)
        stack.compose_run("exec", "-T", "user_code", "python", "-m", "mlsd_assets", "register-batches")
        print(
            f"\nimages ready in {built:.0f} s; compose up --wait of {len(SERVICES)} services: "
            f"{time.monotonic() - started:.0f} s (subnet {stack.subnet}, project {project})"
        )
        yield stack
    finally:
        try:
            stack.down()
        finally:
            docker("image", "rm", run_image, check=False)


def _events(stack: Stack, run_id: str) -> list[dg.EventLogEntry]:
    rows = stack.sql("SELECT event FROM event_logs WHERE run_id = %s ORDER BY id", (run_id,))
    return [dg.deserialize_value(event, dg.EventLogEntry) for (event,) in rows]


def _materialization(stack: Stack, run_id: str, asset: str) -> dict[str, Any]:
    for entry in _events(stack, run_id):
        if entry.asset_materialization and entry.asset_materialization.asset_key.path == [asset]:
            return {k: v.value for k, v in entry.asset_materialization.metadata.items()}
    raise AssertionError(f"run {run_id} materialized no {asset}:\n{stack.failure_details(run_id)}")


def _run_and_check(stack: Stack, run_id: str, timeout: float = 600) -> dict[str, Any]:
    """Waits for SUCCESS; the run went queue -> daemon -> a container of the run image on the stack network."""
    status = stack.wait_finished(run_id, timeout)
    assert status == "SUCCESS", stack.failure_details(run_id)
    kinds = [e.dagster_event.event_type_value for e in _events(stack, run_id) if e.dagster_event]
    assert [k for k in kinds if k in QUEUE_PATH] == QUEUE_PATH, kinds
    (container_id,) = stack.sql(
        "SELECT value FROM run_tags WHERE run_id = %s AND key = 'docker/container_id'", (run_id,)
    )[0]
    inspect = json.loads(docker("inspect", container_id, host=stack.run_engine))[0]
    assert inspect["Config"]["Image"] == stack.images["user-code"]
    assert inspect["State"]["ExitCode"] == 0 and inspect["Config"]["Labels"]["dagster/run_id"] == run_id
    return inspect


def _mlflow(stack: Stack, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{stack.mlflow_url}/api/2.0/mlflow/{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()


def _model_versions(stack: Stack) -> list[dict[str, Any]]:
    return _mlflow(stack, "model-versions/search", filter=f"name='{MODEL}'").get("model_versions", [])


def _serve_and_scrape(stack: Stack, model: str) -> dict[str, str]:
    """The inference server (the run image has its code) as `inference-server` on the stack network; waits
    until Prometheus' scrape of its /metrics is up. Returns each scrape pool's health."""
    docker(
        "run", "-d", "--name", f"{stack.project}-inference-server", "--network", stack.network,
        "--network-alias", "inference-server", "--label", f"{STACK_LABEL}={stack.project}",
        "-v", f"{stack.project}_data:/opt/mlsd", stack.images["user-code"],
        "python", "-m", "mlsd_assets.core.serving.server", "--model", model, "--host", "0.0.0.0", "--port", "8080",
    )  # fmt: skip
    prometheus = f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1"
    deadline = time.monotonic() + 120
    while True:
        targets = httpx.get(f"{prometheus}/targets", timeout=30).json()["data"]["activeTargets"]
        pools = {t["labels"]["job"]: t["health"] for t in targets}
        if pools.get("inference_server") == "up":
            break
        assert time.monotonic() < deadline, f"{targets}\n{container_logs(f'{stack.project}-inference-server')}"
        time.sleep(2)
    query = httpx.get(f"{prometheus}/query", params={"query": 'up{job="inference_server"}'}, timeout=30).json()
    assert [r["value"][1] for r in query["data"]["result"]] == ["1"], query
    assert pools["prometheus"] == "up", pools
    return pools


def test_stack_runs_a_queued_job_in_containers(stack: Stack, tmp_path: Path) -> None:
    """Ingest two batches, split, train and export: each run launched through the webserver's GraphQL as the UI
    does; the exported model served on the stack network and scraped by the stack's Prometheus."""
    started = time.monotonic()
    ingestion = [stack.launch("ingestion_job", tags={"dagster/partition": p}) for p in ("data_batch_1", "test_batch")]
    inspects = [_run_and_check(stack, run_id) for run_id in ingestion]
    split = stack.launch("split_job", run_config=SPLIT_CONFIG)
    inspects.append(_run_and_check(stack, split))
    training = stack.launch(
        "__ASSET_JOB", assets=["cifar10_model", "cifar10_onnx"], run_config=_model_config(TINY_MODEL)
    )
    inspects.append(_run_and_check(stack, training))
    elapsed = time.monotonic() - started

    for inspect in inspects:  # every run had its own container on the compose network, with the shared volume
        assert list(inspect["NetworkSettings"]["Networks"]) == [stack.network]
        assert any(m.get("Name") == f"{stack.project}_data" for m in inspect["Mounts"])
    # Postgres: the runs, their materializations
    runs = dict(stack.sql("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", ([*ingestion, split, training],)))
    assert set(runs.values()) == {"SUCCESS"} and len(runs) == 4
    materialized = stack.sql(
        "SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id"
    )
    assert sorted((json.loads(k)[0], p) for k, p in materialized) == [
        ("cifar10_model", None),
        ("cifar10_onnx", None),
        ("cifar10_split", None),
        ("raw_cifar10", "data_batch_1"),
        ("raw_cifar10", "test_batch"),
    ]
    # the shared volume: what the run containers wrote
    artifacts = stack.data_dir / "data" / "artifacts"
    for relative in ("raw_cifar10/data_batch_1.npz", "raw_cifar10/test_batch.npz", "cifar10_split/latest.npz"):
        assert (artifacts / relative).is_file(), relative
    assert list((artifacts / "cifar10_model").iterdir()), "no cifar10_model artifact"
    # MLflow server (REST): the run, tagged with the Dagster run, finished, its model registered
    metadata = _materialization(stack, training, "cifar10_model")
    mlflow_run = _mlflow(stack, "runs/get", run_id=metadata["mlflow_run_id"])["run"]
    assert mlflow_run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in mlflow_run["data"]["tags"]}
    assert tags["dagster.run_id"] == training
    assert {m["key"] for m in mlflow_run["data"]["metrics"]} >= {"val_accuracy", "train_loss"}
    versions = _model_versions(stack)
    assert [(v["run_id"], v["version"]) for v in versions] == [(metadata["mlflow_run_id"], "1")]
    # Prometheus scrapes the inference server: the trained ONNX model served on the stack network
    pools = _serve_and_scrape(stack, "/opt/mlsd/data/artifacts/cifar10_onnx/latest.onnx")
    print(
        f"4 runs (2 ingestion, split, training) queued, launched and finished in {elapsed:.0f} s; "
        f"MLflow run {metadata['mlflow_run_id']}, model version 1; prometheus targets {pools}"
    )

    # The UI the webserver container serves, in Chromium: the run page and the asset graph
    reason = chromium_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Browser(tmp_path / "chromium-profile") as browser:
        browser.navigate(f"{stack.webserver_url}/runs/{training}")
        browser.wait_for_text([training[:8], "cifar10_model", "Success"], timeout=120)
        browser.screenshot(tmp_path / "run.png")
        browser.navigate(f"{stack.webserver_url}/locations/mlsd_assets/asset-groups/training")
        browser.wait_for_text(["cifar10_model", "cifar10_onnx"], timeout=90, absent=("Loading...",))
        browser.screenshot(tmp_path / "asset_graph_training.png")
        browser.navigate(f"{stack.webserver_url}/runs")
        browser.wait_for_text([r[:8] for r in (*ingestion, split, training)], timeout=60)
    shots = [tmp_path / "run.png", tmp_path / "asset_graph_training.png"]
    assert all(p.stat().st_size > 10_000 for p in shots)


def _mlflow_run_of(stack: Stack, dagster_run_id: str) -> dict[str, Any] | None:
    """The MLflow run a Dagster run started (tag dagster.run_id), or None before it exists."""
    experiment = httpx.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": EXPERIMENT}
    ).json()["experiment"]["experiment_id"]
    body = {"experiment_ids": [experiment], "filter": f"tags.`dagster.run_id` = '{dagster_run_id}'"}
    runs = httpx.post(f"{stack.mlflow_url}/api/2.0/mlflow/runs/search", json=body, timeout=30).json().get("runs", [])
    return runs[0] if runs else None


def _epochs_in_mlflow(stack: Stack, mlflow_run_id: str) -> list[int]:
    history = _mlflow(stack, "metrics/get-history", run_id=mlflow_run_id, metric_key="train_loss")  # every epoch
    return sorted(int(m["step"]) for m in history.get("metrics", []))


def _checkpoint_epoch(stack: Stack) -> int:
    """The epoch of the one training checkpoint on the shared volume: what a retry must resume from."""
    from mlsd_assets.core.training.train import CHECKPOINT_NAME, read_checkpoint

    (checkpoint,) = (stack.data_dir / "data" / "checkpoints").glob(f"*/{CHECKPOINT_NAME}")
    state = read_checkpoint(checkpoint.parent)
    assert state is not None, checkpoint
    return int(state["epoch"])


def _timeline(stack: Stack, run_ids: list[str], t0: float) -> list[dict[str, Any]]:
    """Lifecycle and engine events and epoch/resume messages of the runs, in seconds after t0."""
    rows = []
    for run_id in run_ids:
        for entry in _events(stack, run_id):
            kind = entry.dagster_event.event_type.name if entry.dagster_event else "LOG"  # value: PIPELINE_START
            message = entry.message or ""
            if kind in TIMELINE_KINDS or EPOCH.match(message) or message.startswith("resuming from checkpoint"):
                rows.append(
                    {"t_s": round(entry.timestamp - t0, 1), "run": run_id[:8], "event": kind, "message": message[:200]}
                )
    return sorted(rows, key=lambda row: row["t_s"])


def test_killed_run_container_is_retried_and_resumes(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL of the run container mid-training: run monitoring fails the run, run retries start a new one,
    which resumes from the last epoch checkpoint in the same MLflow run; no second registered version. The
    timeline (events of both runs, seconds after launch) goes to crash_retry_timeline.json and stdout."""
    versions_before = len(_model_versions(stack))
    assert versions_before >= 1, "runs after test_stack_runs_a_queued_job_in_containers"
    epochs = SLOW_MODEL["epochs"]
    t0 = time.time()
    run_id = stack.launch("__ASSET_JOB", assets=["cifar10_model"], run_config=_model_config(SLOW_MODEL))
    deadline = time.monotonic() + 900
    # kill once epoch 2 is checkpointed and in MLflow (the checkpoint is written before either is logged)
    while (mlflow_run := _mlflow_run_of(stack, run_id)) is None or max(
        _epochs_in_mlflow(stack, mlflow_run["info"]["run_id"]), default=0
    ) < 2:
        assert time.monotonic() < deadline, stack.failure_details(run_id)
        assert stack.status(run_id) not in ("SUCCESS", "FAILURE"), stack.failure_details(run_id)
        time.sleep(0.3)
    (container_id,) = stack.sql(
        "SELECT value FROM run_tags WHERE run_id = %s AND key = 'docker/container_id'", (run_id,)
    )[0]
    docker("kill", "--signal", "KILL", container_id)
    killed_at = time.time() - t0
    mlflow_run_id = mlflow_run["info"]["run_id"]
    killed_epoch = _checkpoint_epoch(stack)  # the container is dead: nothing writes the checkpoint any more
    assert 2 <= killed_epoch < epochs, killed_epoch

    assert stack.wait_finished(run_id, timeout=300) == "FAILURE"
    # run monitoring's verdict: "Detected run worker status ... Marking run <id> as failed."
    assert any("Detected run worker status" in m for m in stack.run_messages(run_id)), stack.failure_details(run_id)
    deadline = time.monotonic() + 300
    query = "SELECT run_id FROM run_tags WHERE key = 'dagster/parent_run_id' AND value = %s"
    while not (retry := stack.sql(query, (run_id,))):
        assert time.monotonic() < deadline, f"no retry of {run_id}:\n{stack.logs('daemon')}"
        time.sleep(1)
    retry_id = retry[0][0]
    # the dead run's `training` pool slot must be freed (run_monitoring.free_slots_after_run_end_seconds), or the
    # retry stays QUEUED behind it for ever
    deadline = time.monotonic() + 180
    while stack.status(retry_id) == "QUEUED":
        assert time.monotonic() < deadline, f"retry {retry_id} still queued after 180 s:\n{stack.logs('daemon')}"
        time.sleep(1)
    assert stack.wait_finished(retry_id, timeout=900) == "SUCCESS", stack.failure_details(retry_id)
    total = time.time() - t0

    retry_messages = stack.run_messages(retry_id)
    resumed = [m for m in retry_messages if m.startswith("resuming from checkpoint")]
    assert resumed and resumed[0].endswith(f"after epoch {killed_epoch}/{epochs}"), (killed_epoch, resumed)
    retry_epochs = [m.split(":")[0] for m in retry_messages if EPOCH.match(m)]
    assert retry_epochs == [f"epoch {e}/{epochs}" for e in range(killed_epoch + 1, epochs + 1)], retry_epochs
    metadata = _materialization(stack, retry_id, "cifar10_model")
    assert metadata["resumed_from_epoch"] == killed_epoch
    # one MLflow run across both attempts, every epoch's metric once, and one new registered version
    assert metadata["mlflow_run_id"] == mlflow_run_id
    assert _epochs_in_mlflow(stack, mlflow_run_id) == list(range(1, epochs + 1))
    versions = _model_versions(stack)
    assert len(versions) == versions_before + 1
    assert max(versions, key=lambda v: int(v["version"]))["run_id"] == mlflow_run_id

    timeline = {
        "epochs": epochs,
        "killed_after_epoch": killed_epoch,
        "sigkill_at_s": round(killed_at, 1),
        "resumed_after_epoch": metadata["resumed_from_epoch"],
        "total_s": round(total, 1),
        "failed_run": run_id,
        "retry_run": retry_id,
        "mlflow_run": mlflow_run_id,
        "registered_versions": [versions_before, len(versions)],
        "events": _timeline(stack, [run_id, retry_id], t0),
    }
    (tmp_path / "crash_retry_timeline.json").write_text(json.dumps(timeline, indent=1))
    print(f"\ncrash-retry timeline ({tmp_path / 'crash_retry_timeline.json'}):")
    print(f"  {killed_at:7.1f} s  SIGKILL of run container {container_id[:12]} (checkpoint: epoch {killed_epoch})")
    for row in timeline["events"]:
        print(f"  {row['t_s']:7.1f} s  {row['run']}  {row['event']:<16} {row['message'][:110]}")
    print(
        f"  total {total:.0f} s; MLflow run {mlflow_run_id}; registered versions {versions_before} -> {len(versions)}"
    )


@pytest.fixture
def second_engine(stack: Stack, tmp_path: Path) -> Iterator[SecondEngine]:
    engine = SecondEngine.start(stack.project)
    try:
        yield engine
    finally:
        try:
            for container in stack.run_containers(engine.host):
                docker("rm", "-f", container, host=engine.host)
            assert not stack.run_containers(engine.host)
        finally:
            stack.run_engine = None  # the stack's tear-down then looks at the default engine only
            errors = [line for line in engine.log().splitlines() if "level=error" in line]
            print("\nsecond engine's errors:\n" + "\n".join(errors[-20:]) if errors else "")
            engine.stop()


def test_runs_on_a_second_engine_through_the_registry(
    stack: Stack, second_engine: SecondEngine, tmp_path: Path
) -> None:
    """The daemon (on the default engine) launches runs on another engine, which pulls the run image from the
    stack's registry; Postgres, MLflow and storage are shared (storage: host folders, bind-mounted on both)."""
    started, started_wall = time.monotonic(), time.time()
    docker("push", stack.images["user-code"], timeout=900)
    pushed = time.monotonic() - started
    config = deployment_instance_config()
    launcher = config["run_launcher"]["config"]
    # run containers of the second host reach the stack through its published ports, as another machine would
    launcher["network"] = "host"
    overrides = {
        "DAGSTER_POSTGRES_HOST": "127.0.0.1",
        "DAGSTER_POSTGRES_PORT": str(stack.ports["postgres"]),
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
    }
    launcher["env_vars"] = [f"{v}={overrides[v]}" if v in overrides else v for v in launcher["env_vars"]]
    launcher["container_kwargs"]["volumes"] = [
        f"{stack.data_dir}:/opt/mlsd",
        f"{stack.storage_dir}:/opt/dagster/storage",
    ]
    stack.instance_config(config, name="dagster-second-host.yaml")
    stack.run_engine = second_engine.host
    # only these two change: the code server keeps serving (and reporting the registry image name)
    stack.up("--no-deps", "daemon", "webserver", instance_config="dagster-second-host.yaml")

    run_id = stack.launch("ingestion_job", tags={"dagster/partition": "data_batch_2"})
    inspect = _run_and_check(stack, run_id, timeout=900)
    elapsed = time.monotonic() - started
    container_id = inspect["Id"]
    assert docker("ps", "-aq", "--no-trunc", "--filter", f"id={container_id}") == "", "ran on the default engine"
    assert inspect["HostConfig"]["NetworkMode"] == "host"
    pulled = json.loads(docker("image", "inspect", stack.images["user-code"], host=second_engine.host))[0]
    assert any(d.startswith(stack.images["user-code"].rsplit(":", 1)[0] + "@sha256:") for d in pulled["RepoDigests"])
    assert (stack.data_dir / "data" / "artifacts" / "raw_cifar10" / "data_batch_2.npz").is_file()
    # the run's own events say where it ran: the launcher names the engine that got the container
    engine = json.loads(docker("info", "--format", "{{json .}}", host=second_engine.host))
    first_engine_id = json.loads(docker("info", "--format", "{{json .}}"))["ID"]
    assert engine["ID"] != first_engine_id
    events = [{k: row[k] for k in ("t_s", "event", "message")} for row in _timeline(stack, [run_id], started_wall)]
    launcher = "[DockerEngineRunLauncher] "  # Dagster prefixes the class of an engine event's reporter
    messages = [entry.message or "" for entry in _events(stack, run_id)]  # whole: the timeline cuts them at 200
    on_engine = [m for m in messages if m.startswith(f"{launcher}Run container {container_id[:12]}")]
    assert on_engine == [
        f"{launcher}Run container {container_id[:12]} is on Docker engine {engine['Name']} (ID {engine['ID']}, "
        f"data root {engine['DockerRootDir']}, Docker {engine['ServerVersion']})"
    ], events
    pulls = [m for m in messages if m.startswith(f"{launcher}Pulled {stack.images['user-code']} onto Docker engine")]
    assert len(pulls) == 1, events  # the image came from the registry, pulled by the launcher onto that engine
    tags = dict(stack.sql("SELECT key, value FROM run_tags WHERE run_id = %s", (run_id,)))
    assert tags["mlsd/docker_engine"] == f"{engine['Name']}/{engine['ID']}"
    record = {
        "engine": second_engine.host,
        "engine_id": engine["ID"],
        "data_root": engine["DockerRootDir"],
        "first_engine_id": first_engine_id,
        "push_s": round(pushed, 1),
        "push_to_success_s": round(elapsed, 1),
        "run": run_id,
        "events": events,
    }
    (tmp_path / "second_host_run.json").write_text(json.dumps(record, indent=1))
    print(
        f"\nsecond engine {second_engine.host} (ID {engine['ID']}, data root {engine['DockerRootDir']}; the "
        f"default engine is {first_engine_id}): image pushed in {pushed:.0f} s; run {run_id} pulled, ran and "
        f"succeeded, {elapsed:.0f} s from push to success; its events ({tmp_path / 'second_host_run.json'}):"
    )
    for event in events:
        print(f"  {event['t_s']:7.1f} s  {event['event']:<16} {event['message'][:150]}")
