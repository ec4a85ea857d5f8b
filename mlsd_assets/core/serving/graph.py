"""The served graph, chosen by measurement: fp32 with/without flip-TTA, ORT-optimized, int8 QDQ, on validation.

Every variant computes from the same raw uint8 NHWC pixels (preprocessing stays in the graph, in fp32). Each is
measured for validation accuracy, argmax agreement with the fp32 reference graph, single-image latency and batch
throughput under the server's session options; the served variant is the fastest within `max_accuracy_drop_pt`
of the most accurate one. No Dagster here: the asset and the benchmark call these functions.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from mlsd_assets.core.serving.export import INPUT_NAME, OUTPUT_NAME
from mlsd_assets.core.serving.server.model import inference_session
from mlsd_assets.core.training.artifacts import REFERENCE_SHA_KEY, SERVING_PREFIX

# Simplest first: on a latency tie (within TIE_TOLERANCE) the earlier, simpler graph is served.
VARIANTS: tuple[str, ...] = ("fp32_tta", "fp32", "ort_tta", "ort", "int8_tta", "int8")
CalibrationMethod = Literal["minmax", "percentile", "entropy"]
TIE_TOLERANCE = 0.03
# Ops whose weights are quantized; everything else (the in-graph preprocessing, pooling, GELU, the head) stays fp32.
QUANTIZED_OPS: tuple[str, ...] = ("Conv",)


@dataclass(frozen=True)
class VariantFigures:
    """One variant on the validation split, under one thread count."""

    name: str
    accuracy: float
    agreement: float  # fraction of validation images with the same argmax as the fp32 reference graph
    p50_ms: float
    p99_ms: float
    images_per_s: float
    size_bytes: int


@dataclass(frozen=True)
class Choice:
    """Which variant is served, why, and every variant's figures."""

    served: str
    best: str
    max_accuracy_drop_pt: float
    threads: int
    validation_images: int
    figures: tuple[VariantFigures, ...]

    @property
    def served_figures(self) -> VariantFigures:
        return next(f for f in self.figures if f.name == self.served)

    @property
    def accuracy_drop_pt(self) -> float:
        best = next(f for f in self.figures if f.name == self.best)
        return round((best.accuracy - self.served_figures.accuracy) * 100, 4)

    def rule(self) -> str:
        return (
            f"fastest single-image p50 ({self.threads or 'all'} intra-op threads) among variants within "
            f"{self.max_accuracy_drop_pt} pt of the best validation accuracy; ties within "
            f"{TIE_TOLERANCE:.0%} go to the simpler graph"
        )

    def metadata(self) -> dict[str, str]:
        """The `mlsd.serving.*` metadata_props of the served file."""
        served = self.served_figures
        values = {
            "variant": self.served,
            "best_variant": self.best,
            "rule": self.rule(),
            "max_accuracy_drop_pt": str(self.max_accuracy_drop_pt),
            "accuracy_drop_pt": str(self.accuracy_drop_pt),
            "val_accuracy": str(served.accuracy),
            "agreement_with_fp32": str(served.agreement),
            "threads": str(self.threads),
            "validation_images": str(self.validation_images),
            "figures": json.dumps([asdict(f) for f in self.figures]),
        }
        return {f"{SERVING_PREFIX}{k}": v for k, v in values.items()}

    def table(self) -> dict[str, list]:
        """Column-wise figures (an MLflow table; the markdown table below)."""
        rows = [asdict(f) | {"served": f.name == self.served} for f in self.figures]
        return {key: [row[key] for row in rows] for key in rows[0]}

    def markdown(self) -> str:
        lines = [
            "| variant | val accuracy | agreement with fp32 | p50 ms | p99 ms | images/s (batch) | bytes |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.figures:
            mark = " **(served)**" if f.name == self.served else ""
            lines.append(
                f"| {f.name}{mark} | {f.accuracy:.4f} | {f.agreement:.4f} | {f.p50_ms:.3f} | {f.p99_ms:.3f} "
                f"| {f.images_per_s:,.0f} | {f.size_bytes:,} |"
            )
        return "\n".join(lines) + "\n"


def with_metadata(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """`model_bytes` with `metadata` merged into its metadata_props (tools that rewrite graphs may drop them)."""
    proto = onnx.load_model_from_string(model_bytes)
    merged = {p.key: p.value for p in proto.metadata_props} | metadata
    onnx.helper.set_model_props(proto, merged)
    return proto.SerializeToString()


def optimize_offline(model_bytes: bytes) -> bytes:
    """ORT's graph optimizations applied once and saved (EXTENDED: Conv+activation, GELU, ... fusions as ORT
    contrib ops that any CPU runs). The file needs ONNX Runtime (same or newer) to load: the image pins the
    version that wrote it."""
    with tempfile.TemporaryDirectory(prefix="mlsd-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        inference_session(model_bytes, save_optimized=out)
        return out.read_bytes()


class _CalibrationReader:
    """Feeds raw train images to the calibrator, a batch at a time (ORT's CalibrationDataReader protocol)."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter(np.array_split(images, max(1, -(-len(images) // batch_size))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.uint8)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item


def fp32_boundary_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the weighted nodes kept in fp32: the first layer(s) (fed by the preprocessing) and the last
    (the classifier head); a graph that runs the net twice for flip-TTA (exports before 2026-12) has two of each."""
    weighted = {"Conv", "MatMul", "Gemm"}
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches(node: onnx.NodeProto, step) -> bool:  # noqa: ANN001
        seen, stack = set(), list(step(node))
        while stack:
            other = stack.pop()
            if id(other) in seen:
                continue
            seen.add(id(other))
            if other.op_type in weighted:
                return True
            stack.extend(step(other))
        return False

    def upstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [producer[i] for i in node.input[:1] if i in producer]

    def downstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [c for o in node.output for c in consumers.get(o, [])]

    nodes = [n for n in proto.graph.node if n.op_type in weighted]
    first = [n.name for n in nodes if not reaches(n, upstream)]
    last = [n.name for n in nodes if not reaches(n, downstream)]
    return sorted(set(first + last))


def quantize_int8(
    model_bytes: bytes,
    calibration_images: np.ndarray,
    method: CalibrationMethod,
    logger: logging.Logger,
    keep_boundaries_fp32: bool = True,
    op_types: Sequence[str] | None = QUANTIZED_OPS,
    reduce_range: bool = False,
) -> bytes:
    """Static int8 quantization in QDQ form: per-channel int8 weights, uint8 activations (the U8S8 kernels),
    calibrated on `calibration_images` (train images). Only `op_types` (Conv; None = every op ORT can
    quantize) are quantized, and the first and last weighted layers stay fp32 unless `keep_boundaries_fp32`
    is False. `reduce_range` (7-bit weights) is ORT's advice for CPUs without VNNI, whose U8S8 kernels can
    saturate: set it when the image may run on AVX2-only machines."""
    from onnxruntime.quantization import CalibrationMethod as Method
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    if len(calibration_images) == 0:
        raise ValueError("int8 quantization needs calibration images; the train split is empty")
    methods = {"minmax": Method.MinMax, "percentile": Method.Percentile, "entropy": Method.Entropy}
    with tempfile.TemporaryDirectory(prefix="mlsd-int8-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model_bytes)
        quant_pre_process(str(src), str(pre))
        excluded = fp32_boundary_nodes(onnx.load(str(pre))) if keep_boundaries_fp32 else []
        quantize_static(
            str(pre),
            str(out),
            _CalibrationReader(calibration_images, batch_size=64),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            nodes_to_exclude=excluded,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
        )
        data = out.read_bytes()
    logger.info(
        f"int8 ({method} calibration on {len(calibration_images)} train images), kept fp32: "
        f"{', '.join(excluded) or 'none'}"
    )
    return data


def build_variants(
    fp32: bytes,
    fp32_tta: bytes,
    names: Sequence[str],
    calibration_images: np.ndarray,
    calibration_method: CalibrationMethod,
    logger: logging.Logger,
    reduce_range: bool = False,
) -> dict[str, bytes]:
    """The requested variants, built from the two fp32 exports (without and with flip-TTA)."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        raise ValueError(f"variants: unknown {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
    built: dict[str, bytes] = {}
    for name in [v for v in VARIANTS if v in names]:
        kind, tta = name.removesuffix("_tta"), name.endswith("_tta")
        base = fp32_tta if tta else fp32
        if kind == "fp32":
            built[name] = base
        elif kind == "ort":
            built[name] = optimize_offline(base)
        else:
            built[name] = quantize_int8(base, calibration_images, calibration_method, logger, reduce_range=reduce_range)
    return built


def logits(model, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """Logits of `images` through an ORT session, and the images per second of that pass."""
    outputs, start = [], time.perf_counter()
    for i in range(0, len(images), batch_size):
        outputs.append(model.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0])
    seconds = time.perf_counter() - start
    return np.concatenate(outputs), len(images) / max(seconds, 1e-9)


def single_image_ms(sessions: dict[str, object], images: np.ndarray, runs: int, rounds: int = 5) -> dict:
    """Per-call milliseconds of one-image requests, interleaved in rounds across variants so that load from
    other processes on the machine falls on every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    per_round = max(1, runs // rounds)
    for model in sessions.values():  # warm-up
        for i in range(3):
            model.run([OUTPUT_NAME], {INPUT_NAME: images[i % len(images)][None]})
    for r in range(rounds):
        for name, model in sessions.items():
            for i in range(per_round):
                one = images[(r * per_round + i) % len(images)][None]
                start = time.perf_counter_ns()
                model.run([OUTPUT_NAME], {INPUT_NAME: one})
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: np.asarray(t) for name, t in times.items()}


def measure(
    variants: dict[str, bytes],
    reference: bytes,
    images: np.ndarray,
    labels: np.ndarray,
    threads: int,
    latency_runs: int,
    logger: logging.Logger,
) -> list[VariantFigures]:
    """Accuracy, agreement with `reference` (the fp32 graph) and latency of every variant on `images`."""
    if len(images) == 0:
        raise ValueError("cifar10_split: the validation split is empty; cannot measure the served variants")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    expected = logits(inference_session(reference, threads), images)[0].argmax(1)
    sessions = {name: inference_session(data, threads) for name, data in variants.items()}
    batch = {}
    for name, model in sessions.items():
        out, per_s = logits(model, images)
        batch[name] = (out.argmax(1), per_s)
    single = single_image_ms(sessions, images, latency_runs)
    figures = []
    for name, data in variants.items():
        predicted, per_s = batch[name]
        figures.append(
            VariantFigures(
                name=name,
                accuracy=float((predicted == labels).mean()),
                agreement=float((predicted == expected).mean()),
                p50_ms=float(np.percentile(single[name], 50)),
                p99_ms=float(np.percentile(single[name], 99)),
                images_per_s=float(per_s),
                size_bytes=len(data),
            )
        )
        f = figures[-1]
        logger.info(
            f"variant {name}: val accuracy {f.accuracy:.4f}, agreement {f.agreement:.4f}, "
            f"p50 {f.p50_ms:.3f} ms, p99 {f.p99_ms:.3f} ms, {f.images_per_s:,.0f} img/s ({threads or 'all'} threads)"
        )
    return figures


def choose(
    figures: Sequence[VariantFigures], max_accuracy_drop_pt: float, threads: int, validation_images: int
) -> Choice:
    """The fastest variant (single-image p50) within `max_accuracy_drop_pt` points of the most accurate one;
    among variants within TIE_TOLERANCE of the fastest, the simplest (earliest in VARIANTS)."""
    if not figures:
        raise ValueError("no variants were measured")
    if max_accuracy_drop_pt < 0:
        raise ValueError(f"max_accuracy_drop_pt must be >= 0, got {max_accuracy_drop_pt}")
    order = {name: i for i, name in enumerate(VARIANTS)}
    best = max(figures, key=lambda f: (f.accuracy, -order.get(f.name, len(order))))
    eligible = [f for f in figures if (best.accuracy - f.accuracy) * 100 <= max_accuracy_drop_pt + 1e-9]
    fastest = min(f.p50_ms for f in eligible)
    ties = [f for f in eligible if f.p50_ms <= fastest * (1 + TIE_TOLERANCE)]
    served = min(ties, key=lambda f: order.get(f.name, len(order)))
    return Choice(
        served=served.name,
        best=best.name,
        max_accuracy_drop_pt=max_accuracy_drop_pt,
        threads=threads,
        validation_images=validation_images,
        figures=tuple(figures),
    )


def served_model(choice: Choice, variants: dict[str, bytes], reference: bytes, contract: dict[str, str]):  # noqa: ANN201
    """The `OnnxModel` to store: the chosen variant carrying the contract, the choice and the reference's hash."""
    import hashlib

    from mlsd_assets.core.training.artifacts import OnnxModel, read_onnx_metadata

    recorded = contract | choice.metadata() | {REFERENCE_SHA_KEY: hashlib.sha256(reference).hexdigest()}
    data = with_metadata(variants[choice.served], recorded)
    return OnnxModel(model_bytes=data, metadata=read_onnx_metadata(data), reference_bytes=reference)


@dataclass(frozen=True)
class Selection:
    """How to build, measure and choose (the cifar10_onnx config, without Dagster)."""

    variants: tuple[str, ...] = VARIANTS
    max_accuracy_drop_pt: float = 0.3
    calibration_images: int = 512
    calibration_method: CalibrationMethod = "minmax"
    threads: int = 0  # 0 = ORT's default, all cores (what the server uses)
    int8_reduce_range: bool = False
    latency_runs: int = 500


def calibration_sample(train_images: np.ndarray, count: int) -> np.ndarray:
    """`count` train images spread evenly over the split (deterministic, so a re-run calibrates alike)."""
    if count <= 0 or len(train_images) == 0:
        return train_images[:0]
    index = np.unique(np.linspace(0, len(train_images) - 1, num=min(count, len(train_images))).astype(int))
    return train_images[index]


def select_served_graph(  # noqa: ANN201
    fp32: bytes,
    fp32_tta: bytes,
    trained_with_tta: bool,
    contract: dict[str, str],
    train_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    selection: Selection,
    logger: logging.Logger,
):
    """Build the variants, measure them on validation, choose one: (the OnnxModel to store, the Choice).
    The reference (parity) graph is the fp32 export as trained: with flip-TTA when the model was trained so."""
    reference = fp32_tta if trained_with_tta else fp32
    calibration = calibration_sample(train_images, selection.calibration_images)
    variants = build_variants(
        fp32,
        fp32_tta,
        selection.variants,
        calibration,
        selection.calibration_method,
        logger,
        reduce_range=selection.int8_reduce_range,
    )
    figures = measure(variants, reference, val_images, val_labels, selection.threads, selection.latency_runs, logger)
    choice = choose(figures, selection.max_accuracy_drop_pt, selection.threads, len(val_images))
    logger.info(f"served variant: {choice.served} ({choice.rule()}); best: {choice.best}")
    return served_model(choice, variants, reference, contract), choice


@dataclass(frozen=True)
class Agreement:
    """The served graph re-measured against the fp32 graph; the bound and best figure are the recorded ones."""

    images: int
    agreement: float
    served_accuracy: float
    fp32_accuracy: float
    best_recorded_accuracy: float
    max_accuracy_drop_pt: float

    @property
    def accuracy_drop_pt(self) -> float:
        return round((max(self.best_recorded_accuracy, self.fp32_accuracy) - self.served_accuracy) * 100, 4)

    @property
    def passed(self) -> bool:
        return self.accuracy_drop_pt <= self.max_accuracy_drop_pt + 1e-9

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"accuracy_drop_pt": self.accuracy_drop_pt}

    def summary(self) -> str:
        verdict = "within" if self.passed else "MORE than"
        return (
            f"served accuracy {self.served_accuracy:.4f} is {self.accuracy_drop_pt} pt below the best "
            f"({verdict} the {self.max_accuracy_drop_pt} pt allowed); agrees with fp32 on "
            f"{self.agreement:.2%} of {self.images} images"
        )


def agreement(
    served: bytes, fp32: bytes, metadata: dict[str, str], images: np.ndarray, labels: np.ndarray
) -> Agreement:
    """Re-measure the served graph against the fp32 graph on `images`. A file without a recorded choice (from
    before variants) is its own fp32 graph and is allowed no drop."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    served_pred = logits(inference_session(served, 1), images)[0].argmax(1)
    fp32_pred = served_pred if fp32 is served else logits(inference_session(fp32, 1), images)[0].argmax(1)
    figures = json.loads(metadata.get(f"{SERVING_PREFIX}figures", "[]"))
    return Agreement(
        images=len(images),
        agreement=float((served_pred == fp32_pred).mean()),
        served_accuracy=float((served_pred == labels).mean()),
        fp32_accuracy=float((fp32_pred == labels).mean()),
        best_recorded_accuracy=max((float(f["accuracy"]) for f in figures), default=0.0),
        max_accuracy_drop_pt=float(metadata.get(f"{SERVING_PREFIX}max_accuracy_drop_pt", "0")),
    )
