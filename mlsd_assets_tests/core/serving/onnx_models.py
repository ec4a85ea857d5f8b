"""Tiny ONNX models honouring the serving contract (uint8 NHWC in, logits out, mlsd.* metadata), no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlsd_assets.core.data.batches import CIFAR10_CLASSES


def nearest_mean_weights(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W, b of the nearest-class-mean classifier as a linear layer (argmax x@W+b = nearest mean)."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    means = np.stack([flat[labels == c].mean(axis=0) for c in range(len(CIFAR10_CLASSES))])
    return means.T.astype(np.float32), (-0.5 * (means**2).sum(axis=1)).astype(np.float32)


def write_tiny_model(
    path: Path,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    version: str = "1",
    run_id: str = "run-test",
    metadata: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Cast -> /255 -> Reshape -> MatMul -> Add, with the metadata the training export writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if weights is None:
        rng = np.random.default_rng(seed)
        weights = (rng.normal(0, 0.01, (3072, 10)).astype(np.float32), np.zeros(10, np.float32))
    w, b = weights
    nodes = [
        helper.make_node("Cast", ["images"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_float", "scale"], ["x_scaled"]),
        helper.make_node("Reshape", ["x_scaled", "flat_shape"], ["x_flat"]),
        helper.make_node("MatMul", ["x_flat", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cifar10",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
            numpy_helper.from_array(np.array([-1, 3072], np.int64), "flat_shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mlsd-tests")
    model.ir_version = 8
    props = {
        "mlsd.classes": json.dumps(list(CIFAR10_CLASSES)),
        "mlsd.input_name": "images",
        "mlsd.output_name": "logits",
        "mlsd.input_layout": "NHWC",
        "mlsd.input_dtype": "uint8",
        "mlsd.mean": json.dumps([0.0, 0.0, 0.0]),
        "mlsd.std": json.dumps([1.0, 1.0, 1.0]),
        "mlsd.architecture": "nearest_mean_linear",
        "mlsd.mlflow_run_id": run_id,
        "mlsd.registered_model_name": "cifar10-classifier",
        "mlsd.registered_model_version": version,
        "mlsd.dataset_hash": "test",
        "mlsd.opset": "17",
    } | (metadata or {})
    onnx.helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
