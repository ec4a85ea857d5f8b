"""The gate's noise figure: one model evaluated side by side against itself, several times, on real CIFAR-10.

    .venv/bin/python benchmarks/gate_noise.py                      # trains 1 epoch of the default recipe first
    .venv/bin/python benchmarks/gate_noise.py --onnx model.onnx    # or reuse an exported model

Both servers run the same image; every test image goes to both, interleaved in random order per image. The
gate (mlsd_assets.core.evaluation.gate) must promote every time: the model is not worse than itself. Beside it,
the rule the gate replaced: challenger p95 (this run) vs the champion's p95 stored by an earlier solo
evaluation (run 0), tolerance 20%, and accuracy as two numbers with a fixed 0.5 pt margin.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def quick_model(data: Path, cache: Path, epochs: int, log: logging.Logger) -> bytes:
    """A few epochs of the default recipe on the 50k train images (accuracy does not matter here)."""
    from train_time_to_accuracy import load_official

    from mlsd_assets.core.data.batches import CIFAR10_CLASSES
    from mlsd_assets.core.serving.export import contract_metadata, export_onnx
    from mlsd_assets.core.training.recipes import recipe_config
    from mlsd_assets.core.training.train import TrainData, train

    arrays = load_official(data, cache, log)
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"]
    mean = tuple(float(v) for v in (x_train / 255.0).mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in (x_train / 255.0).std(axis=(0, 1, 2)))
    config = recipe_config("fast", epochs=epochs, threads=os.cpu_count() or 1)
    held_out = TrainData(x_train, y_train, x_test[:1000], y_test[:1000], mean, std)  # type: ignore[arg-type]
    result = train(held_out, config, log, select="last")
    meta = contract_metadata(
        classes=CIFAR10_CLASSES,
        mean=mean,
        std=std,
        architecture=config.architecture,
        mlflow_run_id="gate-noise",
        registered_model_name="gate-noise",
        registered_model_version="1",
        dataset_hash="gate-noise",
    )
    return export_onnx(result.model, meta, log)


def build(model_bytes: bytes, cache: Path, log: logging.Logger) -> tuple[object, str]:
    from mlsd_assets.core.serving.image import (
        DEFAULT_BASE_IMAGE,
        build_image,
        ensure_wheelhouse,
        host_pins,
        write_build_context,
    )
    from mlsd_assets.resources import DockerEngine

    client = DockerEngine().client()
    tag = f"mlsd-bench/gate-noise:{hashlib.sha256(model_bytes).hexdigest()[:12]}"
    wheelhouse = ensure_wheelhouse(cache / "wheelhouses", host_pins(), log)
    labels = {"mlsd.model_name": "gate-noise", "mlsd.model_version": "1"}
    context = write_build_context(cache / "gate-noise-context", model_bytes, wheelhouse, labels)
    return client, build_image(client, context, tag, DEFAULT_BASE_IMAGE, log).image_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mlsd-bench"))
    parser.add_argument("--onnx", type=Path, help="reuse this exported model instead of training one")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=0, help="first N test images (0: all 10,000)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--max-latency-ratio", type=float, default=1.25)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data PATH to cifar10-jpeg.tar.gz)", file=sys.stderr)
        return 2
    from mlsd_assets.core.platform.allocator import reexec_with_jemalloc
    from mlsd_assets.settings import environment

    if not args.onnx:
        reexec_with_jemalloc(environment())  # training steps on CPU: an allocator that keeps its pages
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("gate-noise")
    for noisy in ("docker", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).parent))

    from train_time_to_accuracy import load_official

    from mlsd_assets.core.evaluation.client import ServerClient, single_image_pass
    from mlsd_assets.core.evaluation.gate import compare_predictions, decide
    from mlsd_assets.core.evaluation.measure import interleaved_single_pass
    from mlsd_assets.core.serving.runtime import running_container

    args.cache.mkdir(parents=True, exist_ok=True)
    if args.onnx:
        model_bytes = args.onnx.read_bytes()
    else:
        model_bytes = quick_model(args.data, args.cache, args.epochs, log)
        (args.cache / "gate-noise-model.onnx").write_bytes(model_bytes)
    x_test, y_test = load_official(args.data, args.cache, log)["test"]
    n = args.images or len(x_test)
    x_test, y_test = x_test[:n], y_test[:n]
    client, image_id = build(model_bytes, args.cache, log)
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, loadavg {os.getloadavg()[0]:.2f} "
        "(other work was running on the same cores)"
    )

    def p95_ms(seconds: list[float]) -> float:
        return float(np.percentile(np.asarray(seconds) * 1000, 95))

    tag = uuid.uuid4().hex[:6]
    with running_container(client, image_id, f"mlsd-bench-solo-{tag}", log) as solo:
        c = ServerClient(solo.base_url)
        stored = single_image_pass(c, x_test)
        c.close()
    stored_acc = float((stored.predictions == y_test).mean())
    stored_p95 = p95_ms(stored.seconds)
    print(f"run 0 (solo evaluation, the champion's stored tags): accuracy {stored_acc:.4f}, p95 {stored_p95:.3f} ms")
    print(
        "run | ratio median | IQR | 95% CI of median | b | c | McNemar p | gate | challenger p95 ms "
        "| old rule (p95 vs stored, +20%; acc -0.5 pt)"
    )
    rows = []
    for run in range(1, args.runs + 1):
        started = time.perf_counter()
        with (
            running_container(client, image_id, f"mlsd-bench-champion-{tag}-{run}", log) as a,
            running_container(client, image_id, f"mlsd-bench-challenger-{tag}-{run}", log) as b,
        ):
            ca, cb = ServerClient(a.base_url), ServerClient(b.base_url)
            challenger, champion = interleaved_single_pass(cb, ca, x_test, seed=run)
            ca.close()
            cb.close()
        if challenger.errors or champion.errors:
            raise SystemExit(f"requests failed: {(challenger.errors + champion.errors)[:3]}")
        comparison = compare_predictions(
            y_test,
            champion.predictions,
            challenger.predictions,
            np.asarray(champion.seconds),
            np.asarray(challenger.seconds),
            "1",
            image_id,
        )
        gate = decide(comparison, args.alpha, args.max_latency_ratio, "v1-again")
        acc, p95 = comparison.challenger_accuracy, p95_ms(challenger.seconds)
        old = []
        if acc < stored_acc - 0.005:
            old.append(f"accuracy {acc:.4f} < {stored_acc:.4f} - 0.5 pt")
        if p95 > stored_p95 * 1.20:
            old.append(f"p95 {p95:.3f} > 1.2 x {stored_p95:.3f} ms")
        r = comparison.ratio
        rows.append(
            {
                "run": run,
                "ratio": r.median,
                "iqr": [r.q1, r.q3],
                "ci": [r.ci_low, r.ci_high],
                "b": comparison.b,
                "c": comparison.c,
                "p": comparison.p_worse,
                "gate": gate.promote,
                "p95": p95,
                "old": not old,
                "seconds": time.perf_counter() - started,
            }
        )
        print(
            f"{run} | {r.median:.3f} | {r.q1:.3f}-{r.q3:.3f} | {r.ci_low:.3f}-{r.ci_high:.3f} | {comparison.b} | "
            f"{comparison.c} | {comparison.p_worse:.3g} | {'promote' if gate.promote else 'REJECT'} | {p95:.3f} | "
            f"{'promote' if not old else 'REJECT: ' + '; '.join(old)} | {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    client.images.remove(image_id, force=True)
    gate_promotes = sum(r["gate"] for r in rows)
    old_promotes = sum(r["old"] for r in rows)
    ratios = [r["ratio"] for r in rows]
    print(
        f"RESULT images={n} runs={args.runs} gate promoted {gate_promotes}/{args.runs}, old rule promoted "
        f"{old_promotes}/{args.runs}; latency ratios {min(ratios):.3f}-{max(ratios):.3f}; challenger p95 "
        f"{min(r['p95'] for r in rows):.3f}-{max(r['p95'] for r in rows):.3f} ms vs stored {stored_p95:.3f} ms; "
        f"loadavg_end={os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
