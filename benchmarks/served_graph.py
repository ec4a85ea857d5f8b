"""Served-graph variants of the trained model: accuracy, agreement with fp32, latency and throughput, the choice.

    MLSD_CIFAR10_SOURCE=../shared/data/cifar10-jpeg.tar.gz \\
        .venv/bin/python -m mlsd_assets pipeline --through cifar10_model --epochs 8   # once, if no model yet
    .venv/bin/python benchmarks/served_graph.py [--artifacts .mlsd/data/artifacts] [--threads 1,2]

Reads the latest `cifar10_model` and `cifar10_split` artifacts (the real images), exports the fp32 graph with
and without flip-TTA, builds every variant of mlsd_assets/core/serving/graph.py plus int8 ablations (every op
quantized as in the naive probe, first/last layers quantized too, other calibration methods, 7-bit weights as
ORT advises for CPUs without VNNI), and prints per variant: validation and test accuracy, argmax agreement with
the fp32 reference on validation, single-image p50/p99 and batched images/s for each thread count, then the
variant the default rule serves. Test images are only reported, never used to choose. Figures also go to
benchmarks/out/served_graph.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlsd_assets.core.data.splits import Cifar10Split  # noqa: E402
from mlsd_assets.core.serving import graph as sg  # noqa: E402
from mlsd_assets.core.serving.export import export_onnx  # noqa: E402
from mlsd_assets.core.serving.server.model import inference_session  # noqa: E402
from mlsd_assets.core.training.artifacts import TrainedModel  # noqa: E402

log = logging.getLogger("served_graph")


def cpu_name() -> str:
    """Model name and the vector extensions that decide int8/bf16 kernels."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return f"{name or platform.processor()} [{' '.join(f for f in wanted if f in flags)}]"


def build(model: TrainedModel, split: Cifar10Split, calibration: int) -> tuple[dict[str, bytes], bytes]:
    """Every variant (the served candidates first, then int8 ablations) and the fp32 reference graph."""
    module = model.inference_model()
    graphs = {}
    for tta in (False, True):
        module.flip_tta = tta
        graphs[tta] = export_onnx(module, {}, log)
    reference = graphs[bool(model.hyperparameters.get("flip_tta", False))]
    cal = sg.calibration_sample(split.arrays("train")[0], calibration)
    variants = sg.build_variants(graphs[False], graphs[True], sg.VARIANTS, cal, "minmax", log)
    ablations = {
        "int8_naive (every op, no fp32 layers)": dict(op_types=None, keep_boundaries_fp32=False),
        "int8_all_convs (first conv quantized)": dict(keep_boundaries_fp32=False),
        "int8_percentile": dict(method="percentile"),
        "int8_entropy": dict(method="entropy"),
        "int8_reduce_range (7-bit weights)": dict(reduce_range=True),
        "int8_tta_reduce_range (7-bit weights)": dict(reduce_range=True, tta=True),
    }
    for name, options in ablations.items():
        method, base = options.pop("method", "minmax"), graphs[bool(options.pop("tta", False))]
        variants[name] = sg.quantize_int8(base, cal, method, log, **options)  # type: ignore[arg-type]
    return variants, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / ".mlsd" / "data" / "artifacts")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts to time")
    parser.add_argument("--latency-runs", type=int, default=400, help="single-image calls per variant")
    parser.add_argument("--throughput-images", type=int, default=2048, help="images for batched img/s")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--max-accuracy-drop-pt", type=float, default=0.3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    model_path = args.artifacts / "cifar10_model" / "latest.npz"
    split_path = args.artifacts / "cifar10_split" / "latest.npz"
    if not (model_path.exists() and split_path.exists()):
        sys.exit(
            f"no trained model at {model_path}: run `MLSD_CIFAR10_SOURCE=../shared/data/cifar10-jpeg.tar.gz "
            ".venv/bin/python -m mlsd_assets pipeline --through cifar10_model --epochs 8` first"
        )
    model, split = TrainedModel.load(model_path), Cifar10Split.load(split_path)
    x_val, y_val = split.arrays("validation")
    x_test, y_test = split.arrays("test")
    print(f"CPU: {cpu_name()}")
    print(
        f"model: {model.architecture} {model.hyperparameters.get('widths')}, trained with flip_tta="
        f"{model.hyperparameters.get('flip_tta')}, MLflow run {model.mlflow_run_id}; validation "
        f"{len(x_val)}, test {len(x_test)} images"
    )
    start = time.perf_counter()
    variants, reference = build(model, split, args.calibration_images)
    print(f"built {len(variants)} variants in {time.perf_counter() - start:.0f} s")

    threads = [int(t) for t in args.threads.split(",")]
    expected = sg.logits(inference_session(reference, max(threads)), x_val)[0].argmax(1)
    rows: dict[str, dict] = {}
    for name, data in variants.items():
        model_session = inference_session(data, max(threads))
        val_pred = sg.logits(model_session, x_val)[0].argmax(1)
        test_pred = sg.logits(model_session, x_test)[0].argmax(1)
        rows[name] = {
            "val_accuracy": float((val_pred == y_val).mean()),
            "test_accuracy": float((test_pred == y_test).mean()),
            "agreement": float((val_pred == expected).mean()),
            "size_bytes": len(data),
        }
    sample = np.ascontiguousarray(x_val[: args.throughput_images])
    for t in threads:
        sessions = {name: inference_session(data, t) for name, data in variants.items()}
        single = sg.single_image_ms(sessions, x_val, args.latency_runs)
        for name, s in sessions.items():
            s.run(None, {"images": sample[:256]})  # warm-up at the batch shape
            rows[name][f"p50_ms@{t}"] = float(np.percentile(single[name], 50))
            rows[name][f"p99_ms@{t}"] = float(np.percentile(single[name], 99))
            rows[name][f"images_per_s@{t}"] = sg.logits(s, sample)[1]

    header = "| variant | val acc | test acc | agree fp32 |"
    header += "".join(f" p50 ms ({t}t) | p99 ms ({t}t) | img/s ({t}t) |" for t in threads)
    print("\n" + header + "\n|" + "---|" * (4 + 3 * len(threads)))
    for name, r in rows.items():
        line = f"| {name} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['agreement']:.4f} |"
        for t in threads:
            line += f" {r[f'p50_ms@{t}']:.3f} | {r[f'p99_ms@{t}']:.3f} | {r[f'images_per_s@{t}']:,.0f} |"
        print(line)

    for t in threads:
        candidates = [
            sg.VariantFigures(
                name,
                r["val_accuracy"],
                r["agreement"],
                r[f"p50_ms@{t}"],
                r[f"p99_ms@{t}"],
                r[f"images_per_s@{t}"],
                r["size_bytes"],
            )
            for name, r in rows.items()
            if name in sg.VARIANTS
        ]
        choice = sg.choose(candidates, args.max_accuracy_drop_pt, t, len(x_val))
        served = rows[choice.served]
        print(
            f"\nchosen at {t} thread(s): {choice.served} (best {choice.best}, drop {choice.accuracy_drop_pt} pt "
            f"<= {args.max_accuracy_drop_pt}); test accuracy {served['test_accuracy']:.4f}, "
            f"p50 {served[f'p50_ms@{t}']:.3f} ms vs fp32_tta {rows['fp32_tta'][f'p50_ms@{t}']:.3f} ms"
        )
    out = REPO / "benchmarks" / "out" / "served_graph.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2))
    print(f"\nfigures: {out}")


if __name__ == "__main__":
    main()
