"""`python -m mlsd_assets`: the whole pipeline through Dagster's own execution (every run shows in the UI).

`pipeline`: register the official batches, ingest each one (ingestion_job), build the split (split_job), then
train, export, build, evaluate and decide promotion (training_job). `register-batches`: only register the official
partitions. `rollback --to-version N --reason TEXT`: move `champion` back to version N (rollback_job).
DAGSTER_HOME picks the instance (`make pipeline` sets it); other locations come from mlsd_assets.settings.
"""

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from mlsd_assets.automation.jobs import ingestion_job, rollback_job, split_job, training_job
from mlsd_assets.automation.partitions import add_official_batches
from mlsd_assets.automation.sensors import step_errors
from mlsd_assets.core.data.batches import OFFICIAL_BATCHES
from mlsd_assets.core.platform.allocator import reexec_with_jemalloc
from mlsd_assets.settings import environment, load_settings

ORDER = (
    "raw_cifar10",
    "cifar10_split",
    "cifar10_model",
    "cifar10_onnx",
    "inference_server_image",
    "evaluation_report",
    "model_promotion",
)


class PipelineFailed(RuntimeError):
    """A run failed; the message names the job, partition, failed step and its cause."""


def _execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    partition: str | None = None,
    assets: Sequence[str] | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    where = f"{job_name}" + (f" [{partition}]" if partition else "")
    print(f"--> {where}", flush=True)
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        partition_key=partition,
        asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
        run_config=run_config,
        tags=tags,
        raise_on_error=False,
    )
    problems = [f"step {error}" for error in step_errors(result.get_step_failure_events())]
    # Blocking checks fail their run (caught above); the others are reported, as the UI shows them.
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            print(f"    check {ev.check_name} failed ({ev.severity.value}): {ev.description}", flush=True)
    if problems or not result.success:
        detail = "; ".join(problems) or "see the run in the UI"
        raise PipelineFailed(f"{where} (run {result.run_id}) failed: {detail}")
    for event in result.get_asset_materialization_events():
        path = event.materialization.metadata.get("path")
        print(f"    {event.asset_key.to_user_string()}: {path.value if path else 'materialized'}", flush=True)
    return result


def summary(result: dg.ExecuteInProcessResult, tracking_uri: str) -> list[str]:
    """What a first run ends with: the figures, the gate's decision, and where to look next."""
    values: dict[str, dict[str, object]] = {}
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        values[event.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in meta.items()}
    model, report = values.get("cifar10_model", {}), values.get("evaluation_report", {})
    lines = ["", "==== summary ===="]
    if model:
        widths = dict(model.get("hyperparameters") or {}).get("widths")  # a long budget may pick a wider net
        net = f"{model['architecture']}" + (f" {'-'.join(map(str, widths))}" if widths else "")
        lines.append(
            f"model: validation accuracy {float(model['val_accuracy']):.4f}, trained {model['train_seconds']}s"
            f" ({model['epochs']} epochs of {net}, {model['precision']}, budget {model.get('time_budget_minutes')}"
            f" min), MLflow run {model['mlflow_run_id']}"
        )
    if report:
        lines.append(
            f"served model: test accuracy {float(report['accuracy']):.4f}, latency p50 {report['latency_p50_ms']} ms"
            f" p95 {report['latency_p95_ms']} ms per image, {report['batched_images_per_s']} img/s batched"
        )
        lines.append(f"report files: {Path(str(report['confusion_matrix'])).parent}")
    for ev in result.get_asset_check_evaluations():
        verdict = "passed" if ev.passed else f"FAILED ({ev.severity.value})"
        lines.append(f"gate {ev.check_name}: {verdict}" + (f": {ev.description}" if ev.description else ""))
    lines += [
        "look at it: `make dev`, then http://127.0.0.1:3000/assets/evaluation_report (pictures inline)",
        f"MLflow: .venv/bin/mlflow ui --backend-store-uri {tracking_uri}  (http://127.0.0.1:5000)",
    ]
    return lines


def pipeline(through: str, epochs: int | None, budget_minutes: float | None = None) -> None:
    from mlsd_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    new = add_official_batches(instance)
    print(f"instance {instance.root_directory}: registered {len(new)} new partition(s)", flush=True)
    stop = ORDER.index(through)
    for partition in OFFICIAL_BATCHES:
        _execute(defs, instance, ingestion_job.name, partition=partition)
    if stop >= ORDER.index("cifar10_split"):
        _execute(defs, instance, split_job.name)
    if stop >= ORDER.index("cifar10_model"):
        model_config = {"epochs": epochs} if epochs else {}
        if budget_minutes is not None:
            model_config["time_budget_minutes"] = budget_minutes
        run_config = {"ops": {"cifar10_model": {"config": model_config}}} if model_config else None
        result = _execute(defs, instance, training_job.name, assets=ORDER[2 : stop + 1], run_config=run_config)
        print("\n".join(summary(result, load_settings().mlflow_tracking_uri)), flush=True)
    print(f"done through {through}; browse the runs with `make dev` (DAGSTER_HOME={instance.root_directory})")


def register_batches() -> None:
    instance = dg.DagsterInstance.get()
    new = add_official_batches(instance)
    print(f"registered {len(new)} new partition(s): {', '.join(new) or '-'} ({instance.root_directory})")


def rollback(to_version: str, reason: str) -> None:
    from mlsd_assets.definitions import defs

    by = getpass.getuser()
    config = {"version": to_version, "reason": reason, "requested_by": by}
    run_config = {"ops": {"champion_rollback": {"config": config}}}
    tags = {"mlsd/requested_by": by, "mlsd/rollback_to": to_version}
    result = _execute(defs, dg.DagsterInstance.get(), rollback_job.name, run_config=run_config, tags=tags)
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        print(
            f"champion is now v{meta['champion_after'].value} (was v{meta['previous_champion'].value}); "
            f"pushed: {meta['pushed'].value}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlsd_assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("pipeline", help="run the pipeline end to end (ingest, split, train, evaluate)")
    run.add_argument("--through", choices=ORDER, default=ORDER[-1], help="stop after this asset")
    run.add_argument(
        "--epochs", type=int, default=None, help="override cifar10_model's epochs (the time budget is then ignored)"
    )
    run.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="cifar10_model's training time budget (default: its config's time_budget_minutes)",
    )
    commands.add_parser("register-batches", help="register the official batches as raw_cifar10 partitions")
    back = commands.add_parser("rollback", help="move `champion` back to an earlier version, re-push its image")
    back.add_argument("--to-version", required=True, help="the registered model version to make champion again")
    back.add_argument("--reason", default="manual rollback", help="why (recorded on the version and the run)")
    args = parser.parse_args(argv)
    if args.command == "pipeline" and argv is None:
        reexec_with_jemalloc(environment())  # training runs in this process: give it an allocator that keeps its pages
    try:
        if args.command == "pipeline":
            pipeline(args.through, args.epochs, args.budget_minutes)
        elif args.command == "rollback":
            rollback(args.to_version, args.reason)
        else:
            register_batches()
    except PipelineFailed as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
