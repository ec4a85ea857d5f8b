"""ONNX export of the served model (raw uint8 NHWC pixels in, logits out) and the torch<->ORT parity test."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from mlsd_assets.core.training.models import InferenceModel
from mlsd_assets.core.training.steps import predict_logits

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 20  # the first with a Gelu op: one node where opset 18 spells out erf, add and two muls
BATCH_DIM = "batch"


def contract_metadata(
    *,
    classes: list[str] | tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    architecture: str,
    mlflow_run_id: str,
    registered_model_name: str,
    registered_model_version: str,
    dataset_hash: str,
) -> dict[str, str]:
    """The serving contract written into the file (`mlsd.*` metadata_props), which the server checks at start."""
    from mlsd_assets.core.training.artifacts import META_PREFIX

    values = {
        "classes": json.dumps(list(classes)),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "architecture": architecture,
        "mlflow_run_id": mlflow_run_id,
        "registered_model_name": registered_model_name,
        "registered_model_version": registered_model_version,
        "dataset_hash": dataset_hash,
        "opset": str(OPSET),
    }
    return {f"{META_PREFIX}{k}": v for k, v in values.items()}


def export_onnx(model: InferenceModel, metadata: dict[str, str], logger: logging.Logger) -> bytes:
    """Serialized, checked ONNX model with a dynamic batch axis and `metadata` as metadata_props."""
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"ONNX metadata values must be strings; not: {bad}")
    model = model.to("cpu").fused()  # batch norms folded: the parity test compares against `model` as trained
    example = torch.zeros((2, 32, 32, 3), dtype=torch.uint8)
    with _quiet_exporter():
        program = _export(model, example)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    onnx.checker.check_model(proto, full_check=True)
    _check_interface(proto)
    data = proto.SerializeToString()
    logger.info(f"exported ONNX opset {OPSET}: {len(data)} bytes, {len(proto.graph.node)} nodes")
    return data


def _export(model: InferenceModel, example: torch.Tensor) -> torch.onnx.ONNXProgram:
    return torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes={"images": {0: torch.export.Dim(BATCH_DIM)}},
        optimize=True,
        verbose=False,
    )


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's optimiser logs every rewrite at INFO; keep run logs readable."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_interface(proto: onnx.ModelProto) -> None:
    """The serving contract: uint8 [batch,32,32,3] `images` in, float32 [batch,10] `logits` out."""
    (inp,), (out,) = proto.graph.input, proto.graph.output
    in_type, out_type = inp.type.tensor_type, out.type.tensor_type
    in_dims = [d.dim_param or d.dim_value for d in in_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out_type.shape.dim]
    problems = []
    if inp.name != INPUT_NAME or in_type.elem_type != onnx.TensorProto.UINT8 or in_dims[1:] != [32, 32, 3]:
        problems.append(f"input {inp.name} {in_type.elem_type} {in_dims}")
    if out.name != OUTPUT_NAME or out_type.elem_type != onnx.TensorProto.FLOAT or out_dims[1:] != [10]:
        problems.append(f"output {out.name} {out_type.elem_type} {out_dims}")
    if not isinstance(in_dims[0], str):
        problems.append(f"batch axis is fixed at {in_dims[0]}")
    if problems:
        raise ValueError(f"exported ONNX breaks the serving contract: {'; '.join(problems)}")


def onnx_logits(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    from mlsd_assets.core.serving.server.model import inference_session

    session = inference_session(model_bytes, max(torch.get_num_threads(), 1))
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})[0]


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    argmax_mismatches: int

    def passed(self, tolerance: float) -> bool:
        return self.max_abs_diff <= tolerance and self.argmax_mismatches == 0

    def as_dict(self) -> dict[str, float]:
        return {
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "argmax_mismatches": self.argmax_mismatches,
        }


def parity(model: InferenceModel, model_bytes: bytes, images: np.ndarray) -> Parity:
    """fp32 PyTorch vs ONNX Runtime on the same raw images."""
    with torch.autocast("cpu", enabled=False):
        reference = predict_logits(model.to("cpu").float().eval(), images)
    exported = onnx_logits(model_bytes, images)
    if exported.shape != reference.shape:
        raise ValueError(f"ONNX logits shape {exported.shape} != PyTorch {reference.shape}")
    return Parity(
        images=len(images),
        max_abs_diff=float(np.max(np.abs(exported.astype(np.float64) - reference))),
        argmax_mismatches=int((exported.argmax(1) != reference.argmax(1)).sum()),
    )
